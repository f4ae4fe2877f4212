"""Checks of option values that need no torch, so that a mistake is answered at once.

`liif` runs these before it imports torch (`--help`, `--version` and usage errors never do);
the library makes the same checks again where the values are used (`runtime.device`,
`runtime.weights`), with the same messages.
"""

from __future__ import annotations

import math
import re

from liif_cli.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_HINT = "use auto, cpu, cuda, cuda:N or mps"
# sets --device of every command that has one (upscale, batch, eval, view, train, bench), as
# the CLI's options declare it; what `auto` then means is `runtime.device.resolve_device`'s
DEVICE_ENV = "LIIF_DEVICE"
_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


def check_precision(name: str) -> str:
    if name not in PRECISIONS:
        raise UsageError(f"unknown precision {name!r}: use {', '.join(PRECISIONS)}")
    return name


def check_device(name: str | None) -> str:
    """A device name's spelling (whether it exists is `runtime.device.resolve_device`'s)."""
    name = "auto" if name is None else str(name)
    if not _DEVICE.fullmatch(name):
        raise UsageError(f"unknown device {name!r}: {DEVICE_HINT}")
    return name


def check_denoise(strength: float) -> float:
    if not (isinstance(strength, (int, float)) and math.isfinite(strength)
            and 0 <= strength <= 1):
        raise UsageError(f"--denoise must be between 0 and 1, not {strength}")
    return strength
