"""A smaller LIIF decoder started from a trained LIIF model (the `fast` model's route).

Builds a LIIF with the same encoder and the given MLP widths and local-ensemble flag, copies
the encoder and every decoder parameter whose shape matches (the MLP's first layer when its
width is kept: the 3×3-unfolded latent, relative-coordinate and cell weights), and leaves the
new layers at PyTorch's default initialisation. The result is an ordinary LIIF checkpoint to
fine-tune with `liif train --init OUT.pth [--freeze-encoder]`; the official code loads it.

    python scripts/make_lite_init.py default runs/lite-init.pth --hidden 256,64,64 --no-ensemble
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from liif_cli.model import LIIF
from liif_cli.runtime.weights import load_model, save_checkpoint


def lite_from(src: LIIF, hidden: tuple[int, ...], local_ensemble: bool, seed: int = 0) -> LIIF:
    torch.manual_seed(seed)
    model = LIIF(replace(src.config, hidden=hidden, local_ensemble=local_ensemble))
    theirs = src.state_dict()
    mine = model.state_dict()
    copied = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape}
    # a layer is copied whole or not at all: only a prefix of the MLP can keep its weights
    model.load_state_dict({**mine, **copied})
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="trained LIIF model: bundled name or checkpoint path")
    ap.add_argument("out")
    ap.add_argument("--hidden", default="256,64,64", help="MLP hidden widths")
    ap.add_argument("--no-ensemble", action="store_true", help="local ensemble off")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    src = load_model(a.src)
    hidden = tuple(int(h) for h in a.hidden.split(","))
    model = lite_from(src, hidden, not a.no_ensemble, a.seed)
    kept = [k for k, v in model.state_dict().items()
            if k.startswith("imnet") and torch.equal(v, src.state_dict().get(k, v[:0]))]
    save_checkpoint(model, a.out)
    print(f"{a.out}: LIIF hidden {hidden}, local ensemble {not a.no_ensemble}; "
          f"decoder tensors kept from {a.src}: {', '.join(kept) or 'none'}")


if __name__ == "__main__":
    main()
