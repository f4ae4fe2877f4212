"""Revive an LM-LIIF checkpoint's dead render-MLP units (maintainers; the `fast` model's recipe).

    python scripts/revive_lmf.py runs/fast/best.pth runs/fast-revived.pth --data ../shared/data/train

Runs the model on training samples (the recipe's random crops and scales, a seed of its own),
reports each hidden layer's units that fire on fewer than --threshold of the queries, and
writes a copy in which they fire again with the model's output unchanged
(`liif_cli.tasks.train.surgery.revive_dead_units`). Continue with `liif train --init OUT ...`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from liif_cli.data.samples import ImageCache, RandomScaleSamples, training_images
from liif_cli.model import LMLIIF, normalise
from liif_cli.runtime.weights import atomic_torch_save, checkpoint_dict, load_checkpoint
from liif_cli.tasks.train.surgery import revive_dead_units


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="HR training images")
    ap.add_argument("--batches", type=int, default=8, help="batches of 16 samples to measure")
    ap.add_argument("--threshold", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    loaded = load_checkpoint(args.checkpoint)
    model = loaded.float().eval()
    if not isinstance(model, LMLIIF):
        raise SystemExit(f"{args.checkpoint} is not an LM-LIIF model")
    cache = ImageCache(training_images(args.data), min_side=192)
    ds = RandomScaleSamples(cache, repeat=1, seed=args.seed)
    batches = []
    for b in range(args.batches):
        items = [ds[(b * 16 + k) % len(ds)] for k in range(16)]
        inp = torch.stack([it["inp"] for it in items])
        batches.append((normalise(inp), torch.stack([it["coord"] for it in items]),
                        torch.stack([it["cell"] for it in items])))
    with torch.no_grad():
        before = [model(*b) for b in batches[:2]]
    revived = revive_dead_units(model, batches, threshold=args.threshold)
    with torch.no_grad():
        diff = max((model(*b) - y).abs().max().item() for b, y in zip(batches[:2], before))
    for i, units in enumerate(revived):
        print(f"layer {i}: {len(units)} dead of {model.config.render_hidden} revived {units}")
    print(f"output changed by at most {diff:.2e}")
    meta = dict(loaded.card.meta)
    meta["revived_units"] = revived
    atomic_torch_save(checkpoint_dict(model, liif_cli=meta), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
