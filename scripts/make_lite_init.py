"""A smaller LIIF decoder started from a trained LIIF model (the `fast` model's route).

Builds a LIIF with the same encoder and the given MLP widths and local-ensemble flag, copies
the encoder and every decoder parameter whose shape matches (the MLP's first layer when its
width is kept: the 3×3-unfolded latent, relative-coordinate and cell weights), and leaves the
new layers at PyTorch's default initialisation. The result is an ordinary LIIF checkpoint to
fine-tune with `liif train --init OUT.pth [--freeze-encoder]`; the official code loads it.

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
from dataclasses import replace

import torch

from liif_cli.model import LIIF, normalise
from liif_cli.runtime.weights import load_model, save_checkpoint

PRUNE_IMAGES = 8  # images of --prune-data used to rank units
PRUNE_CROP = 48  # LR crop side, as in training


def lite_from(src: LIIF, hidden: tuple[int, ...], local_ensemble: bool, seed: int = 0,
              keep: torch.Tensor | None = None, blocks: int | None = None,
              mean_act: torch.Tensor | None = None) -> LIIF:
    torch.manual_seed(seed)
    enc_args = dict(src.config.encoder_args)
    if blocks is not None:
        enc_args["n_resblocks"] = blocks
    model = LIIF(replace(src.config, hidden=hidden, local_ensemble=local_ensemble,
                         encoder_args=enc_args))
    theirs = dict(src.state_dict())
    if blocks is not None:  # the closing conv moves from body.N_src to body.N
        n_src = src.config.encoder_args.get("n_resblocks", 16)
        for k in [k for k in theirs if k.startswith(f"encoder.body.{n_src}.")]:
            theirs[k.replace(f"body.{n_src}.", f"body.{blocks}.")] = theirs.pop(k)
        theirs = {k: v for k, v in theirs.items() if not _block_beyond(k, blocks)}
    if keep is not None:  # the kept units of the first layer, and their outgoing weights
        for part in ("weight", "bias"):
            theirs[f"imnet.layers.0.{part}"] = theirs[f"imnet.layers.0.{part}"][keep]
        w2 = theirs["imnet.layers.2.weight"]
        if mean_act is not None:  # the dropped units' mean contribution moves into the bias
            dropped = torch.ones(w2.shape[1], dtype=torch.bool)
            dropped[keep] = False
            theirs["imnet.layers.2.bias"] = (theirs["imnet.layers.2.bias"]
                                             + w2[:, dropped] @ mean_act[dropped])
        theirs["imnet.layers.2.weight"] = w2[:, keep]
    mine = model.state_dict()
    copied = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape}
    # a layer is copied whole or not at all: only a prefix of the MLP can keep its weights
    model.load_state_dict({**mine, **copied})
    return model


def _block_beyond(key: str, blocks: int) -> bool:
    parts = key.split(".")
    return (parts[:2] == ["encoder", "body"] and parts[3] == "body"
            and int(parts[2]) >= blocks)


def unit_importance(src: LIIF, folder: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per first-layer unit: its mean ReLU output over the queries of LR crops of `folder`'s
    images times the norm of its outgoing weights, and that mean output."""
    import numpy as np

    from liif_cli.data.samples import load_rgb_uint8, make_lr, training_images
    from liif_cli.model.coords import make_cell, make_coord

    first, second = src.imnet.linears[0], src.imnet.linears[1]
    acts: list[torch.Tensor] = []
    hook = first.register_forward_hook(lambda m, i, o: acts.append(o.relu().flatten(0, -2)))
    rng = np.random.default_rng(0)
    try:
        for i, path in enumerate(training_images(folder)[:PRUNE_IMAGES]):
            scale = 2 + i % 3
            hr = load_rgb_uint8(path)
            y, x = (int(rng.integers(0, d - PRUNE_CROP * scale + 1)) for d in hr.shape[:2])
            crop = hr[y:y + PRUNE_CROP * scale, x:x + PRUNE_CROP * scale]
            hr_crop, lr = make_lr(crop, scale)
            inp = normalise(torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255)
            hw = hr_crop.shape[:2]
            with torch.no_grad():
                src.query(src.encode(inp), make_coord(hw)[None], make_cell(hw, hw[0] * hw[1])[None])
    finally:
        hook.remove()
    mean = torch.cat(acts).mean(0)
    return mean * second.weight.detach().norm(dim=0), mean


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
