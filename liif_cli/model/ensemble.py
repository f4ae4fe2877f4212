"""LIIF's local ensemble (§3.2 of the paper), written once.

A query at `coord` is decoded from the 4 latents around it, the *members*: the query moved by
half a latent cell up or down and left or right (plus a tiny `ENSEMBLE_EPS_SHIFT`, so that ties
on latent borders go one way), clamped inside the grid, then snapped to its nearest latent.
Each member's prediction is weighted by the area of the rectangle between the query and the
member *opposite* it, normalised by the total: the closer a latent, the larger its weight.
Without the local ensemble there is one member, the nearest latent itself.

Conventions, as the official code (`query_rgb` in yinboc/liif) has them, in normalised [-1, 1]
coordinates and (row, col) order:
- members come in the order (-1, -1), (-1, 1), (1, -1), (1, 1); member i's opposite is 3 - i;
- offsets (`rel`) are `coord - latent centre` in latent-cell units (× h rows, × w columns);
  the relative cell is the cell (2/H, 2/W) in the same units;
- the shift is `coord + v * (1/n) + eps`, then clamped to ±`COORD_CLAMP`.

Who uses what: `ensemble_reference` is the plain 2-D form (the oracle's: `LIIF.query`,
`LMLIIF.render`); `axis_members` + `member_weights` / `separable_weights` are the separable
form that `LIIF.query_fast`, the engine's decoders and the ONNX graph use (a query's row fixes
its row latents and offsets, its column the column ones).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .coords import coord_seq, inverse, make_coord

ENSEMBLE_EPS_SHIFT = 1e-6  # nudge off exact latent borders so ties go one way (official value)
COORD_CLAMP = 1 - 1e-6  # keep shifted queries strictly inside the grid (official value)
# Added to each member's area by the official code, so that the weights stay finite (all four
# even) when every area is 0: a query on a latent centre at the image border, where both
# members of an axis clamp to the same latent (odd integer scales hit this exactly).
AREA_EPS = 1e-9

MemberDecoder = Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor | None], torch.Tensor]


def axis_shifts(local_ensemble: bool) -> list[int]:
    """Per axis, the members' shifts in half latent cells: -1 and 1, or just 0 without it."""
    return [-1, 1] if local_ensemble else [0]


def shift_eps(local_ensemble: bool) -> float:
    return ENSEMBLE_EPS_SHIFT if local_ensemble else 0.0


def members(local_ensemble: bool) -> list[tuple[int, int]]:
    """(row shift, column shift) of each member, in the official order."""
    return [(vy, vx) for vy in axis_shifts(local_ensemble) for vx in axis_shifts(local_ensemble)]


def shift(coord: torch.Tensor, v: int, n: int, eps: float) -> torch.Tensor:
    """One axis of query coordinates moved by v half cells of an n-latent axis, clamped. The
    shift is computed in float64 and rounded once, as the official `vx * rx + eps_shift`."""
    offset = (v * inverse(n) + eps).float()  # a 0-dim CPU scalar: fine on any device
    return (coord + offset).clamp(-COORD_CLAMP, COORD_CLAMP)


def nearest_latent(shifted: torch.Tensor, n: int) -> torch.Tensor:
    """The latent `grid_sample(mode='nearest', align_corners=False)` picks on an n-latent axis:
    its unnormalisation ((x + 1)·n − 1) / 2, rounded half to even; a long tensor. Plain
    arithmetic, so that graphs without grid_sample (ONNX, other runtimes) compute it too."""
    return torch.round(((shifted + 1) * n - 1) / 2).long()


def rel_cell(cell: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(…, 2) cells (2/H, 2/W) in latent-cell units of an h×w grid: 2/s per axis at scale s."""
    return torch.stack([cell[..., 0] * h, cell[..., 1] * w], -1)


def axis_members(coord: torch.Tensor, n: int, local_ensemble: bool
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per axis shift: (latent index, offset from that latent's centre in latent cells), for
    one axis of query coordinates (any shape) over an n-latent axis."""
    coord = coord.detach().float()
    centres = coord_seq(n, device=coord.device)  # (n,) the latents' centres, as make_coord
    eps = shift_eps(local_ensemble)
    out = []
    for v in axis_shifts(local_ensemble):
        idx = nearest_latent(shift(coord, v, n, eps), n)
        out.append((idx, (coord - centres[idx]) * n))
    return out


def area(ry: torch.Tensor, rx: torch.Tensor) -> torch.Tensor:
    """A member's area |ry·rx| + AREA_EPS, as the official code computes it (bit for bit).

    The epsilon is a 1-element tensor, not a Python number, so that it survives graph
    optimisers: onnxscript's rewriter (torch.onnx.export's default `optimize=True`) deletes an
    `x + 1e-9` with a scalar constant as an add of zero (it matches 0 within 1e-8), which
    made the ONNX graph divide 0 by 0 at border pixels on latent centres (NaN rows/columns at
    ×3 and ×7). The export's self-check and tests/test_export.py try such pixels.
    """
    return torch.abs(ry * rx) + ry.new_full((1,), AREA_EPS)


def opposite_weights(areas: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Each member's weight: the area of the member opposite it over the total. `areas` holds
    the members along `dims` in the official order (flipping them pairs i with 3 - i)."""
    return areas.flip(dims) / areas.sum(dims, keepdim=True)


def member_weights(ry: torch.Tensor, rx: torch.Tensor, dim: int) -> torch.Tensor:
    """Weights of members stacked along `dim` of their row and column offsets `ry`, `rx`."""
    return opposite_weights(area(ry, rx), (dim,))


def separable_weights(ry: torch.Tensor, rx: torch.Tensor) -> torch.Tensor:
    """Weights of a grid of queries: ry (R, nr) per row shift and output row, rx (C, nc) per
    column shift and output column -> (R, nr, C, nc), member (r, c) = official r·C + c."""
    areas = area(ry[:, :, None, None], rx[None, None])
    return opposite_weights(areas, (0, 2))


def ensemble_reference(grids: list[torch.Tensor], coord: torch.Tensor,
                       rel_cells: torch.Tensor | None, local_ensemble: bool,
                       decode: MemberDecoder) -> torch.Tensor:
    """The local ensemble as the official code writes it, for the oracles.

    grids: (B, C_i, h, w) latent grids to sample at each member (all the same h×w); coord
    (B, Q, 2); rel_cells (B, Q, 2) from `rel_cell`, or None. `decode(sampled, rel, rel_cells)`
    gets each grid's nearest vectors (B, Q, C_i) and the offsets (B, Q, 2) and returns the
    member's prediction (B, Q, out). Returns the blend (B, Q, out).
    """
    b, _, h, w = grids[0].shape
    feat_coord = make_coord((h, w), flatten=False, device=coord.device)
    feat_coord = feat_coord.permute(2, 0, 1).unsqueeze(0).expand(b, 2, h, w)
    eps = shift_eps(local_ensemble)

    def sample(src: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        out = F.grid_sample(src, grid, mode="nearest", align_corners=False)
        return out[:, :, 0, :].permute(0, 2, 1)  # (B, Q, channels)

    preds, ry, rx = [], [], []
    for vy, vx in members(local_ensemble):
        # grid_sample wants (x, y): (B, 1, Q, 2)
        grid = torch.stack([shift(coord[..., 1], vx, w, eps),
                            shift(coord[..., 0], vy, h, eps)], -1).unsqueeze(1)
        rel = coord - sample(feat_coord, grid)  # from the latent's centre
        rel = torch.stack([rel[..., 0] * h, rel[..., 1] * w], -1)  # in latent cells
        preds.append(decode([sample(g, grid) for g in grids], rel, rel_cells))
        ry.append(rel[..., 0])
        rx.append(rel[..., 1])
    if len(preds) == 1:
        return preds[0]
    weights = member_weights(torch.stack(ry), torch.stack(rx), 0)  # (4, B, Q)
    return (torch.stack(preds) * weights.unsqueeze(-1)).sum(0)
