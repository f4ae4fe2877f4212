"""LM-LIIF: LIIF with a Latent Modulated Function decoder (He & Jin, CVPR 2024).

LIIF runs a 256-wide MLP once per output pixel and ensemble member. LMF moves the wide MLP onto
the latent grid: once per latent (input pixel), a *latent MLP* (the official `hypernet`) maps
the 3×3-unfolded latent plus the relative cell to
    [scales (depth × hidden) | shifts (depth × hidden) | compressed latent (hidden)]
and, once per output pixel and ensemble member, a tiny *render MLP* (the official `imnet`,
`lmmlp`: hidden 16, depth 6) decodes [compressed latent, rel. coord, rel. cell] with every
hidden layer's output modulated as `h * (scale + 1) + shift` before its ReLU. Local ensemble,
cell decoding and the coordinate conventions are LIIF's (`ensemble.py`); the member of each query
takes its modulations and compressed latent from the same (nearest, shifted) latent.

Official facts this file follows (github HeZongyao/LMF, models/lmliif.py, lmmlp.py, mlp.py):
- spec `{'name': 'lmliif', 'args': {encoder_spec, imnet_spec: {'name': 'lmmlp', 'args':
  {out_dim, hidden_dim, hidden_depth, mod_scale, mod_shift}}, hypernet_spec: {'name': 'mlp',
  'args': {out_dim, hidden_list}}, local_ensemble, feat_unfold, cell_decode, mod_input}}`;
  the hypernet's out_dim is recomputed by the model (EDSR-baseline LM-LIIF: 208 = 2·6·16 + 16).
- parameter names: `encoder.*`, `hypernet.layers.{0,2}.*` (Linear 578→208, 208→208 for
  EDSR-baseline), `imnet.layers.{0,2,...,12}.*` (Linear 20→16, five 16→16, 16→3).
- modulation channels: scales of layer l at [l·hidden, (l+1)·hidden), shifts at
  depth·hidden + the same (only one kind: both at l·hidden); the compressed latent is the last
  `hidden` channels. The output layer is not modulated.
- the latent MLP sees the relative cell of the image's queries: the official code pairs latent
  i with query i's cell (`cell[:, :h*w]`), all equal within an image; we take the first one.
- the cell is clipped at the training scale, as the official demo and test do before calling
  the model (`cell × max(s / 4, 1)`, `scale_max = 4`): at ×6 the model sees ×4's cell. Ours
  does it inside the model (`clip_rel_cell`, per axis), so every path (reference, training,
  engine, ONNX) follows it; nothing changes up to ×4. LIIF has no such convention.

`LMLIIF.query` is the plain reference forward (the oracle); `forward` (training) computes the
same modulations with the first latent layer as a 3×3 convolution (`modulations`), and the
inference engine (`liif_cli.engine`) goes further. Pure API as in `liif.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .encoders import make_encoder
from .ensemble import ensemble_reference, rel_cell
from .liif import MLP, decoder_switches, linear_stack, spec_parts

LMF_NAME = "lmliif"  # official model name in checkpoints
# The largest scale LM-LIIF models train at (the official `scale_max`, demo.py and test.py):
# beyond it, the cell is clipped to the cell at this scale (`clip_rel_cell`).
TRAIN_SCALE_MAX = 4


def clip_rel_cell(rel: torch.Tensor) -> torch.Tensor:
    """The official LMF convention for cells beyond training: cell × max(s / 4, 1) at scale s.

    `rel` (…, 2) is the relative cell, 2/s per axis (s = H/h, per axis here; the official demo
    has one scale for both). Unchanged, bit for bit, at scales up to `TRAIN_SCALE_MAX`.
    """
    return rel * torch.clamp_min((2 / rel) / TRAIN_SCALE_MAX, 1.0)



@dataclass(frozen=True)
class LmfConfig:
    """Architecture of an LM-LIIF; defaults are the official EDSR-baseline LM-LIIF
    (configs/train-lmf/train_edsr-baseline-lmliif.yaml)."""

    encoder: str = "edsr-baseline"  # official encoder name: edsr-baseline, edsr, rdn
    encoder_args: dict[str, Any] = field(default_factory=lambda: {"no_upsampling": True})
    render_hidden: int = 16  # render MLP width (lmmlp hidden_dim)
    render_depth: int = 6  # modulated hidden layers of the render MLP (lmmlp hidden_depth)
    latent_hidden: tuple[int, ...] = (208,)  # latent MLP hidden widths (hypernet hidden_list)
    mod_scale: bool = True  # latent MLP emits a scale per hidden unit of each render layer
    mod_shift: bool = True  # ... and a shift
    mod_input: bool = True  # render MLP's latent input is the compressed latent, not the raw one
    out_dim: int = 3  # RGB
    local_ensemble: bool = True
    feat_unfold: bool = True  # the latent MLP sees each latent's 3×3 neighbourhood
    cell_decode: bool = True

    @property
    def mod_dim(self) -> int:
        """Modulation channels: (scale + shift) × hidden × depth."""
        return (int(self.mod_scale) + int(self.mod_shift)) * self.render_hidden * self.render_depth

    @property
    def latent_out(self) -> int:
        """Latent MLP outputs: modulations, then the compressed latent (EDSR-baseline: 208)."""
        return self.mod_dim + (self.render_hidden if self.mod_input else 0)

    def to_spec(self) -> dict[str, Any]:
        """The official `{'name': 'lmliif', 'args': {...}}` spec (without 'sd')."""
        return {
            "name": LMF_NAME,
            "args": {
                "encoder_spec": {"name": self.encoder, "args": dict(self.encoder_args)},
                "imnet_spec": {"name": "lmmlp", "args": {
                    "out_dim": self.out_dim, "hidden_dim": self.render_hidden,
                    "hidden_depth": self.render_depth, "mod_scale": self.mod_scale,
                    "mod_shift": self.mod_shift}},
                "hypernet_spec": {"name": "mlp", "args": {
                    "out_dim": self.latent_out, "hidden_list": list(self.latent_hidden)}},
                "local_ensemble": self.local_ensemble,
                "feat_unfold": self.feat_unfold,
                "cell_decode": self.cell_decode,
                "mod_input": self.mod_input,
            },
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "LmfConfig":
        """Read an official lmliif spec; defaults are the official constructor's."""
        args, enc = spec_parts(spec, LMF_NAME, f"an LM-LIIF model ({LMF_NAME!r})")
        imnet, hyper = args.get("imnet_spec"), args.get("hypernet_spec")
        if not isinstance(imnet, dict) or imnet.get("name") != "lmmlp":
            raise CheckpointError("LM-LIIF spec has no render MLP (imnet_spec of name 'lmmlp')")
        if not isinstance(hyper, dict) or hyper.get("name") != "mlp":
            raise CheckpointError("LM-LIIF spec has no latent MLP (hypernet_spec of name 'mlp')")
        iargs, hargs = imnet.get("args") or {}, hyper.get("args") or {}
        if iargs.get("use_conv") or hargs.get("use_conv"):
            raise CheckpointError("LM-LIIF with use_conv (1×1 convolutions) is not supported")
        # cmsr_spec (multi-scale rendering) is a test-time option of the official code, not
        # part of the function; a spec may carry it (demo.py sets it to None): ignored.
        return cls(
            encoder=enc["name"],
            encoder_args=dict(enc.get("args") or {}),
            render_hidden=int(iargs["hidden_dim"]),
            render_depth=int(iargs["hidden_depth"]),
            latent_hidden=tuple(int(h) for h in hargs.get("hidden_list", ())),
            mod_scale=bool(iargs.get("mod_scale", True)),
            mod_shift=bool(iargs.get("mod_shift", True)),
            mod_input=bool(args.get("mod_input", False)),  # official constructor default
            out_dim=int(iargs.get("out_dim", 3)),
            **decoder_switches(args),
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latent_hidden"] = list(self.latent_hidden)
        return d


class ModulatedMLP(nn.Module):
    """The render MLP: `depth` Linear/ReLU pairs and an output Linear, names `layers.{0,2,..}`
    as the official `lmmlp`; each hidden Linear's output is modulated before its ReLU."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, depth: int,
                 mod_scale: bool, mod_shift: bool):
        super().__init__()
        self.layers = linear_stack(in_dim, (hidden,) * depth, out_dim)
        self.hidden, self.depth = hidden, depth
        self.mod_scale, self.mod_shift = mod_scale, mod_shift

    @property
    def linears(self) -> list[nn.Linear]:
        return [m for m in self.layers if isinstance(m, nn.Linear)]

    def split(self, mod: torch.Tensor) -> tuple[list[torch.Tensor | None],
                                                list[torch.Tensor | None]]:
        """(scales, shifts) of each hidden layer from the modulation channels (last dim); None
        where the model has no such modulation. One split: its backward is one concatenation,
        where a narrow per layer would zero-fill a gradient of mod's full size for each."""
        hd, n = self.hidden, self.depth
        parts = mod.split(hd, dim=-1)
        shift_at = n if self.mod_scale else 0  # shifts follow all the scales
        scales = list(parts[:n]) if self.mod_scale else [None] * n
        shifts = list(parts[shift_at:shift_at + n]) if self.mod_shift else [None] * n
        return scales, shifts

    def forward(self, x: torch.Tensor, mod: torch.Tensor,
                pre: list[torch.Tensor] | None = None) -> torch.Tensor:
        """x (..., in_dim), mod (..., mod_dim) -> (..., out_dim). `pre`, if given, receives each
        hidden layer's modulated pre-activation (before its ReLU)."""
        lin = self.linears
        scales, shifts = self.split(mod)
        for layer, scale, shift in zip(lin[:-1], scales, shifts):
            x = layer(x)
            if scale is not None:
                x = x * (scale + 1.0)  # "+ 1": zero modulations leave the layer as it is
            if shift is not None:
                x = x + shift
            if pre is not None:
                pre.append(x)
            x = torch.relu(x)
        return lin[-1](x)


class LMLIIF(nn.Module):
    def __init__(self, config: LmfConfig = LmfConfig()):
        super().__init__()
        self.config = config
        self.encoder = make_encoder(config.encoder, config.encoder_args)
        c = self.encoder.out_dim
        latent_in = c * (9 if config.feat_unfold else 1) + (2 if config.cell_decode else 0)
        self.hypernet = MLP(latent_in, config.latent_out, tuple(config.latent_hidden))
        render_in = (config.render_hidden if config.mod_input else c) + 2 + (
            2 if config.cell_decode else 0)  # latent + rel. coord (+ rel. cell)
        self.imnet = ModulatedMLP(render_in, config.out_dim, config.render_hidden,
                                  config.render_depth, config.mod_scale, config.mod_shift)

    @property
    def feat_dim(self) -> int:
        return self.encoder.out_dim

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """Normalised image (B, 3, h, w) -> latent grid (B, C, h, w)."""
        return self.encoder(img)

    def rel_cells(self, cell: torch.Tensor | None, h: int, w: int) -> torch.Tensor | None:
        """(B, Q, 2) query cells -> relative cells in latent cells, clipped at the training
        scale (`clip_rel_cell`, the official LMF convention); None without cell decoding."""
        if not self.config.cell_decode:
            return None
        if cell is None:
            raise ValueError("this model decodes cells: pass `cell`")
        return clip_rel_cell(rel_cell(cell, h, w))

    def _rel_cell(self, cell: torch.Tensor | None, h: int, w: int) -> torch.Tensor | None:
        """The image's relative cell (B, 2) for the latent MLP: its first query's."""
        cells = self.rel_cells(cell, h, w)
        return None if cells is None else cells[:, 0]

    def modulations_reference(self, feat: torch.Tensor, cell: torch.Tensor | None
                              ) -> torch.Tensor:
        """Latent MLP, plainly: (B, C, h, w) latents -> (B, latent_out, h, w)."""
        b, c, h, w = feat.shape
        x = F.unfold(feat, 3, padding=1).view(b, c * 9, h, w) if self.config.feat_unfold else feat
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1)  # (B, h*w, C*9)
        rel_cell = self._rel_cell(cell, h, w)
        if rel_cell is not None:
            x = torch.cat([x, rel_cell[:, None].expand(b, h * w, 2)], dim=-1)
        return self.hypernet(x).view(b, h, w, -1).permute(0, 3, 1, 2)

    def modulations(self, feat: torch.Tensor, cell: torch.Tensor | None) -> torch.Tensor:
        """Same function as `modulations_reference`, with the first layer as a convolution.

        The first Linear over [unfolded latent (c*9 + ky*3 + kx), rel. cell] is a 3×3
        convolution of the latent grid plus a per-image bias; the 9× unfolded grid is never
        materialised. Differentiable (training).
        """
        b, c, h, w = feat.shape
        lins = self.hypernet.linears
        first = lins[0]
        k = 3 if self.config.feat_unfold else 1
        w_feat = first.weight[:, :c * k * k].reshape(-1, c, k, k)
        x = F.conv2d(feat, w_feat, None, padding=k // 2)  # (B, hidden, h, w)
        bias = first.bias.expand(b, -1)
        rel_cell = self._rel_cell(cell, h, w)
        if rel_cell is not None:
            bias = bias + rel_cell.to(first.weight.dtype) @ first.weight[:, c * k * k:].t()
        x = x + bias[:, :, None, None]
        for lin in lins[1:]:
            x = F.conv2d(torch.relu(x), lin.weight[:, :, None, None], lin.bias)
        return x  # (B, latent_out, h, w)

    def render_latent(self, feat: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """What the render MLP reads per latent: the compressed latent, or the raw one."""
        return mod[:, self.config.mod_dim:] if self.config.mod_input else feat

    def render(self, mod: torch.Tensor, feat: torch.Tensor, coord: torch.Tensor,
               cell: torch.Tensor | None) -> torch.Tensor:
        """Render MLP at (B, Q, 2) coordinates with local ensemble -> (B, Q, out_dim).

        mod: `modulations(feat, cell)`; the plain official formulation (one nearest lookup
        per ensemble member), kept as the oracle's second half and used in training.
        """
        cfg = self.config
        if cfg.cell_decode and cell is None:
            raise ValueError("this model decodes cells: pass `cell`")
        h, w = feat.shape[-2:]
        cells = self.rel_cells(cell, h, w)

        def member(sampled: list[torch.Tensor], rel: torch.Tensor,
                   cells: torch.Tensor | None) -> torch.Tensor:
            z, mods = sampled  # the member's latent, its modulations
            inp = [z, rel] + ([cells] if cells is not None else [])
            return self.imnet(torch.cat(inp, dim=-1), mods)

        grids = [self.render_latent(feat, mod), mod[:, :cfg.mod_dim]]
        return ensemble_reference(grids, coord, cells, cfg.local_ensemble, member)

    def query(self, feat: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor | None = None
              ) -> torch.Tensor:
        """The reference forward: plain latent MLP, then `render`. (B, Q, 2) -> (B, Q, 3)."""
        return self.render(self.modulations_reference(feat, cell), feat, coord, cell)

    def decode(self, feat: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor | None = None
               ) -> torch.Tensor:
        """The decoder on an encoded grid, the training way (`modulations`, then `render`)."""
        return self.render(self.modulations(feat, cell), feat, coord, cell)

    def forward(self, img: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self.decode(self.encode(img), coord, cell)
