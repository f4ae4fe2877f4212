"""An exponential moving average of a model's weights (training's `--ema`): the copy that
validation scores and checkpoints hold."""

from __future__ import annotations

import copy

import torch
from torch import nn

EMA_WARMUP = 10  # the decay's warm-up: at most (1 + n) / (EMA_WARMUP + n) after n updates


class WeightAverage:
    """An exponential moving average of a model's weights (`liif train --ema DECAY`), as SR
    toolboxes keep.

    After each optimizer step, `update` moves every trainable parameter and floating-point
    buffer of `module` (a float32 copy of the model, on its device) towards the model's:
    ema = d·ema + (1 − d)·w. Frozen parameters (--freeze-encoder's encoder) are never updated:
    they stay as copied, which is what the model has. d = min(decay, (1 + n) / (10 + n)) after
    n updates (TensorFlow's ExponentialMovingAverage with num_updates): the average spans
    about the last n / 9 steps until that reaches 1 / (1 − decay) (1,000 steps at 0.999, after
    ~9,000), so that a run's first steps do not average in the random start.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)
        mine = dict(self.module.named_parameters())
        trained = [(mine[n], p) for n, p in model.named_parameters() if p.requires_grad]
        self._ema = [e for e, _ in trained]
        self._raw = [p for _, p in trained]
        theirs = dict(model.named_buffers())
        self._buffers = [(b, theirs[n]) for n, b in self.module.named_buffers()]

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (EMA_WARMUP + self.updates))
        torch._foreach_lerp_(self._ema, self._raw, 1 - d)  # ema += (1 − d)·(w − ema)
        for mine, theirs in self._buffers:
            if mine.is_floating_point():
                mine.lerp_(theirs.float(), 1 - d)
            else:
                mine.copy_(theirs)
        self.updates += 1
