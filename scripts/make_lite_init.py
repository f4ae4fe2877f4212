"""A smaller LIIF decoder started from a trained LIIF model (the `fast` model's route).

Builds a LIIF with the same encoder and the given MLP widths and local-ensemble flag, copies
the encoder and every decoder parameter whose shape matches (the MLP's first layer when its
width is kept: the 3×3-unfolded latent, relative-coordinate and cell weights), and leaves the
new layers at PyTorch's default initialisation. The result is an ordinary LIIF checkpoint to
fine-tune with `liif train --init OUT.pth [--freeze-encoder]`; the official code loads it.
The surgery itself is `liif_cli.tasks.train.surgery` (`lite_from`, `unit_importance`).

`--prune-data DIR`: when only the first hidden layer narrows (256 -> 128, the rest kept), keep
its most useful units instead: each unit's mean ReLU output over every query of a few LR images
made from DIR (bicubic ×2, ×3, ×4), times the norm of its outgoing weights; the first layer's
rows and the second layer's columns of those units are copied, so every layer starts trained,
and the dropped units' mean contribution is added to the second layer's bias.
`--blocks N`: an EDSR encoder cut to its first N residual blocks (and its closing conv).

    python scripts/make_lite_init.py default runs/lite-init.pth --hidden 256,64,64 --no-ensemble
    python scripts/make_lite_init.py runs/fast8/best.pth runs/h128-init.pth --hidden 128,64,64 \
        --no-ensemble --prune-data ../shared/data/train
"""

from __future__ import annotations

import argparse

import torch

from liif_cli.runtime.weights import load_model, save_checkpoint
from liif_cli.tasks.train.surgery import lite_from, unit_importance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="trained LIIF model: bundled name or checkpoint path")
    ap.add_argument("out")
    ap.add_argument("--hidden", default="256,64,64", help="MLP hidden widths")
    ap.add_argument("--no-ensemble", action="store_true", help="local ensemble off")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prune-data", help="image folder: keep the first layer's best units")
    ap.add_argument("--blocks", type=int, help="cut the EDSR encoder to N residual blocks")
    a = ap.parse_args()
    src = load_model(a.src)
    hidden = tuple(int(h) for h in a.hidden.split(","))
    keep = mean_act = None
    if a.prune_data:
        if hidden[1:] != src.config.hidden[1:] or hidden[0] > src.config.hidden[0]:
            ap.error("--prune-data narrows the first hidden layer only")
        score, mean_act = unit_importance(src, a.prune_data)
        keep = score.argsort(descending=True)[:hidden[0]].sort()[0]
    model = lite_from(src, hidden, not a.no_ensemble, a.seed, keep, a.blocks, mean_act)
    kept = [k for k, v in model.state_dict().items()
            if k.startswith("imnet") and torch.equal(v, src.state_dict().get(k, v[:0]))]
    save_checkpoint(model, a.out)
    print(f"{a.out}: LIIF hidden {hidden}, local ensemble {not a.no_ensemble}; "
          f"decoder tensors kept from {a.src}: {', '.join(kept) or 'none'}")


if __name__ == "__main__":
    main()
