"""Memory-bounded LIIF and LM-LIIF inference: tiled encoding, first layer on the latent grid,
chunked queries.

The same function as `LIIF.query` (the oracle), reorganised; nothing here approximates:
- The MLP's first layer is linear in [unfolded latent, rel. coord, cell]. Its latent part is a
  3×3 convolution of the latent grid (unfold channel order c*9 + ky*3 + kx, zero padding), so we
  compute it once per latent pixel (`P`, (h, w, hidden)) instead of once per query and ensemble
  member; the cell part is one constant per image, folded into P's bias.
- Query coordinates are separable: row j of the output only fixes the row latent index and the
  row offset, column i only the column ones. Each chunk's coordinates are generated on the fly
  from 1-D axes; there are no full-size coordinate or cell tensors. The row-offset term is added
  to the few latent rows a chunk needs before its columns are gathered, so the full-size work of
  the first layer is one gather, one add (the column-offset term) and one ReLU.
- The 4 ensemble members of a chunk go through the remaining layers as one batched matmul each;
  on the CPU through oneDNN with bias and ReLU fused (`torch.ops.mkldnn._linear_pointwise`,
  checked against `addmm` before use; plain `addmm` + `relu_` elsewhere).
- The latent grid is encoded in tiles with a halo of `receptive_radius + TILE_MARGIN` input
  pixels, so tiles give the same latents as one whole-image pass; each tile decodes the output
  pixels whose centres fall in it, straight into the caller's output buffer.

LM-LIIF models (`model/lmf.py`) take the same tiles and chunks through `LmfDecoder`: P is then
the latent MLP's output (modulations) plus the render MLP's first layer, computed per latent
in the tiled pass, and only the 16-wide render MLP runs per query.

Precision: the encoder and P are float32 unless `encoder_dtype` says otherwise; the decoder MLP
runs in `dtype` (fp32, or bf16/fp16 for speed); the ensemble blend is always float32. The tasks
set both to one dtype through `runtime.upscaler.Upscaler` (the policy is `runtime.device`'s).
Tile and chunk sizes come from a memory budget (`max_memory` bytes of working memory), so peak
memory does not grow with the output beyond the output buffer itself.
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from liif_cli.model import LMLIIF, SRModel
from liif_cli.model.coords import coord_seq
from liif_cli.model.liif import AREA_EPS, ENSEMBLE_EPS_SHIFT, LIIF, nearest_axis

DEFAULT_MAX_MEMORY = 512 * 2**20  # bytes of working memory for tiles and chunks
# Latents a tile needs beyond its own, on each side: 1 for the ensemble's neighbour lookups,
# 1 for float disagreement at tile borders, 1 for the 3×3 unfolding.
TILE_MARGIN = 3
# activations alive at once while encoding, in units of the encoder's `peak_channels`:
# measured 1.4 KB per pixel for EDSR-baseline (128 channels), 7.4 KB for RDN (832)
ENCODER_LIVE_TENSORS = 3
# Buffers of (members × queries × hidden) alive at once while decoding a chunk: the gathered
# first layer, one layer's input and its output, and the gathered rows (≤ 2 members' worth).
QUERY_LIVE_BUFFERS = 4
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
    if isinstance(model, LMLIIF):
        width = LmfDecoder.channels_of(model.config)  # gathered per member and query
        # hidden activations per query grow with the rows a run broadcasts to (up to 4×)
        per_member = 4 * (width + 4 * LMF_QUERY_LIVE_HIDDEN * model.config.render_hidden)
    else:
        width = max(model.config.hidden)
        per_member = width * 4 * QUERY_LIVE_BUFFERS  # float32 upper bound
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

    def __init__(self, n_out: int, n_lat: int, shifts: list[int], eps: float, device):
        coord = coord_seq(n_out, device=device)  # (n_out,) query centres
        per_shift = nearest_axis(coord, n_lat, shifts, eps)
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


LinearFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _addmm_relu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """relu(x @ w.T + b) for x (M, in), w (out, in), b (out,)."""
    return torch.addmm(b, x, w.t()).relu_()


def _onednn_linear_relu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "relu", [], "")


_FUSED_OK: dict[torch.dtype, bool] = {}


def linear_relu_fn(device: torch.device, dtype: torch.dtype) -> LinearFn:
    """The fastest exact linear+bias+ReLU here: oneDNN's fused kernel on the CPU, else addmm.

    The private oneDNN op is checked once per dtype against addmm; any failure (old PyTorch,
    a CPU without native bf16) falls back to addmm, which is always correct.
    """
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return _addmm_relu
    if dtype not in _FUSED_OK:
        ok = False
        try:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(64, 48, generator=g).to(dtype)
            w = torch.randn(40, 48, generator=g).to(dtype)
            b = torch.randn(40, generator=g).to(dtype)
            got, ref = _onednn_linear_relu(x, w, b).float(), _addmm_relu(x, w, b).float()
            tol = 1e-4 if dtype == torch.float32 else 0.1
            ok = got.shape == ref.shape and bool((got - ref).abs().max() <= tol)
        except Exception:  # noqa: BLE001 - private op missing or unsupported: use addmm
            ok = False
        _FUSED_OK[dtype] = ok
    return _onednn_linear_relu if _FUSED_OK[dtype] else _addmm_relu


def fused_linear_in_use(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether the decoder's hidden layers run through oneDNN's fused kernel (for reports)."""
    return linear_relu_fn(torch.device(device), dtype) is _onednn_linear_relu


class FastDecoder:
    """The MLP split for the fast path: P-map weights, offset weights, and remaining layers."""

    def __init__(self, model: LIIF, dtype: torch.dtype, device: torch.device):
        cfg = model.config
        lin = model.imnet.linears
        w0, b0 = lin[0].weight.detach().float(), lin[0].bias.detach().float()  # (hidden, in)
        c = model.feat_dim * (9 if cfg.feat_unfold else 1)
        k = 3 if cfg.feat_unfold else 1
        self.conv_w = w0[:, :c].reshape(w0.shape[0], model.feat_dim, k, k)  # c*9 + ky*3 + kx
        self.w_rel = w0[:, c:c + 2]  # (hidden, 2): row, col offset
        self.w_cell = w0[:, c + 2:c + 4] if cfg.cell_decode else None
        self.b0 = b0
        # remaining layers, weights (out, in) as nn.Linear keeps them; the last one has no ReLU
        self.layers = [(m.weight.detach().to(dtype).contiguous(), m.bias.detach().to(dtype))
                       for m in lin[1:]]
        self.hidden = w0.shape[0]
        self.dtype = dtype
        self.linear_relu = linear_relu_fn(device, dtype)

    def buffer_numel(self, members: int, chunk: int) -> int:
        return members * chunk * self.hidden

    @staticmethod
    def crop(p: torch.Tensor, y0: int, ph: int, x0: int, pw: int) -> torch.Tensor:
        return p[y0:y0 + ph, x0:x0 + pw]  # P is (h, w, hidden)

    def pmap(self, feat: torch.Tensor, rel_cell: tuple[float, float]) -> torch.Tensor:
        """(1, C, h, w) latents -> (h, w, hidden) first-layer pre-activations minus offsets."""
        bias = self.b0
        if self.w_cell is not None:
            cell = torch.tensor(rel_cell, dtype=torch.float32, device=feat.device)
            bias = bias + self.w_cell @ cell
        feat = feat.contiguous(memory_format=torch.channels_last)
        p = F.conv2d(feat, self.conv_w, bias, padding=self.conv_w.shape[-1] // 2)
        return p[0].permute(1, 2, 0).contiguous()  # (h, w, hidden); a view when channels_last

    def columns(self, p: torch.Tensor, cols: list[tuple[torch.Tensor, torch.Tensor]]
                ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Restrict P (ph, pw, hidden) to the latent columns a column range needs.

        `cols` holds, per ensemble column shift, (latent column in P, offset) for each output
        column. Returns P's needed columns (a view when they are contiguous) and, per shift,
        (column in that restricted P, the column-offset term (nc, hidden) in `dtype`).
        """
        lo = min(int(ix.min()) for ix, _ in cols)
        hi = max(int(ix.max()) for ix, _ in cols)
        used = torch.unique(torch.cat([ix for ix, _ in cols]))  # sorted
        if used.numel() == hi - lo + 1:  # upscaling: a contiguous band of latent columns
            p_cols, local = p[:, lo:hi + 1], [ix - lo for ix, _ in cols]
        else:  # downscaling skips latents: keep only those used
            p_cols, local = p.index_select(1, used), [torch.searchsorted(used, ix)
                                                      for ix, _ in cols]
        terms = [torch.outer(rx, self.w_rel[:, 1]).to(self.dtype) for _, rx in cols]
        return p_cols, list(zip(local, terms))

    def decode(self, p_cols: torch.Tensor, rows: list[tuple[torch.Tensor, torch.Tensor]],
               cols: list[tuple[torch.Tensor, torch.Tensor]], areas_cols: list[torch.Tensor],
               buf: torch.Tensor) -> torch.Tensor:
        """Decode the nr×nc grid of queries.

        p_cols (ph, nu, hidden) float32 from `columns`; rows: per row shift (row in p_cols,
        offset) for each output row; cols: per column shift (column in p_cols, column term);
        areas_cols: per column shift, the column offsets (nc,) for the ensemble areas; buf: a
        flat scratch tensor in `dtype` with room for members × nr × nc × hidden values.
        Returns (out_dim, nr, nc) float32 in normalised space.
        """
        nr, nc, hid = rows[0][0].numel(), cols[0][0].numel(), self.hidden
        m = len(rows) * len(cols)
        x = buf[:m * nr * nc * hid].view(m, nr, nc, hid)
        k = 0
        for iy, ry in rows:
            # the few latent rows this chunk needs, with the row-offset term added once
            a = p_cols.index_select(0, iy)  # (nr, nu, hidden) float32
            a.add_(torch.outer(ry, self.w_rel[:, 0]).unsqueeze(1))
            a = a.to(self.dtype)
            for ix, term in cols:
                torch.index_select(a, 1, ix, out=x[k])  # (nr, nc, hidden)
                x[k].add_(term)  # + column-offset term, broadcast over rows
                k += 1
        h = x.view(m * nr * nc, hid).relu_()
        for w, b in self.layers[:-1]:
            h = self.linear_relu(h, w, b)
        w, b = self.layers[-1]
        # the last layer (hidden -> 3) computed transposed: a 3-wide GEMM output is slow
        pred = torch.addmm(b[:, None], w, h.t()).float().view(-1, m, nr, nc)  # (3, m, nr, nc)
        if m == 1:
            return pred[:, 0]
        areas = [(ry[:, None] * rx[None, :]).abs() + AREA_EPS
                 for _, ry in rows for rx in areas_cols]  # (nr, nc) each
        total = torch.stack(areas).sum(0)
        # each corner weighted by the area of the rectangle opposite it (local ensemble)
        weights = torch.stack(areas[::-1]) / total  # (4, nr, nc)
        return (pred * weights).sum(1)


# (members × queries × render width) buffers alive at once in LmfDecoder.decode beyond the
# gathered channels: the hidden activations, one layer's output and the blend's inputs
LMF_QUERY_LIVE_HIDDEN = 3
PMAP_STRIP_LATENTS = 4096  # latents per strip of LmfDecoder.pmap (its activations: ~3 MiB)


class LmfDecoder:
    """LM-LIIF split for the engine: the latent MLP on the grid, the render MLP per query.

    Per latent (`pmap`, in the tiled encoder pass): the latent MLP (its first layer a 3×3
    convolution, the cell part a per-image bias), then the render MLP's first layer on the
    compressed latent (its cell part also a bias). P holds, per latent, G groups of `hidden`
    channels:
        [layer-0 pre-activation | S_l: scale + 1, l < depth | T_l, l < depth]
    with layer l's bias folded into its shift, T_l = b_l·S_l + shift_l (l ≥ 1; layer 0's bias
    is in its pre-activation), so that a layer is relu((W_l h)·S_l + T_l): a matmul without a
    bias and one addcmul. P is group-major, (G, h, w, hidden), so that one group of gathered
    vectors is a contiguous (rows, queries, hidden) block.

    Per query (`decode`): output rows that read the same latent row form *runs* (s rows at
    scale s). Each run gathers its latents' P vectors once, one per output column (one row and
    one column `index_select`), and its rows are *broadcast* against them: the hidden
    activations are (runs, rows per run, queries, hidden) and each layer's S and T are
    (runs, 1, queries, hidden). So the per-query copies shrink by the scale (4× at ×4) and
    every modulation reads a small, cache-resident block. Runs longer than `k` rows (at image
    borders, where coordinates clamp) are split; short ones are padded, and the padded rows'
    outputs are dropped. All members go through each 16-wide layer as one matmul.
    Measured in one run (one thread, 160² → ×4, random weights, CPU time of the decoder
    beyond the encoder): 3.3 µs per output pixel gathering every query, 1.2 µs with runs.
    """

    def __init__(self, model: LMLIIF, dtype: torch.dtype, device: torch.device):
        cfg = model.config
        self.cfg, self.dtype = cfg, dtype
        c, hd = model.feat_dim, cfg.render_hidden
        k = 3 if cfg.feat_unfold else 1
        hyper = model.hypernet.linears
        w0 = hyper[0].weight.detach().float()
        self.h_conv = w0[:, :c * k * k].reshape(-1, c, k, k)  # channel c*9 + ky*3 + kx
        self.h_cell = w0[:, c * k * k:] if cfg.cell_decode else None
        self.h_bias = hyper[0].bias.detach().float()
        self.h_rest = [(m.weight.detach().float(), m.bias.detach().float()) for m in hyper[1:]]
        render = model.imnet.linears
        r0 = render[0].weight.detach().float()  # (hidden, z + 2 [+ 2])
        zc = hd if cfg.mod_input else c
        self.r_z = r0[:, :zc]
        self.w_rel = r0[:, zc:zc + 2]  # (hidden, 2): row, col offset
        self.r_cell = r0[:, zc + 2:zc + 4] if cfg.cell_decode else None
        self.r_bias = render[0].bias.detach().float()
        # hidden layers 1..: weights transposed (in, out) for h @ W.T, biases (folded into T)
        self.layers = [m.weight.detach().t().to(dtype).contiguous() for m in render[1:-1]]
        # (depth × hidden) biases per layer, layer 0's zero (its bias is in the pre-activation)
        self.biases = torch.cat([torch.zeros(hd, device=r0.device)]
                                + [m.bias.detach().float() for m in render[1:-1]])
        self.out_w = render[-1].weight.detach().to(dtype).contiguous()  # (out_dim, hidden)
        self.out_b = render[-1].bias.detach().to(dtype)[:, None]
        self.hidden = hd
        self.channels = self.channels_of(cfg)
        self.groups = self.channels // hd
        self.scale_group = 1 if cfg.mod_scale else None  # P group of layer 0's S
        self.shift_group = 1 + (cfg.render_depth if cfg.mod_scale else 0)  # ... of its T
        self.run = 1  # output rows per run (`set_scale`)

    @staticmethod
    def channels_of(cfg) -> int:
        """P channels: layer 0's pre-activation, S (with scale modulations) and T per layer."""
        return cfg.render_hidden * (1 + cfg.render_depth * (1 + int(cfg.mod_scale)))

    def set_scale(self, out_rows: int, lat_rows: int) -> None:
        """Rows per run: the row scale, rounded up (1 when downscaling)."""
        self.run = max(1, -(-out_rows // lat_rows))

    def buffer_numel(self, members: int, chunk: int) -> int:
        return 0  # decode allocates per chunk: at most the gathered P, bounded by the plan

    @staticmethod
    def crop(p: torch.Tensor, y0: int, ph: int, x0: int, pw: int) -> torch.Tensor:
        # P is (G, h, w, hidden); contiguous, for decode's flat gather (a copy once per tile)
        return p[:, y0:y0 + ph, x0:x0 + pw].contiguous()

    def pmap(self, feat: torch.Tensor, rel_cell: tuple[float, float]) -> torch.Tensor:
        """(1, C, h, w) latents -> P (G, h, w, hidden) in `dtype`.

        Computed in strips of rows (`PMAP_STRIP_LATENTS` latents each) into P, so that the
        latent MLP's activations never exist for the whole tile at once.
        """
        _, _, h, w = feat.shape
        p = torch.empty((self.groups, h, w, self.hidden), dtype=self.dtype, device=feat.device)
        cell = torch.tensor(rel_cell, dtype=torch.float32, device=feat.device)
        k = self.h_conv.shape[-1] // 2
        rows = max(1, PMAP_STRIP_LATENTS // max(1, w))
        for y0 in range(0, h, rows):
            y1 = min(h, y0 + rows)
            # the strip's rows plus the unfolding's neighbours; zero padding beyond the grid
            a0, a1 = max(0, y0 - k), min(h, y1 + k)
            strip = feat[:, :, a0:a1]
            strip = F.pad(strip, (0, 0, k - (y0 - a0), k - (a1 - y1)))
            p[:, y0:y1] = self._pmap_rows(strip, cell)
        return p

    def _pmap_rows(self, feat: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """(1, C, rows + 2k, w) latents with their row neighbours -> (G, rows, w, hidden)."""
        cfg = self.cfg
        k = self.h_conv.shape[-1] // 2
        bias = self.h_bias + self.h_cell @ cell if self.h_cell is not None else self.h_bias
        feat = feat.contiguous(memory_format=torch.channels_last)
        x = F.conv2d(feat, self.h_conv, bias, padding=(0, k))  # rows: padded by the caller
        x = x[0].permute(1, 2, 0)  # (rows, w, hidden): a view, the convolution is channels last
        for w, b in self.h_rest:  # the latent MLP's other layers, per latent
            x = F.linear(x.relu(), w, b)
        mod = x  # (rows, w, latent_out)
        z = mod[..., cfg.mod_dim:] if cfg.mod_input else feat[0, :, k:feat.shape[2] - k].permute(
            1, 2, 0)
        r_bias = self.r_bias + self.r_cell @ cell if self.r_cell is not None else self.r_bias
        parts = [F.linear(z, self.r_z, r_bias)]  # (rows, w, hidden): layer 0 before offsets
        n = cfg.render_depth * cfg.render_hidden
        if cfg.mod_scale:
            scale = mod[..., :n] + 1.0  # the official `x *= (scale + 1.0)`
            parts.append(scale)
        else:
            scale = torch.ones((), device=mod.device)
        shift = mod[..., (n if cfg.mod_scale else 0):][..., :n] if cfg.mod_shift else 0.0
        parts.append((self.biases * scale + shift).expand(*mod.shape[:2], n))  # T_l
        h, w = mod.shape[:2]
        return torch.cat(parts, -1).view(h, w, self.groups, self.hidden).permute(2, 0, 1, 3)

    def columns(self, p: torch.Tensor, cols: list[tuple[torch.Tensor, torch.Tensor]]
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """P itself and, for a column range (`cols` as in FastDecoder), the latent column of
        each shift's output columns, concatenated, with the column-offset term
        (shifts × nc, hidden) in `dtype`. `decode` gathers from the whole tile's P with one
        flat index: slicing a band of columns first would copy it for every chunk."""
        rx = torch.cat([rx for _, rx in cols])
        term = torch.outer(rx, self.w_rel[:, 1]).to(self.dtype)  # (shifts × nc, hidden)
        return p, (torch.cat([ix for ix, _ in cols]), term)

    def _runs(self, rows: list[tuple[torch.Tensor, torch.Tensor]]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split each row shift's output rows into runs of one latent row, ≤ `run` rows long.

        Returns the latent row of each run (R,), each output row's slot (run × k + position;
        row shifts concatenated) and the row offset of every slot (R × k,; 0 where padded).
        """
        k = self.run
        lats, slots, base = [], [], 0
        for iy, _ in rows:
            n = iy.numel()
            new_lat = torch.ones(n, dtype=torch.bool, device=iy.device)
            new_lat[1:] = iy[1:] != iy[:-1]
            starts = torch.nonzero(new_lat).squeeze(1)
            pos = torch.arange(n, device=iy.device) - starts[torch.cumsum(new_lat, 0) - 1]
            new_run = pos % k == 0
            run = torch.cumsum(new_run, 0) - 1 + base
            slots.append(run * k + pos % k)
            lats.append(iy[new_run])
            base += lats[-1].numel()
        slot = torch.cat(slots)
        ry = torch.zeros(base * k, dtype=torch.float32, device=slot.device)
        ry[slot] = torch.cat([ry for _, ry in rows])
        return torch.cat(lats), slot, ry

    def decode(self, p_cols: torch.Tensor, rows: list[tuple[torch.Tensor, torch.Tensor]],
               cols: tuple[torch.Tensor, torch.Tensor], areas_cols: list[torch.Tensor],
               buf: torch.Tensor) -> torch.Tensor:
        """Decode the nr×nc grid of queries; arguments as FastDecoder.decode, `cols` from
        `columns` (`buf` unused). Returns (out_dim, nr, nc) float32 in normalised space."""
        n_r, n_c = len(rows), len(areas_cols)
        nr, nc = rows[0][0].numel(), areas_cols[0].numel()
        hd, k = self.hidden, self.run
        run_lat, slot, ry = self._runs(rows)
        n_runs, m = run_lat.numel(), n_c * nc  # runs (all row shifts); member columns
        ix, term = cols
        # (G, runs, member columns, hidden): each run's latents, once per output column
        g, ph, pw, _ = p_cols.shape
        flat = (run_lat[:, None] * pw + ix[None, :]).view(-1)
        x = p_cols.view(g, ph * pw, hd).index_select(1, flat).view(g, n_runs, m, hd)
        # layer 0: relu((P + column-offset term + ry·w_row) · S_0 + T_0), as
        # relu(B + ry · C) with B = (P + column term) · S_0 + T_0 and C = w_row · S_0 per run
        # and column: one pass over the (runs, k, m, hidden) activations, ry a per-row scalar
        w_row = self.w_rel[:, 0].to(self.dtype)
        base = x[0] + term  # (runs, m, hidden)
        if self.scale_group is not None:
            s0 = x[self.scale_group]
            b = torch.addcmul(x[self.shift_group], base, s0)
            c = s0 * w_row
        else:
            b, c = base.add_(x[self.shift_group]), w_row.expand_as(base)
        ry = ry.to(self.dtype).view(n_runs, k, 1, 1)
        h = torch.addcmul(b.unsqueeze(1), ry, c.unsqueeze(1)).relu_()  # (runs, k, m, hidden)
        for layer, w in enumerate(self.layers, start=1):
            h = self._modulate(torch.mm(h.view(-1, hd), w).view(h.shape), x, layer)
        # the output layer computed transposed: a 3-wide GEMM output is slow
        pred = torch.addmm(self.out_b, self.out_w, h.view(-1, hd).t()).float()
        pred = pred.view(-1, n_runs * k, m).index_select(1, slot)  # (3, n_r × nr, m)
        pred = pred.view(-1, n_r, nr, n_c, nc)  # (3, R, nr, C, nc)
        if n_r * n_c == 1:
            return pred[:, 0, :, 0]
        ry_s = torch.stack([r for _, r in rows])  # (R, nr)
        rx_s = torch.stack(areas_cols)  # (C, nc)
        areas = (ry_s[:, :, None, None] * rx_s[None, None]).abs() + AREA_EPS  # (R, nr, C, nc)
        # each corner weighted by the area of the rectangle opposite it (local ensemble)
        weights = areas.flip(0, 2) / areas.sum((0, 2))[None, :, None]
        out = pred[:, 0, :, 0] * weights[0, :, 0]
        for r, c in [(r, c) for r in range(n_r) for c in range(n_c)][1:]:
            out.addcmul_(pred[:, r, :, c], weights[r, :, c])  # (a strided sum((1, 3)) is slow)
        return out

    def _modulate(self, h: torch.Tensor, x: torch.Tensor, layer: int) -> torch.Tensor:
        """h (runs, k, m, hidden) of render layer `layer` -> relu(h · S + T), in place;
        x (G, runs, m, hidden): the gathered P, broadcast over each run's rows."""
        shift = x[self.shift_group + layer].unsqueeze(1)
        if self.scale_group is not None:
            torch.addcmul(shift, h, x[self.scale_group + layer].unsqueeze(1), out=h)
        else:
            h.add_(shift)
        return h.relu_()


Decoder = FastDecoder | LmfDecoder


def _pieces(dec, p: torch.Tensor, ax: _Axis, ay: _Axis, col_span: tuple[int, int],
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


def make_decoder(model: SRModel, dtype: torch.dtype, device: torch.device) -> Decoder:
    """The model's decoder split for `render`, its MLP in `dtype`.

    A snapshot of the weights (some are copies): build a new one after they change.
    """
    return LmfDecoder(model, dtype, device) if isinstance(model, LMLIIF) else FastDecoder(
        model, dtype, device)


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
    grey = out.shape[2] == 1
    device = img.device
    h, w = img.shape[-2:]
    plan = make_plan(model, (h, w), max_memory=max_memory, tile=tile, chunk=chunk,
                     device=device, dtype=dtype)
    cfg = model.config
    shifts = [-1, 1] if cfg.local_ensemble else [0]
    eps = ENSEMBLE_EPS_SHIFT if cfg.local_ensemble else 0.0
    ay, ax = _Axis(H, h, shifts, eps, device), _Axis(W, w, shifts, eps, device)
    dec = make_decoder(model, dtype, device) if decoder is None else decoder
    # the official cell: ones * (2 / H) in float32, then scaled by the latent grid size
    rel_cell = (float(torch.tensor(2 / H) * h), float(torch.tensor(2 / W) * w))
    halo = model.encoder.receptive_radius + TILE_MARGIN
    x = (img.float() - 0.5) / 0.5  # the official input normalisation
    maxval = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}.get(out.dtype)
    members = len(shifts) ** 2
    buf = torch.empty(dec.buffer_numel(members, plan.chunk), dtype=dtype, device=device)
    chunk, col_piece = plan.chunk, plan.chunk
    if isinstance(dec, LmfDecoder):
        # rows of a run share their gathered P: per query it shrinks by the run length, so
        # chunks may hold that many more queries (up to 4×: the hidden activations grow), cut
        # into columns narrow enough for about 8 runs of rows per chunk
        dec.set_scale(H, h)
        chunk = plan.chunk * min(dec.run, 4)
        col_piece = max(8, chunk // (8 * dec.run))

    # LM-LIIF's per-query work is many small operations that one thread each runs best:
    # decode its pieces side by side on the CPU's threads (each piece its own output block)
    threads = torch.get_num_threads() if (device.type == "cpu" and
                                          isinstance(dec, LmfDecoder)) else 1
    inference = torch.is_inference_mode_enabled()

    def decode_piece(piece) -> int:
        j0, j1, c0, c1, p_cols, cols, areas_cols, rows = piece
        with torch.inference_mode(inference), torch.no_grad():
            pred = dec.decode(p_cols, rows, cols, areas_cols, buf)  # (3, nr, nc)
            rgb = pred.mul_(0.5).add_(0.5)
            if grey:
                rgb = rgb.mean(0, keepdim=True)  # (1, nr, nc)
            if maxval is not None:
                rgb = rgb.clamp_(0, 1).mul_(maxval).round_()
            # (nr, nc, C); exact integers when quantised, so numpy's cast is exact
            out[j0 - wy:j1 - wy, c0 - wx:c1 - wx] = rgb.permute(1, 2, 0).cpu().numpy()
        return (j1 - j0) * (c1 - c0)

    # the latents whose output pixels the window holds; tiles start at the first of them
    lat_y, lat_x = (0, h), (0, w)
    if window is not None:
        lat_y = int(ay.owner[wy]), int(ay.owner[wy + wh - 1]) + 1
        lat_x = int(ax.owner[wx]), int(ax.owner[wx + ww - 1]) + 1
    done, total = 0, wh * ww
    for a0 in range(lat_y[0], lat_y[1], plan.tile):
        a1 = min(lat_y[1], a0 + plan.tile)
        r0, r1 = ay.span(a0, a1)
        r0, r1 = max(r0, wy), min(r1, wy + wh)
        if r0 >= r1:
            continue
        for b0 in range(lat_x[0], lat_x[1], plan.tile):
            b1 = min(lat_x[1], b0 + plan.tile)
            t0, t1 = ax.span(b0, b1)
            t0, t1 = max(t0, wx), min(t1, wx + ww)
            if t0 >= t1:
                continue
            # input crop with halo; P region = latents [a0 - 2, a1 + 2) clipped to the image
            iy0, iy1 = max(0, a0 - halo), min(h, a1 + halo)
            ix0, ix1 = max(0, b0 - halo), min(w, b1 + halo)
            py0, py1 = max(0, a0 - TILE_MARGIN + 1), min(h, a1 + TILE_MARGIN - 1)
            px0, px1 = max(0, b0 - TILE_MARGIN + 1), min(w, b1 + TILE_MARGIN - 1)
            crop = x[None, :, iy0:iy1, ix0:ix1].contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=encoder_dtype,
                                enabled=encoder_dtype != torch.float32):
                feat = model.encode(crop)  # (1, C, th, tw)
            feat = feat.float()
            # latents one beyond the P region feed its 3×3 unfolding; beyond the image: zeros
            fy0, fy1 = max(0, py0 - 1) - iy0, min(h, py1 + 1) - iy0
            fx0, fx1 = max(0, px0 - 1) - ix0, min(w, px1 + 1) - ix0
            p = dec.pmap(feat[:, :, fy0:fy1, fx0:fx1], rel_cell)  # (fy1-fy0, fx1-fx0, hidden)
            del feat
            # crop P to the P region (the extra ring had wrong unfolding at crop borders)
            oy, ox = py0 - (fy0 + iy0), px0 - (fx0 + ix0)
            p = dec.crop(p, oy, py1 - py0, ox, px1 - px0)  # a view
            pieces = _pieces(dec, p, ax, ay, (t0, t1), (r0, r1), col_piece, chunk, px0, py0)
            if threads > 1:  # LM-LIIF on the CPU: pieces side by side, one thread each
                with ThreadPoolExecutor(threads) as pool, _torch_threads(1):
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
