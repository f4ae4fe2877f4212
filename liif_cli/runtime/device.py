"""Devices and precision: which device a task runs on, in which dtype, and what the hardware can do.

Every task (upscale, batch, eval, train, bench) resolves `--device` and `--precision` here, so
`bf16` means one thing everywhere:
- The precision is the dtype of the whole forward pass, encoder and decoder alike; every task
  renders through `runtime.upscaler.Upscaler`, which applies it (training applies it as
  autocast, and validates in it). 16-bit images are computed in fp32 whatever it says.
- `auto` never picks a slow path: fp32 on the CPU (exact); on a CUDA GPU bf16 where it is native
  (compute capability 8.0 and up: Ampere, Ada, Hopper, Blackwell), else fp16 (Volta, Turing:
  V100, T4, GTX 16); fp16 on Apple MPS. The question is asked of the chosen GPU (`cuda:N`).
- `bf16` runs only where the hardware has it; elsewhere it falls back and says so once, as a
  `PrecisionWarning` (the `liif` command prints it as one `note:` line on stderr):
  on a CPU without native bf16 (AVX2 only: bf16 is emulated, 6-7x *slower* than fp32; AVX-512
  without AVX512-BF16 or AMX, e.g. Skylake-SP to Ice Lake server: about 2x slower) to fp32;
  on a CUDA GPU below capability 8.0 (bf16 emulated, or refused by cuDNN) to fp16; on MPS
  before macOS 14 (no bf16 there) to fp16.
- fp16 and bf16 on Apple MPS run under autocast, which torch 2.3 and 2.4 refuse on MPS (2.5
  takes fp16 only): where this torch has no MPS autocast for the dtype, `auto` is fp32 there,
  and an explicit fp16 or bf16 falls back (fp16, else fp32) with a `PrecisionWarning`
  (`mps_autocast`).
- `fp32` is exact fp32 on every device: on a GPU, TF32 (10-bit mantissa matmuls and
  convolutions, cuDNN's default on Ampere and later) is off (`set_tf32`), so 16-bit images,
  `eval` and `bench`'s exactness line keep their promise. `Upscaler(..., tf32=True)` trades
  that for speed.
- `fp16` is for GPUs: on the CPU it is a usage error.

`auto` as a device: CUDA, then MPS, then the CPU. Under torchrun or Slurm (LOCAL_RANK,
SLURM_LOCALID) each local process takes its own GPU, `cuda:(local rank mod GPUs)`; a process
of a DDP run (`ranks` > 1) always does, and never takes MPS. `LIIF_DEVICE` (when a command's
`--device` is not given) is read by the CLI's options (`runtime.options.DEVICE_ENV`), for every
command alike.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import warnings

import torch

from liif_cli.errors import DeviceError, LiifWarning, UsageError
from liif_cli.runtime.options import DEVICE_HINT, check_precision, parse_bytes
from liif_cli.runtime.process import local_rank

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CUDA_BF16_CAPABILITY = (8, 0)  # Ampere: the first CUDA GPUs with native bf16 tensor cores
MPS_BF16_MACOS = (14, 0)  # Metal has bf16 from macOS 14 (Sonoma)
CPU_MAX_MEMORY = 512 * 2**20  # bytes: the working-memory budget on a CPU (engine's default)
GPU_MEMORY_SHARE = 0.5  # of the GPU's free memory, the budget when none is given
MIN_MAX_MEMORY = 16 * 2**20  # bytes: below this a budget cannot hold one chunk
X86_MACHINES = ("x86_64", "amd64", "i386", "i686", "x86")  # platform.machine(), lowered


class PrecisionWarning(LiifWarning):
    """A requested precision replaced by a faster one this machine runs natively."""


@functools.cache
def cpu_bf16_native() -> bool:
    """True when this CPU computes bf16 natively: AVX512-BF16 or AMX on x86, BF16 on Arm.

    On x86, torch.cpu's probes for those two instruction sets decide. oneDNN's own
    `_is_mkldnn_bf16_supported()` is not enough there: it also says yes on AVX-512 CPUs without
    them (Skylake-SP to Ice Lake server), where bf16 is emulated (measured 2.1x slower than fp32
    for an upscale, 2.3x for a training step, on a 2-core Ice Lake). Elsewhere (Arm) oneDNN's
    probe is the one there is. Asked once per process; the probes are private PyTorch functions,
    so if one is missing or fails (an old or unusual build) the answer is False, and bf16 is never
    assumed to be fast.
    """
    try:
        if platform.machine().lower() in X86_MACHINES:
            return bool(torch.cpu._is_avx512_bf16_supported()
                        or torch.cpu._is_amx_tile_supported())
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - probe missing in this build: treat as not native
        return False


def cuda_bf16_native(device: torch.device) -> bool:
    """True when this CUDA GPU has native bf16 (compute capability 8.0 or more).

    Not `torch.cuda.is_bf16_supported()`: that counts emulation (True on a T4 or V100, where
    bf16 is slow and some cuDNN convolutions refuse it), and asks the current GPU, not `device`.
    """
    return tuple(torch.cuda.get_device_capability(device)) >= CUDA_BF16_CAPABILITY


def mps_bf16_native() -> bool:
    """True on macOS 14 or later, where Metal (and so MPS) has bf16."""
    mps = torch.backends.mps
    try:
        return bool(mps.is_macos_or_newer(*MPS_BF16_MACOS))
    except AttributeError:  # torch before 2.2 has no is_macos_or_newer: assume an old macOS
        return False


@functools.cache
def mps_autocast(dtype: torch.dtype) -> bool:
    """True when this torch runs `torch.autocast("mps", dtype=dtype)`: torch 2.3 and 2.4 raise
    on device type "mps" whatever the arguments; 2.5 takes fp16 and warns that it disables
    itself for bf16. Asked of torch (no version table), once per dtype."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.autocast("mps", dtype=dtype)
        except (RuntimeError, ValueError):
            return False
    return not caught


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(device: str | torch.device | None = "auto", *, ranks: int = 1
                   ) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; 'cuda:N' and 'mps' are checked to exist.

    Under torchrun or srun, 'auto' and 'cuda' give each local process its own GPU:
    cuda:(LOCAL_RANK or SLURM_LOCALID, modulo the GPUs this process sees: one, where each
    rank is given its own by CUDA_VISIBLE_DEVICES, as Slurm often does). `ranks` > 1 (a
    process of a DDP run): any CUDA device is this process's own GPU, and 'auto' is CUDA or
    the CPU (DDP has no MPS backend).
    """
    name = "auto" if device is None else str(device)
    if ranks > 1:
        dev = resolve_device(name)
        if dev.type == "cuda":
            return _cuda_of_this_process()
        return torch.device("cpu") if name == "auto" else dev
    if name == "auto":
        if torch.cuda.is_available():
            return _cuda_of_this_process()
        if _mps_available():
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
        if dev.index is None:
            return _cuda_of_this_process()
        if dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name} does not exist: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not _mps_available():
            raise DeviceError("device mps requested but Apple MPS is not available here")
    elif dev.type != "cpu":
        raise UsageError(f"unsupported device {name!r}: {DEVICE_HINT}")
    return dev


def _cuda_of_this_process() -> torch.device:
    """cuda:(local rank mod GPUs) under torchrun/srun; plain 'cuda' (the current GPU) alone."""
    rank = local_rank()
    if rank is None:
        return torch.device("cuda")
    return torch.device("cuda", rank % max(1, torch.cuda.device_count()))


def use_device(device: torch.device) -> None:
    """Make `device` this thread's current CUDA GPU (nothing for other devices).

    Without it, work that asks for "the current GPU" (pinned-memory threads, caching-allocator
    stats, `torch.cuda.synchronize()`) opens a second context on GPU 0 while we run on cuda:N.
    """
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def current(device: torch.device) -> contextlib.AbstractContextManager:
    """`device` as the current CUDA GPU for a block, the caller's current one restored after
    (the library's `use_device`: an `Upscaler` renders under it and leaves no trace)."""
    if device.type == "cuda" and device.index is not None:
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def set_tf32(device: torch.device, enabled: bool = False) -> None:
    """The TF32 policy, in one place: on a CUDA device, fp32 matmuls and cuDNN convolutions
    use TF32 only when `enabled` (default: off, so fp32 is exact fp32).

    TF32 rounds each product's inputs to a 10-bit mantissa: about 3x faster fp32 on Ampere and
    later, but 16-bit images then lose ~60 levels of 65,535 and fp32 no longer matches the CPU
    within 1e-4. The flags are process-wide and only touch fp32 work (bf16/fp16 renders are
    unaffected), so they are set, not restored: every CUDA `Upscaler` sets them on creation.
    """
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def memory_budget(device: torch.device, max_memory: int | str | None = None, *,
                  sharers: int = 1) -> int:
    """The working-memory budget (bytes) for tiles and chunks on `device`.

    Without `max_memory` (--max-memory): CPU_MAX_MEMORY on a CPU or MPS; on a CUDA GPU
    GPU_MEMORY_SHARE of its free memory now (`torch.cuda.mem_get_info`), so a 24-140 GiB GPU
    renders in a few big chunks. With it: that many bytes, and on a CUDA GPU no more than the
    share of free memory (a cap, not a request: asking for more than the GPU holds would only
    end in an out-of-memory error). `sharers`: renderers working on this GPU at once (`liif
    batch --jobs N` on one GPU, the viewer's tiles beside an export): each gets 1/sharers of
    the share, so together they stay within what `auto` promises (each asks when it starts,
    when the others' memory is already gone from the free memory: the sum only gets smaller).
    """
    max_memory = parse_bytes(max_memory, least=1)  # bytes, or a text such as "2G"; checked
    if device.type != "cuda":
        return CPU_MAX_MEMORY if max_memory is None else max_memory
    free, _total = torch.cuda.mem_get_info(device)
    share = max(MIN_MAX_MEMORY, int(free * GPU_MEMORY_SHARE) // max(1, sharers))
    return share if max_memory is None else min(share, max_memory)


BF16_FALLBACK_NOTE = ("this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 runs "
                      "2-7x slower than fp32: using fp32")
CUDA_BF16_FALLBACK_NOTE = ("this GPU (compute capability {cap}) has no native bf16 (needs 8.0, "
                           "Ampere or later): using fp16")
MPS_BF16_FALLBACK_NOTE = "bf16 on Apple MPS needs macOS 14 or later: using fp16"
MPS_AUTOCAST_NOTE = ("this PyTorch ({version}) has no {name} autocast on Apple MPS (fp16 needs "
                     "torch 2.5 or later): using {fallback}")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype a task computes in on `device` for a --precision name (module docstring).

    An explicit 'bf16' where the hardware has no native bf16 gives the fallback and a
    `PrecisionWarning` (shown once per process by Python's default warning filter).
    """
    check_precision(precision)
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if cuda_bf16_native(device) else torch.float16
        if device.type == "mps":
            return torch.float16 if mps_autocast(torch.float16) else torch.float32
        return torch.float32
    if precision == "fp16" and device.type == "cpu":
        raise UsageError("fp16 is for GPUs; on the CPU use --precision bf16 (fast) or fp32")
    if precision == "bf16":
        if device.type == "cpu" and not cpu_bf16_native():
            warnings.warn(BF16_FALLBACK_NOTE, PrecisionWarning, stacklevel=2)
            return torch.float32
        if device.type == "cuda" and not cuda_bf16_native(device):
            cap = ".".join(map(str, torch.cuda.get_device_capability(device)))
            warnings.warn(CUDA_BF16_FALLBACK_NOTE.format(cap=cap), PrecisionWarning,
                          stacklevel=2)
            return torch.float16
        if device.type == "mps" and not mps_bf16_native():
            warnings.warn(MPS_BF16_FALLBACK_NOTE, PrecisionWarning, stacklevel=2)
            precision = "fp16"
    dtype = DTYPES[precision]
    if device.type == "mps" and dtype != torch.float32 and not mps_autocast(dtype):
        fallback = (torch.float16 if dtype == torch.bfloat16 and mps_autocast(torch.float16)
                    else torch.float32)
        warnings.warn(MPS_AUTOCAST_NOTE.format(version=torch.__version__.split("+")[0],
                                               name=precision, fallback=precision_name(fallback)),
                      PrecisionWarning, stacklevel=2)
        return fallback
    return dtype


def precision_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]
