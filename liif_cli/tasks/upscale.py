"""The library's main job: upscale one image to any scale or size.

`upscale(model, image, scale=7.5)`, `size=(W, H)`, `width=` or `height=`. Colour goes through
LIIF; alpha is resized with bicubic; greyscale goes through the model as RGB and comes back
grey; 16-bit images are computed in float32 and written back at 16 bits. Sizes, devices and
output sizes are resolved here (`target_size`), devices and precisions in `device`; the pixel
work is `engine.render`.
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

from liif_cli.errors import UsageError
from liif_cli.io.images import (
    DEFAULT_MAX_INPUT_PIXELS,
    FORMATS,
    STDIO,
    ImageData,
    check_output_path,
    output_suffix,
    pixel_count,
    read_image,
    read_stdin,
    write_image,
    write_stdout,
)
from liif_cli.model import LIIF, SRModel
from liif_cli.runtime import engine

# re-exported: they lived here before liif_cli.device, and other code imports them from here
from liif_cli.runtime.device import (  # noqa: F401
    DTYPES,
    PRECISIONS,
    precision_name,
    resolve_device,
    resolve_precision,
)
from liif_cli.runtime.weights import LoadedModel, load_model

DEFAULT_MAX_OUTPUT_PIXELS = 1_000_000_000  # 1 gigapixel: ~3 GB of RGB output buffer


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


# --fit: how an image meets a --size box, as ImageMagick's -resize WxH, WxH^ and WxH!
FITS = ("contain", "cover", "fill")


def fit_size(in_hw: tuple[int, int], box: tuple[int, int], fit: str = "fill") -> tuple[int, int]:
    """Output (H, W) for an h×w image and a W×H box (`box` is (W, H)).

    contain: the largest size inside the box with the image's aspect (`-resize WxH`);
    cover: the smallest size covering it (`-resize WxH^`); fill: exactly the box (`WxH!`).
    One factor for both sides, each side floor(factor * side + 0.5) and at least 1, as
    ImageMagick's ParseMetaGeometry rounds.
    """
    h, w = in_hw
    bw, bh = box
    if fit == "fill":
        return bh, bw
    if fit not in FITS:
        raise UsageError(f"unknown --fit {fit!r}: use contain, cover or fill")
    if (bw, bh) == (w, h):
        return h, w
    pick = min if fit == "contain" else max
    factor = pick(bw / w, bh / h)
    return max(1, _round_half_up(factor * h)), max(1, _round_half_up(factor * w))


@dataclass(frozen=True)
class SizeRequest:
    """What the user asked for, checked: a scale (sy, sx), an exact size, or a width/height."""

    scale: tuple[float, float] | None = None  # (vertical, horizontal) factors
    size: tuple[int, int] | None = None  # (W, H)
    width: int | None = None
    height: int | None = None
    fit: str = "fill"  # how `size` is met: one of FITS


def size_request(*, scale: str | float | tuple[float, float] | None = None,
                 size: str | tuple[int, int] | None = None, width: int | None = None,
                 height: int | None = None, fit: str | None = None) -> SizeRequest:
    """Check and parse the size options without looking at any image (usage errors only)."""
    if fit is not None and fit not in FITS:
        raise UsageError(f"unknown --fit {fit!r}: use contain, cover or fill")
    if fit is not None and size is None:
        raise UsageError(f"--fit {fit} needs --size WxH: the box to fit the image to")
    given = [n for n, v in (("--scale", scale), ("--size", size), ("--width", width),
                            ("--height", height)) if v is not None]
    if not given:
        raise UsageError("say how big: --scale S, --size WxH, --width W or --height H")
    if len(given) > 1 and set(given) != {"--width", "--height"}:
        raise UsageError(f"give only one of {', '.join(given)}")
    if scale is not None:
        if isinstance(scale, tuple):
            sy, sx = (_finite_positive(float(v), "scale") for v in scale)
        else:
            sy, sx = parse_scale(scale)
        return SizeRequest(scale=(sy, sx))
    if size is not None:
        ow, oh = size if isinstance(size, tuple) else parse_size(size)
        if ow < 1 or oh < 1:
            raise UsageError(f"bad size {ow}x{oh}: width and height must be at least 1")
        return SizeRequest(size=(int(ow), int(oh)), fit=fit or "fill")
    for v, n in ((width, "width"), (height, "height")):
        if v is not None and v < 1:
            raise UsageError(f"--{n} must be at least 1, got {v}")
    return SizeRequest(width=width, height=height)


def target_size(in_hw: tuple[int, int], *, scale: str | float | tuple[float, float] | None = None,
                size: str | tuple[int, int] | None = None, width: int | None = None,
                height: int | None = None, fit: str | None = None,
                max_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
                request: SizeRequest | None = None) -> tuple[int, int]:
    """Output (H, W) from exactly one of scale, size (W, H), width or height (aspect kept).

    Scales give round(h * sy) × round(w * sx), halves rounded up as the official demo does;
    a size is met as `fit` says (`fit_size`).
    """
    req = request or size_request(scale=scale, size=size, width=width, height=height, fit=fit)
    h, w = in_hw
    if req.scale is not None:
        sy, sx = req.scale
        out = (_round_half_up(h * sy), _round_half_up(w * sx))
    elif req.size is not None:
        out = fit_size((h, w), req.size, req.fit)
    elif req.width is not None and req.height is not None:
        out = (req.height, req.width)
    elif req.width is not None:
        out = (_round_half_up(h * req.width / w), req.width)
    else:
        out = (req.height, _round_half_up(w * req.height / h))
    if min(out) < 1:
        raise UsageError(f"output would be {out[1]}×{out[0]} pixels: ask for a larger size")
    if out[0] * out[1] > max_pixels:
        raise UsageError(f"output {out[1]}×{out[0]} is {pixel_count(out[0] * out[1])}, over the "
                         f"{pixel_count(max_pixels)} limit (each MP takes 3 MB of memory); "
                         "lift it with --max-output-pixels")
    return out


def default_output_path(inp: str | os.PathLike, request: SizeRequest,
                        scale_text: str | None = None) -> Path:
    """photo.jpg --scale 7.5 -> photo_x7.5.jpg; --size 1920x1080 -> photo_1920x1080.jpg;
    --width 800 -> photo_800w.jpg. Inputs in a format we cannot write get .png."""
    inp = Path(inp)
    if request.scale is not None:
        sy, sx = request.scale
        tag = "x" + (scale_text.strip().lower().replace("×", "x") if scale_text else
                     f"{sx:g}" if sx == sy else f"{sx:g}x{sy:g}")
    elif request.size is not None:
        tag = f"{request.size[0]}x{request.size[1]}"
    elif request.width is not None and request.height is not None:
        tag = f"{request.width}x{request.height}"
    elif request.width is not None:
        tag = f"{request.width}w"
    else:
        tag = f"{request.height}h"
    suffix = inp.suffix.lower() if inp.suffix.lower() in FORMATS else ".png"
    return inp.with_name(f"{inp.stem}_{tag}{suffix}")


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
    if isinstance(model, SRModel):  # LIIF or LM-LIIF
        return model
    if isinstance(model, LoadedModel):
        return model.model
    return load_model(model).model


def upscale_image(model: LoadedModel | LIIF | str | os.PathLike | None, image: ImageData, *,
                  out_hw: tuple[int, int], device: str | torch.device | None = "auto",
                  precision: str = "auto", max_memory: int = engine.DEFAULT_MAX_MEMORY,
                  on_progress: engine.ProgressFn | None = None) -> UpscaleResult:
    """Upscale ImageData to out_hw = (H, W), keeping mode, bit depth and metadata.

    Greyscale goes through the model as R = G = B and comes back as the mean of its three
    answers; 16-bit images are computed in float32 throughout whatever `precision` says.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    net = _as_model(model)
    if image.bit_depth == 16:
        dtype = torch.float32  # 16-bit in, 16-bit out: computed at full precision
    net = net.to(dev).eval()
    maxval = 65535.0 if image.bit_depth == 16 else 255.0
    H, W = out_hw
    px = image.pixels
    # torch has few uint16 kernels (none on some devices) and warns on read-only arrays
    px = px.astype(np.float32) if px.dtype == np.uint16 else np.array(px, copy=True)
    pixels = torch.from_numpy(px).to(dev)  # (h, w, C)
    rgb = pixels.permute(2, 0, 1).float() / maxval  # (C, h, w) in [0, 1]
    if rgb.shape[0] == 1:
        rgb = rgb.expand(3, -1, -1)
    out_px = np.empty((H, W, image.channels), dtype=image.pixels.dtype)
    with torch.inference_mode():
        engine.render(net, rgb, (H, W), out_px, max_memory=max_memory, dtype=dtype,
                      encoder_dtype=dtype, on_progress=on_progress)
    alpha = None if image.alpha is None else resize_plane(image.alpha, (H, W))
    h, w = image.height, image.width
    dpi = None if image.dpi is None else (image.dpi[0] * W / w, image.dpi[1] * H / h)
    result = replace(image, pixels=out_px, alpha=alpha, dpi=dpi)
    return UpscaleResult(result, (h, w), (H, W), str(dev), precision_name(dtype),
                         time.perf_counter() - t0)


def resize_plane(plane: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of one uint8/uint16 plane (alpha); area averaging where it shrinks."""
    import cv2

    H, W = out_hw
    up = H >= plane.shape[0] and W >= plane.shape[1]
    interp = cv2.INTER_CUBIC if up else cv2.INTER_AREA
    # OpenCV rounds and saturates to the plane's own type: no float copy of a big plane
    return cv2.resize(np.ascontiguousarray(plane), (W, H), interpolation=interp)


def _from_array(arr: np.ndarray) -> ImageData:
    """(H, W) grey, (H, W, 1|2|3|4) grey/grey+alpha/RGB/RGBA uint8 or uint16 -> ImageData."""
    if arr.dtype not in (np.uint8, np.uint16):
        raise UsageError(f"image array has dtype {arr.dtype}; give uint8 or uint16 values")
    a = arr[:, :, None] if arr.ndim == 2 else arr
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or min(a.shape[:2]) < 1:
        raise UsageError(f"image array has shape {arr.shape}; expected (H, W) or (H, W, C) "
                         "with C = 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA)")
    colour = 1 if a.shape[2] <= 2 else 3
    alpha = np.ascontiguousarray(a[:, :, -1]) if a.shape[2] in (2, 4) else None
    return ImageData(np.ascontiguousarray(a[:, :, :colour]), alpha)


def upscale(model: LoadedModel | LIIF | str | os.PathLike | None,
            image: str | os.PathLike | ImageData | np.ndarray, *,
            scale: float | str | tuple[float, float] | None = None,
            size: tuple[int, int] | str | None = None, width: int | None = None,
            height: int | None = None, fit: str | None = None,
            device: str | torch.device | None = "auto",
            precision: str = "auto", max_memory: int = engine.DEFAULT_MAX_MEMORY,
            max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
            on_progress: Callable[[int, int], None] | None = None):
    """Upscale a file, ImageData or uint8/uint16 array by `scale`, to `size` (W, H), or to a
    `width` and/or `height` (one alone keeps the aspect ratio). `fit` says how `size` is met:
    "fill" (exactly, the default), "contain" (inside it) or "cover" (covering it).

    Returns the same kind it was given: an array of the same layout for an array ((H, W),
    (H, W, 1|2|3|4)), ImageData (pixels, alpha, ICC profile, DPI) for a path or ImageData.
    """
    if isinstance(image, (str, os.PathLike)):
        data = read_image(Path(image))
    elif isinstance(image, np.ndarray):
        data = _from_array(image)
    else:
        data = image
    out_hw = target_size((data.height, data.width), scale=scale, size=size, width=width,
                         height=height, fit=fit, max_pixels=max_output_pixels)
    res = upscale_image(model, data, out_hw=out_hw, device=device, precision=precision,
                        max_memory=max_memory, on_progress=on_progress)
    if isinstance(image, np.ndarray):
        px = res.image.pixels
        if res.image.alpha is not None:
            px = np.dstack([px, res.image.alpha])
        return px[:, :, 0] if image.ndim == 2 else px
    return res.image


# ----------------------------------------------------------------------------------------------
# files

@dataclass
class FileResult:
    """What `upscale_file` did, for the one-line summary."""

    input: Path
    output: Path
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    kind: str  # e.g. "RGB+alpha 16-bit"
    model: str
    device: str
    precision: str
    seconds: float  # everything: reading, model loading, upscaling, writing


def upscale_file(input: str | os.PathLike, output: str | os.PathLike | None = None, *,
                 model: LoadedModel | LIIF | str | os.PathLike | None = None,
                 scale: str | float | tuple[float, float] | None = None,
                 size: str | tuple[int, int] | None = None, width: int | None = None,
                 height: int | None = None, fit: str | None = None, fmt: str | None = None,
                 device: str | torch.device | None = "auto",
                 precision: str = "auto", max_memory: int = engine.DEFAULT_MAX_MEMORY,
                 overwrite: bool = False, quality: int = 95,
                 max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
                 max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
                 on_progress: engine.ProgressFn | None = None) -> FileResult:
    """Read `input`, upscale it, write `output` (default: next to the input, e.g. photo_x4.png).

    `input` "-" reads stdin; `output` "-" writes stdout, as does no output with input "-".
    `fmt` (png, jpg, webp, tiff, bmp) is stdout's format (default png); with a file output it
    must agree with the extension, and with no output it sets the default name's.
    Everything that can be checked is checked before the long part, cheapest first: options,
    device, input, output path, model. Nothing is written unless the whole job succeeds.
    """
    t0 = time.perf_counter()
    request = size_request(scale=scale, size=size, width=width, height=height, fit=fit)
    suffix = None if fmt is None else output_suffix(fmt)
    dev = resolve_device(device)
    resolve_precision(precision, dev)
    from_stdin = str(input) == STDIO
    to_stdout = str(output) == STDIO if output is not None else from_stdin
    if to_stdout:
        dst = Path(STDIO)
    elif output is not None:
        dst = Path(output)
        if suffix is not None and dst.suffix.lower() != suffix and not (
                {dst.suffix.lower(), suffix} <= {".jpg", ".jpeg"} or
                {dst.suffix.lower(), suffix} <= {".tif", ".tiff"}):
            raise UsageError(f"--format {fmt} disagrees with the output's extension {dst}; "
                             "drop one of them")
    else:
        scale_text = scale if isinstance(scale, str) else None
        dst = default_output_path(input, request, scale_text)
        if suffix is not None:
            dst = dst.with_suffix(suffix)
    image = (read_stdin(max_pixels=max_input_pixels) if from_stdin else
             read_image(input, max_pixels=max_input_pixels))
    out_hw = target_size((image.height, image.width), request=request,
                         max_pixels=max_output_pixels)
    if not to_stdout:
        check_output_path(dst, overwrite=overwrite)
    loaded = model if isinstance(model, LoadedModel | SRModel) else load_model(model)
    name = loaded.name if isinstance(loaded, LoadedModel) else "model"
    res = upscale_image(loaded, image, out_hw=out_hw, device=dev, precision=precision,
                        max_memory=max_memory, on_progress=on_progress)
    if to_stdout:
        write_stdout(res.image, suffix or ".png", quality=quality)
    else:
        write_image(dst, res.image, quality=quality, overwrite=overwrite)
    kind = image.describe().split(" ", 1)[1]  # "RGB 8-bit", "grey+alpha 16-bit"
    return FileResult(Path(input), dst, res.in_hw, res.out_hw, kind, name, res.device,
                      res.precision, time.perf_counter() - t0)
