"""Coordinate grids: (row, col) at pixel centres in [-1, 1]; `grid_sample` would want (x, y).

Pixel i of n has its centre at -1 + (2i + 1) / n. The arithmetic is done exactly as the official
`make_coord` does it (float32, same order of operations), so that nearest-latent lookups made from
our coordinates agree bit for bit with the official code's, even at the ties the ensemble's
`eps_shift` exists to break.
"""

from __future__ import annotations

import torch


def inverse(n: int) -> torch.Tensor:
    """1 / n as a float64 scalar tensor (on the CPU; MPS has no float64): the same bits as
    Python's `1 / n`, also when n is a traced size, so that an exported graph (ONNX) does this
    arithmetic exactly as the eager code does (a graph's own float32 sizes would not)."""
    return 1.0 / torch.scalar_tensor(n, dtype=torch.float64)


def coord_seq(n: int, start: int = 0, stop: int | None = None, *, device=None) -> torch.Tensor:
    """Centres of pixels start..stop-1 of an axis of n pixels, float32, shape (stop - start,)."""
    stop = n if stop is None else stop
    r = inverse(n)  # half a pixel in [-1, 1] units: (v1 - v0) / (2n), in float64
    idx = torch.arange(start, stop, device=device).float()
    # the official order of operations: (-1 + r) and 2r rounded to float32, then in float32
    return (-1 + r).float() + (2 * r).float() * idx  # 0-dim CPU scalars: fine on any device


def make_coord(shape: tuple[int, int], *, flatten: bool = True, device=None) -> torch.Tensor:
    """Centre coordinates of an H×W grid: (H*W, 2) if flatten else (H, W, 2), (row, col) order."""
    h, w = shape
    ys, xs = coord_seq(h, device=device), coord_seq(w, device=device)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # (H, W, 2)
    return grid.view(-1, 2) if flatten else grid


def make_cell(shape: tuple[int, int], n: int, *, device=None) -> torch.Tensor:
    """Cell size (2/H, 2/W) of an H×W output, repeated for n queries: (n, 2)."""
    h, w = shape
    cell = torch.ones(n, 2, device=device)
    cell[:, 0] *= 2 / h
    cell[:, 1] *= 2 / w
    return cell


def to_pixel_samples(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) image -> coordinates (H*W, 2) and their RGB values (H*W, 3)."""
    coord = make_coord(img.shape[-2:], device=img.device)
    rgb = img.reshape(img.shape[0], -1).permute(1, 0)
    return coord, rgb
