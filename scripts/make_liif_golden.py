"""Make tests/data/liif_golden: outputs of the official LIIF code on two seeded small models.

Runs the official implementation (github yinboc/liif), its own models/{models,edsr,mlp,liif}.py
and utils.py read unmodified from a git copy, on the CPU. Only the package's __init__ is ours
(it imports just those modules: the full one also pulls in RDN, RCAN and the MetaSR baseline),
and utils' tensorboardX import is satisfied by an empty stand-in (it is only used for logging).

The official `query_rgb` moves the latent grid's coordinates to the GPU unconditionally
(`make_coord(...).cuda()`), with no argument to avoid it (unlike LM-LIIF's `inp_coord`). So,
while the official code runs, `torch.Tensor.cuda` returns the tensor itself: the coordinates
stay the CPU float32 ones `make_coord` made, the same values `.cuda()` would have copied.
Nothing else is touched.

    python scripts/make_liif_golden.py --official /path/to/liif/.git [--out tests/data/liif_golden]

Writes one checkpoint per model, `<model>.pth` (official layout, saved from the official
model's own state_dict), and `golden.npz`: inputs `inp_<image>` (3, h, w) in [0, 1], eval-mode
outputs `eval_<model>_<image>_<H>x<W>` (H*W, 3) in normalised space (the official
`batched_predict`: `gen_feat`, then `query_rgb` chunk by chunk), and train-mode outputs
`train_<model>_<image>` (Q, 3) for random queries `coord_<image>`/`cell_<image>`.

Models: `liif`, EDSR-baseline (2 blocks, 16 features) with every switch on (the paper's
LIIF) and an MLP 32-32; `fast`, the shape of the bundled `fast` model (no local ensemble, MLP
narrowing to 16-16). Seeded (torch.manual_seed), the official construction, then the MLP's
weights Kaiming-normal and its biases N(0, 0.1) so that outputs vary far from flat.

Sizes: ×1, ×3 and ×7 put output pixel centres exactly on latent centres (and on the image's
border latents); ×0.5 puts them exactly on latent edges; ×2, ×2.5, an anisotropic ×3 by ×2.5
and an up-one-way, down-the-other size fill in the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

FILES = ["models/models.py", "models/edsr.py", "models/mlp.py", "models/liif.py", "utils.py"]
ENCODER = {"name": "edsr-baseline", "args": {"n_resblocks": 2, "n_feats": 16,
                                             "no_upsampling": True}}
SPECS = {
    "liif": {"name": "liif", "args": {
        "encoder_spec": ENCODER,
        "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [32, 32]}},
        "local_ensemble": True, "feat_unfold": True, "cell_decode": True}},
    "fast": {"name": "liif", "args": {
        "encoder_spec": ENCODER,
        "imnet_spec": {"name": "mlp", "args": {"out_dim": 3, "hidden_list": [32, 16, 16]}},
        "local_ensemble": False, "feat_unfold": True, "cell_decode": True}},
}
INPUTS = {"a": (12, 10), "b": (7, 8)}  # name: (h, w)
SIZES = {  # output (H, W) per input
    "a": [(12, 10), (24, 20), (36, 30), (30, 25), (6, 5)],  # ×1, ×2, ×3, ×2.5, ×0.5
    "b": [(49, 56), (21, 20), (16, 5)],  # ×7, ×3 by ×2.5, up by 16/7 and down by 5/8
}
EVAL_BSIZE = 97  # queries per query_rgb call: several chunks per image
TRAIN_QUERIES = 60


@contextlib.contextmanager
def cuda_is_identity():
    """`tensor.cuda()` returns the tensor (see the module docstring), restored afterwards."""
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved


def load_official(git_dir: str, rev: str, files: list[str] = FILES,
                  model_modules: str = "edsr, mlp, liif") -> types.ModuleType:
    """The official `models` package, its files read unmodified from the git copy; only the
    package's __init__ is ours (it imports `model_modules`). Also serves make_lmf_golden.py."""
    src = Path(tempfile.mkdtemp(prefix="official-"))
    (src / "models").mkdir()
    for f in files:
        text = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{rev}:{f}"],
                              check=True, capture_output=True, text=True).stdout
        (src / f).write_text(text)
    (src / "models" / "__init__.py").write_text(
        f"from .models import register, make\nfrom . import {model_modules}\n")
    sys.modules["tensorboardX"] = types.SimpleNamespace(SummaryWriter=None)
    sys.path.insert(0, str(src))
    import models  # noqa: E402 - the official package, from src

    return models


def official_coord_cell(H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official demo/test queries: utils.make_coord and cell = 2 / size, (1, H*W, 2)."""
    import utils  # the official utils, from the same copy

    coord = utils.make_coord((H, W))[None]
    cell = torch.ones_like(coord)
    cell[:, :, 0] *= 2 / H
    cell[:, :, 1] *= 2 / W
    return coord, cell


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="git dir of yinboc/liif")
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--out", default=str(REPO / "tests" / "data" / "liif_golden"))
    args = ap.parse_args()
    rev = subprocess.run(["git", f"--git-dir={args.official}", "rev-parse", args.rev],
                         check=True, capture_output=True, text=True).stdout.strip()
    models = load_official(args.official, rev)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    g = torch.Generator().manual_seed(1)
    inputs = {name: torch.rand(3, h, w, generator=g) for name, (h, w) in INPUTS.items()}
    arrays = {f"inp_{name}": inp.numpy() for name, inp in inputs.items()}
    queries = {}  # train mode: random points anywhere, corners included, one cell per image
    for name, (h, w) in INPUTS.items():
        coord = torch.rand(1, TRAIN_QUERIES, 2, generator=g) * 2 - 1
        coord[0, :4] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [0.0, 0.0]])
        H, W = 2 * h + 1, 3 * w
        cell = torch.ones_like(coord)
        cell[:, :, 0] *= 2 / H
        cell[:, :, 1] *= 2 / W
        queries[name] = coord, cell
        arrays[f"coord_{name}"], arrays[f"cell_{name}"] = coord[0].numpy(), cell[0].numpy()

    for i, (model_name, spec) in enumerate(SPECS.items()):
        torch.manual_seed(i)
        model = models.make(spec)
        for m in model.imnet.layers:
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.kaiming_normal_(m.weight)  # outputs far from flat
                torch.nn.init.normal_(m.bias, std=0.1)
        saved = dict(spec)
        saved["sd"] = model.state_dict()
        torch.save({"model": saved, "epoch": 1}, out / f"{model_name}.pth")
        with cuda_is_identity(), torch.no_grad():
            for name, inp in inputs.items():
                x = ((inp - 0.5) / 0.5)[None]
                model.eval()
                for H, W in SIZES[name]:
                    coord, cell = official_coord_cell(H, W)
                    model.gen_feat(x)  # test.py's batched_predict
                    preds = [model.query_rgb(coord[:, q:q + EVAL_BSIZE],
                                             cell[:, q:q + EVAL_BSIZE])
                             for q in range(0, H * W, EVAL_BSIZE)]
                    arrays[f"eval_{model_name}_{name}_{H}x{W}"] = torch.cat(preds, 1)[0].numpy()
                model.train()
                pred = model(x, *queries[name])
                arrays[f"train_{model_name}_{name}"] = pred[0].numpy()
    np.savez_compressed(out / "golden.npz", **arrays)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} ({len(arrays)} arrays, "
          f"{size / 1e3:.0f} KB) to {out} from {args.official} {rev}")


if __name__ == "__main__":
    main()
