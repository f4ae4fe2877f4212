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

Rendering keeps a bounded amount: blocks from KEPT_MAX (128 MiB) up (whole-image buffers) are
mapped and handed back on free, as glibc does by default; smaller freed blocks stay in the heap
for reuse, and the heap is never trimmed. An earlier version also trimmed the heap's top beyond
256 MiB; the encoder's activations (several 61 MiB blocks of a 500² input live at once) crossed
that line on every layer, so the fast model's encode page-faulted as if nothing were kept.
Measured on the 2-core machine, one run each, training paused (`liif upscale` of a 500² photo at
×4 with `fast`, whole process; glibc's default / keep everything / top trimmed at 256 MiB / this):
minor faults 1.84 M / 161 k / 430-550 k / 161-175 k; 6.2 s keep-all, 8.2-9.2 s trimmed, 6.6-7.4 s
this. The encoder alone: 4.8 s trimmed, 2.4 s kept. Peak RSS of `liif upscale -s 8` of a 1024²
photo (8192² output; EDSR-baseline 2 blocks + MLP 32-32, random weights), two runs each: keep
everything 947 / 1,198 MiB, mapping from 256 MiB up without trimming 1,054 / 1,120, top trimmed
at 256 MiB 874 / 918, this 909 MiB (glibc's default: 767 MiB, measured before): the blocks
between 128 and 256 MiB are the ones that left holes.
Training keeps everything (`kept_max=None`): a bf16 step (scripts/bench_train.py's batch, one
thread) takes 12 k page faults and 1.65 s so, 123 k and 1.88 s bounded, 370 k and 2.46 s with
glibc's default; its peak recurs on every step anyway.

A process keeps the rest of its heap's high-water mark until it exits, which suits a training
run (its peak is reached in the first step and recurs on every step) and a rendering command
(its peak recurs on every tile and image). It is process-wide, so the library calls it only
where it owns the process: `liif_cli.tasks.train.train` (everything), the batch task's spawned
workers, and the CLI's upscale, batch, eval and bench commands (bounded). A library user's
long-lived process may call `keep_freed_memory()` itself.
"""

from __future__ import annotations

import ctypes
import platform
from typing import Callable

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # bytes: M_TRIM_THRESHOLD's largest value (an int)
# bytes: blocks from this size up are mapped and handed back on free (the image-sized ones).
# Above the 61 MiB activations of a 500² encode (64 channels, fp32) and the temporaries they
# come with.
KEPT_MAX = 128 * 2**20


def _mallopt() -> Callable[[int, int], int] | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def keep_freed_memory(*, kept_max: int | None = KEPT_MAX) -> bool:
    """Keep freed blocks below `kept_max` bytes for reuse instead of unmapping them, for the
    rest of the process (the heap is never trimmed); larger blocks are still handed back. `kept_max=None` keeps everything (training: its peak recurs on
    every step, and a bound costs it 10 times the page faults).

    Returns whether it applied: on Linux with glibc; elsewhere it does nothing.
    """
    fn = _mallopt()
    if fn is None:
        return False
    if kept_max is None:
        return bool(fn(M_MMAP_MAX, 0) and fn(M_TRIM_THRESHOLD, NEVER_TRIM))
    return bool(fn(M_MMAP_THRESHOLD, kept_max) and fn(M_TRIM_THRESHOLD, NEVER_TRIM))
