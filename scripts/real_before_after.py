"""Remake liif_cli/assets/before_after_real_x2.png: the real-world model on a degraded photo.

The photo is the package's own drawn example (liif_cli/assets/example.png, not from ../shared),
taken as ground truth, downscaled ×2 (PIL bicubic, as `liif eval` makes LR), then degraded with
`liif_cli.data.degrade` (default `noise=5,jpeg=60`, seeded): the panels are bicubic, `default` and
`real` upscales of that input, and the ground truth, each with its PSNR (RGB, no shave).
Run: python scripts/real_before_after.py [--real runs/real/best.pth] [--spec noise=5,jpeg=60]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from liif_cli.data.degrade import degrade_image
from liif_cli.data.metrics import psnr
from liif_cli.data.samples import bicubic_upsample, load_rgb_uint8, make_lr, to_tensor
from liif_cli.io.images import ImageData, write_image
from liif_cli.runtime.upscaler import Upscaler
from liif_cli.tasks.evaluate import example_panel

ASSETS = Path(__file__).resolve().parents[1] / "liif_cli" / "assets"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", default="real", help="the real-world model (name or path)")
    ap.add_argument("--spec", default="noise=5,jpeg=60")
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=ASSETS / "before_after_real_x2.png")
    args = ap.parse_args()

    hr = load_rgb_uint8(ASSETS / "example.png")
    gt, lr = make_lr(hr, args.scale)
    lr = degrade_image(lr, args.spec, name="example.png", scale=args.scale)
    panels, labels = [bicubic_upsample(lr, gt.shape[:2])], ["bicubic"]
    for name in ("default", args.real):
        pred = Upscaler(name, device="cpu", precision="fp32").render(to_tensor(lr), gt.shape[:2])
        panels.append(np.clip(pred, 0, 1))
        labels.append("real" if name == args.real else name)
    ref = gt.astype(np.float32) / 255
    labels = [f"{lab} {psnr(p, ref, protocol='rgb', scale=args.scale):.2f} dB"
              for lab, p in zip(labels, panels)]
    panel = example_panel([*panels, gt], [*labels, "ground truth"])
    write_image(args.out, ImageData(panel), overwrite=True)
    print(args.out, "  ".join(labels))


if __name__ == "__main__":
    main()
