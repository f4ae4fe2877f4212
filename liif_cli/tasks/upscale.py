"""The library's main job: upscale one image to any scale or size.

`upscale(model, image, scale=7.5)`, `size=(W, H)`, `width=` or `height=`. Colour goes through
LIIF; alpha is resized with bicubic; greyscale goes through the model as RGB and comes back
grey; 16-bit images are computed in float32 and written back at 16 bits. Output sizes come from
`runtime.sizing`, devices and precisions from `runtime.device`; the model runs through a
`runtime.upscaler.Upscaler` (the pixel work is `engine.render`).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from liif_cli.errors import LiifWarning, UsageError
from liif_cli.io.formats import FORMATS, as_written, format_name, same_format_suffix
from liif_cli.io.images import (
    DEFAULT_MAX_INPUT_PIXELS,
    EXIF_WRITTEN,
    XMP_WRITTEN,
    ImageData,
    check_output_path,
    check_quality,
    output_suffix,
    read_image,
    write_image,
)
from liif_cli.io.stdio import STDIO, check_stdout, read_stdin, write_stdout
from liif_cli.runtime import engine
from liif_cli.runtime.device import resolve_device, resolve_precision
from liif_cli.runtime.sizing import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    SizeRequest,
    size_request,
    target_size,
)
from liif_cli.runtime.upscaler import (  # noqa: F401 - UpscaleResult, resize_plane: re-exported
    ModelRef,
    Upscaler,
    UpscaleResult,
    check_image_data,
    resize_plane,
)
from liif_cli.runtime.weights import check_denoise_model, load_model

# ----------------------------------------------------------------------------------------------
# output names

def default_output_path(inp: str | os.PathLike, request: SizeRequest,
                        scale_text: str | None = None) -> Path:
    """photo.jpg --scale 7.5 -> photo_x7.5.jpg (as typed, less spaces: "3 x 2.5" ->
    photo_x3x2.5.jpg); --size 1920x1080 -> photo_1920x1080.jpg
    (`--fit contain` or `cover`: photo_1920x1080_contain.jpg, photo_1920x1080_cover.jpg, whose
    sizes differ); --width 800 -> photo_800w.jpg: the input's format, in lower case
    (`same_format_suffix`: .png for one we cannot write)."""
    inp = Path(inp)
    if request.scale is not None:
        sy, sx = request.scale
        typed = "".join(scale_text.split()).lower().replace("×", "x") if scale_text else ""
        tag = "x" + (typed if typed else
                     f"{sx:g}" if sx == sy else f"{sx:g}x{sy:g}")
    elif request.size is not None:
        tag = f"{request.size[0]}x{request.size[1]}"
        tag += "" if request.fit == "fill" else f"_{request.fit}"
    elif request.width is not None and request.height is not None:
        tag = f"{request.width}x{request.height}"
    elif request.width is not None:
        tag = f"{request.width}w"
    else:
        tag = f"{request.height}h"
    return inp.with_name(f"{inp.stem}_{tag}{same_format_suffix(inp).lower()}")


# ----------------------------------------------------------------------------------------------
# the job

def upscale_image(model: ModelRef | Upscaler, image: ImageData, *, out_hw: tuple[int, int],
                  device: str | torch.device | None = "auto", precision: str = "auto",
                  max_memory: int | None = None,
                  on_progress: engine.ProgressFn | None = None) -> UpscaleResult:
    """Upscale ImageData to out_hw = (H, W), keeping mode, bit depth and metadata
    (`Upscaler.upscale_image`). An `Upscaler` as `model` brings its own device, precision and
    memory budget; for many images make one and reuse it, as batch does."""
    up = model if isinstance(model, Upscaler) else Upscaler(
        model, device=device, precision=precision, max_memory=max_memory)
    return up.upscale_image(image, out_hw, on_progress=on_progress)


def _from_array(arr: np.ndarray) -> ImageData:
    """(H, W) grey, (H, W, 1|2|3|4) grey/grey+alpha/RGB/RGBA uint8 or uint16 -> ImageData."""
    if arr.dtype.kind == "u" and arr.dtype.itemsize in (1, 2):  # big-endian '>u2' too
        arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    else:
        raise UsageError(f"image array has dtype {arr.dtype}; give uint8 or uint16 values")
    a = arr[:, :, None] if arr.ndim == 2 else arr
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or min(a.shape[:2]) < 1:
        raise UsageError(f"image array has shape {arr.shape}; expected (H, W) or (H, W, C) "
                         "with C = 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA)")
    colour = 1 if a.shape[2] <= 2 else 3
    alpha = np.ascontiguousarray(a[:, :, -1]) if a.shape[2] in (2, 4) else None
    return ImageData(np.ascontiguousarray(a[:, :, :colour]), alpha)


def upscale(model: ModelRef | Upscaler, image: str | os.PathLike | ImageData | np.ndarray, *,
            scale: float | str | tuple[float, float] | None = None,
            size: tuple[int, int] | str | None = None, width: int | None = None,
            height: int | None = None, fit: str | None = None,
            device: str | torch.device | None = "auto",
            precision: str = "auto", max_memory: int | None = None,
            max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
            on_progress: Callable[[int, int], None] | None = None):
    """Upscale a file, ImageData or uint8/uint16 array by `scale` (4, "3x2.5" or (3, 2.5):
    horizontal first), to `size` (W, H), or to a
    `width` and/or `height` (one alone keeps the aspect ratio). `fit` says how `size` is met:
    "fill" (exactly, the default), "contain" (inside it) or "cover" (covering it).

    Returns the same kind it was given: an array of the same layout for an array ((H, W),
    (H, W, 1|2|3|4)), ImageData (pixels, alpha, ICC profile, DPI) for a path or ImageData.
    `model` may be an `Upscaler`: its device, precision and memory budget then apply.
    """
    if isinstance(image, (str, os.PathLike)):
        data = read_image(Path(image))
    elif isinstance(image, np.ndarray):
        data = _from_array(image)
    elif isinstance(image, ImageData):
        data = check_image_data(image)
    else:
        raise UsageError(f"image is a {type(image).__name__}: give a path, ImageData or a "
                         "uint8/uint16 numpy array (a PIL image: its file's path, or "
                         "np.asarray(im.convert('RGB')))")
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
    kind: str  # what the output file holds, e.g. "RGB+alpha 16-bit"
    model: str
    device: str
    precision: str
    seconds: float  # everything: reading, model loading, upscaling, writing


def note_losses(image: ImageData, suffix: str) -> None:
    """One note (a `LiifWarning`) for each thing a `suffix` file cannot hold of `image`: its
    alpha channel (JPEG, BMP), its 16 bits (JPEG, WebP, BMP), its EXIF (TIFF, BMP), XMP (BMP)
    and DPI (WebP)."""
    name = FORMATS[suffix][0]  # Pillow's: "JPEG", "WEBP"
    shown = "WebP" if name == "WEBP" else name
    _, alpha, bits = as_written(suffix, image.channels, image.alpha is not None, image.bit_depth)
    if image.alpha is not None and not alpha:
        warnings.warn(f"{shown} has no alpha channel: the transparency is dropped (.png, .webp "
                      "or .tif keep it)", LiifWarning, stacklevel=3)
    if bits < image.bit_depth:
        warnings.warn(f"{shown} is 8-bit: the 16-bit image is rounded to 8 bits (.png or .tif "
                      "keep 16)", LiifWarning, stacklevel=3)
    lost = [what for what, present, kept in (
        ("EXIF (camera, date, GPS)", image.exif, name in EXIF_WRITTEN),
        ("XMP", image.xmp, name in XMP_WRITTEN), ("DPI", image.dpi, name != "WEBP"))
        if present and not kept]
    if lost:
        warnings.warn(f"{shown} keeps no {' and no '.join(lost)}: dropped (.png or .jpg keep "
                      "them)", LiifWarning, stacklevel=3)


def upscale_file(input: str | os.PathLike, output: str | os.PathLike | None = None, *,
                 model: ModelRef | Upscaler = None,
                 scale: str | float | tuple[float, float] | None = None,
                 size: str | tuple[int, int] | None = None, width: int | None = None,
                 height: int | None = None, fit: str | None = None, fmt: str | None = None,
                 device: str | torch.device | None = "auto",
                 precision: str = "auto", max_memory: int | None = None,
                 overwrite: bool = False, quality: int = 95,
                 max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
                 max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
                 denoise: float | None = None,
                 on_progress: engine.ProgressFn | None = None) -> FileResult:
    """Read `input`, upscale it, write `output` (default: next to the input, e.g. photo_x4.png).

    `input` "-" reads stdin; `output` "-" writes stdout, as does no output with input "-".
    `fmt` (png, jpg, webp, tiff, bmp) is stdout's format (default png); with a file output it
    must agree with the extension, and with no output it sets the default name's.
    `denoise`: a bundled pair's weights blended at that strength (`weights.load_model`), for a
    `model` given by name (or None).
    Everything that can be checked is checked before the long part, cheapest first: options,
    device, input, output path, model. Nothing is written unless the whole job succeeds.
    """
    t0 = time.perf_counter()
    if not isinstance(input, (str, os.PathLike)):
        raise UsageError(f"input is a {type(input).__name__}: upscale_file reads a file (a path, "
                         "or \"-\" for stdin); `upscale` takes arrays and ImageData")
    request = size_request(scale=scale, size=size, width=width, height=height, fit=fit)
    check_quality(quality)
    suffix = None if fmt is None else output_suffix(fmt)
    up = model if isinstance(model, Upscaler) else None
    check_denoise_model(model, denoise)
    if up is None:  # usage errors before any reading; the model is loaded last
        dev = resolve_device(device)
        dtype = resolve_precision(precision, dev)
    from_stdin = str(input) == STDIO
    to_stdout = str(output) == STDIO if output is not None else from_stdin
    if to_stdout:
        check_stdout()
        dst = Path(STDIO)
    elif output is not None:
        dst = Path(output)
        if suffix is not None and format_name(dst.suffix) != format_name(suffix):
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
    written = (suffix or ".png") if to_stdout else dst.suffix.lower()
    note_losses(image, written)
    if up is None:
        if denoise is not None:
            model = load_model(model, device=dev, denoise=denoise)
        up = Upscaler(model, device=dev, precision=dtype, max_memory=max_memory)
    res = up.upscale_image(image, out_hw, on_progress=on_progress)
    if to_stdout:
        write_stdout(res.image, suffix or ".png", quality=quality)
    else:
        write_image(dst, res.image, quality=quality, overwrite=overwrite)
    return FileResult(Path(input), dst, res.in_hw, res.out_hw, image.kind(written),
                      up.name or "model", res.device, res.precision, time.perf_counter() - t0)
