"""Whole-process benchmark of `liif upscale` (not collected by pytest; run it by hand).

    python scripts/bench_upscale.py                  # both cases
    python scripts/bench_upscale.py --case speed     # 256×256 → ×4, EDSR-baseline-LIIF
    python scripts/bench_upscale.py --case memory    # 1024×1024 → ×8, small checkpoint

speed: the official demo path (encode + batched_predict of 30000 queries, `liif_cli.tasks.bench.
official_demo`) against `liif upscale --precision fp32` and `--precision bf16`, each a fresh
process, on the golden EDSR-baseline-LIIF checkpoint. Targets (issue 3, on the 2-core dev
machine): fp32 ≥ 2× faster than the official path and within 1 level of it; bf16 ≥ 3.5× faster
with ≥ 40 dB PSNR against our fp32 output.
memory: `liif upscale` of a 1024×1024 image to 8192×8192 with EDSR-baseline (2 blocks) and an
MLP 32-32, random weights. Targets: peak RSS < 1.3 GB, under 4 minutes.

Each process's wall time is measured from outside, its peak RSS with os.wait4 (that child
only). Set OMP_WAIT_POLICY etc. in your environment to study their effect; the script passes
the environment through and prints the relevant variables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from liif_cli.data.metrics import psnr

REPO = Path(__file__).resolve().parents[1]
GOLDEN_CKPT = REPO.parent / "shared" / "golden" / "edsr-baseline-liif-seed0-cudatag.pth"
REAL_IMAGE = REPO.parent / "shared" / "data" / "val" / "Set14" / "HR" / "baboon.png"
LIIF = [sys.executable, "-m", "liif_cli"]
GB = 1e9

SPEED_FP32_TARGET = 2.0  # × faster than the official path
SPEED_BF16_TARGET = 3.5
BF16_PSNR_TARGET = 40.0  # dB against our fp32 output
MEMORY_RSS_TARGET = 1.3 * GB
MEMORY_SECONDS_TARGET = 240.0


def run(cmd: list[str]) -> tuple[float, int]:
    """Run cmd to completion; return (wall seconds, peak RSS bytes of that process)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{out}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports KiB


def input_image(size: int, path: Path | None) -> np.ndarray:
    """A size×size RGB crop of a real photo (centre), or a synthetic one if none is at hand."""
    from liif_cli.tasks.bench import synthetic_image

    src = path or (REAL_IMAGE if REAL_IMAGE.exists() else None)
    if src is None:
        return synthetic_image(size)
    im = Image.open(src).convert("RGB")
    if min(im.size) < size:
        im = im.resize((max(size, im.width), max(size, im.height)), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def speed_case(work: Path, image: Path | None, skip_oracle: bool) -> dict:
    src = work / "in256.png"
    Image.fromarray(input_image(256, image)).save(src)
    out_hw = (1024, 1024)
    res: dict = {"case": "256x256 -> x4 (1024x1024), EDSR-baseline-LIIF", "pixels": 1024 * 1024}
    runs = {
        "fp32": LIIF + ["upscale", str(src), "-s", "4", "-m", str(GOLDEN_CKPT), "-o",
                        str(work / "fp32.png"), "--device", "cpu", "--precision", "fp32", "-q"],
        "bf16": LIIF + ["upscale", str(src), "-s", "4", "-m", str(GOLDEN_CKPT), "-o",
                        str(work / "bf16.png"), "--device", "cpu", "--precision", "bf16", "-q"],
    }
    if not skip_oracle:
        runs = {"official": [sys.executable, "-c", "from liif_cli.tasks.bench import official_demo; "
                             f"official_demo({str(GOLDEN_CKPT)!r}, {str(src)!r}, "
                             f"{str(work / 'official.png')!r}, {out_hw!r})"], **runs}
    for name, cmd in runs.items():
        print(f"running {name} …", flush=True)
        seconds, rss = run(cmd)
        res[name] = {"seconds": seconds, "us_per_pixel": seconds / res["pixels"] * 1e6,
                     "peak_rss_gb": rss / GB}
    fp32 = np.asarray(Image.open(work / "fp32.png"))
    bf16 = np.asarray(Image.open(work / "bf16.png"))
    res["bf16"]["psnr_vs_fp32"] = psnr(fp32, bf16)
    if not skip_oracle:
        official = np.asarray(Image.open(work / "official.png"))
        # the official demo truncates to 8 bits where we round: up to one level apart
        res["fp32"]["max_levels_vs_official"] = int(np.abs(fp32.astype(int) - official).max())
        for name in ("fp32", "bf16"):
            res[name]["speedup"] = res["official"]["seconds"] / res[name]["seconds"]
        res["targets_met"] = {
            "fp32 >= 2x": res["fp32"]["speedup"] >= SPEED_FP32_TARGET,
            "fp32 within 1 level": res["fp32"]["max_levels_vs_official"] <= 1,
            "bf16 >= 3.5x": res["bf16"]["speedup"] >= SPEED_BF16_TARGET,
            "bf16 >= 40 dB": res["bf16"]["psnr_vs_fp32"] >= BF16_PSNR_TARGET,
        }
    return res


def memory_case(work: Path, image: Path | None) -> dict:
    from liif_cli.runtime.weights import save_checkpoint
    from liif_cli.tasks.bench import random_model

    ckpt = work / "edsr-baseline-2blocks-mlp32.pth"
    save_checkpoint(random_model("edsr-baseline-small"), ckpt)
    src = work / "in1024.png"
    Image.fromarray(input_image(1024, image)).save(src)
    print("running memory case …", flush=True)
    seconds, rss = run(LIIF + ["upscale", str(src), "-s", "8", "-m", str(ckpt), "-o",
                               str(work / "out8192.png"), "--device", "cpu", "-q"])
    with Image.open(work / "out8192.png") as im:
        size = im.size
    return {"case": "1024x1024 -> x8 (8192x8192), EDSR-baseline 2 blocks + MLP 32-32",
            "output_size": size, "seconds": seconds, "peak_rss_gb": rss / GB,
            "us_per_pixel": seconds / (8192 * 8192) * 1e6,
            "targets_met": {"peak RSS < 1.3 GB": rss < MEMORY_RSS_TARGET,
                            "under 4 minutes": seconds < MEMORY_SECONDS_TARGET}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=["speed", "memory", "all"], default="all")
    ap.add_argument("--image", type=Path, help="photo to crop the inputs from")
    ap.add_argument("--skip-oracle", action="store_true", help="skip the official path")
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()
    if not GOLDEN_CKPT.exists() and args.case != "memory":
        raise SystemExit(f"needs the golden checkpoint at {GOLDEN_CKPT}")
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
           if k in os.environ}
    results = {"cpus": os.cpu_count(), "env": env,
               "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="liif-bench-") as tmp:
        work = Path(tmp)
        if args.case in ("speed", "all"):
            results["speed"] = speed_case(work, args.image, args.skip_oracle)
        if args.case in ("memory", "all"):
            results["memory"] = memory_case(work, args.image)
    results["load_average_at_end"] = os.getloadavg()
    text = json.dumps(results, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
