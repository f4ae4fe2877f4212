"""What a task's process knows of its place: the signals that ask it to stop, how the workers it
starts leave that decision to it, and its ranks under torchrun or srun. Torch-free.

Every command that runs long (train, batch, view) stops cleanly on SIGINT (Ctrl-C) and SIGTERM
(`kill`, Slurm's preemption, Kubernetes): the signals are often sent to the whole process
group, so the workers a task starts ignore them (`ignore_stop_signals`) and the task's own
process decides (`on_stop_signals`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Callable, Iterator, Mapping

# what asks a run to stop: Ctrl-C, and `kill`, Slurm's preemption or a session's stop (SIGTERM,
# often sent to the whole process group, DataLoader and batch workers included)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# (rank, ranks, launcher) of a multi-process launch, in the order they are looked for:
# torchrun's, then srun's (a step's task count, else the job's)
RANK_VARS = (("RANK", "WORLD_SIZE", "torchrun"),
             ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "srun"),
             ("SLURM_PROCID", "SLURM_NTASKS", "srun"))
LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID")  # torchrun's, then srun's per-node index


@contextlib.contextmanager
def on_stop_signals(handler: Callable[[int, Any], None]) -> Iterator[bool]:
    """`handler(signum, frame)` for SIGINT and SIGTERM within the block, the old handlers after.
    Yields whether it was set: only the main thread can set one (elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    old = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield True
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A worker's first act (a DataLoader's `worker_init_fn`, a batch worker process's start):
    SIGINT/SIGTERM ignored, so that a signal sent to the process group leaves the workers
    working for the task's process, which decides the stop; a worker killed by it would end a
    training run in torch's "DataLoader worker is killed by signal" instead of a save. Then the
    signals `stop_signals_held` blocked across the fork are unblocked: one sent meanwhile was
    pending, and is dropped by the SIG_IGN."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # not on Windows
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM blocked in this thread while workers start (e.g. `iter(loader)`).

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


def torchrun_ranks(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside it."""
    env = os.environ if env is None else env
    rank, world, _ = RANK_VARS[0]
    return int(env.get(rank, 0)), int(env.get(world, 1))


def local_rank(env: Mapping[str, str] | None = None) -> int | None:
    """This process's index on its node under torchrun (LOCAL_RANK) or srun (SLURM_LOCALID)."""
    env = os.environ if env is None else env
    for var in LOCAL_RANK_VARS:
        value = env.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return None
