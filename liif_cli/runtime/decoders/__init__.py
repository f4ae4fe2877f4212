"""Each architecture's decoder, split for the engine's tiles and chunks, behind one protocol.

`engine.render` encodes a tile of latents, asks the decoder for P (`pmap`: per latent, what
does not depend on the query), then decodes the tile's output pixels in pieces (`columns`,
then `decode` per chunk of rows) with the local ensemble's separable lookups
(`model.ensemble.axis_members`). What differs between architectures (what P holds, how a
chunk is decoded, how many queries a chunk may hold, whether pieces run side by side) lives in
the decoder, so that the loop has no architecture branches:

- `liif.LiifDecoder`: LIIF (P = the MLP's first layer on the grid; the rest per query).
- `lmf.LmfDecoder`: LM-LIIF (P = the latent MLP's modulations; the render MLP per query).

Offsets: `rows` / `cols` lists hold, per ensemble shift, (latent index in P, offset in latent
cells) for each output row / column of the piece; decoders return (out_dim, nr, nc) float32
in normalised space.
"""

from __future__ import annotations

import torch

from liif_cli.model import LIIF, LMLIIF, SRModel

from .base import Decoder, Offsets, Schedule
from .kernels import fused_linear_in_use, linear_relu_fn
from .liif import LiifDecoder
from .lmf import LmfDecoder

DECODERS: dict[type, type] = {LIIF: LiifDecoder, LMLIIF: LmfDecoder}  # model class -> decoder


def decoder_type(model: SRModel) -> type:
    """The decoder class of a model's architecture."""
    for cls in type(model).__mro__:
        if cls in DECODERS:
            return DECODERS[cls]
    raise TypeError(f"no engine decoder for {type(model).__name__}")


def make_decoder(model: SRModel, dtype: torch.dtype, device: torch.device) -> Decoder:
    """The model's decoder split for `engine.render`, its per-query MLP in `dtype`.

    A snapshot of the weights (some are copies): build a new one after they change.
    """
    return decoder_type(model)(model, dtype, device)


__all__ = ["DECODERS", "Decoder", "LiifDecoder", "LmfDecoder", "Offsets", "Schedule",
           "decoder_type", "fused_linear_in_use", "linear_relu_fn", "make_decoder"]
