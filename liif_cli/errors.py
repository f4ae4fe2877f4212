"""Typed errors. Library code raises these; `cli.py` turns them into one red line and an exit code.

Every message says what went wrong *and* what to do about it, in one line.
"""

from __future__ import annotations


class LiifError(Exception):
    """Base class: a problem the user can fix. Exit code 1 unless a subclass says otherwise."""

    exit_code = 1


class UsageError(LiifError):
    """The command line asks for something impossible (bad scale, conflicting options). Exit 2."""

    exit_code = 2


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


class LiifWarning(UserWarning):
    """Something the user should know that does not stop the task (e.g. a precision fallback).

    Library code warns with `warnings.warn`; `cli.py` prints each as one `note:` line.
    """
