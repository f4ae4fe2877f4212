"""Image formats by file name: what we write (and how), what we read. Names only, no decoding.

Its own small module so that `files` (discovery) and `images` (decoding, encoding) both use it
without importing each other's way round: images -> files -> formats, no cycle.
"""

from __future__ import annotations

import numbers
import os
from pathlib import Path, PurePath

from liif_cli.errors import UsageError

# Each format we write, once: its `--format` name, its suffixes (the first is what the name
# writes, e.g. `--format jpeg` -> .jpg; a file may have any), how Pillow names it, and whether
# it holds 16 bits and alpha.
WRITTEN = {
    "png": ((".png",), "PNG", True, True),
    "jpg": ((".jpg", ".jpeg"), "JPEG", False, False),
    "webp": ((".webp",), "WEBP", False, True),
    "tiff": ((".tiff", ".tif"), "TIFF", True, True),
    "bmp": ((".bmp",), "BMP", False, False),  # Pillow writes 32-bit BMPs that readers take as RGB
}
# output suffix -> (PIL format name, supports 16-bit, supports alpha)
FORMATS = {s: (pil, deep, alpha) for suffixes, pil, deep, alpha in WRITTEN.values()
           for s in suffixes}
FORMAT_NAMES = ", ".join(WRITTEN)  # for messages and help: "png, jpg, webp, tiff, bmp"
GREY_AS_RGB = frozenset({".webp"})  # WebP has no greyscale: grey is stored as RGB
READABLE_SUFFIXES = frozenset(FORMATS) | {".gif", ".ppm", ".pgm", ".pnm", ".tga", ".jp2"}
FALLBACK_SUFFIX = ".png"  # the output of an input we read but cannot write (gif, ppm, ...)


def format_name(text: str) -> str | None:
    """The format a `--format` name or a suffix stands for ("jpeg", ".JPG" -> "jpg"; "tif" ->
    "tiff"); None for one we do not write."""
    suffix = "." + str(text).lower().lstrip(".")
    return next((name for name, (suffixes, *_) in WRITTEN.items() if suffix in suffixes), None)


def format_suffix(text: str) -> str | None:
    """The suffix a `--format` name writes ("jpeg" -> ".jpg"); None for a format we do not
    write."""
    name = format_name(text)
    return None if name is None else WRITTEN[name][0][0]


def is_image_name(path: str | os.PathLike) -> bool:
    """Whether a file's name says it is an image we read (any case)."""
    return Path(path).suffix.lower() in READABLE_SUFFIXES


def as_written(suffix: str, channels: int, alpha: bool, bits: int) -> tuple[int, bool, int]:
    """(channels, alpha, bits) of an image once written as a `suffix` file: formats without
    16 bits get 8, JPEG and BMP drop alpha, WebP stores grey as RGB (`FORMATS`)."""
    suffix = suffix.lower()
    _, allows16, allows_alpha = FORMATS[suffix]
    return (3 if suffix in GREY_AS_RGB else channels, alpha and allows_alpha,
            bits if allows16 else 8)


def same_format_suffix(path: str | os.PathLike) -> str:
    """The suffix of an output in the format of input `path`: the input's own (its case kept)
    when we write that format, else FALLBACK_SUFFIX (photo.JPG -> .JPG, anim.gif -> .png)."""
    suffix = PurePath(path).suffix
    return suffix if suffix.lower() in FORMATS else FALLBACK_SUFFIX


def check_quality(quality: object) -> int:
    """JPEG/WebP quality (`--quality`, `quality=`): a whole number from 1 to 100. Torch- and
    numpy-free: the command line checks it as it parses, the writers again."""
    if isinstance(quality, str) and quality.strip().isascii() and quality.strip().isdigit():
        quality = int(quality.strip())
    if isinstance(quality, bool) or not isinstance(quality, numbers.Integral) \
            or not 1 <= quality <= 100:
        raise UsageError(f"--quality must be a whole number from 1 to 100, not {quality}")
    return int(quality)
