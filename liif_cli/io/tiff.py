"""TIFF through tifffile, where Pillow falls short: the tags we read and write (TIFF 6.0; XMP:
Adobe XMP spec part 3), 16-bit files with alpha and metadata, and floating-point samples.
`io.images` reads and writes every format through these and Pillow."""

from __future__ import annotations

import warnings

import numpy as np

from liif_cli.errors import LiifWarning

TIFF_BYTE = 1  # field type
TAG_X_RESOLUTION, TAG_Y_RESOLUTION, TAG_RESOLUTION_UNIT = 282, 283, 296
TAG_XMP = 700
TAG_ICC_PROFILE = 34675


def float_samples(arr: np.ndarray, name: str) -> np.ndarray:
    """Floating-point samples (a float TIFF, Pillow's mode F) as 16-bit levels: 0 to 1 is
    black to white, as image editors and libraries write them (GIMP, ImageMagick, OpenCV,
    scikit-image); what lies outside is clipped, with a note, and NaN is black."""
    a = np.nan_to_num(arr.astype(np.float32, copy=False), nan=0.0, posinf=1.0, neginf=0.0)
    outside = np.count_nonzero((a < 0) | (a > 1))
    if outside:
        warnings.warn(f"{name}: {outside / a.size:.1%} of its floating-point samples lie "
                      "outside 0 to 1 (black to white) and are clipped", LiifWarning,
                      stacklevel=4)
    return np.round(np.clip(a, 0, 1) * 65535).astype(np.uint16)


def write16(tmp: str, pixels: np.ndarray, alpha: np.ndarray | None, *, icc: bytes | None,
            dpi: tuple[float, float] | None, xmp: bytes | None) -> None:
    """16-bit TIFF with tifffile: grey, grey+alpha, RGB or RGBA (unassociated alpha), deflate,
    with the ICC profile, DPI and XMP as tags. (OpenCV writes no grey+alpha TIFF, and its
    files needed the ICC and DPI tags patched in by hand.)"""
    import tifffile

    arr = pixels if alpha is None else np.dstack([pixels, alpha])
    extratags = [(TAG_XMP, TIFF_BYTE, len(xmp), xmp, True)] if xmp else []
    kwargs = {}
    if dpi:
        kwargs = {"resolution": tuple(round(d, 3) for d in dpi), "resolutionunit": "INCH"}
    tifffile.imwrite(tmp, arr[:, :, 0] if arr.shape[2] == 1 else arr,
                     photometric="rgb" if pixels.shape[2] == 3 else "minisblack",
                     planarconfig="contig", extrasamples=None if alpha is None else ["unassalpha"],
                     compression="zlib", iccprofile=icc or None, metadata=None,
                     extratags=extratags, **kwargs)
