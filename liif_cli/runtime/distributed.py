"""Distributed training's shared facts: the ranks from torchrun's environment, and a stop on
SIGINT/SIGTERM that every rank agrees on."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch


class StopSignal:
    """SIGINT/SIGTERM set a flag; the loop saves and stops once the ranks agree (`agree`).

    Under DDP every rank must leave the loop at the same iteration: a rank that broke alone on
    its own signal would leave the others waiting in the next gradient all-reduce, and rank 0's
    save could be lost. So `stopping` (what the loop obeys) changes only in `agree`, which all
    ranks call at the same iterations.
    """

    def __init__(self):
        self.signal: int | None = None
        self.stopping = False  # agreed by every rank
        self._old: dict[int, Any] = {}

    def agree(self, world: int, device: torch.device) -> bool:
        """Whether any rank has a signal (one all-reduce over `world` ranks, a tensor on
        `device`); sets `stopping`."""
        mine = self.signal is not None
        if world > 1:
            import torch.distributed as dist

            flag = torch.tensor([int(mine)], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            mine = bool(flag.item())
        self.stopping = self.stopping or mine
        return self.stopping

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, sig, frame):
        if self.signal is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = sig

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))
