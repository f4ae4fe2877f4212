"""What a GPU training run brings back, within the device tool's limits (maintainers only).

scripts/gpu_train.sh trains in a run folder outside $OUT (its last.pth, fp32 with Adam's
moments and --ema's trained weights, is ~24 MiB: over the 16 MiB a returned file may have) and
calls this script for what comes back under $OUT, at most these files (the tool returns at most
`MAX_FILES`, each at most `MAX_FILE_MIB`):

    model.pth     the weights (--ema's average, if any) in fp16, official layout with the run's
                  `liif_cli` metadata (steps): what scripts/bundle_default.py, `liif eval -m`
                  and `liif train --init` take. ~3 MiB for EDSR-baseline-LIIF.
    last.pth      the run's last.pth made compact: weights fp16, --ema's trained weights fp16,
                  Adam's moments bf16 (exp_avg_sq spans 1e-12..1e-4: fp16 would flush it to
                  zero), the schedule, counters and RNG as they are. `liif train --resume` reads
                  it as it is (PyTorch casts the moments back to the parameters' fp32). ~12 MiB.
    metrics.jsonl the trainer's log (steps, losses, validations)
    summary.txt   steps, steps/s, losses, B100-10 PSNR before and after, the files, how to go on
    log.txt       everything the command printed (gpu_train.sh writes it)

    python scripts/gpu_out.py watch RUN OUT --every 60    # export each new last.pth, until TERM
    python scripts/gpu_out.py val MODEL VAL --json F      # mean PSNR per scale (training's)
    python scripts/gpu_out.py finish RUN OUT --before F   # export, after-PSNR, summary
    python scripts/gpu_out.py limits OUT                  # the returned files against the limits
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from liif_cli.io.files import TEMP_SUFFIX, atomic_write  # noqa: E402
from liif_cli.runtime.weights import atomic_torch_save  # noqa: E402

MAX_FILES = 8  # files the device tool brings back from $OUT
MAX_FILE_MIB = 16  # MiB, each
MAX_DEPTH = 2  # folders below $OUT
SAFE_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
MOMENTS = ("exp_avg", "exp_avg_sq")  # Adam's per-parameter state kept in bf16


# ----------------------------------------------------------------------------------------------
# the compact checkpoints

def _half(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}


def compact_last(ck: dict[str, Any], *, moments: bool = True) -> dict[str, Any]:
    """A trainer's last.pth at returnable size: weights fp16, Adam's moments bf16 (or none:
    a resume then starts them afresh), everything else as it is."""
    out = dict(ck)
    out["model"] = {**ck["model"], "sd": _half(ck["model"]["sd"])}
    ts = dict(ck.get("train_state") or {})
    if "raw" in (ts.get("ema") or {}):
        ts["ema"] = {**ts["ema"], "raw": _half(ts["ema"]["raw"])}
    out["train_state"] = ts
    if ck.get("optimizer"):
        sd = ck["optimizer"]["sd"]
        state = {i: {k: v.to(torch.bfloat16) if k in MOMENTS else v for k, v in s.items()}
                 for i, s in sd["state"].items()} if moments else {}
        out["optimizer"] = {**ck["optimizer"], "sd": {**sd, "state": state}}
    return out


def model_only(ck: dict[str, Any]) -> dict[str, Any]:
    """The weights in fp16 with the run's metadata: the layout scripts/bundle_default.py
    writes (optimizer and training state dropped)."""
    return {"model": {**ck["model"], "sd": _half(ck["model"]["sd"])},
            "epoch": ck.get("epoch", 0), "liif_cli": ck.get("liif_cli", {})}


def _saved_size(obj: dict[str, Any], path: Path) -> int:
    atomic_torch_save(obj, path)
    return path.stat().st_size


def export(run: Path, out: Path, *, limit: int = MAX_FILE_MIB * 2**20) -> list[str]:
    """RUN/last.pth -> OUT/model.pth and OUT/last.pth (compact), RUN/metrics.jsonl copied;
    returns notes (empty when all is well)."""
    src = run / "last.pth"
    if not src.exists():
        return [f"no checkpoint yet ({src})"]
    ck = torch.load(src, map_location="cpu", weights_only=True)
    notes = []
    out.mkdir(parents=True, exist_ok=True)
    if _saved_size(model_only(ck), out / "model.pth") > limit:
        (out / "model.pth").unlink()
        notes.append(f"model.pth over {limit / 2**20:.0f} MiB: not returned")
    if _saved_size(compact_last(ck), out / "last.pth") > limit:
        notes.append(f"last.pth over {limit / 2**20:.0f} MiB: Adam's moments dropped")
        if _saved_size(compact_last(ck, moments=False), out / "last.pth") > limit:
            (out / "last.pth").unlink()
            notes.append("last.pth still over the limit: not returned")
    if (run / "metrics.jsonl").exists():
        data = (run / "metrics.jsonl").read_bytes()
        atomic_write(out / "metrics.jsonl", lambda tmp: Path(tmp).write_bytes(data),
                     overwrite=True)
    return notes


def watch(run: Path, out: Path, every: float) -> None:
    """Export every `every` seconds while RUN/last.pth changes, until SIGTERM/SIGINT (which
    wait for the export under way: no half-written file is left in OUT)."""
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    seen = None
    while not stop:
        t_next = time.monotonic() + every
        while not stop and time.monotonic() < t_next:
            time.sleep(min(0.5, every))
        src = run / "last.pth"
        if stop or not src.exists() or src.stat().st_mtime_ns == seen:
            continue
        seen = src.stat().st_mtime_ns
        notes = export(run, out)
        print(f"[gpu_out] exported at {time.strftime('%H:%M:%S')}: step "
              f"{_steps(out / 'model.pth')}" + "".join(f"; {n}" for n in notes), flush=True)


def _steps(path: Path) -> int | None:
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True).get("liif_cli", {}).get("steps")


# ----------------------------------------------------------------------------------------------
# validation before and after

def measure(model: str, val: Path, device: str) -> dict[str, Any]:
    """Training's validation (mean PSNR per scale over the first images of VAL, fp32)."""
    from liif_cli.data.samples import load_rgb_uint8, training_images
    from liif_cli.runtime.device import resolve_device, set_tf32
    from liif_cli.runtime.weights import load_model
    from liif_cli.tasks.train import TrainConfig
    from liif_cli.tasks.train.validation import validate

    dev = resolve_device(device)
    set_tf32(dev, False)
    cfg = TrainConfig()
    files = training_images(val)[:cfg.val_images]
    t0 = time.perf_counter()
    net = load_model(model, device=dev)
    psnr = validate(net, [load_rgb_uint8(p) for p in files], cfg.val_scales, torch.float32)
    return {"model": str(model), "steps": net.card.meta.get("steps"), "images": len(files),
            "val": str(val), "psnr": psnr, "seconds": round(time.perf_counter() - t0, 1)}


# ----------------------------------------------------------------------------------------------
# the summary

def _records(run: Path, since: float = 0) -> tuple[list[dict], list[dict]]:
    """(step records, validation records) of RUN's log written after `since` (this run's)."""
    path = run / "metrics.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []
    recs = [r for r in recs if r.get("time", 0) >= since]
    return [r for r in recs if r["kind"] == "step"], [r for r in recs if r["kind"] == "val"]


def _psnr_line(label: str, m: dict[str, Any] | None, ref: dict[str, Any] | None = None) -> str:
    if not m or "psnr" not in m:
        return f"{label}: not measured" + (f" ({m['error']})" if m and "error" in m else "")
    parts = []
    for k, v in m["psnr"].items():
        gain = f" ({v - ref['psnr'][k]:+.3f})" if ref and k in ref.get("psnr", {}) else ""
        parts.append(f"{k} {v:.3f}{gain}")
    return (f"{label}: {' / '.join(parts)}  [{m['images']} images of {m['val']}, steps "
            f"{m.get('steps')}, {m['seconds']} s]")


def summary(run: Path, out: Path, rc: int, before: dict | None, after: dict | None,
            notes: list[str], since: float = 0) -> str:
    steps, vals = _records(run, since)
    lines = [f"liif train exit {rc}" + {0: " (finished)", 124: " (stopped at the budget)",
                                        143: " (stopped at the budget, saved)"}.get(rc, "")]
    if (out / "model.pth").exists():
        meta = torch.load(out / "model.pth", map_location="cpu",
                          weights_only=True).get("liif_cli", {})
        cfg = meta.get("config", {})
        lines.append(f"steps: {meta.get('steps')} in all (epoch {meta.get('epoch')}, "
                     f"iteration {meta.get('iteration')}); {cfg.get('precision')}, batch "
                     f"{cfg.get('batch_size')}, lr {cfg.get('lr')}, ema {cfg.get('ema')}, "
                     f"device {cfg.get('device')}")
    else:
        lines.append("no checkpoint written")
    if steps:
        run_steps = steps[-1]["steps"] - steps[0]["steps"]
        secs = steps[-1]["time"] - steps[0]["time"]
        rate = f", {run_steps / secs:.2f} steps/s" if secs > 0 else ""
        lines.append(f"this run: steps {steps[0]['steps']} to {steps[-1]['steps']}{rate}; "
                     f"loss first {steps[0]['loss']:.4f}, last {steps[-1]['loss']:.4f}")
    if vals:
        lines.append(f"last validation in training (its precision): step {vals[-1]['steps']}, "
                     + " / ".join(f"{k} {v:.3f}" for k, v in vals[-1]["psnr"].items()))
    lines.append(_psnr_line("PSNR before", before))
    lines.append(_psnr_line("PSNR after ", after, before))
    lines += [f"note: {n}" for n in notes]
    lines.append("files: " + ", ".join(
        f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in sorted(out.iterdir())
        if p.is_file() and not p.name.endswith(TEMP_SUFFIX)))
    lines.append("go on: docs/gpu-run.md, 'After the run' (model.pth: --init or bundle; "
                 "last.pth: .gpu_data/resume/last.pth, or liif train --resume)")
    return "\n".join(lines) + "\n"


def finish(args: argparse.Namespace) -> int:
    """The last export, the summary at once (in case time runs out), then the PSNR after."""
    run, out = args.run, args.out
    for tmp in out.glob(f".*{TEMP_SUFFIX}"):  # an export cut off by a kill
        tmp.unlink()
    notes = export(run, out)
    before = json.loads(args.before.read_text()) if args.before and args.before.exists() else None
    text = summary(run, out, args.rc, before, None, notes, args.since)
    atomic_write(out / "summary.txt", lambda tmp: Path(tmp).write_text(text), overwrite=True)
    after = None
    if args.val and (out / "model.pth").exists():
        if not before or "seconds" not in before:
            after = {"error": "no PSNR before to compare with (failed or cut off)"}
        # as long as the PSNR before took (the same images, model and device), with a margin
        elif time.time() + before["seconds"] * 1.5 + 5 < args.deadline:
            try:
                after = measure(str(out / "model.pth"), args.val, args.device)
            except Exception as e:  # noqa: BLE001 - the summary says what went wrong
                after = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        else:
            after = {"error": "no time left before the budget"}
        text = summary(run, out, args.rc, before, after, notes, args.since)
        atomic_write(out / "summary.txt", lambda tmp: Path(tmp).write_text(text), overwrite=True)
    print(text, end="")
    problems = check_limits(out)
    print("$OUT within the device tool's limits" if not problems else
          "$OUT over the device tool's limits: " + "; ".join(problems))
    return 0


# ----------------------------------------------------------------------------------------------
# the device tool's limits

def check_limits(out: Path, *, max_files: int = MAX_FILES,
                 max_bytes: int = MAX_FILE_MIB * 2**20) -> list[str]:
    """What the device tool would not bring back from OUT (empty: everything comes back)."""
    files = [p for p in out.rglob("*") if p.is_file() or p.is_symlink()]
    problems = []
    if len(files) > max_files:
        problems.append(f"{len(files)} files, more than {max_files}")
    for p in files:
        rel = p.relative_to(out)
        if p.is_symlink():
            problems.append(f"{rel}: a link")
        elif p.stat().st_size > max_bytes:
            problems.append(f"{rel}: {p.stat().st_size / 2**20:.1f} MiB, over "
                            f"{max_bytes / 2**20:.0f}")
        if len(rel.parts) - 1 > MAX_DEPTH or any(set(part) - SAFE_CHARS for part in rel.parts):
            problems.append(f"{rel}: too deep or an odd name")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("watch", help="export each new last.pth every --every seconds")
    w.add_argument("run", type=Path)
    w.add_argument("out", type=Path)
    w.add_argument("--every", type=float, default=60.0)
    v = sub.add_parser("val", help="PSNR of MODEL on VAL (JSON)")
    v.add_argument("model")
    v.add_argument("val", type=Path)
    v.add_argument("--device", default="cpu")
    v.add_argument("--json", type=Path, required=True)
    f = sub.add_parser("finish", help="export, summary, PSNR after")
    f.add_argument("run", type=Path)
    f.add_argument("out", type=Path)
    f.add_argument("--rc", type=int, default=0, help="liif train's exit status")
    f.add_argument("--before", type=Path, help="`val`'s JSON for the starting weights")
    f.add_argument("--val", type=Path, help="validation images (PSNR after)")
    f.add_argument("--device", default="cpu")
    f.add_argument("--since", type=float, default=0.0,
                   help="epoch seconds: this run's start (the log may hold a resumed run's)")
    f.add_argument("--deadline", type=float, default=float("inf"), help="epoch seconds")
    lim = sub.add_parser("limits", help="OUT against the device tool's limits")
    lim.add_argument("out", type=Path)
    args = ap.parse_args()
    if args.cmd == "watch":
        watch(args.run, args.out, args.every)
    elif args.cmd == "val":
        res = measure(args.model, args.val, args.device)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res) + "\n")
        print(_psnr_line("PSNR before", res))
    elif args.cmd == "finish":
        return finish(args)
    else:
        problems = check_limits(args.out)
        files = sorted(p for p in args.out.rglob("*") if p.is_file())
        print(f"$OUT: {len(files)} files, largest "
              f"{max((p.stat().st_size for p in files), default=0) / 2**20:.1f} MiB"
              + "".join(f"\n  over the limits: {x}" for x in problems))
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
