"""Training's validation: mean PSNR per scale of a model on HR images (LR made from them)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Mapping, Sequence

import numpy as np
import torch

from liif_cli.data.degrade import parse_spec, spec_text
from liif_cli.data.metrics import psnr
from liif_cli.data.samples import make_lr, predict_from_lr
from liif_cli.model import SRModel
from liif_cli.runtime.upscaler import Upscaler


def validate(model: SRModel, images: Mapping[str, np.ndarray] | Sequence[np.ndarray],
             scales: tuple[float, ...], dtype: torch.dtype = torch.float32,
             degrade: str | None = None) -> dict[str, float]:
    """Mean PSNR per scale (official div2k protocol: RGB, shave scale + 6; LR made from HR).

    `dtype` is the precision of the whole forward pass, as `liif upscale --precision` sets it
    (a bf16 run validates in bf16: within ~0.01 dB of fp32, and faster on the CPU); it is
    taken as resolved (train resolved it). The model renders through a fresh `Upscaler` on its
    own device: the weights changed since the last validation, so its decoder is rebuilt.
    `degrade`: a spec (`degrade.parse_spec`); the LR is also degraded by it as `liif eval
    --degrade` does (`samples.predict_from_lr`, seeded by file name: `images` then maps each
    image's path, or its name, to it), and those scores are added under keys such as "x2 jpeg=75".
    """
    if degrade and not isinstance(images, Mapping):
        raise TypeError("validate with degrade needs images by file name (a dict), as eval "
                        "seeds each image's degradation by its name")
    named = list(images.items()) if isinstance(images, Mapping) else [("", im) for im in images]
    up = Upscaler(model, device=next(model.parameters()).device, precision=dtype)
    res = {}
    specs = [()] + ([parse_spec(degrade)] if degrade else [])
    for steps, s in [(st, s) for st in specs for s in scales]:
        vals = []
        for name, hr in named:
            crop, lr = make_lr(hr, s)
            _, pred = predict_from_lr(up, lr, crop.shape[:2], degrade=steps,
                                      name=PurePosixPath(name).name, scale=s)
            vals.append(psnr(pred, crop, protocol="div2k", scale=s))
        res[f"x{s:g}" + (f" {spec_text(steps)}" if steps else "")] = float(np.mean(vals))
    return res
