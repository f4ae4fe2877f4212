"""LIIF's decoder for the engine (`engine.render`): the first layer on the latent grid, the
rest per query, all ensemble members of a chunk in one batched matmul per layer.

- The MLP's first layer is linear in [unfolded latent, rel. coord, cell]. Its latent part is a
  3×3 convolution of the latent grid (unfold channel order c*9 + ky*3 + kx, zero padding), so
  it is computed once per latent (`P`, (h, w, hidden)) instead of once per query and ensemble
  member; the cell part is one constant per image, folded into P's bias.
- The row-offset term is added to the few latent rows a chunk needs before its columns are
  gathered, so the full-size work of the first layer is one gather, one add (the column-offset
  term) and one ReLU.
- The 4 ensemble members of a chunk go through the remaining layers as one batched matmul each;
  on the CPU through oneDNN with bias and ReLU fused (`kernels`, checked against `addmm`
  before use; plain `addmm` + `relu_` elsewhere).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from liif_cli.model.ensemble import separable_weights
from liif_cli.model.liif import LIIF, LiifConfig

from .base import Offsets, Schedule
from .kernels import linear_relu_fn

# Buffers of (members × queries × hidden) alive at once while decoding a chunk: the gathered
# first layer, one layer's input and its output, and the gathered rows (≤ 2 members' worth).
QUERY_LIVE_BUFFERS = 4


class LiifDecoder:
    """LIIF's MLP split for the engine: P-map weights, offset weights and the remaining layers.

    P (`pmap`, per latent): the first layer's latent part as a 3×3 convolution of the grid,
    with the cell part folded into its bias; (h, w, hidden) float32. Per query (`decode`): the
    row-offset term is added to the few latent rows a chunk needs, the column-offset term to
    each gathered column, then the remaining layers run as one batched matmul for all members.
    """

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
        self.members = 4 if cfg.local_ensemble else 1
        self.dtype = dtype
        self.linear_relu = linear_relu_fn(device, dtype)

    @staticmethod
    def plan_widths(config: LiifConfig) -> tuple[int, int]:
        width = max(config.hidden)  # the widest activation of a member's query
        return width, width * 4 * QUERY_LIVE_BUFFERS  # float32 upper bound

    def schedule(self, out_rows: int, lat_rows: int, chunk: int,
                 device: torch.device) -> Schedule:
        return Schedule(chunk=chunk, col_piece=chunk, threads=1)

    def buffer_numel(self, members: int, chunk: int) -> int:
        return members * chunk * self.hidden

    def work(self) -> tuple[int, int]:
        per_query = self.w_rel.numel() + sum(w.numel() for w, _ in self.layers)
        return self.conv_w.numel(), self.members * per_query

    @staticmethod
    def crop(p: torch.Tensor, y0: int, ph: int, x0: int, pw: int) -> torch.Tensor:
        return p[y0:y0 + ph, x0:x0 + pw]  # P is (h, w, hidden)

    def pmap(self, feat: torch.Tensor, rel_cell: torch.Tensor) -> torch.Tensor:
        """(1, C, h, w) latents -> (h, w, hidden) first-layer pre-activations minus offsets."""
        bias = self.b0
        if self.w_cell is not None:
            bias = bias + self.w_cell @ rel_cell
        feat = feat.contiguous(memory_format=torch.channels_last)
        p = F.conv2d(feat, self.conv_w, bias, padding=self.conv_w.shape[-1] // 2)
        return p[0].permute(1, 2, 0).contiguous()  # (h, w, hidden); a view when channels_last

    def columns(self, p: torch.Tensor, cols: Offsets) -> tuple[torch.Tensor, Offsets]:
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

    def decode(self, p_cols: torch.Tensor, rows: Offsets, cols: Offsets,
               areas_cols: list[torch.Tensor], buf: torch.Tensor,
               sched: Schedule) -> torch.Tensor:
        """Decode the nr×nc grid of queries (`sched`: unused, every query is decoded alone).

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
        weights = separable_weights(torch.stack([ry for _, ry in rows]),
                                    torch.stack(areas_cols))  # (R, nr, C, nc)
        weights = weights.permute(0, 2, 1, 3).reshape(m, nr, nc)  # members in official order
        return (pred * weights).sum(1)
