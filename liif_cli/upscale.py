"""The library's main job: upscale one image to any scale or size.

`upscale(model, image, scale=7.5)` or `size=(W, H)`. Colour goes through LIIF; alpha is resized
with bicubic; greyscale goes through the model as RGB and comes back grey; 16-bit images are
computed in float32 and written back at 16 bits. Devices and precisions are resolved here, the
pixel work is `engine.render`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import engine
from .errors import DeviceError, UsageError
from .imageio import ImageData, read_image
from .model import LIIF
from .weights import LoadedModel, load_model

DEFAULT_MAX_OUTPUT_PIXELS = 1_000_000_000  # 1 gigapixel: ~3 GB of RGB output buffer
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------------------
# sizes

def _finite_positive(x: float, what: str) -> float:
    if not math.isfinite(x) or x <= 0:
        raise UsageError(f"{what} must be a positive finite number, got {x}")
    return x


def parse_scale(text: str | float) -> tuple[float, float]:
    """'7.5' -> (7.5, 7.5); '3x2.5' -> horizontal 3, vertical 2.5 -> returns (sy, sx)."""
    if isinstance(text, (int, float)):
        s = _finite_positive(float(text), "scale")
        return s, s
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"bad scale {text!r}: use a number (4, 7.5) or WxH factors (3x2.5)"
                         ) from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2:
        raise UsageError(f"bad scale {text!r}: use a number (4, 7.5) or WxH factors (3x2.5)")
    sx, sy = (_finite_positive(v, "scale") for v in vals)
    return sy, sx


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' -> (1920, 1080) as (W, H)."""
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"bad size {text!r}: use WIDTHxHEIGHT in pixels, e.g. 1920x1080"
                         ) from None
    if w <= 0 or h <= 0:
        raise UsageError(f"bad size {text!r}: width and height must be at least 1")
    return w, h


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def target_size(in_hw: tuple[int, int], *, scale: str | float | tuple[float, float] | None = None,
                size: str | tuple[int, int] | None = None, width: int | None = None,
                height: int | None = None,
                max_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS) -> tuple[int, int]:
    """Output (H, W) from exactly one of scale, size (W, H), width or height (aspect kept)."""
    given = [n for n, v in (("--scale", scale), ("--size", size), ("--width", width),
                            ("--height", height)) if v is not None]
    if len(given) != 1:
        if not given:
            raise UsageError("say how big: --scale S, --size WxH, --width W or --height H")
        if set(given) != {"--width", "--height"}:
            raise UsageError(f"give only one of {', '.join(given)}")
    h, w = in_hw
    if scale is not None:
        sy, sx = scale if isinstance(scale, tuple) else parse_scale(scale)
        out = (_round_half_up(h * sy), _round_half_up(w * sx))
    elif size is not None:
        ow, oh = size if isinstance(size, tuple) else parse_size(size)
        out = (oh, ow)
    else:
        for v, n in ((width, "width"), (height, "height")):
            if v is not None and v <= 0:
                raise UsageError(f"--{n} must be at least 1, got {v}")
        if width is not None and height is not None:
            out = (height, width)
        elif width is not None:
            out = (_round_half_up(h * width / w), width)
        else:
            out = (height, _round_half_up(w * height / h))
    if min(out) < 1:
        raise UsageError(f"output would be {out[1]}×{out[0]}: choose a larger scale")
    if out[0] * out[1] > max_pixels:
        raise UsageError(f"output {out[1]}×{out[0]} is {out[0] * out[1] / 1e6:.0f} MP, over the "
                         f"{max_pixels / 1e6:.0f} MP limit; lift it with --max-output-pixels")
    return out


# ----------------------------------------------------------------------------------------------
# devices and precision

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
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
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
        raise DeviceError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """'auto' is fp32 on CPU (exact), bf16 on GPUs that have it, else fp16."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if precision == "fp16" and device.type == "cpu":
        raise UsageError("fp16 is for GPUs; on the CPU use --precision bf16 (fast) or fp32")
    return DTYPES[precision]


def precision_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


# ----------------------------------------------------------------------------------------------
# the job

@dataclass
class UpscaleResult:
    image: ImageData
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    device: str
    precision: str
    seconds: float


def _as_model(model: LoadedModel | LIIF | str | os.PathLike | None) -> LIIF:
    if isinstance(model, LIIF):
        return model
    if isinstance(model, LoadedModel):
        return model.model
    return load_model(model).model


def upscale_image(model: LoadedModel | LIIF | str | os.PathLike | None, image: ImageData, *,
                  out_hw: tuple[int, int], device: str | torch.device | None = "auto",
                  precision: str = "auto", max_memory: int = engine.DEFAULT_MAX_MEMORY,
                  on_progress: engine.ProgressFn | None = None) -> UpscaleResult:
    """Upscale ImageData to out_hw = (H, W), keeping mode, bit depth and metadata."""
    t0 = time.perf_counter()
    net = _as_model(model)
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    if image.bit_depth == 16:
        dtype = torch.float32  # 16-bit in, 16-bit out: computed at full precision
    net = net.to(dev).eval()
    maxval = 65535.0 if image.bit_depth == 16 else 255.0
    H, W = out_hw
    pixels = torch.from_numpy(image.pixels.astype(np.float32)).to(dev)  # (h, w, C)
    rgb = pixels.permute(2, 0, 1) / maxval  # (C, h, w) in [0, 1]
    grey = rgb.shape[0] == 1
    if grey:
        rgb = rgb.expand(3, -1, -1)
    out_rgb = np.empty((H, W, 3), dtype=image.pixels.dtype)
    enc_dtype = dtype if dev.type != "cpu" else torch.float32
    with torch.inference_mode():
        engine.render(net, rgb, (H, W), out_rgb, max_memory=max_memory, dtype=dtype,
                      encoder_dtype=enc_dtype, on_progress=on_progress)
    if grey:  # the model sees grey as R = G = B; average its three answers back to one
        out_px = np.round(out_rgb.astype(np.float32).mean(axis=2, keepdims=True))
        out_px = out_px.astype(image.pixels.dtype)
    else:
        out_px = out_rgb
    alpha = None if image.alpha is None else resize_plane(image.alpha, (H, W))
    h, w = image.height, image.width
    dpi = None if image.dpi is None else (image.dpi[0] * W / w, image.dpi[1] * H / h)
    result = replace(image, pixels=out_px, alpha=alpha, dpi=dpi)
    return UpscaleResult(result, (h, w), (H, W), str(dev), precision_name(dtype),
                         time.perf_counter() - t0)


def resize_plane(plane: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of one uint8/uint16 plane (alpha), clipped to its range."""
    import cv2

    H, W = out_hw
    up = H >= plane.shape[0] and W >= plane.shape[1]
    interp = cv2.INTER_CUBIC if up else cv2.INTER_AREA
    out = cv2.resize(plane.astype(np.float32), (W, H), interpolation=interp)
    top = 65535 if plane.dtype == np.uint16 else 255
    return np.clip(np.round(out), 0, top).astype(plane.dtype)


def upscale(model: LoadedModel | LIIF | str | os.PathLike | None,
            image: str | os.PathLike | ImageData | np.ndarray, *,
            scale: float | str | tuple[float, float] | None = None,
            size: tuple[int, int] | str | None = None, device: str | None = "auto",
            precision: str = "auto", max_memory: int = engine.DEFAULT_MAX_MEMORY,
            on_progress: Callable[[int, int], None] | None = None):
    """Upscale a file, ImageData or (H, W[, C]) uint8/uint16 array by `scale` or to `size` (W, H).

    Returns the same kind it was given: an array for an array, ImageData otherwise.
    """
    if isinstance(image, (str, os.PathLike)):
        data = read_image(Path(image))
    elif isinstance(image, np.ndarray):
        arr = image if image.ndim == 3 else image[:, :, None]
        data = ImageData(np.ascontiguousarray(arr[:, :, :3] if arr.shape[2] >= 3 else arr[:, :, :1]),
                         arr[:, :, 3].copy() if arr.shape[2] == 4 else None)
    else:
        data = image
    out_hw = target_size((data.height, data.width), scale=scale, size=size)
    res = upscale_image(model, data, out_hw=out_hw, device=device, precision=precision,
                        max_memory=max_memory, on_progress=on_progress)
    if isinstance(image, np.ndarray):
        px = res.image.pixels
        if res.image.alpha is not None:
            px = np.dstack([px, res.image.alpha])
        return px if image.ndim == 3 else px[:, :, 0]
    return res.image
