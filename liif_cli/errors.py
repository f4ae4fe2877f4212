"""Typed errors and the exit-code contract. Library code raises these; `cli/main.py` turns them into
one red line and the error's exit code.

Every message says what went wrong *and* what to do about it, in one line. Exit codes, the same
for every command: 0 done, 1 failure, 2 usage (the command line asks for something impossible,
or to write over an existing output without --overwrite, or names an output that cannot be
written there), 130 interrupted (SIGINT, Ctrl-C), 143 terminated (SIGTERM): 128 + the signal's
number, as shells report them. Outputs are checked before any work (`io.files`), so an
existing output is exit 2 with nothing computed; a write failing afterwards is exit 1.
"""

from __future__ import annotations

import signal

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143


def signal_exit_code(signum: int | None) -> int:
    """The exit code of a task stopped by `signum`: 143 for SIGTERM, else 130 (interrupted)."""
    return EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED


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
    """An output the command line names that cannot be written there: a folder, or in a folder
    that is missing or read-only. Found before any work (`io.files.check_output_path`): a usage
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

    Library code warns with `warnings.warn`; `cli/main.py` prints each as one `note:` line.
    """
