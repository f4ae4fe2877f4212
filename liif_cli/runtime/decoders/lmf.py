"""LM-LIIF's decoder for the engine (`engine.render`): the latent MLP on the grid, the
16-wide render MLP per query, in runs of output rows that share their latents."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from liif_cli.model.ensemble import separable_weights
from liif_cli.model.lmf import LMLIIF, LmfConfig, clip_rel_cell

from .base import Offsets, Schedule

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
        self.members = 4 if cfg.local_ensemble else 1
        self.channels = self.channels_of(cfg)
        self.groups = self.channels // hd
        self.scale_group = 1 if cfg.mod_scale else None  # P group of layer 0's S
        self.shift_group = 1 + (cfg.render_depth if cfg.mod_scale else 0)  # ... of its T

    @staticmethod
    def channels_of(cfg) -> int:
        """P channels: layer 0's pre-activation, S (with scale modulations) and T per layer."""
        return cfg.render_hidden * (1 + cfg.render_depth * (1 + int(cfg.mod_scale)))

    @staticmethod
    def plan_widths(config: LmfConfig) -> tuple[int, int]:
        width = LmfDecoder.channels_of(config)  # gathered per member and query
        # hidden activations per query grow with the rows a run broadcasts to (up to 4×)
        return width, 4 * (width + 4 * LMF_QUERY_LIVE_HIDDEN * config.render_hidden)

    def schedule(self, out_rows: int, lat_rows: int, chunk: int,
                 device: torch.device) -> Schedule:
        """Rows per run (`rows_per_run`): the row scale, rounded up (1 when downscaling). The
        rows of a run share their gathered P: per query it shrinks by the run length, so chunks
        may hold that many more queries (up to 4×: the hidden activations grow), cut into
        columns narrow enough for about 8 runs of rows per chunk. Per query the work is many
        small operations that one thread each runs best: on the CPU, pieces run side by side.
        """
        run = max(1, -(-out_rows // lat_rows))
        chunk = chunk * min(run, 4)
        threads = torch.get_num_threads() if device.type == "cpu" else 1
        return Schedule(chunk=chunk, col_piece=max(8, chunk // (8 * run)), threads=threads,
                        rows_per_run=run)

    def buffer_numel(self, members: int, chunk: int) -> int:
        return 0  # decode allocates per chunk: at most the gathered P, bounded by the plan

    def work(self) -> tuple[int, int]:
        per_latent = (self.h_conv.numel() + sum(w.numel() for w, _ in self.h_rest)
                      + self.r_z.numel())
        # per member: the offset terms, the hidden layers, the output layer, and a
        # multiply-add per hidden unit and layer for the modulations
        per_query = (self.w_rel.numel() + sum(w.numel() for w in self.layers)
                     + self.out_w.numel() + self.hidden * self.cfg.render_depth)
        return per_latent, self.members * per_query

    @staticmethod
    def crop(p: torch.Tensor, y0: int, ph: int, x0: int, pw: int) -> torch.Tensor:
        # P is (G, h, w, hidden); contiguous, for decode's flat gather (a copy once per tile)
        return p[:, y0:y0 + ph, x0:x0 + pw].contiguous()

    def pmap(self, feat: torch.Tensor, rel_cell: torch.Tensor) -> torch.Tensor:
        """(1, C, h, w) latents -> P (G, h, w, hidden) in `dtype`.

        Computed in strips of rows (`PMAP_STRIP_LATENTS` latents each) into P, so that the
        latent MLP's activations never exist for the whole tile at once.
        """
        _, _, h, w = feat.shape
        p = torch.empty((self.groups, h, w, self.hidden), dtype=self.dtype, device=feat.device)
        cell = clip_rel_cell(rel_cell)  # the official LMF convention beyond ×4
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

    def columns(self, p: torch.Tensor, cols: Offsets
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """P itself and, for a column range (`cols` as in LiifDecoder), the latent column of
        each shift's output columns, concatenated, with the column-offset term
        (shifts × nc, hidden) in `dtype`. `decode` gathers from the whole tile's P with one
        flat index: slicing a band of columns first would copy it for every chunk."""
        rx = torch.cat([rx for _, rx in cols])
        term = torch.outer(rx, self.w_rel[:, 1]).to(self.dtype)  # (shifts × nc, hidden)
        return p, (torch.cat([ix for ix, _ in cols]), term)

    @staticmethod
    def _runs(rows: Offsets, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split each row shift's output rows into runs of one latent row, ≤ `k` rows long.

        Returns the latent row of each run (R,), each output row's slot (run × k + position;
        row shifts concatenated) and the row offset of every slot (R × k,; 0 where padded).
        """
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

    def decode(self, p_cols: torch.Tensor, rows: Offsets, cols: tuple[torch.Tensor, torch.Tensor],
               areas_cols: list[torch.Tensor], buf: torch.Tensor,
               sched: Schedule) -> torch.Tensor:
        """Decode the nr×nc grid of queries; arguments as LiifDecoder.decode, `cols` from
        `columns` (`buf` unused), runs of `sched.rows_per_run` rows. Returns (out_dim, nr, nc)
        float32 in normalised space."""
        n_r, n_c = len(rows), len(areas_cols)
        nr, nc = rows[0][0].numel(), areas_cols[0].numel()
        hd, k = self.hidden, sched.rows_per_run
        run_lat, slot, ry = self._runs(rows, k)
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
        weights = separable_weights(torch.stack([r for _, r in rows]),
                                    torch.stack(areas_cols))  # (R, nr, C, nc)
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
