"""Encoders without their upsampling tail: EDSR(-baseline) and RDN, as in the official LIIF code.

Each maps a normalised image (B, 3, h, w) to a latent grid (B, out_dim, h, w), one vector per
input pixel. Module and parameter names follow the official files exactly so that official
state dicts load strictly. Every encoder reports `receptive_radius`: how many input pixels
beyond a latent's own can change it (one per 3×3 convolution), which tiled encoding needs.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

# Official EDSR keeps a DIV2K mean shift it never applies in the LIIF encoder; we keep it too,
# because its parameters are in every official state dict.
DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class MeanShift(nn.Conv2d):
    """Frozen 1×1 convolution adding/subtracting the dataset mean (unused in the forward pass)."""

    def __init__(self, rgb_range: float, sign: int):
        super().__init__(3, 3, kernel_size=1)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.bias.data = sign * rgb_range * torch.tensor(DIV2K_RGB_MEAN)
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    def __init__(self, n_feats: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(_conv(n_feats, n_feats), nn.ReLU(True), _conv(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.body(x)
        if self.res_scale != 1:  # EDSR-baseline has 1: skip a full-size multiply per block
            res = res * self.res_scale
        return res + x


class EDSR(nn.Module):
    """EDSR body: head conv, n_resblocks residual blocks, a closing conv, one global skip."""

    def __init__(self, n_resblocks: int, n_feats: int, res_scale: float, rgb_range: float = 1):
        super().__init__()
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.add_mean = MeanShift(rgb_range, sign=1)
        self.head = nn.Sequential(_conv(3, n_feats))
        body: list[nn.Module] = [ResBlock(n_feats, res_scale) for _ in range(n_resblocks)]
        body.append(_conv(n_feats, n_feats))
        self.body = nn.Sequential(*body)
        self.out_dim = n_feats
        self.receptive_radius = 1 + 2 * n_resblocks + 1  # head + 2 per block + closing conv
        # memory planning (engine.ENCODER_LIVE_TENSORS × this × 4 bytes per pixel): a conv's
        # input and output; measured 1.4 KB/px for EDSR-baseline
        self.peak_channels = 2 * n_feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)  # (B, n_feats, h, w)
        return self.body(x) + x


class RDBConv(nn.Module):
    def __init__(self, cin: int, growth: int, k: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, growth, k, padding=(k - 1) // 2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv(x)), 1)  # dense connection: channels grow by `growth`


class RDB(nn.Module):
    def __init__(self, g0: int, growth: int, n_convs: int, k: int):
        super().__init__()
        self.convs = nn.Sequential(*[RDBConv(g0 + c * growth, growth, k) for c in range(n_convs)])
        self.LFF = nn.Conv2d(g0 + n_convs * growth, g0, 1)  # local feature fusion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LFF(self.convs(x)) + x


RDN_CONFIGS = {"A": (20, 6, 32), "B": (16, 8, 64)}  # (blocks D, convs per block C, growth G)


class RDN(nn.Module):
    """Residual Dense Network body: shallow features, D dense blocks, global feature fusion."""

    def __init__(self, G0: int = 64, RDNkSize: int = 3, RDNconfig: str = "B"):
        super().__init__()
        if RDNconfig not in RDN_CONFIGS:
            raise CheckpointError(f"unknown RDN config {RDNconfig!r}; expected one of A, B")
        d, c, g = RDN_CONFIGS[RDNconfig]
        k = RDNkSize
        self.D = d
        self.SFENet1 = nn.Conv2d(3, G0, k, padding=(k - 1) // 2)
        self.SFENet2 = nn.Conv2d(G0, G0, k, padding=(k - 1) // 2)
        self.RDBs = nn.ModuleList([RDB(G0, g, c, k) for _ in range(d)])
        self.GFF = nn.Sequential(nn.Conv2d(d * G0, G0, 1), nn.Conv2d(G0, G0, k, padding=(k - 1) // 2))
        self.out_dim = G0
        self.receptive_radius = (k // 2) * (2 + d * c + 1)  # SFE1, SFE2, all dense convs, GFF
        # memory planning: a dense block's full concatenation (G0 + C·G) plus f1, the block
        # input and output and the running global fusion; measured 7.4 KB/px
        self.peak_channels = (G0 + c * g) + 4 * G0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.SFENet1(x)
        x = self.SFENet2(f1)
        # Global feature fusion is a 1×1 conv of all D block outputs concatenated (D·G0
        # channels). Applying each block's slice of that conv as the block finishes and summing
        # is the same function without holding the D outputs at once (16× less memory).
        fuse = self.GFF[0]
        g0 = x.shape[1]
        acc = None
        for i, block in enumerate(self.RDBs):
            x = block(x)
            part = F.conv2d(x, fuse.weight[:, i * g0:(i + 1) * g0])
            acc = part if acc is None else acc + part
        acc = acc + fuse.bias.view(1, -1, 1, 1)
        return self.GFF[1](acc) + f1  # global residual from the first features


def _edsr_builder(defaults: dict[str, Any]) -> Callable[..., nn.Module]:
    def build(n_resblocks=defaults["n_resblocks"], n_feats=defaults["n_feats"],
              res_scale=defaults["res_scale"], scale=2, no_upsampling=False, rgb_range=1):
        _require_no_upsampling(no_upsampling)
        return EDSR(n_resblocks, n_feats, res_scale, rgb_range)

    return build


def _build_rdn(G0=64, RDNkSize=3, RDNconfig="B", scale=2, no_upsampling=False):
    _require_no_upsampling(no_upsampling)
    return RDN(G0, RDNkSize, RDNconfig)


def _require_no_upsampling(no_upsampling: bool) -> None:
    if not no_upsampling:
        raise CheckpointError("encoder has an upsampling tail (no_upsampling=False); "
                              "LIIF encoders must be built with no_upsampling=True")


# Names and defaults as registered in the official code (models/edsr.py, models/rdn.py).
ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "edsr-baseline": _edsr_builder({"n_resblocks": 16, "n_feats": 64, "res_scale": 1}),
    "edsr": _edsr_builder({"n_resblocks": 32, "n_feats": 256, "res_scale": 0.1}),
    "rdn": _build_rdn,
}


def make_encoder(name: str, args: dict[str, Any]) -> nn.Module:
    if name not in ENCODERS:
        raise CheckpointError(f"unknown encoder {name!r}; supported: {', '.join(ENCODERS)}")
    try:
        return ENCODERS[name](**args)
    except TypeError as e:
        raise CheckpointError(f"bad arguments for encoder {name!r}: {e}") from None
