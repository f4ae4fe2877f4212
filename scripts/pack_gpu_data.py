"""Pack training and validation photos small enough to travel to a lent GPU (maintainers only).

    echo /.gpu_data/ >> "$(git rev-parse --git-path info/exclude)"
    python scripts/pack_gpu_data.py            # ../shared/data -> .gpu_data/{train,val}
    python scripts/pack_gpu_data.py --measure  # what a `run` with carry [".gpu_data"] sends

The device tool sends at most 64 MiB of working tree: the tracked (and untracked, not ignored)
files plus the carried paths; ../shared does not travel. The 371 training photos are 69 MB as
PNG/JPEG, 48.7 MiB packed; with the 14.8 MiB tracked tree that was 63.5 MiB, no room left. So
the pack is measured against a budget (--budget-mib, 56: 8 MiB under the limit for the tree
to grow) and holds, in that budget:
  val/    the first --val-images (10) images of B100 (as training's validation takes them), for
          the PSNR before and after in the run's summary
  resume/ whatever is there already (a returned last.pth to continue, ~12 MiB), counted
  train/  the training photos in a fixed shuffled order (by a hash of their path: every set
          keeps its share) until the budget is full; the rest stay behind, and it says how many
PNGs are re-encoded as lossless WebP (pixels identical, checked, about 2/3 the size); JPEGs are
copied as they are.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from liif_cli.data.samples import training_images

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
LIMIT_MIB = 64  # what the device tool carries, tree and carried paths together
BUDGET_MIB = 56  # what the pack fills to


def _not_ignored(folder: Path, repo: Path = REPO) -> bool:
    """Whether git would carry `folder` as untracked files. Asked of a path inside it: a
    pattern such as `/.gpu_data/` matches only a directory, which before the first pack the
    folder is not yet, while a path inside names it as one."""
    probe = folder / "train"
    return subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=repo).returncode != 0


def tree_bytes(repo: Path = REPO) -> int:
    """Bytes of what travels besides the carried paths: tracked and untracked, not ignored."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=repo, capture_output=True, check=True).stdout.split(b"\0")
    paths = [repo / n.decode() for n in names if n]
    return sum(p.lstat().st_size for p in paths if p.is_file() or p.is_symlink())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() \
        else 0


def shuffled(files: list[Path], root: Path) -> list[Path]:
    """A fixed order that interleaves the sets: by the hash of each path under `root`."""
    return sorted(files, key=lambda f: hashlib.sha256(
        f.relative_to(root).as_posix().encode()).hexdigest())


def pack_one(src: Path, dst_dir: Path, rel: Path) -> Path:
    """`src` under dst_dir/rel: a JPEG as it is, anything else as lossless WebP (checked)."""
    out = dst_dir / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix.lower() in (".jpg", ".jpeg"):
        shutil.copyfile(src, out)
        return out
    out = out.with_suffix(".webp")
    with Image.open(src) as im:
        im.save(out, "WEBP", lossless=True, method=4)
    with Image.open(src) as a, Image.open(out) as b:  # lossless, or refuse
        if not np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))):
            out.unlink()
            raise SystemExit(f"{src}: WebP round trip changed pixels")
    return out


def pack(files: list[Path], src: Path, dst: Path, budget: int) -> tuple[int, int]:
    """Pack `files` (under `src`) into `dst` in order until `budget` bytes; (images, bytes)."""
    total = 0
    for n, f in enumerate(files):
        out = pack_one(f, dst, f.relative_to(src))
        size = out.stat().st_size
        if total + size > budget:
            out.unlink()
            return n, total
        total += size
    return len(files), total


def _empty(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} is not empty: remove it to pack again")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=SHARED / "train")
    ap.add_argument("--val", type=Path, default=SHARED / "val" / "B100" / "HR")
    ap.add_argument("--val-images", type=int, default=10)
    ap.add_argument("--dst", type=Path, default=REPO / ".gpu_data")
    ap.add_argument("--budget-mib", type=float, default=BUDGET_MIB,
                    help="tree + the whole of --dst (resume/ included) at most this")
    ap.add_argument("--limit", type=int, default=0, help="first N training images only (a trial)")
    ap.add_argument("--measure", action="store_true", help="only measure what would travel")
    args = ap.parse_args()
    tree = tree_bytes()
    inside = args.dst.resolve().is_relative_to(REPO)
    if inside and (args.dst.exists() or not args.measure) and _not_ignored(args.dst):
        raise SystemExit(f"{args.dst} is not ignored by git (it would travel twice): "
                         "echo /.gpu_data/ >> \"$(git rev-parse --git-path info/exclude)\"")
    if not args.measure:
        _empty(args.dst / "train")
        _empty(args.dst / "val")
        for f in training_images(args.val)[:args.val_images]:
            pack_one(f, args.dst / "val", f.relative_to(args.val))
        room = int(args.budget_mib * 2**20) - tree - folder_bytes(args.dst)
        files = shuffled(training_images(args.src), args.src)
        files = files[:args.limit or None]
        n, size = pack(files, args.src, args.dst / "train", max(room, 0))
        print(f"train: {n} of {len(files)} images, {size / 2**20:.1f} MiB"
              + (f" ({len(files) - n} left out: over the budget)" if n < len(files) else ""))
    parts = {"tree": tree, **{p.name: folder_bytes(p) for p in sorted(args.dst.iterdir())
                              if p.is_dir()}} if args.dst.exists() else {"tree": tree}
    total = sum(parts.values())
    print(" + ".join(f"{k} {v / 2**20:.1f}" for k, v in parts.items())
          + f" = {total / 2**20:.1f} MiB of the {LIMIT_MIB} MiB a run carries"
          + ("" if total <= LIMIT_MIB * 2**20 else "  -- OVER: the run would be refused"))


if __name__ == "__main__":
    main()
