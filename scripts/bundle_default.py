"""Package a trained checkpoint as the bundled default model (maintainers only).

    python scripts/bundle_default.py runs/default/best.pth --description "..." --recipe "..."
    # run the model card's `liif eval ... --json /tmp/card/SET.json` commands, then record them:
    python scripts/bundle_default.py runs/default/best.pth ... --eval-json /tmp/card/*.json
    python scripts/bundle_default.py runs/real4/last.pth --wip docs/weights/real-wip.pth

Writes liif_cli/bundled/default.pth (official layout, fp16 storage, training metadata kept,
optimizer dropped) and records its sha256, steps, recipe and eval results in
liif_cli/bundled/bundled.json, which `liif_cli.runtime.weights` checks on every load. Re-bundling
without --eval-json drops the old results: tests then fail until the card is re-measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from liif_cli.data.cards import degraded_metrics_from_reports, metrics_from_reports
from liif_cli.runtime.weights import (
    PACKAGE_WEIGHTS_DIR,
    atomic_torch_save,
    checkpoint_dict,
    load_checkpoint,
    sha256_file,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--name", default="default")
    ap.add_argument("--description", default="EDSR-baseline-LIIF trained by liif-cli")
    ap.add_argument("--prior-steps", type=int, default=0,
                    help="optimizer steps behind the run's --init that its file does not record")
    ap.add_argument("--recipe", default="", help="the commands that made the weights")
    ap.add_argument("--eval-json", type=Path, nargs="*", default=[],
                    help="`liif eval --json` reports of these weights (the model card)")
    ap.add_argument("--denoise-partner", default="",
                    help="the model --denoise S blends these weights with (real: default)")
    ap.add_argument("--degraded-json", type=Path, nargs="*", default=[],
                    help="`liif eval --degrade ... --json` reports of these weights and of "
                    "the partner (the real-world model card)")
    ap.add_argument("--wip", type=Path, default=None,
                    help="write the fp16 checkpoint here instead (docs/weights/NAME-wip.pth: "
                    "weights in progress, committed so a new machine can go on); no manifest")
    args = ap.parse_args()

    loaded = load_checkpoint(args.checkpoint)
    raw = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    meta = dict(raw.get("liif_cli") or {})
    meta["source"] = args.checkpoint.name
    meta["steps"] = int(meta.get("steps") or 0) + args.prior_steps
    out = args.wip or PACKAGE_WEIGHTS_DIR / f"{args.name}.pth"
    atomic_torch_save(checkpoint_dict(loaded, half=True, epoch=raw.get("epoch", 0),
                                      liif_cli=meta), out)
    if args.wip is not None:
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB; {meta['steps']:,} steps)")
        return
    manifest = PACKAGE_WEIGHTS_DIR / "bundled.json"
    entries = json.loads(manifest.read_text()) if manifest.exists() else []
    entries = [e for e in entries if e["name"] != args.name]
    entries.append({"name": args.name, "file": out.name, "sha256": sha256_file(out),
                    "description": args.description, "steps": meta["steps"],
                    "recipe": args.recipe, "metrics": metrics_from_reports(args.eval_json)})
    if args.denoise_partner:
        entries[-1]["denoise_partner"] = args.denoise_partner
    if args.degraded_json:
        entries[-1]["degraded_metrics"] = degraded_metrics_from_reports(args.degraded_json)
    manifest.write_text(json.dumps(entries, indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) and {manifest}")


if __name__ == "__main__":
    main()
