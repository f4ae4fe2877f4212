"""Make tests/data/lmf_golden: outputs of the official LM-LIIF code on a seeded random model.

Runs the official implementation (github HeZongyao/LMF), its own models/{models,edsr,mlp,lmmlp,
lmliif}.py and utils.py read unmodified from a git copy, on the CPU. Only the package's
__init__ is ours (it imports just those modules: the full one pulls in SwinIR's timm and
more), and utils' tensorboardX import is satisfied by an empty stand-in (it is only used for
logging). The official forward keeps one `.cuda()` call, in `gen_feats`, which it skips when
given `inp_coord`; we pass the latent grid's coordinates, exactly what it would compute.

    python scripts/make_lmf_golden.py --official /path/to/LMF/.git [--out tests/data/lmf_golden]

Writes `model.pth` (official layout, saved by the official model's own state_dict) and
`golden.npz`: inputs `inp_<name>` (3, h, w) in [0, 1], eval-mode outputs `eval_<name>_<H>x<W>`
(H*W, 3) in normalised space, and one train-mode output `train_<name>_<H>x<W>` for random
queries `coord_*`/`cell_*`. The encoder is small (EDSR-baseline, 2 blocks, 16 features) so the
file stays small; the decoder is the official EDSR-baseline LM-LIIF's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from make_liif_golden import load_official  # scripts/ is on sys.path when run

REPO = Path(__file__).resolve().parents[1]

FILES = ["models/models.py", "models/edsr.py", "models/mlp.py", "models/lmmlp.py",
         "models/lmliif.py", "utils.py"]
SPEC = {
    "name": "lmliif",
    "args": {
        "encoder_spec": {"name": "edsr-baseline",
                         "args": {"n_resblocks": 2, "n_feats": 16, "no_upsampling": True}},
        "imnet_spec": {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 16,
                                                 "hidden_depth": 6, "mod_scale": True,
                                                 "mod_shift": True}},
        "hypernet_spec": {"name": "mlp", "args": {"out_dim": 208, "hidden_list": [208]}},
        "local_ensemble": True, "feat_unfold": True, "cell_decode": True, "mod_input": True,
    },
}
INPUTS = {"a": (12, 10), "b": (9, 14)}  # name: (h, w)
# no downscale: the official latent MLP reads the first h*w query cells, so it fails on
# fewer queries than latents (ours takes the image's one cell and downscales too)
SIZES = {"a": [(24, 20), (42, 35), (48, 40)], "b": [(12, 40), (9, 14)]}


def make_coord(h: int, w: int) -> torch.Tensor:
    """Pixel centres, float32, the official formula."""
    def seq(n):
        r = 1 / n
        return -1 + r + (2 * r) * torch.arange(n).float()
    return torch.stack(torch.meshgrid(seq(h), seq(w), indexing="ij"), -1)  # (h, w, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="git dir of HeZongyao/LMF")
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--out", default=str(REPO / "tests" / "data" / "lmf_golden"))
    args = ap.parse_args()
    models = load_official(args.official, args.rev, FILES, "edsr, mlp, lmmlp, lmliif")

    torch.manual_seed(0)
    model = models.make(SPEC)
    for m in list(model.imnet.layers) + list(model.hypernet.layers):
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.kaiming_normal_(m.weight)  # outputs far from flat
            torch.nn.init.normal_(m.bias, std=0.1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = dict(SPEC)
    spec["sd"] = model.state_dict()
    torch.save({"model": spec, "epoch": 1}, out / "model.pth")

    arrays = {}
    g = torch.Generator().manual_seed(1)
    for name, (h, w) in INPUTS.items():
        inp = torch.rand(3, h, w, generator=g)
        arrays[f"inp_{name}"] = inp.numpy()
        x = ((inp - 0.5) / 0.5)[None]
        inp_coord = make_coord(h, w)[None]
        model.eval()
        with torch.no_grad():
            for H, W in SIZES[name]:
                coord = make_coord(H, W).view(1, -1, 2)
                cell = torch.ones_like(coord)
                cell[:, :, 0] *= 2 / H
                cell[:, :, 1] *= 2 / W
                pred = model(x, coord, cell, inp_coord=inp_coord, bsize=97)  # several chunks
                arrays[f"eval_{name}_{H}x{W}"] = pred[0].numpy()
        # train mode: random queries (at least h*w of them: the latent MLP reads cell[:, :h*w])
        model.train()
        H, W = 2 * h + 1, 3 * w
        coord = torch.rand(1, h * w + 5, 2, generator=g) * 2 - 1
        cell = torch.ones_like(coord)
        cell[:, :, 0] *= 2 / H
        cell[:, :, 1] *= 2 / W
        with torch.no_grad():
            pred = model(x, coord, cell, inp_coord=inp_coord)
        arrays[f"coord_{name}"], arrays[f"cell_{name}"] = coord[0].numpy(), cell[0].numpy()
        arrays[f"train_{name}"] = pred[0].numpy()
    np.savez_compressed(out / "golden.npz", **arrays)
    print(f"wrote {out}/model.pth and golden.npz ({len(arrays)} arrays) from {args.official} "
          f"{args.rev}")


if __name__ == "__main__":
    main()
