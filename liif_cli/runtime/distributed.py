"""Distributed training's shared facts: the ranks from torchrun's environment, and a stop on
SIGINT/SIGTERM that every rank agrees on, decided by the training process alone (its DataLoader
workers ignore both)."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any, Iterator

import torch

# what asks a run to stop: Ctrl-C, and `kill`, Slurm's preemption or a session's stop (SIGTERM,
# often sent to the whole process group, DataLoader workers included)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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

    def lost_worker(self, exc: BaseException, world: int) -> bool:
        """Whether `exc` is torch's "DataLoader worker (pid N) is killed by signal" (or "exited
        unexpectedly") once a signal asked this process to stop: a worker that died anyway
        (started otherwise than by a fork and signalled before it could ignore it, or killed on
        its own). The stop then goes on with the iterations done (a batch is a pure function
        of its index). Not under DDP (`world` > 1): the other ranks wait for this one's
        gradients, so that run cannot stop here."""
        return self.signal is not None and world == 1 and "DataLoader worker" in str(exc)

    def __enter__(self):
        for sig in STOP_SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, sig, frame):
        # a second Ctrl-C: stop now. Not a second SIGTERM: torchrun forwards to every rank the
        # SIGTERM Slurm sent to every process, so it comes twice, and the save must go on
        if self.signal is not None and sig == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal is None:
            self.signal = sig

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader worker's `worker_init_fn`: SIGINT/SIGTERM ignored, so that a signal sent to
    the process group leaves the workers feeding the training process, which decides the stop
    (`StopSignal`); a worker killed by it would end the run in torch's "DataLoader worker is
    killed by signal" instead of a save. Then the signals `stop_signals_held` blocked across
    the fork are unblocked: one sent meanwhile was pending, and is dropped by the SIG_IGN."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # not on Windows
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM blocked in this thread while DataLoader workers start (`iter(loader)`).

    A forked worker inherits the block, so a signal sent to the process group before its
    `ignore_stop_signals` has run waits instead of killing it; here, a signal sent meanwhile is
    delivered when the block ends.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))
