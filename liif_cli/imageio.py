"""Reading and writing real-world image files.

An image is held as `ImageData`: `pixels` (H, W, C) with C = 1 (grey) or 3 (RGB), uint8 or
uint16, plus the optional alpha plane and the metadata worth carrying to the output (ICC
profile, DPI). EXIF orientation is applied on reading, so pixels are always upright.
Writes go to a temporary name in the target folder and are renamed into place: a failed or
interrupted write never leaves a partial file, and an existing file is only replaced when asked.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ImageReadError, ImageWriteError

# Decompression-bomb guard: refuse inputs above this many pixels unless the caller lifts it.
DEFAULT_MAX_INPUT_PIXELS = 200_000_000  # ~ 14142 × 14142

FORMATS = {  # output extension -> (PIL format name, supports 16-bit, supports alpha)
    ".png": ("PNG", True, True),
    ".jpg": ("JPEG", False, False),
    ".jpeg": ("JPEG", False, False),
    ".webp": ("WEBP", False, True),
    ".tif": ("TIFF", True, True),
    ".tiff": ("TIFF", True, True),
    ".bmp": ("BMP", False, True),
}
READABLE_SUFFIXES = frozenset(FORMATS) | {".gif", ".ppm", ".pgm", ".pnm", ".tga", ".jp2"}
EXIF_ORIENTATION = 0x0112


@dataclass
class ImageData:
    pixels: np.ndarray  # (H, W, C), C in {1, 3}, uint8 or uint16
    alpha: np.ndarray | None = None  # (H, W), same dtype as pixels
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None  # (x, y) dots per inch

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

    def describe(self) -> str:
        kind = {1: "grey", 3: "RGB"}[self.channels] + ("+alpha" if self.alpha is not None else "")
        return f"{self.width}×{self.height} {kind} {self.bit_depth}-bit"


def is_image_name(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in READABLE_SUFFIXES


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_INPUT_PIXELS
               ) -> ImageData:
    """Decode an image file into ImageData, with one-line errors for every bad input."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"input not found: {path}")
    if path.is_dir():
        raise ImageReadError(f"input is a folder, not an image: {path} (use `liif batch`)")
    if path.stat().st_size == 0:
        raise ImageReadError(f"input is empty (0 bytes): {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageReadError(
                    f"{path} is {w}×{h} = {w * h / 1e6:.0f} MP, over the {max_pixels / 1e6:.0f} MP "
                    "safety limit against decompression bombs; raise it with --max-input-pixels")
            im.load()
            return _from_pil(path, im)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: refused as a possible decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e) or type(e).__name__
        if "cannot identify image file" in msg:
            msg = "not an image file, or a format Pillow cannot read"
        raise ImageReadError(f"cannot read {path}: {msg}") from None


def _from_pil(path: Path, im: Image.Image) -> ImageData:
    icc = im.info.get("icc_profile")
    dpi = im.info.get("dpi")
    dpi = (float(dpi[0]), float(dpi[1])) if dpi else None
    orientation = im.getexif().get(EXIF_ORIENTATION, 1)

    if _is_16bit_colour(path, im):
        arr = _read_16bit_cv2(path)
        data = _from_array(arr, bgr=True)
    else:
        data = _from_array(_pil_to_array(im), bgr=False)
    if orientation != 1:
        data = _apply_orientation(data, orientation)
    return replace(data, icc_profile=icc, dpi=dpi)


def _is_16bit_colour(path: Path, im: Image.Image) -> bool:
    """Pillow reads 16-bit RGB(A) PNG/TIFF as 8-bit; detect them to read with OpenCV instead."""
    if im.format not in ("PNG", "TIFF") or im.mode not in ("RGB", "RGBA"):
        return False
    rawmodes = [t[3] if isinstance(t[3], str) else t[3][0] for t in (im.tile or []) if t[3]]
    if rawmodes and any(";16" in r or "16" in r.split(";")[-1] for r in rawmodes):
        return True
    if im.format == "PNG":
        return im.info.get("bits", 8) == 16  # not always set; the rawmode check covers most
    return False


def _read_16bit_cv2(path: Path) -> np.ndarray:
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None:
        raise ImageReadError(f"cannot read {path}: OpenCV could not decode this 16-bit file")
    return arr


def _pil_to_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16)
    elif mode == "I":
        return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
    elif mode == "F":
        return np.clip(np.asarray(im), 0, 255).round().astype(np.uint8)
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
    """Fail early (before any compute) on an output that cannot or must not be written."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ImageWriteError(f"unknown output format {path.suffix or '(no extension)'!r} for "
                              f"{path}; use one of {', '.join(sorted(FORMATS))}")
    if path.exists() and not overwrite:
        raise ImageWriteError(f"output exists: {path} (pass --overwrite to replace it)")
    if path.is_dir():
        raise ImageWriteError(f"output is a folder: {path}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ImageWriteError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise ImageWriteError(f"output folder is not writable: {parent}")
    return path


def to_8bit(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # rounded


def write_image(path: str | os.PathLike, data: ImageData, *, quality: int = 95,
                overwrite: bool = False) -> Path:
    """Encode `data` by the extension of `path`, atomically. Returns the path written."""
    path = check_output_path(path, overwrite=overwrite)
    fmt, allows16, allows_alpha = FORMATS[path.suffix.lower()]
    pixels, alpha = data.pixels, data.alpha if allows_alpha else None
    sixteen = allows16 and pixels.dtype == np.uint16
    if not sixteen:
        pixels = to_8bit(pixels)
        alpha = None if alpha is None else to_8bit(alpha)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        if sixteen and (pixels.shape[2] == 3 or alpha is not None):
            _write_16bit_cv2(tmp, path.suffix.lower(), pixels, alpha, data.icc_profile)
        else:
            _write_pil(tmp, fmt, pixels, alpha, data, quality)
        _publish(tmp, path, overwrite=overwrite)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (OSError, ValueError)) and not isinstance(e, ImageWriteError):
            raise ImageWriteError(f"cannot write {path}: {e}") from None
        raise
    return path


def _publish(tmp: str, path: Path, *, overwrite: bool) -> None:
    """Move the finished temporary file into place; never clobber unless overwrite."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic create-if-absent
    except FileExistsError:
        raise ImageWriteError(f"output exists: {path} (pass --overwrite to replace it)") from None
    except OSError:  # filesystems without hard links
        if path.exists():
            raise ImageWriteError(f"output exists: {path} (pass --overwrite to replace it)"
                                  ) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _write_pil(tmp: str, fmt: str, pixels: np.ndarray, alpha: np.ndarray | None,
               data: ImageData, quality: int) -> None:
    if pixels.dtype == np.uint16:  # single-channel 16-bit
        im = Image.fromarray(pixels[:, :, 0].astype(np.uint16), mode="I;16")
    else:
        arr = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
        if alpha is not None:
            arr = np.dstack([pixels, alpha]) if pixels.shape[2] == 3 else np.dstack(
                [pixels[:, :, 0], alpha])
        im = Image.fromarray(np.ascontiguousarray(arr))
    kwargs: dict = {}
    if data.icc_profile and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        kwargs["icc_profile"] = data.icc_profile
    if data.dpi and fmt in ("PNG", "JPEG", "TIFF", "BMP"):
        kwargs["dpi"] = tuple(round(d, 3) for d in data.dpi)
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    if fmt == "TIFF":
        kwargs["compression"] = "tiff_deflate"
    im.save(tmp, format=fmt, **kwargs)


def _write_16bit_cv2(tmp: str, suffix: str, pixels: np.ndarray, alpha: np.ndarray | None,
                     icc: bytes | None) -> None:
    import cv2

    arr = pixels[:, :, ::-1] if pixels.shape[2] == 3 else pixels
    if alpha is not None:
        arr = np.dstack([arr, alpha])
    ext = ".png" if suffix == ".png" else ".tiff"
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(arr))
    if not ok:
        raise ImageWriteError(f"OpenCV could not encode a 16-bit {suffix} image")
    blob = buf.tobytes()
    if icc and ext == ".png":
        blob = _png_insert_iccp(blob, icc)
    with open(tmp, "wb") as f:
        f.write(blob)


def _png_insert_iccp(png: bytes, icc: bytes) -> bytes:
    """Insert an iCCP chunk right after IHDR (PNG spec §11.3.3.3): name, 0, method 0, zlib."""
    body = b"icc\x00\x00" + zlib.compress(icc)
    chunk = struct.pack(">I", len(body)) + b"iCCP" + body
    chunk += struct.pack(">I", zlib.crc32(b"iCCP" + body) & 0xFFFFFFFF)
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, length, type, IHDR data, CRC
    return png[:ihdr_end] + chunk + png[ihdr_end:]
