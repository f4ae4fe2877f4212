"""glibc's allocator, set up for torch's large, short-lived CPU tensors.

glibc serves every allocation above its mmap threshold (32 MiB at most) with a fresh `mmap` and
hands it back with `munmap` on free. A training step makes and drops several hundred MiB of
activations, so each step page-faults all of them in again, zero-filled by the kernel: measured
on the 2-core machine, 157,000 faults per second and a quarter of the training job's CPU time in
the kernel. With `keep_freed_memory()` freed blocks stay in the heap and the next step reuses
them: a bf16 training step went from 4.50 to 3.34 s (`scripts/bench_train.py`, one thread, beside
a training job), and the real run on 2 cores from 2.2 to 1.9 s.

Rendering meets the same: the encoder makes and drops a 64-channel activation of the tile per
layer (64 MiB for a 500×500 input), so `liif upscale` of a 500×500 photo with the fast model
spent half its encoder time in page faults (in process, 2 cores: 9.1 s → 5.4 s with it, the
encoder 6.3 → 3.3 s; peak RSS 596 → 725 MiB, the heap's slack).

The cost is that the process keeps its high-water mark until it exits, which suits a training
run (its peak is reached in the first step and recurs on every step) and a rendering command
(its peak recurs on every tile and image). It is process-wide, so the library calls it only
where it owns the process: `liif_cli.tasks.train.train`, the batch task's spawned workers, and
the CLI's upscale, batch, eval and bench commands. A library user's long-lived process may call
`keep_freed_memory()` itself.
"""

from __future__ import annotations

import ctypes
import platform
from typing import Callable

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_MAX = -4


def _mallopt() -> Callable[[int, int], int] | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def keep_freed_memory() -> bool:
    """Keep freed memory for reuse instead of unmapping it, for the rest of the process.

    Returns whether it applied: on Linux with glibc; elsewhere it does nothing.
    """
    fn = _mallopt()
    return fn is not None and bool(fn(M_MMAP_MAX, 0) and fn(M_TRIM_THRESHOLD, 2**31 - 1))
