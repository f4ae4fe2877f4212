"""Training-step benchmark (not collected by pytest; run it by hand on a quiet machine).

    python scripts/bench_train.py                 # fp32 and bf16, both formulations
    python scripts/bench_train.py --steps 5 --precision bf16

One step of the paper's recipe batch (16 × 48² LR patches, 2304 queries each, EDSR-baseline-LIIF,
forward + L1 + backward + Adam) on random data, timed after one warm-up step, for:
- fast: `LIIF.forward`, i.e. `query_fast` (first layer on the latent grid, the ensemble members
  batched) — what `liif train` runs;
- official: `LIIF.query`, the official per-query formulation (unfold, 4 members one by one).
Prints seconds per step and the ratio, measured in the same process. Both run with freed memory
kept for reuse, as `liif train` runs (`liif_cli.runtime.malloc`); `--malloc glibc` leaves glibc's
defaults (every large tensor mmap'd and page-faulted in afresh): run it both ways to see that.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from liif_cli.model.liif import LIIF
from liif_cli.runtime.malloc import keep_freed_memory


def batch(b: int, patch: int, q: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    inp = torch.rand(b, 3, patch, patch, generator=g) * 2 - 1
    coord = torch.rand(b, q, 2, generator=g) * 2 - 1
    scale = 1 + 3 * torch.rand(b, 1, 1, generator=g)  # s ~ U(1, 4), as the recipe
    cell = (2 / (patch * scale)).expand(b, q, 2).contiguous()
    gt = torch.rand(b, q, 3, generator=g) * 2 - 1
    return inp, coord, cell, gt


def time_steps(model: LIIF, data, *, official: bool, precision: str, steps: int) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    inp, coord, cell, gt = data

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            pred = model.query(model.encode(inp), coord, cell) if official else \
                model(inp, coord, cell)
        loss = F.l1_loss(pred.float(), gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--queries", type=int, default=2304)
    ap.add_argument("--malloc", choices=["kept", "glibc"], default="kept")
    args = ap.parse_args()
    kept = args.malloc == "kept" and keep_freed_memory()
    torch.manual_seed(0)
    model = LIIF().train()
    data = batch(args.batch, args.patch, args.queries)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} × "
          f"{args.patch}² × {args.queries} queries, {args.steps} timed steps, "
          f"freed memory {'kept' if kept else 'returned (glibc default)'}")
    for prec in (["fp32", "bf16"] if args.precision == "both" else [args.precision]):
        fast = time_steps(model, data, official=False, precision=prec, steps=args.steps)
        off = time_steps(model, data, official=True, precision=prec, steps=args.steps)
        print(f"{prec}: liif train step {fast:.2f} s, official formulation {off:.2f} s "
              f"({off / fast:.2f}×)")


if __name__ == "__main__":
    main()
