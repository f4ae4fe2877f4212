"""Checks of option values that need no torch, so that a mistake is answered at once.

`liif` runs these before it imports torch (`--help`, `--version` and usage errors never do);
the library makes the same checks again where the values are used (`runtime.device`,
`runtime.weights`), with the same messages.
"""

from __future__ import annotations

import math
import numbers
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


MIN_MEMORY = 16 * 2**20  # bytes: below this a working-memory budget cannot hold one chunk


def parse_bytes(text: str | int | None, *, least: int = MIN_MEMORY) -> int | None:
    """A working-memory budget (`--max-memory`, `max_memory=`): '512M' -> 536870912, a plain
    number (or an int) is bytes, 'auto' or None -> None (the device's default,
    `runtime.device.memory_budget`); at least `least` bytes (16 MiB from the command line;
    the library takes smaller budgets, which tests use to force many tiles)."""
    if text is None or isinstance(text, str) and text.strip().lower() == "auto":
        return None
    if isinstance(text, str):
        t = text.strip().upper().removesuffix("B").removesuffix("I")
        mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
        try:
            n = float(t[:-1] if t[-1:] in "KMGT" else t) * mult
        except ValueError:
            raise UsageError(f"bad memory size {text!r}: use e.g. 512M or 2G") from None
    elif isinstance(text, numbers.Real) and not isinstance(text, bool):
        n = float(text)
    else:
        raise UsageError(f"bad memory size {text!r}: give bytes (an int), a text such as "
                         "'512M' or '2G', or None for the device's default")
    if math.isnan(n) or math.isinf(n):
        raise UsageError(f"bad memory size {text!r}: use e.g. 512M or 2G")
    if n < least:
        raise UsageError(f"--max-memory {text} is too small; give at least 16M"
                         if least == MIN_MEMORY else
                         f"max_memory {text!r} is too small; give at least {least} bytes")
    return int(n)
