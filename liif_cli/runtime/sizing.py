"""Output sizes: what `--scale`, `--size` (with `--fit`), `--width` and `--height` ask for.

Used by every task that writes images (upscale, batch). Sizes are (W, H) where users type them
(`--size 1920x1080`) and (H, W) everywhere else; scales are parsed as (vertical, horizontal).
Halves round up, as the official demo and ImageMagick's geometry do. Only usage errors here.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Iterable

from liif_cli.errors import UsageError
from liif_cli.io.images import pixel_count

DEFAULT_MAX_OUTPUT_PIXELS = 1_000_000_000  # 1 gigapixel: ~3 GB of RGB output buffer


def _finite_positive(x: float, what: str) -> float:
    if not math.isfinite(x) or x <= 0:
        raise UsageError(f"{what} must be a positive finite number, got {x}")
    return x


def _is_whole(v: object) -> bool:
    """A pixel count: an int (numpy's too), or a float with no fraction (`w * 2.0`)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return False
    return isinstance(v, numbers.Integral) or float(v).is_integer()


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


def _side(n: int) -> str:
    """A side in pixels for a message: 1.0e+300, not three hundred digits (-s 1e300)."""
    return str(n) if n < 10**12 else f"{n / 10**(len(str(n)) - 1):.1f}e+{len(str(n)) - 1}"


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
    """Check and parse the size options without looking at any image (usage errors only).
    A pair, as `scale` or `size`, is width first: (horizontal, vertical), as "3x2.5" and
    "1920x1080" are."""
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
        if isinstance(scale, (tuple, list)):  # (horizontal, vertical): as "3x2.5" and size
            if len(scale) != 2 or not all(isinstance(v, numbers.Real) for v in scale):
                raise UsageError(f"bad scale {scale!r}: a pair of numbers is (horizontal, "
                                 "vertical) factors, e.g. (3, 2.5)")
            sx, sy = (_finite_positive(float(v), "scale") for v in scale)
        else:
            sy, sx = parse_scale(scale)
        return SizeRequest(scale=(sy, sx))
    if size is not None:
        ow, oh = size if isinstance(size, tuple) and len(size) == 2 else parse_size(size)
        if not (_is_whole(ow) and _is_whole(oh)):
            raise UsageError(f"bad size {ow}x{oh}: width and height must be whole numbers "
                             "of pixels")
        if ow < 1 or oh < 1:
            raise UsageError(f"bad size {ow}x{oh}: width and height must be at least 1")
        return SizeRequest(size=(int(ow), int(oh)), fit=fit or "fill")
    for v, n in ((width, "width"), (height, "height")):
        if v is not None and not _is_whole(v):
            shown = repr(v) if isinstance(v, str) else v
            raise UsageError(f"--{n} must be a whole number of pixels, got {shown}")
        if v is not None and v < 1:
            raise UsageError(f"--{n} must be at least 1, got {v}")
    return SizeRequest(width=None if width is None else int(width),
                       height=None if height is None else int(height))


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
        raise UsageError(f"output {_side(out[1])}×{_side(out[0])} is "
                         f"{pixel_count(out[0] * out[1])}, over the "
                         f"{pixel_count(max_pixels)} limit (each MP takes 3 MB of memory); "
                         "lift it with --max-output-pixels")
    return out


def parse_scales(scales: str | float | Iterable[float]) -> list[float]:
    """'2,3,4', 'x2,x3' or [2, 3, 4] (or one number) -> [2, 3, 4] (ints where whole); each
    must be > 1."""
    if isinstance(scales, numbers.Real):
        scales = [scales]
    if isinstance(scales, str):  # an × before or after a number only: '2x3' is no ×23
        parts = [p.strip().strip("×x").strip() for p in scales.split(",") if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise UsageError(f"bad --scales {scales!r}: use comma-separated numbers, "
                             "e.g. 2,3,4") from None
    else:
        values = [float(s) for s in scales]
    if not values:
        raise UsageError("no scales given: use e.g. --scales 2,3,4")
    out: list[float] = []
    for v in values:
        if not math.isfinite(v) or v <= 1:
            raise UsageError(f"scale {v:g} is not an upscale: every scale must be greater than 1")
        v = int(v) if v == int(v) else v
        if v not in out:
            out.append(v)
    return out
