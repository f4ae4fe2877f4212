"""Typed errors and the exit-code contract. Library code raises these; `describe` turns any
exception into the one line a user reads and its exit code, for the CLI (`cli/app.py`) and for
batch workers alike.

Every message says what went wrong *and* what to do about it, in one line. Exit codes, the same
for every command: 0 done, 1 failure (out of memory included), 2 usage (the command line asks
for something impossible, or to write over an existing output without --overwrite, or names an
output that cannot be written there), 130 interrupted (SIGINT, Ctrl-C), 143 terminated
(SIGTERM): 128 + the signal's number, as shells report them. Outputs are checked before any work (`io.files`), so an
existing output is exit 2 with nothing computed; a write failing afterwards is exit 1.
"""

from __future__ import annotations

import signal
import sys

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143


def signal_exit_code(signum: int | None) -> int:
    """The exit code of a task stopped by `signum`: 143 for SIGTERM, else 130 (interrupted)."""
    return EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED


class Interrupted(KeyboardInterrupt):
    """A stop signal raised as Ctrl-C is (`liif video` takes SIGTERM, a cluster's preemption,
    so); its exit code is the signal's: 143 for SIGTERM."""

    def __init__(self, signum: int):
        super().__init__()
        self.signum = signum


class LiifError(Exception):
    """Base class: a problem the user can fix. Exit code 1 unless a subclass says otherwise."""

    exit_code = EXIT_FAILURE


class UsageError(LiifError):
    """The command line asks for something impossible (bad scale, conflicting options). Exit 2."""

    exit_code = EXIT_USAGE


class CheckpointError(LiifError):
    """A model file that is missing, unreadable, not a LIIF checkpoint, or of the wrong shape."""


class ImageReadError(LiifError):
    """An input that is missing, empty, truncated, not an image, or too large to decode safely."""


class VideoReadError(LiifError):
    """A video input that is missing, not a video, has no picture, or is corrupt or truncated."""


class ImageWriteError(LiifError):
    """An output that cannot be written (exists, unknown format, unwritable folder)."""


class DeviceError(LiifError):
    """A requested device (cuda:N, mps) that is not present on this machine."""


class DataError(LiifError):
    """A training or evaluation dataset that is missing, empty, or inconsistent."""


class ExportError(LiifError):
    """A model that cannot be exported, or an export target that cannot be written."""


class TrainingError(LiifError):
    """Training cannot continue (non-finite loss, incompatible resume state)."""


class OutputPathError(UsageError, ImageWriteError, ExportError):
    """An output the command line names that cannot be written there: a folder, in a folder
    that is missing or read-only, or with an extension no writer takes (`-o out.xyz`, the same
    mistake as `--format xyz`). Found before any work (`io.files.check_output_path`): a usage
    problem (exit 2) for every command. Also an ImageWriteError and an ExportError."""


class OutputExistsError(OutputPathError):
    """An output file that exists, without --overwrite: a usage problem (exit 2) for every
    command (`upscale`, `eval --json/--csv/--save-examples`, `export`, `bench --json`; `batch`
    skips existing outputs instead, as resuming is its job). Also an ImageWriteError and an
    ExportError, for code that catches those."""

    def __init__(self, path: object) -> None:
        super().__init__(f"output exists: {path} (pass --overwrite to replace it)")
        self.path = path


class OutputWriteError(ImageWriteError, ExportError):
    """An output that could not be written once the work was done (disk full, folder gone, no
    permission): exit 1. Nothing partial is left (`io.files.atomic_write`)."""


class LiifWarning(UserWarning):
    """Something the user should know that does not stop the task (e.g. a precision fallback).

    Library code warns with `warnings.warn`; `cli/app.py` prints each as one `note:` line.
    """


# ----------------------------------------------------------------------------------------------
# any exception -> one line and an exit code

OUT_OF_MEMORY = "out of memory; lower --max-memory or the output size"
# what to lower, per command, where it is not --max-memory and the output size (`describe`)
OOM_ADVICE = {
    "train": "lower --batch-size, --patch-size or --sample-q",
    "eval": "lower --max-memory",
    "bench": "lower --max-memory or --size",
    "view": "pick a smaller scale, or start liif view with --device cpu",
    "export": "close other programs (export holds the model in memory twice)",
}
INTERNAL = "internal error"
# RuntimeError texts of an allocation that failed: PyTorch's CPU allocator raises a plain
# RuntimeError ("DefaultCPUAllocator: can't allocate memory"); MPS on older torch says "MPS
# backend out of memory"; a CUDA launch that runs out is a `torch.AcceleratorError` ("CUDA
# error: out of memory", a RuntimeError); cuBLAS and cuDNN name their failed allocations
_OOM_TEXTS = ("can't allocate memory", "out of memory", "CUBLAS_STATUS_ALLOC_FAILED",
              "CUDNN_STATUS_ALLOC_FAILED")


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or PyTorch's out-of-memory errors: `torch.OutOfMemoryError` (CUDA, and MPS on
    newer torch) is a RuntimeError, not a MemoryError. Never imports torch: an exception torch
    raised means torch is loaded."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(
        getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc) for t in _OOM_TEXTS)


def is_bug(exc: BaseException) -> bool:
    """An exception that is no problem the user can fix: ours to fix (`describe` says so)."""
    return not (isinstance(exc, (LiifError, KeyboardInterrupt)) or is_out_of_memory(exc))


def describe(exc: BaseException, command: str | None = None) -> tuple[str, int]:
    """The one line a user reads about `exc`, and the exit code it means: the same for every
    command and for a file that fails in `liif batch`.

    A LiifError says itself (its code: 1, or 2 for usage); running out of memory (host or GPU,
    whichever of torch's errors says so) is one line and exit 1, with the advice for `command`
    (`OOM_ADVICE`; by default OUT_OF_MEMORY's, for upscale and batch); Ctrl-C is 130; anything
    else is a bug, named with its type and the first line of its text (1).
    """
    if isinstance(exc, LiifError):
        return str(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", signal_exit_code(getattr(exc, "signum", None))
    if is_out_of_memory(exc):
        advice = OOM_ADVICE.get(command or "")
        return (OUT_OF_MEMORY if advice is None else f"out of memory; {advice}"), EXIT_FAILURE
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{INTERNAL}: {type(exc).__name__}" + (f": {first}" if first else ""), EXIT_FAILURE
