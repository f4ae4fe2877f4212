"""Devices and precision: which device a task runs on, in which dtype, and what this CPU can do.

Every task (upscale, batch, eval, train, bench) resolves `--device` and `--precision` here, so
`bf16` means one thing everywhere:
- The precision is the dtype of the whole forward pass, encoder and decoder alike; every task
  renders through `runtime.upscaler.Upscaler`, which applies it (training applies it as
  autocast, and validates in it). 16-bit images are computed in fp32 whatever it says.
- `auto` never picks a slow path: fp32 on the CPU (exact), bf16 on GPUs that have it, else fp16.
- `bf16` on a CPU runs through oneDNN's native bf16 kernels where the CPU has them
  (AVX512-BF16 or AMX). A CPU without them (AVX2 only) emulates bf16 and runs 6-7x *slower*
  than fp32, so there an explicit `bf16` falls back to fp32 and says so once, as a
  `PrecisionWarning` (the `liif` command prints it as one `note:` line on stderr).
- `fp16` is for GPUs: on the CPU it is a usage error.
"""

from __future__ import annotations

import functools
import warnings

import torch

from liif_cli.errors import DeviceError, LiifWarning, UsageError
from liif_cli.runtime.options import DEVICE_HINT, check_precision

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionWarning(LiifWarning):
    """A requested precision replaced by a faster one this machine runs natively."""


@functools.cache
def cpu_bf16_native() -> bool:
    """True when oneDNN has native bf16 kernels for this CPU (AVX512-BF16 or AMX).

    Asked once per process. The probe is a private PyTorch op: if it is missing or fails
    (an old or unusual build) the answer is False, so bf16 is never assumed to be fast.
    """
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - op missing in this build: treat as not native
        return False


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; 'cuda:N' and 'mps' are checked to exist."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: {DEVICE_HINT}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name} requested but no CUDA GPU is available "
                              "(this PyTorch build or machine has none); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name} does not exist: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError("device mps requested but Apple MPS is not available here")
    elif dev.type != "cpu":
        raise UsageError(f"unsupported device {name!r}: {DEVICE_HINT}")
    return dev


BF16_FALLBACK_NOTE = ("this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 runs "
                      "6-7x slower than fp32: using fp32")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype a task computes in on `device` for a --precision name (module docstring).

    An explicit 'bf16' on a CPU without native bf16 gives float32 and a `PrecisionWarning`
    (shown once per process by Python's default warning filter).
    """
    check_precision(precision)
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if precision == "fp16" and device.type == "cpu":
        raise UsageError("fp16 is for GPUs; on the CPU use --precision bf16 (fast) or fp32")
    if precision == "bf16" and device.type == "cpu" and not cpu_bf16_native():
        warnings.warn(BF16_FALLBACK_NOTE, PrecisionWarning, stacklevel=2)
        return torch.float32
    return DTYPES[precision]


def precision_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]
