"""Static-window reuse: what did not change since the previous frame is not rendered again.

An output pixel depends only on input pixels near it: the latents within 2 of the one its
centre falls in (the local ensemble's neighbours, and the 3×3 unfolding), each computed from
input pixels within the encoder's `receptive_radius`. So where an input window, widened by
`receptive_radius + engine.TILE_MARGIN` pixels, is bit-identical to the previous frame's, its
output window is the previous frame's too, and is copied instead of rendered
(`Upscaler.render(window=...)` renders the others). Screen recordings, animation and
locked-off shots have large static areas.

It is kept only where it pays, by counting work: `engine.render_work` counts, tile by tile as
the engine cuts them, the multiply-adds of the frame rendered whole and of each window rendered
alone (its encoder pass reads the window's halo again: 2.5× a 128-pixel window's own encoder
work for `default`, 1.45× for `fast`; but the decoder's work per output pixel, which windows do
not repeat, is most of `default`'s at video scales). A frame is rendered by windows only when
its changed windows come to at most `WINDOWS_PAY` of the whole frame's count, else whole; one
identical to the previous frame is copied whole. On footage with nothing static the check is
one comparison of the frames. The previous frame is per segment, so a resumed or sharded job
renders the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liif_cli.io.images import ImageData
from liif_cli.runtime.engine import TILE_MARGIN, render_work
from liif_cli.runtime.upscaler import Upscaler, model_input

REUSE_WINDOW = 128  # input pixels per window side: halos stay a modest share of each window
# By windows only where the changed windows count at most this share of the whole frame's
# work. The count is pessimistic for windows (their encoder convolutions run faster per
# multiply-add than the decoder's narrow matmuls): all 20 windows of a 640×480 → 1080p frame
# count 1.20× the frame whole, and took 0.91-0.96× its time with `fast`, 1.0-1.09× with
# `default` (docs/benchmarks.md).
WINDOWS_PAY = 1.0


@dataclass
class FrameMemory:
    """The previous frame of a segment, in and out; and how much was reused so far."""

    rgb: np.ndarray | None = None
    out: np.ndarray | None = None
    windows: int = 0  # windows seen (whole frames count as all their windows)
    reused: int = 0  # windows copied from the previous frame
    work: tuple | None = None  # (key, the whole frame's count, each window's): `_work`


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
    dtype = up.render_dtype(16 if rgb.dtype == np.uint16 else 8)
    whole, each = _work(up, (h, w), out_hw, ys, xs, dtype, memory)
    changed = sum(c for c_row, s_row in zip(each, static) for c, keep in zip(c_row, s_row)
                  if not keep)
    if changed > WINDOWS_PAY * whole:
        return _whole(up, rgb, out_hw, memory)
    memory.reused += sum(map(sum, static))
    out = np.empty_like(memory.out)
    img = model_input(ImageData(rgb), up.device)
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


def _work(up: Upscaler, in_hw: tuple[int, int], out_hw: tuple[int, int], ys: list, xs: list,
          dtype, memory: FrameMemory) -> tuple[int, list[list[int]]]:
    """Multiply-adds of the frame rendered whole, and of each window rendered alone; counted
    once per segment (the frames of a video share their size)."""
    key = (in_hw, out_hw, dtype, up.max_memory)
    if memory.work is None or memory.work[0] != key:
        dec, kw = up.decoder(dtype), dict(max_memory=up.max_memory, device=up.device)
        whole = render_work(up.model, dec, in_hw, out_hw, **kw).macs
        each = [[render_work(up.model, dec, in_hw, out_hw, window=(oy0, ox0, oy1 - oy0,
                                                                   ox1 - ox0), **kw).macs
                 for *_, ox0, ox1 in xs] for *_, oy0, oy1 in ys]
        memory.work = (key, whole, each)
    return memory.work[1], memory.work[2]


def _whole(up: Upscaler, rgb: np.ndarray, out_hw: tuple[int, int],
           memory: FrameMemory) -> np.ndarray:
    memory.out = up.upscale_image(ImageData(rgb), out_hw).image.pixels
    return memory.out
