"""Static-window reuse: what did not change since the previous frame is not rendered again.

An output pixel depends only on input pixels near it: the latents within 2 of the one its
centre falls in (the local ensemble's neighbours, and the 3×3 unfolding), each computed from
input pixels within the encoder's `receptive_radius`. So where an input window, widened by
`receptive_radius + engine.TILE_MARGIN` pixels, is bit-identical to the previous frame's, its
output window is the previous frame's too, and is copied instead of rendered
(`Upscaler.render(window=...)` renders the others). Screen recordings, animation and
locked-off shots have large static areas.

It is kept only where it pays, by counting work: each window rendered alone encodes its halo
again, ((side + 2 halo) / side)² of its own work (fast: 1.45×, default: 2.5× for 128-pixel
windows), so a frame is rendered by windows only when the static share saves more than that
costs (and at least `MIN_STATIC_SHARE`), else whole; one identical to the previous frame is
copied whole. On footage with nothing static the check is one comparison of the frames. The previous frame is per segment, so a resumed or sharded job renders the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liif_cli.io.images import ImageData
from liif_cli.runtime.engine import TILE_MARGIN
from liif_cli.runtime.upscaler import Upscaler, model_input

REUSE_WINDOW = 128  # input pixels per window side: halos stay a modest share of each window
MIN_STATIC_SHARE = 0.25  # below this share of static windows, render the frame whole


@dataclass
class FrameMemory:
    """The previous frame of a segment, in and out; and how much was reused so far."""

    rgb: np.ndarray | None = None
    out: np.ndarray | None = None
    windows: int = 0  # windows seen (whole frames count as all their windows)
    reused: int = 0  # windows copied from the previous frame


def _spans(n_in: int, n_out: int, step: int) -> list[tuple[int, int, int, int]]:
    """(input start, input end, output start, output end) per window along one axis: output
    pixels go with the input pixel their centre falls in, as the engine's tiles do."""
    owner = (2 * np.arange(n_out) + 1) * n_in // (2 * n_out)
    cuts = list(range(0, n_in, step)) + [n_in]
    out = np.searchsorted(owner, cuts)
    return [(a, b, int(o0), int(o1)) for a, b, o0, o1 in zip(cuts, cuts[1:], out, out[1:])
            if o1 > o0]


def render_frame(up: Upscaler, rgb: np.ndarray, out_hw: tuple[int, int],
                 memory: FrameMemory) -> np.ndarray:
    """`rgb` (h, w, 3) upscaled to `out_hw`, reusing the previous frame's static windows."""
    H, W = out_hw
    h, w = rgb.shape[:2]
    ys, xs = _spans(h, H, REUSE_WINDOW), _spans(w, W, REUSE_WINDOW)
    n = len(ys) * len(xs)
    prev, memory.rgb = memory.rgb, rgb
    memory.windows += n
    if prev is None or prev.shape != rgb.shape:
        return _whole(up, rgb, out_hw, memory)
    same = np.all(rgb == prev, axis=2)  # (h, w)
    if same.all():
        memory.reused += n
        return memory.out
    m = up.model.encoder.receptive_radius + TILE_MARGIN
    static = [[bool(same[max(0, y0 - m):y1 + m, max(0, x0 - m):x1 + m].all())
               for x0, x1, *_ in xs] for y0, y1, *_ in ys]
    count = sum(map(sum, static))
    halo_cost = ((REUSE_WINDOW + 2 * m) / REUSE_WINDOW) ** 2  # a window's encoder work, alone
    if count < max(MIN_STATIC_SHARE, 1 - 1 / halo_cost) * n:
        return _whole(up, rgb, out_hw, memory)
    memory.reused += count
    out = np.empty_like(memory.out)
    img = model_input(ImageData(rgb), up.device)
    dtype = up.render_dtype(16 if rgb.dtype == np.uint16 else 8)
    for (_, _, oy0, oy1), row in zip(ys, static):
        for (_, _, ox0, ox1), keep in zip(xs, row):
            if keep:
                out[oy0:oy1, ox0:ox1] = memory.out[oy0:oy1, ox0:ox1]
            else:
                tile = np.empty((oy1 - oy0, ox1 - ox0, 3), dtype=out.dtype)
                up.render(img, out_hw, tile, dtype=dtype,
                          window=(oy0, ox0, oy1 - oy0, ox1 - ox0))
                out[oy0:oy1, ox0:ox1] = tile
    memory.out = out
    return out


def _whole(up: Upscaler, rgb: np.ndarray, out_hw: tuple[int, int],
           memory: FrameMemory) -> np.ndarray:
    memory.out = up.upscale_image(ImageData(rgb), out_hw).image.pixels
    return memory.out
