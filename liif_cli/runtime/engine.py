"""Memory-bounded LIIF and LM-LIIF inference: the plan, and the tile/chunk loop.

The same function as `LIIF.query` / `LMLIIF.query` (the oracles), reorganised; nothing here
approximates:
- The latent grid is encoded in tiles with a halo of `receptive_radius + TILE_MARGIN` input
  pixels, so tiles give the same latents as one whole-image pass; each tile decodes the output
  pixels whose centres fall in it, straight into the caller's output buffer.
- Per tile, the decoder computes P: per latent, all the work that does not depend on the query
  (LIIF: its MLP's first layer, a 3×3 convolution of the grid; LM-LIIF: the latent MLP's
  modulations and the render MLP's first layer).
- Query coordinates are separable: row j of the output only fixes the row latents and offsets
  of the local ensemble (`model.ensemble.axis_members`), column i only the column ones. Each
  chunk's coordinates come from 1-D axes; there are no full-size coordinate or cell tensors.
  A tile's output is cut into column pieces, each into row chunks, which the decoder decodes.

What P is and how a chunk is decoded (and how big a chunk may be, whether pieces run side by
side) is each architecture's decoder's: `runtime.decoders` (`LiifDecoder`, `LmfDecoder`),
behind one protocol, so that this loop has no architecture branches.

Precision: the encoder and P are float32 unless `encoder_dtype` says otherwise (then the
encoder runs under autocast; in fp32 no autocast region is entered at all: torch 2.3-2.5 refuse
one on MPS, even disabled); the decoder MLP runs in `dtype` (fp32, or bf16/fp16 for speed);
the ensemble blend is always float32. The tasks set both to one dtype through
`runtime.upscaler.Upscaler` (the policy is `runtime.device`'s). Quantised outputs are clamped,
scaled and rounded on the device and come to the host as uint8 (or int32 levels of uint16).
Tile and chunk sizes come from a memory budget (`max_memory` bytes of working memory), so peak
memory does not grow with the output beyond the output buffer itself.
"""

from __future__ import annotations

import contextlib
import functools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from liif_cli.model import SRModel, denormalise, normalise
from liif_cli.model.coords import coord_seq, make_cell
from liif_cli.model.ensemble import axis_members, rel_cell
from liif_cli.runtime.decoders import (
    Decoder,
    Schedule,
    decoder_type,
    fused_linear_in_use,
    linear_relu_fn,
    make_decoder,
)
from liif_cli.runtime.device import CPU_MAX_MEMORY

# bytes of working memory for tiles and chunks when none is given: the CPU's budget
DEFAULT_MAX_MEMORY = CPU_MAX_MEMORY
# Latents a tile needs beyond its own, on each side: 1 for the ensemble's neighbour lookups,
# 1 for float disagreement at tile borders, 1 for the 3×3 unfolding.
TILE_MARGIN = 3
# activations alive at once while encoding, in units of the encoder's `peak_channels`:
# measured 1.4 KB per pixel for EDSR-baseline (128 channels), 7.4 KB for RDN (832)
ENCODER_LIVE_TENSORS = 3
MIN_TILE = 16  # latents per side below which tiling stops shrinking (halo would dominate)
# When even MIN_TILE's crop overflows the budget (a receptive field as wide as RDN's, 131 px),
# tiles of HALO_BOUND_TILES halos per side cap the encoder's recomputation at (1 + 2/2)² = 4×
# instead: the budget cannot be met, so at least do not multiply the work by hundreds.
HALO_BOUND_TILES = 2
# On the CPU a chunk's (members × queries × hidden) activations should stay near the L2/L3
# cache: 4 MiB per buffer measured as good as any here (hidden 256: 1024 queries per chunk in
# fp32, 2048 in bf16; hidden 32 gets 8192, which also amortises per-chunk overhead; 256 to
# 4096 queries were within noise of each other for hidden 256). GPUs want big chunks.
CPU_CHUNK_BYTES = 4 * 2**20
MIN_CHUNK = 256  # queries
MAX_CHUNK_CPU = 16384  # queries; beyond this, per-chunk overhead no longer matters
MAX_CHUNK_GPU = 1 << 18  # queries; bounds kernel sizes on GPUs with a large budget

ProgressFn = Callable[[int, int], None]  # (output pixels done, total)


@dataclass(frozen=True)
class Plan:
    """How one image is cut up: latent tile size (per side) and queries per chunk."""

    tile: int
    chunk: int


def encoder_bytes_per_pixel(model: SRModel) -> int:
    """Rough peak bytes per input pixel while encoding (float32).

    From the encoder's own count of channels alive at its peak when it has one, else from the
    widest convolution.
    """
    enc = model.encoder
    widest = getattr(enc, "peak_channels", None) or max(
        (m.in_channels + m.out_channels for m in enc.modules()
         if isinstance(m, torch.nn.Conv2d)), default=64)
    return 4 * ENCODER_LIVE_TENSORS * widest


def make_plan(model: SRModel, in_hw: tuple[int, int], *, max_memory: int = DEFAULT_MAX_MEMORY,
              tile: int | None = None, chunk: int | None = None,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Plan:
    """Pick the largest tile and chunk that fit `max_memory` together.

    On the CPU the chunk is capped so that one (members × chunk × width) buffer in `dtype` is
    about `CPU_CHUNK_BYTES` (small widths get long chunks, wide ones short; the width is
    LIIF's widest hidden layer, or LM-LIIF's gathered per-latent channels), and tiles get the
    rest of the budget; on GPUs chunk and tiles get half each. A tile's peak is its encoder's
    (`encoder_bytes_per_pixel`) or, once encoded, its latents and P, whichever is larger:
    the encoder's activations are freed before P is made, and a tile's P before the next
    tile is encoded. Big tiles matter: a tile recomputes a halo of `receptive_radius` input
    pixels on each side (2.2× the encoder's work for 128-pixel tiles of EDSR-baseline).
    """
    width, per_member = decoder_type(model).plan_widths(model.config)
    p_bytes = 4 * width  # P per latent, float32 (LM-LIIF's pmap works in bounded strips)
    members = 4 if model.config.local_ensemble else 1
    on_cpu = torch.device(device).type == "cpu"
    if chunk is None:
        chunk = (max_memory // 2) // (members * per_member)
        if on_cpu:
            esize = torch.empty((), dtype=dtype).element_size()
            chunk = min(chunk, MAX_CHUNK_CPU, CPU_CHUNK_BYTES // (members * width * esize))
        else:
            chunk = min(chunk, MAX_CHUNK_GPU)
        chunk = max(MIN_CHUNK, chunk)
    if tile is None:
        halo = model.encoder.receptive_radius + TILE_MARGIN
        budget = max_memory - members * chunk * per_member if on_cpu else max_memory // 2
        # latents (and their channels-last copy) + P, or the encoder's own peak
        per_px = max(encoder_bytes_per_pixel(model), 2 * 4 * model.feat_dim + p_bytes)
        side = int(math.isqrt(max(1, budget // per_px))) - 2 * halo
        if side < MIN_TILE:
            side = max(MIN_TILE, HALO_BOUND_TILES * halo)
        tile = min(side, max(in_hw))
    return Plan(tile=int(tile), chunk=int(chunk))


class _Axis:
    """Per-axis lookups for one output axis of n_out pixels over a latent axis of n_lat."""

    def __init__(self, n_out: int, n_lat: int, local_ensemble: bool, device):
        coord = coord_seq(n_out, device=device)  # (n_out,) query centres
        per_shift = axis_members(coord, n_lat, local_ensemble)
        self.index = [idx for idx, _ in per_shift]  # (n_out,) latent index per shift
        self.rel = [rel for _, rel in per_shift]  # (n_out,) offset in latent cells
        # which latent each output pixel's centre falls in: decides the tile that decodes it
        self.owner = torch.div((2 * torch.arange(n_out, device=device) + 1) * n_lat,
                               2 * n_out, rounding_mode="floor")

    def span(self, a: int, b: int) -> tuple[int, int]:
        """Output pixels whose centres lie in latents [a, b)."""
        lo = int(torch.searchsorted(self.owner, a))
        hi = int(torch.searchsorted(self.owner, b))
        return lo, hi


def _pieces(dec: Decoder, p: torch.Tensor, ax: _Axis, ay: _Axis, col_span: tuple[int, int],
            row_span: tuple[int, int], col_piece: int, chunk: int, px0: int, py0: int
            ) -> Iterator[tuple]:
    """A tile's output in pieces of at most `chunk` queries: column pieces of `col_piece`
    columns (their P columns and offset terms made once), each cut into row chunks."""
    (t0, t1), (r0, r1) = col_span, row_span
    for c0 in range(t0, t1, col_piece):
        c1 = min(t1, c0 + col_piece)
        p_cols, cols = dec.columns(p, [(ix[c0:c1] - px0, rx[c0:c1])
                                       for ix, rx in zip(ax.index, ax.rel)])
        areas_cols = [rx[c0:c1] for rx in ax.rel]
        rows_per_chunk = max(1, chunk // (c1 - c0))
        for j0 in range(r0, r1, rows_per_chunk):
            j1 = min(r1, j0 + rows_per_chunk)
            rows = [(iy[j0:j1] - py0, ry[j0:j1]) for iy, ry in zip(ay.index, ay.rel)]
            yield j0, j1, c0, c1, p_cols, cols, areas_cols, rows


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to n for the block (a process-wide setting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def render(model: SRModel, img: torch.Tensor, out_hw: tuple[int, int],
           out: np.ndarray | None = None,
           *, max_memory: int = DEFAULT_MAX_MEMORY, tile: int | None = None,
           chunk: int | None = None, dtype: torch.dtype = torch.float32,
           encoder_dtype: torch.dtype = torch.float32, on_progress: ProgressFn | None = None,
           decoder: Decoder | None = None,
           window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Decode image `img` (3, h, w) in [0, 1] to an H×W RGB image.

    `out` may be a preallocated (H, W, 3) array: uint8 or uint16 (values quantised by
    rounding) or float32 (raw model output in [0, 1] units, unclamped). An (H, W, 1) `out`
    receives the mean of the three channels, taken before quantising (greyscale images).
    `decoder`: `make_decoder(model, dtype, img.device)` built beforehand and reused across
    images (`runtime.upscaler.Upscaler` does); by default one is built for this call.
    `window` (y0, x0, h, w): decode only that window of the H×W output (`out` is then
    (h, w, C)); only the latent tiles under it are encoded, and its pixels are those of the
    same window of the whole render (tiles give the same latents wherever they start).
    Returns `out`. Call under `torch.inference_mode()` (or `no_grad`) to keep autograd out.
    """
    if decoder is not None and decoder.dtype != dtype:
        raise ValueError(f"decoder was built for {decoder.dtype}, but dtype is {dtype}")
    H, W = out_hw
    wy, wx, wh, ww = (0, 0, H, W) if window is None else (int(v) for v in window)
    if min(wy, wx) < 0 or min(wh, ww) < 1 or wy + wh > H or wx + ww > W:
        raise ValueError(f"window {window} is not inside the {H}x{W} output")
    if out is None:
        out = np.empty((wh, ww, 3), dtype=np.float32)
    if out.shape[:2] != (wh, ww) or out.ndim != 3 or out.shape[2] not in (1, 3):
        raise ValueError(f"out has shape {out.shape}; expected ({wh}, {ww}, 3) or "
                         f"({wh}, {ww}, 1)")
    device = img.device
    h, w = img.shape[-2:]
    plan = make_plan(model, (h, w), max_memory=max_memory, tile=tile, chunk=chunk,
                     device=device, dtype=dtype)
    local = model.config.local_ensemble
    if device.type == "cpu":  # kept across calls: a video renders many windows of one size
        ay, ax = _cpu_axis(H, h, local), _cpu_axis(W, w, local)
    else:
        ay, ax = _Axis(H, h, local, device), _Axis(W, w, local, device)
    dec = make_decoder(model, dtype, device) if decoder is None else decoder
    sched = dec.schedule(H, h, plan.chunk, device)
    # the official cell, ones * (2 / H) in float32, in latent cells of the whole grid
    cell = rel_cell(make_cell((H, W), 1, device=device)[0], h, w)  # (2,)
    halo = model.encoder.receptive_radius + TILE_MARGIN
    members = 4 if local else 1
    buf = torch.empty(dec.buffer_numel(members, plan.chunk), dtype=dtype, device=device)
    write = _writer(out)
    inference = torch.is_inference_mode_enabled()

    def decode_piece(piece) -> int:
        j0, j1, c0, c1, p_cols, cols, areas_cols, rows = piece
        with torch.inference_mode(inference), torch.no_grad():
            write(j0 - wy, j1 - wy, c0 - wx, c1 - wx,
                  dec.decode(p_cols, rows, cols, areas_cols, buf, sched))
        return (j1 - j0) * (c1 - c0)

    done, total = 0, wh * ww
    for (r0, r1, t0, t1), region in _tiles(ay, ax, (h, w), plan.tile,
                                           None if window is None else (wy, wx, wh, ww)):
        p = _tile_pmap(model, dec, img, region, halo, cell, encoder_dtype)
        pieces = _pieces(dec, p, ax, ay, (t0, t1), (r0, r1), sched.col_piece, sched.chunk,
                         region[2], region[0])
        if sched.threads > 1:  # pieces side by side, one thread each
            with ThreadPoolExecutor(sched.threads) as pool, _torch_threads(1):
                counts = pool.map(decode_piece, list(pieces))
                for n in counts:
                    done += n
                    if on_progress is not None:
                        on_progress(done, total)
        else:
            for piece in pieces:
                done += decode_piece(piece)
                if on_progress is not None:
                    on_progress(done, total)
        del p, pieces  # before the next tile is encoded (make_plan counts on it)
    return out


Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), ends excluded


def _tiles(ay: _Axis, ax: _Axis, hw: tuple[int, int], tile: int,
           window: tuple[int, int, int, int] | None) -> Iterator[tuple[Box, Box]]:
    """The latent tiles of a render of `window` (y0, x0, h, w) of the output (None: all of
    it): per tile, the output rows and columns it decodes (r0, r1, t0, t1) and its P region
    (py0, py1, px0, px1), the tile's latents and 2 more on each side, clipped to the h×w grid.
    Tiles start at the grid's first latent, or for a window at the first latent whose output
    pixels it holds."""
    h, w = hw
    if window is None:
        wy, wx, wh, ww = 0, 0, len(ay.owner), len(ax.owner)
        lat_y, lat_x = (0, h), (0, w)
    else:
        wy, wx, wh, ww = window
        lat_y = int(ay.owner[wy]), int(ay.owner[wy + wh - 1]) + 1
        lat_x = int(ax.owner[wx]), int(ax.owner[wx + ww - 1]) + 1
    for a0 in range(lat_y[0], lat_y[1], tile):
        a1 = min(lat_y[1], a0 + tile)
        r0, r1 = ay.span(a0, a1)
        r0, r1 = max(r0, wy), min(r1, wy + wh)
        if r0 >= r1:
            continue
        for b0 in range(lat_x[0], lat_x[1], tile):
            b1 = min(lat_x[1], b0 + tile)
            t0, t1 = ax.span(b0, b1)
            t0, t1 = max(t0, wx), min(t1, wx + ww)
            if t0 >= t1:
                continue
            yield (r0, r1, t0, t1), (max(0, a0 - TILE_MARGIN + 1), min(h, a1 + TILE_MARGIN - 1),
                                     max(0, b0 - TILE_MARGIN + 1), min(w, b1 + TILE_MARGIN - 1))


def _crops(region: Box, halo: int, hw: tuple[int, int]) -> tuple[Box, Box]:
    """For a tile's P region: the input crop its encoder pass reads (the region and `halo`
    pixels around it) and the latents its P is computed from (one more on each side, for the
    3×3 unfolding), both clipped to the h×w image, in image coordinates."""
    py0, py1, px0, px1 = region
    h, w = hw
    crop = max(0, py0 - halo), min(h, py1 + halo), max(0, px0 - halo), min(w, px1 + halo)
    fed = max(0, py0 - 1), min(h, py1 + 1), max(0, px0 - 1), min(w, px1 + 1)
    return crop, fed


def _area(box: Box) -> int:
    return (box[1] - box[0]) * (box[3] - box[2])


def encoder_macs_per_pixel(model: SRModel) -> int:
    """Multiply-adds per input pixel of the encoder's convolutions (all stride 1, as in EDSR
    and RDN without their upsampling tails)."""
    return sum(m.weight.numel() for m in model.encoder.modules()
               if isinstance(m, torch.nn.Conv2d))


@dataclass(frozen=True)
class Work:
    """What a render computes: input pixels encoded (tile halos included), latents of P,
    output pixels decoded, and all of it in multiply-adds (`macs`)."""

    encoded: int
    latents: int
    queries: int
    macs: int


@functools.lru_cache(maxsize=8)
def _cpu_axis(n_out: int, n_lat: int, local_ensemble: bool) -> _Axis:
    """An `_Axis` on the CPU, kept: `render` and `render_work` see many windows of one frame
    size (a video's frames); its tensors are only read."""
    return _Axis(n_out, n_lat, local_ensemble, "cpu")


def render_work(model: SRModel, decoder: Decoder, in_hw: tuple[int, int],
                out_hw: tuple[int, int], *, max_memory: int = DEFAULT_MAX_MEMORY,
                device: torch.device | str = "cpu",
                window: tuple[int, int, int, int] | None = None) -> Work:
    """The work `render` does on `device` for `window` (default: all) of an `out_hw` render
    of an `in_hw` image under `max_memory`, counted tile by tile as it cuts them, without
    rendering: what chooses between rendering a frame whole or by windows
    (`tasks.video.reuse`)."""
    H, W = out_hw
    h, w = in_hw
    plan = make_plan(model, in_hw, max_memory=max_memory, device=device, dtype=decoder.dtype)
    local = model.config.local_ensemble
    ay, ax = _cpu_axis(H, h, local), _cpu_axis(W, w, local)
    halo = model.encoder.receptive_radius + TILE_MARGIN
    encoded = latents = queries = 0
    for (r0, r1, t0, t1), region in _tiles(ay, ax, in_hw, plan.tile, window):
        crop, fed = _crops(region, halo, in_hw)
        encoded, latents = encoded + _area(crop), latents + _area(fed)
        queries += (r1 - r0) * (t1 - t0)
    per_latent, per_query = decoder.work()
    macs = encoder_macs_per_pixel(model) * encoded + per_latent * latents + per_query * queries
    return Work(encoded, latents, queries, macs)


def _tile_pmap(model: SRModel, dec: Decoder, img: torch.Tensor,
               region: tuple[int, int, int, int], halo: int, cell: torch.Tensor,
               encoder_dtype: torch.dtype) -> torch.Tensor:
    """P of the latents [py0, py1) × [px0, px1) of image `img` (3, h, w) in [0, 1], encoded
    from a crop with a halo of `halo` input pixels (the same latents as a whole-image pass).

    Only the crop is normalised (a whole-image copy per call would be 12 bytes per input
    pixel: 288 MB of a 24 MP photo for each of `liif view`'s tiles)."""
    py0, py1, px0, px1 = region
    (iy0, iy1, ix0, ix1), fed = _crops(region, halo, tuple(img.shape[-2:]))
    crop = normalise(img[None, :, iy0:iy1, ix0:ix1].float())  # the official normalisation
    crop = crop.contiguous(memory_format=torch.channels_last)
    with _autocast(img.device, encoder_dtype):
        feat = model.encode(crop)  # (1, C, th, tw)
    feat = feat.float()
    # latents one beyond the P region feed its 3×3 unfolding; beyond the image: zeros
    fy0, fy1, fx0, fx1 = fed[0] - iy0, fed[1] - iy0, fed[2] - ix0, fed[3] - ix0
    p = dec.pmap(feat[:, :, fy0:fy1, fx0:fx1], cell)  # (fy1-fy0, fx1-fx0, ...)
    del feat
    # crop P to the P region (the extra ring had wrong unfolding at crop borders)
    oy, ox = py0 - (fy0 + iy0), px0 - (fx0 + ix0)
    return dec.crop(p, oy, py1 - py0, ox, px1 - px0)  # a view


def _autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` for the encoder; in fp32 no autocast region at all (torch 2.3-2.5
    reject `torch.autocast("mps", enabled=False)` before reading `enabled`)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# 16-bit levels leave the device as int32: MPS has no uint16 before torch 2.9, and the host
# array's assignment narrows them exactly (0 to 65,535)
QUANTISED = {np.dtype(np.uint8): (255, torch.uint8), np.dtype(np.uint16): (65535, torch.int32)}


def _writer(out: np.ndarray) -> Callable[[int, int, int, int, torch.Tensor], None]:
    """Writes a decoded block (3, nr, nc), normalised, into out[j0:j1, c0:c1]: the channel
    mean for a 1-channel `out`; quantised (clamped, scaled, rounded) on the device and copied
    to the host as integers for uint8/uint16 (16-bit levels as int32: `QUANTISED`), raw
    float32 otherwise."""
    grey = out.shape[2] == 1
    maxval, qdtype = QUANTISED.get(out.dtype, (None, None))

    def write(j0: int, j1: int, c0: int, c1: int, pred: torch.Tensor) -> None:
        rgb = denormalise(pred, inplace=True)
        if grey:
            rgb = rgb.mean(0, keepdim=True)  # (1, nr, nc)
        if maxval is not None:
            rgb = rgb.clamp_(0, 1).mul_(maxval).round_().to(qdtype)  # exact integers
        out[j0:j1, c0:c1] = rgb.permute(1, 2, 0).cpu().numpy()  # (nr, nc, C)

    return write


__all__ = ["DEFAULT_MAX_MEMORY", "Decoder", "Plan", "ProgressFn", "Schedule", "fused_linear_in_use",
           "linear_relu_fn", "make_decoder", "make_plan", "render"]
