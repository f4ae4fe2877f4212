"""LIIF: encoder + MLP decoder with feature unfolding, local ensemble and cell decoding.

`LIIF.query` is a plain, direct implementation of the official forward pass (`query_rgb` in
yinboc/liif), kept as the oracle that the engine (`liif_cli.runtime.engine`) is tested against;
`query_fast` is the same function with the first layer on the grid (training, ONNX). Both take
their local ensemble from `ensemble.py`.
Pure API: `feat = model.encode(img)` then `rgb = model.query(feat, coord, cell)`; nothing is
stored between calls and the device always comes from the tensors.

Conventions (all in normalised [-1, 1] coordinates, (row, col) order):
- coord (B, Q, 2): query points; cell (B, Q, 2): output pixel size (2/H_out, 2/W_out).
- images are normalised as (x - 0.5) / 0.5 on the way in and back on the way out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .encoders import make_encoder
from .ensemble import axis_members, ensemble_reference, member_weights, rel_cell


@dataclass(frozen=True)
class LiifConfig:
    """Architecture of a LIIF model; maps one to one onto the official `model` spec."""

    encoder: str = "edsr-baseline"  # official encoder name: edsr-baseline, edsr, rdn
    encoder_args: dict[str, Any] = field(default_factory=lambda: {"no_upsampling": True})
    hidden: tuple[int, ...] = (256, 256, 256, 256)  # MLP hidden widths (imnet hidden_list)
    out_dim: int = 3  # RGB
    local_ensemble: bool = True  # blend the 4 surrounding latents' predictions
    feat_unfold: bool = True  # each latent becomes its 3×3 neighbourhood
    cell_decode: bool = True  # the MLP also sees the output pixel's size

    def to_spec(self) -> dict[str, Any]:
        """The official `{'name': 'liif', 'args': {...}}` spec (without 'sd')."""
        return {
            "name": "liif",
            "args": {
                "encoder_spec": {"name": self.encoder, "args": dict(self.encoder_args)},
                "imnet_spec": {"name": "mlp", "args": {"out_dim": self.out_dim,
                                                       "hidden_list": list(self.hidden)}},
                "local_ensemble": self.local_ensemble,
                "feat_unfold": self.feat_unfold,
                "cell_decode": self.cell_decode,
            },
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "LiifConfig":
        """Read an official model spec; defaults are the official ones."""
        args, enc = spec_parts(spec, "liif", "a LIIF model ('liif')")
        imnet = args.get("imnet_spec")
        if not isinstance(imnet, dict) or imnet.get("name") != "mlp":
            raise CheckpointError("model spec has no MLP decoder (imnet_spec of name 'mlp')")
        iargs = imnet.get("args") or {}
        return cls(
            encoder=enc["name"],
            encoder_args=dict(enc.get("args") or {}),
            hidden=tuple(int(h) for h in iargs.get("hidden_list", ())),
            out_dim=int(iargs.get("out_dim", 3)),
            **decoder_switches(args),
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def spec_parts(spec: Any, name: str, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """An official spec's args and encoder_spec, once its name is checked to be `name`."""
    if not isinstance(spec, dict) or spec.get("name") != name:
        shown = spec.get("name") if isinstance(spec, dict) else type(spec).__name__
        raise CheckpointError(f"model is {shown!r}, not {what}")
    args = spec.get("args") or {}
    enc = args.get("encoder_spec")
    if not isinstance(enc, dict) or "name" not in enc:
        raise CheckpointError("model spec has no encoder_spec")
    return args, enc


def decoder_switches(args: dict[str, Any]) -> dict[str, bool]:
    """local_ensemble, feat_unfold and cell_decode of an official spec's args (default on)."""
    return {k: bool(args.get(k, True)) for k in ("local_ensemble", "feat_unfold", "cell_decode")}


def linear_stack(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    """Linear/ReLU pairs, then an output Linear: names `layers.{0,2,4,...}`, as official."""
    layers: list[nn.Module] = []
    last = in_dim
    for h in hidden:
        layers += [nn.Linear(last, h), nn.ReLU()]
        last = h
    layers.append(nn.Linear(last, out_dim))
    return nn.Sequential(*layers)


class MLP(nn.Module):
    """Linear/ReLU stack; parameter names `layers.{0,2,4,...}` as the official `mlp`."""

    def __init__(self, in_dim: int, out_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.layers = linear_stack(in_dim, hidden, out_dim)

    @property
    def linears(self) -> list[nn.Linear]:
        return [m for m in self.layers if isinstance(m, nn.Linear)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        return self.layers(x.reshape(-1, x.shape[-1])).view(*shape, -1)


class LIIF(nn.Module):
    def __init__(self, config: LiifConfig = LiifConfig()):
        super().__init__()
        self.config = config
        self.encoder = make_encoder(config.encoder, config.encoder_args)
        feat_dim = self.encoder.out_dim * (9 if config.feat_unfold else 1)
        in_dim = feat_dim + 2 + (2 if config.cell_decode else 0)  # + rel. coord (+ rel. cell)
        self.imnet = MLP(in_dim, config.out_dim, config.hidden)

    @property
    def feat_dim(self) -> int:
        return self.encoder.out_dim

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """Normalised image (B, 3, h, w) -> latent grid (B, C, h, w)."""
        return self.encoder(img)

    def unfold(self, feat: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C*9, h, w), channel c*9 + ky*3 + kx, zero padding."""
        if not self.config.feat_unfold:
            return feat
        b, c, h, w = feat.shape
        return F.unfold(feat, 3, padding=1).view(b, c * 9, h, w)

    def query(self, feat: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor | None = None
              ) -> torch.Tensor:
        """Decode (B, Q, 2) coordinates from latent grid `feat`; returns (B, Q, out_dim)."""
        cfg = self.config
        if cfg.cell_decode and cell is None:
            raise ValueError("this model decodes cells: pass `cell`")
        feat = self.unfold(feat)  # (B, C', h, w)
        h, w = feat.shape[-2:]
        cells = rel_cell(cell, h, w) if cfg.cell_decode else None

        def member(sampled: list[torch.Tensor], rel: torch.Tensor,
                   cells: torch.Tensor | None) -> torch.Tensor:
            inp = [sampled[0], rel] + ([cells] if cells is not None else [])
            return self.imnet(torch.cat(inp, dim=-1))  # (B, Q, out_dim)

        return ensemble_reference([feat], coord, cells, cfg.local_ensemble, member)

    def query_fast(self, feat: torch.Tensor, coord: torch.Tensor,
                   cell: torch.Tensor | None = None) -> torch.Tensor:
        """Same function as `query` for arbitrary points, with the first layer on the grid.

        The first Linear is split: its latent part becomes a 3×3 convolution of the latent grid
        (computed once per latent instead of once per query and ensemble member, and without
        materialising the 9× unfolded grid); the offset and cell parts are added per query.
        The 4 members then share one matmul per remaining layer. Differentiable (training);
        traceable with dynamic sizes (the ONNX graph is this function).
        """
        cfg = self.config
        if cfg.cell_decode and cell is None:
            raise ValueError("this model decodes cells: pass `cell`")
        first, rest = self.imnet.linears[0], self.imnet.linears[1:]
        b, c, h, w = feat.shape
        k = 3 if cfg.feat_unfold else 1
        n_feat = c * k * k
        w_feat = first.weight[:, :n_feat].reshape(-1, c, k, k)  # channel c*9 + ky*3 + kx
        w_query = first.weight[:, n_feat:]  # (hidden, 2 or 4): offset (y, x), then cell
        p = F.conv2d(feat, w_feat, first.bias, padding=k // 2)  # (B, hidden, h, w)
        p = p.flatten(2).transpose(1, 2)  # (B, h*w, hidden)
        ys = axis_members(coord[..., 0], h, cfg.local_ensemble)  # per shift: (index, offset)
        xs = axis_members(coord[..., 1], w, cfg.local_ensemble)
        # members in the official order; all M of them go through one gather, one small
        # matmul and one add, laid out as (B, M*Q, ...)
        mem = [(iy, ry, ix, rx) for iy, ry in ys for ix, rx in xs]
        n_mem, q = len(mem), coord.shape[1]
        flat = torch.cat([iy * w + ix for iy, _, ix, _ in mem], 1)  # (B, M*Q)
        # rows of the (B*h*w, hidden) grid: one index_select (a gather with an index expanded
        # over the channels would build that index, B*M*Q*hidden int64s, first)
        flat = flat + torch.arange(b, device=flat.device).unsqueeze(1) * (h * w)
        x = p.reshape(b * h * w, -1).index_select(0, flat.reshape(-1)).view(b, n_mem * q, -1)
        rel = torch.cat([torch.stack([ry, rx], -1) for _, ry, _, rx in mem], 1)
        if cfg.cell_decode:
            rel = torch.cat([rel, rel_cell(cell, h, w).repeat(1, n_mem, 1)], -1)
        x = (x + F.linear(rel, w_query)).view(b, n_mem, q, -1)  # first layer's output
        for lin in rest:
            x = F.linear(torch.relu(x), lin.weight, lin.bias)
        if n_mem == 1:
            return x[:, 0]
        weights = member_weights(torch.stack([ry for _, ry, _, _ in mem], 1),
                                 torch.stack([rx for _, _, _, rx in mem], 1), 1)  # (B, M, Q)
        return (x * weights.unsqueeze(-1)).sum(1)

    def decode(self, feat: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor | None = None
               ) -> torch.Tensor:
        """The decoder on an encoded grid, the training way (`query_fast`)."""
        return self.query_fast(feat, coord, cell)

    def forward(self, img: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self.decode(self.encode(img), coord, cell)

