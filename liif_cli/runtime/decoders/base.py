"""The decoder protocol `engine.render` drives, and the schedule a decoder asks for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

Offsets = list[tuple[torch.Tensor, torch.Tensor]]  # per shift: (latent index, offset)


@dataclass(frozen=True)
class Schedule:
    """How one render feeds its decoder: queries per chunk, columns per piece, how many pieces
    run side by side (threads; 1: one after the other, each using all threads), and what else
    the decoder needs to know of this image. It is the render's own: a decoder is shared by
    renders on several threads (`liif view`), so it keeps no per-image state itself."""

    chunk: int
    col_piece: int
    threads: int
    rows_per_run: int = 1  # output rows decoded against one gathered latent row (LM-LIIF)


class Decoder(Protocol):
    """What `engine.render` needs of an architecture's decoder (a snapshot of the weights:
    build a new one after they change)."""

    dtype: torch.dtype  # the per-query MLP's dtype

    @staticmethod
    def plan_widths(config: Any) -> tuple[int, int]:
        """(channels of P per latent, bytes per ensemble member and query while decoding)."""
        ...

    def schedule(self, out_rows: int, lat_rows: int, chunk: int,
                 device: torch.device) -> Schedule:
        """The chunking for one image of out_rows from lat_rows (changes nothing here)."""
        ...

    def buffer_numel(self, members: int, chunk: int) -> int:
        """Elements of the scratch buffer `decode` gets (0: none)."""
        ...

    def work(self) -> tuple[int, int]:
        """Multiply-adds (per latent of P, per output pixel with all its ensemble members):
        what `engine.render_work` counts to weigh one way of rendering against another."""
        ...

    def pmap(self, feat: torch.Tensor, rel_cell: torch.Tensor) -> torch.Tensor:
        """(1, C, h, w) latents and the image's relative cell (2,) -> P of those latents."""
        ...

    def crop(self, p: torch.Tensor, y0: int, ph: int, x0: int, pw: int) -> torch.Tensor:
        """P restricted to latents [y0, y0 + ph) × [x0, x0 + pw)."""
        ...

    def columns(self, p: torch.Tensor, cols: Offsets) -> tuple[torch.Tensor, Any]:
        """What a piece of columns needs of P, made once per piece: (P part, column terms)."""
        ...

    def decode(self, p_cols: torch.Tensor, rows: Offsets, cols: Any,
               areas_cols: list[torch.Tensor], buf: torch.Tensor,
               sched: Schedule) -> torch.Tensor:
        """The nr×nc queries of a chunk of the render `sched` (from `schedule`) ->
        (out_dim, nr, nc) float32, normalised space."""
        ...
