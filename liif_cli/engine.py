"""Memory-bounded LIIF inference: tiled encoding, first layer on the latent grid, chunked queries.

The same function as `LIIF.query` (the oracle), reorganised; nothing here approximates:
- The MLP's first layer is linear in [unfolded latent, rel. coord, cell]. Its latent part is a
  3×3 convolution of the latent grid (unfold channel order c*9 + ky*3 + kx, zero padding), so we
  compute it once per latent pixel (`P`, (hidden, h, w)) instead of once per query and ensemble
  member; the cell part is one constant per image, folded into P's bias.
- Query coordinates are separable: row j of the output only fixes the row latent index and the
  row offset, column i only the column ones. Each chunk's coordinates are generated on the fly
  from 1-D axes; there are no full-size coordinate or cell tensors.
- The 4 ensemble members of a chunk go through the remaining layers as one batched matmul each.
- The latent grid is encoded in tiles with a halo of `receptive_radius + TILE_MARGIN` input
  pixels, so tiles give the same latents as one whole-image pass; each tile decodes the output
  pixels whose centres fall in it, straight into the caller's output buffer.

Tile and chunk sizes come from a memory budget (`max_memory` bytes of working memory), so peak
memory does not grow with the output beyond the output buffer itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .model.coords import coord_seq
from .model.liif import AREA_EPS, COORD_CLAMP, ENSEMBLE_EPS_SHIFT, LIIF

DEFAULT_MAX_MEMORY = 512 * 2**20  # bytes of working memory for tiles and chunks
# Latents a tile needs beyond its own, on each side: 1 for the ensemble's neighbour lookups,
# 1 for float disagreement at tile borders, 1 for the 3×3 unfolding.
TILE_MARGIN = 3
ENCODER_LIVE_TENSORS = 6  # activations alive at once while encoding, per widest layer (estimate)
QUERY_LIVE_BUFFERS = 3  # (4Q, hidden) buffers alive at once while decoding a chunk
MIN_TILE = 16  # latents per side below which tiling stops shrinking (halo would dominate)
# Queries per chunk beyond which decoding gets slower, not faster: (4 × chunk × hidden) floats
# should stay near the CPU's L2/L3 (measured here: 4096 → 15.7 s, 16384 → 19.0 s, 256² → ×4).
MAX_CHUNK = 4096

ProgressFn = Callable[[int, int], None]  # (output pixels done, total)


@dataclass(frozen=True)
class Plan:
    """How one image is cut up: latent tile size (per side) and queries per chunk."""

    tile: int
    chunk: int


def encoder_bytes_per_pixel(model: LIIF) -> int:
    """Rough peak bytes per input pixel while encoding (float32), from the widest layer."""
    enc = model.encoder
    widest = max((m.in_channels + m.out_channels for m in enc.modules()
                  if isinstance(m, torch.nn.Conv2d)), default=64)
    return 4 * ENCODER_LIVE_TENSORS * widest


def make_plan(model: LIIF, in_hw: tuple[int, int], *, max_memory: int = DEFAULT_MAX_MEMORY,
              tile: int | None = None, chunk: int | None = None) -> Plan:
    """Pick the largest tile and chunk that fit half of `max_memory` each."""
    hidden = max(model.config.hidden)
    if chunk is None:
        per_query = 4 * hidden * 4 * QUERY_LIVE_BUFFERS  # 4 members, float32
        chunk = max(256, min(MAX_CHUNK, (max_memory // 2) // per_query))
    if tile is None:
        halo = model.encoder.receptive_radius + TILE_MARGIN
        per_px = encoder_bytes_per_pixel(model) + 4 * hidden  # encoder peak + the P map
        side = int(math.isqrt(max(1, (max_memory // 2) // per_px))) - 2 * halo
        tile = max(MIN_TILE, min(side, max(in_hw)))
    return Plan(tile=int(tile), chunk=int(chunk))


class _Axis:
    """Per-axis lookups for one output axis of n_out pixels over a latent axis of n_lat."""

    def __init__(self, n_out: int, n_lat: int, shifts: list[int], eps: float, device):
        coord = coord_seq(n_out, device=device)  # (n_out,) query centres
        lat_centres = coord_seq(n_lat, device=device)
        r = 1 / n_lat
        self.index, self.rel = [], []
        for v in shifts:
            shifted = (coord + (v * r + eps)).clamp_(-COORD_CLAMP, COORD_CLAMP)
            idx = _nearest_index(shifted, n_lat)
            self.index.append(idx)  # (n_out,) latent index, as grid_sample 'nearest' picks it
            self.rel.append((coord - lat_centres[idx]) * n_lat)  # offset in latent cells
        # which latent each output pixel's centre falls in: decides the tile that decodes it
        self.owner = torch.div((2 * torch.arange(n_out, device=device) + 1) * n_lat,
                               2 * n_out, rounding_mode="floor")

    def span(self, a: int, b: int) -> tuple[int, int]:
        """Output pixels whose centres lie in latents [a, b)."""
        lo = int(torch.searchsorted(self.owner, a))
        hi = int(torch.searchsorted(self.owner, b))
        return lo, hi


def _nearest_index(coord: torch.Tensor, n: int) -> torch.Tensor:
    """Latent index grid_sample(mode='nearest', align_corners=False) picks for 1-D coords.

    Uses grid_sample itself on a 1×n ramp, so ties round exactly as in the official code.
    """
    ramp = torch.arange(n, dtype=torch.float32, device=coord.device).view(1, 1, 1, n)
    grid = torch.stack([coord, torch.zeros_like(coord)], dim=-1).view(1, 1, -1, 2)
    idx = F.grid_sample(ramp, grid, mode="nearest", align_corners=False)
    return idx.view(-1).round().long()


class FastDecoder:
    """The MLP split for the fast path: P-map weights, offset weights, and remaining layers."""

    def __init__(self, model: LIIF, dtype: torch.dtype):
        cfg = model.config
        lin = model.imnet.linears
        w0, b0 = lin[0].weight.detach(), lin[0].bias.detach()  # (hidden, in_dim)
        c = model.feat_dim * (9 if cfg.feat_unfold else 1)
        k = 3 if cfg.feat_unfold else 1
        self.conv_w = w0[:, :c].reshape(w0.shape[0], model.feat_dim, k, k)  # c*9 + ky*3 + kx
        self.w_rel = w0[:, c:c + 2].float()  # (hidden, 2): row, col offset
        self.w_cell = w0[:, c + 2:c + 4].float() if cfg.cell_decode else None
        self.b0 = b0
        self.layers = [(l.weight.detach().t().contiguous().to(dtype), l.bias.detach().to(dtype))
                       for l in lin[1:]]
        self.dtype = dtype
        self.ensemble = cfg.local_ensemble

    def pmap(self, feat: torch.Tensor, rel_cell: tuple[float, float]) -> torch.Tensor:
        """(1, C, h, w) latents -> (h*w, hidden) first-layer pre-activations minus offsets."""
        bias = self.b0.clone()
        if self.w_cell is not None:
            cell = torch.tensor(rel_cell, dtype=torch.float32, device=feat.device)
            bias = bias + self.w_cell @ cell
        p = F.conv2d(feat, self.conv_w, bias, padding=self.conv_w.shape[-1] // 2)
        return p[0].permute(1, 2, 0).reshape(-1, p.shape[1]).contiguous()  # (h*w, hidden)

    def decode(self, p: torch.Tensor, pw: int, rows: list[tuple[torch.Tensor, torch.Tensor]],
               cols: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Decode the nr×nc grid of queries given per-axis (local index, offset) per shift.

        Returns (nr, nc, out_dim) float32 in normalised space.
        """
        nr, nc = rows[0][0].numel(), cols[0][0].numel()
        members, areas = [], []
        for iy, ry in rows:
            for ix, rx in cols:
                idx = (iy[:, None] * pw + ix[None, :]).view(-1)
                h = p.index_select(0, idx).view(nr, nc, -1)  # (nr, nc, hidden)
                h += (ry[:, None] * self.w_rel[:, 0]).to(h.dtype)[:, None, :]
                h += (rx[:, None] * self.w_rel[:, 1]).to(h.dtype)[None, :, :]
                members.append(h.view(nr * nc, -1))
                areas.append((ry[:, None] * rx[None, :]).abs().view(-1) + AREA_EPS)
        x = torch.cat(members) if len(members) > 1 else members[0]  # (4Q, hidden)
        x = x.to(self.dtype).relu_()
        for i, (w, b) in enumerate(self.layers):
            x = torch.addmm(b, x, w)
            if i < len(self.layers) - 1:
                x.relu_()
        pred = x.float().view(len(members), nr * nc, -1)  # (4, Q, out_dim)
        if len(members) == 1:
            return pred[0].view(nr, nc, -1)
        total = torch.stack(areas).sum(0)
        # each corner weighted by the area of the rectangle opposite it (local ensemble)
        weights = torch.stack(areas[::-1]) / total  # (4, Q)
        out = (pred * weights.unsqueeze(-1)).sum(0)
        return out.view(nr, nc, -1)


def render(model: LIIF, img: torch.Tensor, out_hw: tuple[int, int], out: np.ndarray | None = None,
           *, max_memory: int = DEFAULT_MAX_MEMORY, tile: int | None = None,
           chunk: int | None = None, dtype: torch.dtype = torch.float32,
           encoder_dtype: torch.dtype = torch.float32, on_progress: ProgressFn | None = None
           ) -> np.ndarray:
    """Decode image `img` (3, h, w) in [0, 1] to an H×W RGB image.

    `out` may be a preallocated (H, W, 3) array: uint8 or uint16 (values quantised by
    rounding) or float32 (raw model output in [0, 1] units, unclamped). Returns `out`.
    """
    H, W = out_hw
    if out is None:
        out = np.empty((H, W, 3), dtype=np.float32)
    assert out.shape[:2] == (H, W), (out.shape, out_hw)
    device = img.device
    h, w = img.shape[-2:]
    plan = make_plan(model, (h, w), max_memory=max_memory, tile=tile, chunk=chunk)
    cfg = model.config
    shifts = [-1, 1] if cfg.local_ensemble else [0]
    eps = ENSEMBLE_EPS_SHIFT if cfg.local_ensemble else 0.0
    ay, ax = _Axis(H, h, shifts, eps, device), _Axis(W, w, shifts, eps, device)
    dec = FastDecoder(model, dtype)
    rel_cell = (float(torch.tensor(2 / H) * h), float(torch.tensor(2 / W) * w))
    halo = model.encoder.receptive_radius + TILE_MARGIN
    x = (img.float() - 0.5) / 0.5  # the official input normalisation
    maxval = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}.get(out.dtype)

    done, total = 0, H * W
    for a0 in range(0, h, plan.tile):
        a1 = min(h, a0 + plan.tile)
        r0, r1 = ay.span(a0, a1)
        if r0 == r1:
            continue
        for b0 in range(0, w, plan.tile):
            b1 = min(w, b0 + plan.tile)
            c0, c1 = ax.span(b0, b1)
            if c0 == c1:
                continue
            # input crop with halo; P region = latents [a0 - 2, a1 + 2) clipped to the image
            iy0, iy1 = max(0, a0 - halo), min(h, a1 + halo)
            ix0, ix1 = max(0, b0 - halo), min(w, b1 + halo)
            py0, py1 = max(0, a0 - TILE_MARGIN + 1), min(h, a1 + TILE_MARGIN - 1)
            px0, px1 = max(0, b0 - TILE_MARGIN + 1), min(w, b1 + TILE_MARGIN - 1)
            with torch.autocast(device.type, dtype=encoder_dtype,
                                enabled=encoder_dtype != torch.float32):
                feat = model.encode(x[None, :, iy0:iy1, ix0:ix1])  # (1, C, th, tw)
            feat = feat.float()
            # latents one beyond the P region feed its 3×3 unfolding; beyond the image: zeros
            fy0, fy1 = max(0, py0 - 1) - iy0, min(h, py1 + 1) - iy0
            fx0, fx1 = max(0, px0 - 1) - ix0, min(w, px1 + 1) - ix0
            p = dec.pmap(feat[:, :, fy0:fy1, fx0:fx1], rel_cell)  # ((fy1-fy0)*(fx1-fx0), hid)
            del feat
            pw_full = fx1 - fx0
            # crop P to the P region (the extra ring had wrong unfolding at crop borders)
            p = p.view(fy1 - fy0, pw_full, -1)
            oy, ox = py0 - (fy0 + iy0), px0 - (fx0 + ix0)
            p = p[oy:oy + (py1 - py0), ox:ox + (px1 - px0)].reshape(-1, p.shape[-1])
            p = p.to(dtype).contiguous()
            pw = px1 - px0
            cols = [(ix[c0:c1] - px0, rx[c0:c1]) for ix, rx in zip(ax.index, ax.rel)]
            rows_per_chunk = max(1, plan.chunk // (c1 - c0))
            for j0 in range(r0, r1, rows_per_chunk):
                j1 = min(r1, j0 + rows_per_chunk)
                rows = [(iy[j0:j1] - py0, ry[j0:j1]) for iy, ry in zip(ay.index, ay.rel)]
                pred = dec.decode(p, pw, rows, cols)  # (nr, nc, 3), normalised
                rgb = pred * 0.5 + 0.5
                if maxval is not None:
                    rgb = (rgb.clamp_(0, 1) * maxval).round_()
                out[j0:j1, c0:c1] = rgb.cpu().numpy().astype(out.dtype, copy=False)
                done += (j1 - j0) * (c1 - c0)
                if on_progress is not None:
                    on_progress(done, total)
    return out
