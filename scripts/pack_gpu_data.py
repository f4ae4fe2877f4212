"""Pack the training photos small enough to travel to a lent GPU machine (maintainers only).

    echo /.gpu_data/ >> .git/info/exclude
    python scripts/pack_gpu_data.py            # ../shared/data/train -> .gpu_data/train

The device tool carries at most 64 MiB of working tree, and ../shared does not travel; the 371
training photos are 69 MB as PNG/JPEG. PNGs are re-encoded as lossless WebP (pixels identical,
about 2/3 the size); JPEGs are copied as they are. Measured once on the dev machine: 371
images, 48.7 MiB, 40 s; with the 3.6 MB tracked tree that fits. Then, in one device `run` with
`carry: [".gpu_data"]`:

    PYTHONPATH=. python3 -m liif_cli train --data .gpu_data/train --out $OUT/run \\
        --init default --precision bf16 --workers 12 --repeat 1 --warmup 100 --lr 1e-4 ...
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from liif_cli.data.samples import training_images

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=REPO.parent / "shared" / "data" / "train")
    ap.add_argument("--dst", type=Path, default=REPO / ".gpu_data" / "train")
    ap.add_argument("--limit", type=int, default=0, help="first N images only (a trial)")
    args = ap.parse_args()
    files = training_images(args.src)[:args.limit or None]
    total = 0
    for f in files:
        out = args.dst / f.relative_to(args.src)
        out.parent.mkdir(parents=True, exist_ok=True)
        if f.suffix.lower() in (".jpg", ".jpeg"):
            shutil.copyfile(f, out)
        else:
            out = out.with_suffix(".webp")
            with Image.open(f) as im:
                im.save(out, "WEBP", lossless=True, method=4)
            with Image.open(f) as a, Image.open(out) as b:  # lossless, or refuse
                if not np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))):
                    raise SystemExit(f"{f}: WebP round trip changed pixels")
        total += out.stat().st_size
    print(f"{len(files)} images, {total / 2**20:.1f} MiB in {args.dst}")


if __name__ == "__main__":
    main()
