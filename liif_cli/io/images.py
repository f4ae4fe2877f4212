"""Reading and writing real-world image files.

An image is held as `ImageData`: `pixels` (H, W, C) with C = 1 (grey) or 3 (RGB), uint8 or
uint16, plus the optional alpha plane and the metadata worth carrying to the output (ICC
profile, DPI, EXIF, XMP). EXIF orientation is applied on reading, so pixels are always upright,
and the EXIF kept says orientation 1 (its thumbnail, which would show the old image, is dropped).

Pillow decodes and encodes everything except 16-bit colour, which it only handles at 8 bits:
16-bit PNGs are read and written with OpenCV, and the metadata OpenCV cannot write (ICC
profile, DPI, EXIF, XMP) is added to its output as PNG chunks; 16-bit grey+alpha PNGs, which
neither library writes, get a small PNG encoder of our own. 16-bit TIFFs are written (and the
grey+alpha ones Pillow cannot open are read) with tifffile, tags and all.
Files can also come from bytes (`read_image_bytes`) and go to bytes (`encode_image`); stdin
and stdout: `io.stdio`.
Writes go through `files.atomic_write` (a temporary name in the target folder, renamed into
place): a failed or interrupted write never leaves a partial file, and an existing file is only
replaced when asked.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import tempfile
import threading
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, PngImagePlugin, TiffImagePlugin

from liif_cli.errors import (
    ImageReadError,
    ImageWriteError,
    LiifWarning,
    OutputPathError,
    UsageError,
)
from liif_cli.io import files, png, tiff
from liif_cli.io.formats import (  # noqa: F401 - also importable from here, as before
    FORMAT_NAMES,
    FORMATS,
    READABLE_SUFFIXES,
    as_written,
    check_quality,
    format_suffix,
    is_image_name,
)
from liif_cli.io.tiff import (
    TAG_ICC_PROFILE,
    TAG_RESOLUTION_UNIT,
    TAG_X_RESOLUTION,
    TAG_XMP,
    TAG_Y_RESOLUTION,
    TIFF_BYTE,
)

# Decompression-bomb guard: refuse inputs above this many pixels unless the caller lifts it.
DEFAULT_MAX_INPUT_PIXELS = 200_000_000  # ~ 14142 × 14142

EXIF_ORIENTATION = 0x0112
EXIF_IFD = 0x8769  # pointer to the Exif sub-IFD
EXIF_PIXEL_X, EXIF_PIXEL_Y = 0xA002, 0xA003  # PixelXDimension, PixelYDimension (Exif IFD)
EXIF_X_RESOLUTION, EXIF_Y_RESOLUTION = 0x011A, 0x011B
EXIF_WRITTEN = ("PNG", "JPEG", "WEBP")  # formats we write EXIF to (TIFF: its own tags; BMP: none)
XMP_WRITTEN = ("PNG", "JPEG", "WEBP", "TIFF")
XMP_ORIENTATION = re.compile(rb'(tiff:Orientation\s*=\s*["\']|<tiff:Orientation>)\s*[2-8]')
CONVERTED_TO_RGB = ("CMYK", "YCbCr", "LAB", "HSV")  # Pillow modes we convert to RGB on reading
METRES_PER_INCH = 0.0254  # PNG pHYs stores pixels per metre


@dataclass
class ImageData:
    pixels: np.ndarray  # (H, W, C), C in {1, 3}, uint8 or uint16
    alpha: np.ndarray | None = None  # (H, W), same dtype as pixels
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None  # (x, y) dots per inch
    exif: bytes | None = None  # "Exif\0\0" + TIFF block, orientation 1, no thumbnail
    xmp: bytes | None = None  # the XMP packet (UTF-8 XML)

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]

    def kind(self, suffix: str | None = None) -> str:
        """"RGB 8-bit", "grey+alpha 16-bit", ...: this image, or what a `suffix` file of it
        holds (`formats.as_written`: no alpha in JPEG, 8 bits in WebP, ...)."""
        shape = (self.channels, self.alpha is not None, self.bit_depth)
        channels, alpha, bits = shape if suffix is None else as_written(suffix, *shape)
        return f"{ {1: 'grey', 3: 'RGB'}[channels]}{'+alpha' if alpha else ''} {bits}-bit"

    def describe(self) -> str:
        return f"{self.width}×{self.height} {self.kind()}"


def pixel_count(n: int) -> str:
    """12_345_678 -> "12.3 MP"; 3000 -> "3,000 pixels" (for messages)."""
    if n >= 10**18:  # a scale of 1e300 asks for more than a float holds
        return "over 10¹² MP"
    return f"{n / 1e6:,.1f} MP" if n >= 100_000 else f"{n:,} pixels"


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_INPUT_PIXELS
               ) -> ImageData:
    """Decode an image file into ImageData, with one-line errors for every bad input.

    `max_pixels` guards against decompression bombs: the size is checked from the header,
    before any pixel is decoded (it replaces Pillow's own, fixed, bomb limit).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"input not found: {path}")
    if path.is_dir():
        raise ImageReadError(f"input is a folder, not an image: {path} (use `liif batch`)")
    if stat.S_ISFIFO(path.stat().st_mode):  # `<(curl …)` is /dev/fd/63: no size, no seeking
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise ImageReadError(f"cannot read {path}: {e.strerror or e}") from None
        if not blob:
            raise ImageReadError(f"input is empty (0 bytes): {path}")
        return _decode(blob, str(path), max_pixels)
    if path.stat().st_size == 0:
        raise ImageReadError(f"input is empty (0 bytes): {path}")
    return _decode(path, str(path), max_pixels)


def read_image_bytes(blob: bytes, *, name: str = "image data",
                     max_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> ImageData:
    """`read_image` for an encoded file held in memory (`name` is for messages)."""
    if not blob:
        raise ImageReadError(f"{name} is empty (0 bytes)")
    return _decode(bytes(blob), name, max_pixels)


def _too_big(name: str, w: int, h: int, max_pixels: int) -> ImageReadError:
    return ImageReadError(
        f"{name} is {w}×{h} = {pixel_count(w * h)}, over the {pixel_count(max_pixels)} "
        "safety limit against decompression bombs; raise it with --max-input-pixels "
        "if you trust this file")


_decoding = threading.local()


def decoding() -> str | None:
    """The name of the image this thread is decoding now, or None: what a warning raised inside
    a decoder (Pillow's "Corrupt EXIF data") is about, for the CLI's note line (`liif batch`
    decodes on several threads)."""
    return getattr(_decoding, "name", None)


def _decode(src: Path | bytes, name: str, max_pixels: int) -> ImageData:
    """Decode a file (Path) or an encoded file's bytes; `name` is what messages call it."""
    before, _decoding.name = decoding(), name
    try:
        return _decode_named(src, name, max_pixels)
    finally:
        _decoding.name = before


def _decode_named(src: Path | bytes, name: str, max_pixels: int) -> ImageData:
    try:
        with _pil_bomb_limit(None), Image.open(io.BytesIO(src) if isinstance(src, bytes)
                                               else src) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise _too_big(name, w, h, max_pixels)
            rawmode = _rawmode(im)  # before load(), which clears the tile list
            frames = getattr(im, "n_frames", 1) if getattr(im, "is_animated", False) else 1
            im.load()  # decodes everything: truncated or corrupt data fails here
            data = _from_pil(src, name, im, rawmode)
    except ImageReadError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for broken files
        msg = _first_line(e)
        if "cannot identify image file" in msg:
            if _head(src)[:4] in (b"II*\x00", b"MM\x00*"):  # a TIFF Pillow has no mode for
                return _read_tiff(src, name, max_pixels)
            msg = "not an image file, or a format Pillow cannot read"
        raise ImageReadError(f"cannot read {name}: {msg}") from None
    if frames > 1:  # an animated GIF, PNG or WebP (a multi-page TIFF): the first only
        video = " (`liif video` upscales every frame)" if im.format != "TIFF" else ""
        warnings.warn(f"{name} has {frames} frames: only the first is upscaled{video}",
                      LiifWarning, stacklevel=4)
    return data


def _first_line(e: Exception) -> str:
    """A decoder's error as one line (MemoryError is re-raised: it is not the file's fault)."""
    if isinstance(e, MemoryError):
        raise e
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _head(src: Path | bytes) -> bytes:
    if isinstance(src, bytes):
        return src[:8]
    with open(src, "rb") as f:
        return f.read(8)


def _read_tiff(src: Path | bytes, name: str, max_pixels: int) -> ImageData:
    """TIFFs Pillow cannot open (16-bit grey+alpha, as we write them), read with tifffile."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(src) if isinstance(src, bytes) else src) as tif:
            page = tif.pages.first
            h, w = page.imagelength, page.imagewidth
            if w * h > max_pixels:
                raise _too_big(name, w, h, max_pixels)
            arr = page.asarray()
            tags = page.tags
            icc = tags[TAG_ICC_PROFILE].value if TAG_ICC_PROFILE in tags else None
            xmp = tags[TAG_XMP].value if TAG_XMP in tags else None
            dpi = None
            if TAG_X_RESOLUTION in tags and TAG_Y_RESOLUTION in tags:
                unit = tags[TAG_RESOLUTION_UNIT].value if TAG_RESOLUTION_UNIT in tags else 2
                per_inch = {2: 1.0, 3: 2.54}.get(int(unit))
                if per_inch:
                    xr, yr = (tags[t].value for t in (TAG_X_RESOLUTION, TAG_Y_RESOLUTION))
                    dpi = (xr[0] / xr[1] * per_inch, yr[0] / yr[1] * per_inch)
    except ImageReadError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises many types for broken files
        raise ImageReadError(f"cannot read {name}: {_first_line(e)}") from None
    if arr.dtype.kind == "f":
        arr = tiff.float_samples(arr, name)
    if arr.ndim not in (2, 3) or arr.dtype not in (np.uint8, np.uint16) or (
            arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        raise ImageReadError(f"cannot read {name}: unsupported TIFF layout {arr.shape} "
                             f"{arr.dtype}")
    data = _from_array(arr, bgr=False)
    return replace(data, icc_profile=bytes(icc) if icc else None, xmp=bytes(xmp) if xmp else None,
                   dpi=dpi if dpi and min(dpi) > 0 else None)


_bomb_lock = threading.Lock()
_bomb_state = {"users": 0, "saved": None}


@contextmanager
def _pil_bomb_limit(limit: int | None) -> Iterator[None]:
    """Turn Pillow's global decompression-bomb check off while we decode (we check first).

    Reference-counted under a lock: batch decodes in several threads at once, and a plain
    save/restore per thread could leave Pillow's global off for good.
    """
    with _bomb_lock:
        if _bomb_state["users"] == 0:
            _bomb_state["saved"] = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = limit
        _bomb_state["users"] += 1
    try:
        yield
    finally:
        with _bomb_lock:
            _bomb_state["users"] -= 1
            if _bomb_state["users"] == 0:
                Image.MAX_IMAGE_PIXELS = _bomb_state["saved"]


def _rawmode(im: Image.Image) -> str:
    """How the file stores its samples, e.g. 'RGB;16B' (from the not yet decoded tiles)."""
    for tile in im.tile or []:
        args = tile[3]
        raw = args if isinstance(args, str) else (args[0] if args else "")
        if isinstance(raw, str) and raw:
            return raw
    return ""


def _from_pil(src: Path | bytes, name: str, im: Image.Image, rawmode: str) -> ImageData:
    icc = im.info.get("icc_profile") or None
    dpi = im.info.get("dpi")
    dpi = (float(dpi[0]), float(dpi[1])) if dpi and min(dpi) > 0 else None
    try:
        orientation = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - unreadable EXIF: take the pixels as they are
        orientation = 1
    if im.mode in CONVERTED_TO_RGB:
        icc = None  # that profile describes the old colour space, not the RGB we make

    if im.format in ("PNG", "TIFF") and ";16" in rawmode and im.mode in ("RGB", "RGBA"):
        # 16-bit colour or grey+alpha, which Pillow has just decoded to 8 bits (and so
        # checked): take the full 16 bits from OpenCV
        arr = _read_16bit_cv2(src, name)
        if rawmode.startswith("LA") and arr.ndim == 3 and arr.shape[2] == 4:
            data = _from_array(arr[:, :, [0, 3]], bgr=False)  # OpenCV made it grey BGRA
        else:
            data = _from_array(arr, bgr=True)
    else:
        data = _from_array(_pil_to_array(im, name), bgr=False)
    if orientation != 1:
        data = _apply_orientation(data, orientation)
    return replace(data, icc_profile=icc, dpi=dpi, exif=_kept_exif(im),
                   xmp=_kept_xmp(im, reset_orientation=orientation != 1))


def _kept_exif(im: Image.Image) -> bytes | None:
    """The file's EXIF block (JPEG, PNG, WebP) as we keep it: orientation 1, no thumbnail.

    Pillow's `Exif.tobytes` writes IFD0 with its Exif, GPS and Interop sub-IFDs and never
    IFD1, where the thumbnail lives. Unparseable EXIF is dropped rather than copied blindly.
    """
    raw = im.info.get("exif")
    if not raw or not isinstance(raw, bytes):
        return None
    try:
        exif = Image.Exif()
        exif.load(raw)
        if EXIF_ORIENTATION in exif:
            exif[EXIF_ORIENTATION] = 1  # the pixels are upright now
        return exif.tobytes() if len(exif) else None
    except Exception:  # noqa: BLE001 - broken EXIF: the image is still good
        return None


def _kept_xmp(im: Image.Image, *, reset_orientation: bool) -> bytes | None:
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if not xmp:
        return None
    xmp = xmp.encode("utf-8") if isinstance(xmp, str) else bytes(xmp)
    if reset_orientation:
        xmp = XMP_ORIENTATION.sub(rb"\g<1>1", xmp)
    return xmp


def _exif_for_output(data: ImageData) -> bytes | None:
    """The kept EXIF with its pixel size and resolution tags (if it has them) made true."""
    if not data.exif:
        return None
    try:
        exif = Image.Exif()
        exif.load(data.exif)
        sub = exif.get_ifd(EXIF_IFD)
        dpi = data.dpi
        if dpi is None and EXIF_X_RESOLUTION in exif and EXIF_Y_RESOLUTION in exif and all(
                float(sub.get(t) or 0) > 0 for t in (EXIF_PIXEL_X, EXIF_PIXEL_Y)):
            # no DPI outside the EXIF (WebP): its resolution scaled as its pixel size was
            dpi = (float(exif[EXIF_X_RESOLUTION]) * data.width / float(sub[EXIF_PIXEL_X]),
                   float(exif[EXIF_Y_RESOLUTION]) * data.height / float(sub[EXIF_PIXEL_Y]))
        if EXIF_PIXEL_X in sub or EXIF_PIXEL_Y in sub:
            sub[EXIF_PIXEL_X], sub[EXIF_PIXEL_Y] = data.width, data.height
        if dpi and EXIF_X_RESOLUTION in exif:
            exif[EXIF_X_RESOLUTION], exif[EXIF_Y_RESOLUTION] = (round(d, 3) for d in dpi)
        return exif.tobytes()
    except Exception:  # noqa: BLE001 - keep the image, drop what we cannot rewrite
        return None


def _read_16bit_cv2(src: Path | bytes, name: str) -> np.ndarray:
    import cv2

    flags = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
    if isinstance(src, bytes):
        arr = cv2.imdecode(np.frombuffer(src, np.uint8), flags)
    else:
        arr = cv2.imread(str(src), flags)
    if arr is None or arr.dtype != np.uint16:
        raise ImageReadError(f"cannot read {name}: OpenCV could not decode this 16-bit file")
    return arr


def _pil_to_array(im: Image.Image, name: str) -> np.ndarray:
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode in CONVERTED_TO_RGB:
        im = im.convert("RGB")
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16)
    elif mode == "I":
        return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
    elif mode == "F":  # 32-bit float grey, as `_read_tiff` reads float colour: 0 to 1
        return tiff.float_samples(np.asarray(im), name)
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    return np.asarray(im)


def _from_array(arr: np.ndarray, *, bgr: bool) -> ImageData:
    """(H, W), (H, W, 1|2|3|4) array -> ImageData (alpha split off)."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    c = arr.shape[2]
    alpha = None
    if c in (2, 4):
        alpha = np.ascontiguousarray(arr[:, :, -1])
        arr = arr[:, :, :-1]
    if bgr and arr.shape[2] == 3:
        arr = arr[:, :, ::-1]
    if arr.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"unsupported sample type {arr.dtype}")
    return ImageData(np.ascontiguousarray(arr), alpha)


def _apply_orientation(data: ImageData, orientation: int) -> ImageData:
    """Rotate/flip pixels (and alpha) so the image is upright, per the EXIF orientation tag."""
    def fix(a: np.ndarray) -> np.ndarray:
        ops = {2: lambda x: x[:, ::-1], 3: lambda x: x[::-1, ::-1], 4: lambda x: x[::-1],
               5: lambda x: np.swapaxes(x, 0, 1),
               6: lambda x: np.swapaxes(x, 0, 1)[:, ::-1],
               7: lambda x: np.swapaxes(x, 0, 1)[::-1, ::-1],
               8: lambda x: np.swapaxes(x, 0, 1)[::-1]}
        return np.ascontiguousarray(ops[orientation](a)) if orientation in ops else a

    return replace(data, pixels=fix(data.pixels),
                   alpha=None if data.alpha is None else fix(data.alpha))


# ----------------------------------------------------------------------------------------------
# writing

def check_output_path(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Fail early (before any compute) on an output that cannot or must not be written: an
    extension we cannot write, then the checks every output gets (`files.check_output_path`)."""
    path = Path(path)
    if path.is_dir():  # `-o big/`: said as such, not as a missing extension
        return files.check_output_path(path, overwrite=overwrite)
    if path.suffix.lower() not in FORMATS:
        raise OutputPathError(f"unknown output format {path.suffix or '(no extension)'!r} for "
                               f"{path}; use one of {', '.join(sorted(FORMATS))}")
    return files.check_output_path(path, overwrite=overwrite)


def to_8bit(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # rounded


def write_image(path: str | os.PathLike, data: ImageData, *, quality: int = 95,
                overwrite: bool = False) -> Path:
    """Encode `data` by the extension of `path`, atomically. Returns the path written.

    Formats without 16 bits get 8 (rounded); formats without alpha drop it (JPEG, BMP);
    WebP stores grey as RGB and has no DPI. EXIF goes to PNG, JPEG and WebP, XMP to those and
    TIFF (see `EXIF_WRITTEN`, `XMP_WRITTEN`).
    """
    check_quality(quality)
    path = check_output_path(path, overwrite=overwrite)
    try:
        files.atomic_write(path, lambda tmp: _encode_to(tmp, path.suffix.lower(), data, quality),
                           overwrite=overwrite)
    except (ImageWriteError, MemoryError):  # OutputExistsError, OutputWriteError among them
        raise
    except Exception as e:  # noqa: BLE001 - encoders raise many types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ImageWriteError(f"cannot write {path}: {msg}") from None
    return path


def output_suffix(fmt: str) -> str:
    """--format name (png, jpg, jpeg, webp, tif, tiff, bmp; any case, dot optional) -> the
    suffix it writes (`formats.format_suffix`: jpeg -> .jpg, tif -> .tiff)."""
    suffix = format_suffix(fmt)
    if suffix is None:
        raise UsageError(f"unknown --format {fmt!r}: use {FORMAT_NAMES}")
    return suffix


def encode_image(data: ImageData, fmt: str = "png", *, quality: int = 95) -> bytes:
    """`data` encoded as a whole file of format `fmt` (as for `--format`), in memory."""
    check_quality(quality)
    suffix = output_suffix(fmt)
    with tempfile.TemporaryDirectory(prefix="liif-") as folder:
        tmp = os.path.join(folder, "image" + suffix)
        try:
            _encode_to(tmp, suffix, data, quality)
        except (ImageWriteError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - encoders raise many types
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ImageWriteError(f"cannot encode the image as {suffix[1:]}: {msg}") from None
        with open(tmp, "rb") as f:
            return f.read()


def _encode_to(tmp: str, suffix: str, data: ImageData, quality: int) -> None:
    """Write `data` as a `suffix` file to the (temporary) path `tmp`."""
    fmt, allows16, allows_alpha = FORMATS[suffix]
    pixels, alpha = data.pixels, data.alpha if allows_alpha else None
    sixteen = allows16 and pixels.dtype == np.uint16
    if not sixteen:
        pixels = to_8bit(pixels)
        alpha = None if alpha is None else to_8bit(alpha)
    if sixteen:
        _write_16bit(tmp, suffix, pixels, alpha, data)
    else:
        _write_pil(tmp, fmt, pixels, alpha, data, quality)


def _write_pil(tmp: str, fmt: str, pixels: np.ndarray, alpha: np.ndarray | None,
               data: ImageData, quality: int) -> None:
    """8-bit anything, via Pillow."""
    arr = pixels if alpha is None else np.dstack([pixels, alpha])
    im = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if arr.shape[2] == 1 else arr))
    kwargs: dict = {}
    if data.icc_profile and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        kwargs["icc_profile"] = data.icc_profile
    if data.dpi and fmt in ("PNG", "JPEG", "TIFF", "BMP"):
        kwargs["dpi"] = tuple(round(d, 3) for d in data.dpi)
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    exif = _exif_for_output(data) if fmt in EXIF_WRITTEN else None
    if exif:
        kwargs["exif"] = exif
    xmp = data.xmp if fmt in XMP_WRITTEN else None
    if fmt == "TIFF":
        kwargs["compression"] = "tiff_deflate"
        if xmp:
            info = TiffImagePlugin.ImageFileDirectory_v2()
            info[TAG_XMP] = xmp
            info.tagtype[TAG_XMP] = TIFF_BYTE
            kwargs["tiffinfo"] = info
    if fmt == "PNG":
        kwargs["compress_level"] = png.COMPRESS_LEVEL
        kwargs["compress_type"] = png.ZLIB_STRATEGY
        if xmp:
            info = PngImagePlugin.PngInfo()
            info.add_itxt(png.XMP_KEY, xmp.decode("utf-8", "replace"), zip=False)
            kwargs["pnginfo"] = info
    if fmt in ("JPEG", "WEBP") and xmp:
        kwargs["xmp"] = xmp
    # encoded in memory, then written by Python: Pillow's encoders that write to the file's
    # descriptor themselves (JPEG) ignore a short write, so a full disk left a cut-short file
    # that "saved" without an error
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    with open(tmp, "wb") as f:
        f.write(buf.getbuffer())


def _write_16bit(tmp: str, suffix: str, pixels: np.ndarray, alpha: np.ndarray | None,
                 data: ImageData) -> None:
    """16-bit PNG (OpenCV or our encoder, then metadata chunks) or TIFF (tifffile)."""
    if suffix != ".png":
        tiff.write16(tmp, pixels, alpha, icc=data.icc_profile, dpi=data.dpi, xmp=data.xmp)
        return
    arr = pixels if alpha is None else np.dstack([pixels, alpha])
    # 16-bit grey+alpha: our own encoder (OpenCV has none)
    blob = png.encode(arr) if arr.shape[2] == 2 else png.cv2_encode(arr)
    chunks = []
    if data.icc_profile:
        chunks.append(png.chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(data.icc_profile)))
    if data.dpi:
        ppm = [max(1, round(d / METRES_PER_INCH)) for d in data.dpi]
        chunks.append(png.chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1)))
    exif = _exif_for_output(data)
    if exif:
        chunks.append(png.chunk(b"eXIf", exif.removeprefix(b"Exif\x00\x00")))
    if data.xmp:  # iTXt: keyword, NUL, uncompressed, method, no language, no translation
        chunks.append(png.chunk(b"iTXt", png.XMP_KEY.encode() + b"\x00\x00\x00\x00\x00"
                                 + data.xmp))
    with open(tmp, "wb") as f:
        f.write(png.insert_after_ihdr(blob, b"".join(chunks)))
