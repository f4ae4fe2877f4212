"""Distributed training's stop: on SIGINT/SIGTERM, one that every rank agrees on, decided by
the training process alone (its DataLoader workers ignore both:
`runtime.process.ignore_stop_signals`; the ranks are `runtime.process.torchrun_ranks`)."""

from __future__ import annotations

import contextlib
import signal

import torch

from liif_cli.runtime.process import on_stop_signals


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
        self._handlers = contextlib.ExitStack()

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

    def lost_worker(self, exc: BaseException, world: int) -> bool:
        """Whether `exc` is torch's "DataLoader worker (pid N) is killed by signal" (or "exited
        unexpectedly") once a signal asked this process to stop: a worker that died anyway
        (started otherwise than by a fork and signalled before it could ignore it, or killed on
        its own). The stop then goes on with the iterations done (a batch is a pure function
        of its index). Not under DDP (`world` > 1): the other ranks wait for this one's
        gradients, so that run cannot stop here."""
        return self.signal is not None and world == 1 and "DataLoader worker" in str(exc)

    def __enter__(self):
        self._handlers.enter_context(on_stop_signals(self._handle))  # main thread only
        return self

    def _handle(self, sig, frame):
        # a second Ctrl-C: stop now. Not a second SIGTERM: torchrun forwards to every rank the
        # SIGTERM Slurm sent to every process, so it comes twice, and the save must go on
        if self.signal is not None and sig == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal is None:
            self.signal = sig

    def __exit__(self, *exc):
        self._handlers.close()

