"""The official pixel normalisation: images in [0, 1] go into a model as (x - 0.5) / 0.5, in
[-1, 1], and its outputs come back as y * 0.5 + 0.5. Every path into or out of a model (render,
training, export, bench's oracle) uses these two, so that no copy can drift."""

from __future__ import annotations

import torch

PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> the model's input, (x - 0.5) / 0.5 (a new tensor)."""
    return (x - PIXEL_MEAN) / PIXEL_STD


def denormalise(y: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """A model's output -> pixels in [0, 1] units (unclamped), y * 0.5 + 0.5; `inplace` reuses
    `y`'s memory (a render's chunk)."""
    if inplace:
        return y.mul_(PIXEL_STD).add_(PIXEL_MEAN)
    return y * PIXEL_STD + PIXEL_MEAN
