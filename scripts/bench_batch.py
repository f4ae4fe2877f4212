"""Benchmark (not a test): `liif batch` on N small images vs N separate `liif upscale` runs.

The batch loads the model once and overlaps decoding/encoding with compute; separate runs pay
interpreter + torch import + model load every time. Target (issue 4): ratio >= 3x.

    python scripts/bench_batch.py                      # golden EDSR-baseline-LIIF, 20 × 48 px, ×2
    python scripts/bench_batch.py --px 96 --jobs 2     # other settings

Images are crops of ../shared/data (real photos) when present, else synthetic. Timings on a
shared machine are noisy: run it when the machine is quiet and report the load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from liif_cli.tasks.bench import synthetic_image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN_CKPT = SHARED / "golden" / "edsr-baseline-liif-seed0-cudatag.pth"
PHOTOS = SHARED / "data" / "val" / "B100" / "HR"


def make_images(folder: Path, n: int, px: int) -> None:
    """n px×px crops: from real photos if available, else the tests' synthetic pattern."""
    folder.mkdir(parents=True)
    photos = sorted(PHOTOS.glob("*.png")) if PHOTOS.is_dir() else []
    for k in range(n):
        if photos:
            im = Image.open(photos[k % len(photos)]).convert("RGB")
            x, y = (k * 37) % (im.width - px), (k * 53) % (im.height - px)
            im.crop((x, y, x + px, y + px)).save(folder / f"img{k:03d}.png")
        else:
            Image.fromarray(synthetic_image(px, seed=k)).save(folder / f"img{k:03d}.png")


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="images")
    ap.add_argument("--px", type=int, default=48, help="input side, pixels")
    ap.add_argument("--scale", default="2")
    ap.add_argument("--model", default=str(GOLDEN_CKPT))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="batch workers per device")
    args = ap.parse_args()
    liif = [sys.executable, "-m", "liif_cli"]
    common = ["-s", args.scale, "-m", args.model, "--device", args.device, "--quiet"]

    root = Path(tempfile.mkdtemp(prefix="liif-bench-"))
    try:
        inp = root / "in"
        make_images(inp, args.n, args.px)
        names = sorted(p.name for p in inp.iterdir())
        t_batch = timed([*liif, "batch", str(inp), str(root / "batch"), *common,
                         "--jobs", str(args.jobs)])
        (root / "single").mkdir()
        t_single = sum(timed([*liif, "upscale", str(inp / n), "-o", str(root / "single" / n),
                              *common]) for n in names)
        same = all(np.array_equal(np.asarray(Image.open(root / "batch" / n)),
                                  np.asarray(Image.open(root / "single" / n))) for n in names)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.n} images {args.px}×{args.px} ×{args.scale}, model {Path(args.model).name}, "
          f"device {args.device}, batch --jobs {args.jobs}, load average {load:.1f} "
          f"on {os.cpu_count()} CPUs")
    print(f"liif batch:             {t_batch:7.1f} s  ({t_batch / args.n:.2f} s/image)")
    print(f"{args.n} × liif upscale:     {t_single:7.1f} s  ({t_single / args.n:.2f} s/image)")
    print(f"ratio: {t_single / t_batch:.1f}×   outputs identical: {same}")


if __name__ == "__main__":
    main()
