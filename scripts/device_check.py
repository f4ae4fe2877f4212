"""The first minutes on a lent GPU: does everything we promise hold there? (maintainers only)

    python scripts/device_check.py                  # on the GPU machine: report under $OUT
    python scripts/device_check.py --tiny --out /tmp/dc   # here, on a CPU: what it can check

Sections, each timed, each ok / FAIL / skipped (with the reason printed):
  env       torch, GPU name, compute capability, TF32 flags, free memory, what `auto` resolves to
  cuda      the `cuda`-marked tests (pytest -m cuda)
  upscale   `liif upscale` on the device at every precision against CPU fp32: 8-bit RGB,
            16-bit (computed in exact fp32: must equal the CPU within 1 level of 65,535), RGBA
  batch     `liif batch` with two workers on the device, against CPU fp32
  eval      `liif eval` on the device against CPU fp32 (PSNR within 0.01 dB)
  tf32      the exact engine with TF32 off (default) and on, against CPU fp32, and their speed
  bench     `liif bench` on the device (its exactness line)
  train     a few steps in bf16 and fp16 on the device, then resumed on the CPU
  export    ONNX export of a model kept on the device: it stays there, in its dtype
  memory    peak GPU memory of a large render against the budget (half the free memory)
  oom       a real CUDA out-of-memory through the CLI: one line, non-zero exit, no traceback
Writes OUT/device_check.json and OUT/device_check.txt. On a GPU it takes about 3-5 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PY = [sys.executable, "-m", "liif_cli"]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
TIMEOUT_S = 300  # per command


class Skip(Exception):
    """A section that cannot run here; the message says why."""


def liif(*args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*PY, *map(str, args)], capture_output=True, text=True,
                          env=env or ENV, timeout=TIMEOUT_S)


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if p.returncode != 0:
        raise RuntimeError(f"exit {p.returncode}: {(p.stderr or p.stdout).strip()[-400:]}")
    return p


def photo(h: int, w: int, seed: int = 0, channels: int = 3, bits: int = 8) -> np.ndarray:
    """A smooth-plus-edges image (as tests/conftest.photo_like), 8 or 16 bits."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([np.sin(x / (3 + c) + c) * np.cos(y / (5 + c)) for c in range(channels)], -1)
    img = np.clip(img * 0.35 + 0.5 + ((x // 7 + y // 5) % 2 == 0)[..., None] * 0.1
                  + rng.normal(0, 0.02, img.shape), 0, 1)
    return (img * (65535 if bits == 16 else 255)).round().astype(
        np.uint16 if bits == 16 else np.uint8)


def read(path: Path) -> np.ndarray:
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise RuntimeError(f"cannot read {path}")
    return arr.astype(np.int64)


class Check:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.dev = args.device
        self.cuda = self.dev.startswith("cuda")
        self.precisions = ["fp32", "bf16", "fp16", "auto"] if self.cuda else ["fp32", "bf16"]
        self.size = 24 if args.tiny else 128  # input side
        self.model = args.model

    def need_cuda(self, what: str) -> None:
        if not self.cuda:
            raise Skip(f"needs a CUDA GPU: {what} (device here: {self.dev})")

    # -- sections

    def env(self) -> dict:
        from liif_cli.runtime import device

        info = {"torch": torch.__version__, "python": sys.version.split()[0],
                "cuda_available": torch.cuda.is_available(), "device": self.dev,
                "cpu_bf16_native": device.cpu_bf16_native()}
        dev = device.resolve_device(self.dev)
        if dev.type == "cuda":
            free, total = torch.cuda.mem_get_info(dev)
            info.update(gpu=torch.cuda.get_device_name(dev),
                        capability=".".join(map(str, torch.cuda.get_device_capability(dev))),
                        gpus=torch.cuda.device_count(), free_gib=round(free / 2**30, 1),
                        total_gib=round(total / 2**30, 1),
                        tf32_matmul_default=torch.backends.cuda.matmul.allow_tf32,
                        tf32_cudnn_default=torch.backends.cudnn.allow_tf32,
                        budget_gib=round(device.memory_budget(dev) / 2**30, 2),
                        cuda_version=torch.version.cuda)
        info["auto_precision"] = device.precision_name(device.resolve_precision("auto", dev))
        return info

    def cuda_tests(self) -> dict:
        self.need_cuda("the cuda-marked tests")
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p",
                            "no:cacheprovider", str(REPO / "tests")], capture_output=True,
                           text=True, env=ENV, timeout=TIMEOUT_S, cwd=REPO)
        tail = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-300:]
        if p.returncode != 0:
            raise RuntimeError(f"pytest -m cuda: {tail}\n{p.stdout[-3000:]}")
        return {"pytest": tail}

    def upscale(self) -> dict:
        n = self.size
        cases = {"rgb8": photo(n, n + 3), "rgb16": photo(n, n + 3, bits=16),
                 "rgba8": photo(n, n + 3, channels=4)}
        res = {}
        for name, px in cases.items():
            src = self.work / f"{name}.png"
            _write(src, px)
            ref = self.work / f"{name}_cpu.png"
            ok(liif("upscale", src, "-s", "3", "-m", self.model, "--device", "cpu",
                    "--precision", "fp32", "-o", ref, "-q", "--overwrite"))
            want = read(ref)
            for prec in self.precisions:
                out = self.work / f"{name}_{prec}.png"
                ok(liif("upscale", src, "-s", "3", "-m", self.model, "--device", self.dev,
                        "--precision", prec, "-o", out, "-q", "--overwrite"))
                got = read(out)
                diff = int(np.abs(got - want).max())
                peak = 65535.0 if name == "rgb16" else 255.0
                mse = float(np.mean(((got - want) / peak) ** 2))
                db = 99.0 if mse == 0 else 10 * np.log10(1 / mse)
                res[f"{name} {prec}"] = {"max_diff": diff, "psnr_db": round(db, 1)}
                # fp32 and 16-bit images (exact fp32 whatever --precision): within 1 level;
                # bf16/fp16 8-bit: close (the tests' bar, 35 dB against fp32)
                exact = prec == "fp32" or name == "rgb16"
                if (exact and diff > 1) or (not exact and db < 35):
                    raise RuntimeError(f"{name} at {prec}: {res[f'{name} {prec}']}")
        return {"max_abs_diff_vs_cpu_fp32": res}

    def batch(self) -> dict:
        inp, out_cpu, out_dev = (self.work / d for d in ("bin", "bout_cpu", "bout_dev"))
        inp.mkdir(exist_ok=True)
        for k in range(4):
            Image.fromarray(photo(self.size, self.size + k, seed=k)).save(inp / f"{k}.png")
        ok(liif("batch", inp, out_cpu, "-s", "2", "-m", self.model, "--device", "cpu",
                "--precision", "fp32", "-q"))
        ok(liif("batch", inp, out_dev, "-s", "2", "-m", self.model, "--device", self.dev,
                "--jobs", "2", "--precision", "fp32", "-q"))
        diffs = {f.name: int(np.abs(read(f) - read(out_cpu / f.name)).max())
                 for f in sorted(out_dev.iterdir()) if f.suffix == ".png"}
        if len(diffs) != 4 or max(diffs.values()) > 1:
            raise RuntimeError(f"batch outputs {diffs}")
        return {"max_abs_diff": diffs}

    def eval(self) -> dict:
        hr = self.work / "hr"
        hr.mkdir(exist_ok=True)
        for k in range(2):
            Image.fromarray(photo(self.size * 2, self.size * 2, seed=10 + k)).save(hr / f"{k}.png")
        got = {}
        for dev in ("cpu", self.dev):
            js = self.work / f"eval_{dev.replace(':', '')}.json"
            ok(liif("eval", "--data", hr, "-m", self.model, "--scales", "2,3", "--device", dev,
                    "--precision", "fp32", "--json", js, "-q", "--overwrite"))
            got[dev] = json.loads(js.read_text())
        a, b = (json.dumps(got[d], sort_keys=True) for d in ("cpu", self.dev))
        rows_a, rows_b = _psnrs(got["cpu"]), _psnrs(got[self.dev])
        worst = max(abs(x - y) for x, y in zip(rows_a, rows_b)) if rows_a else 0.0
        if not rows_a or len(rows_a) != len(rows_b) or worst > 0.01:
            raise RuntimeError(f"eval PSNRs differ by {worst} dB: {a[:300]} / {b[:300]}")
        return {"psnr_max_diff_db": worst}

    def tf32(self) -> dict:
        self.need_cuda("TF32")
        from liif_cli.runtime.upscaler import Upscaler
        from liif_cli.runtime.weights import load_model

        net = load_model(self.model)
        img = torch.from_numpy(photo(self.size, self.size)).permute(2, 0, 1).float() / 255
        ref = Upscaler(net, device="cpu", precision="fp32").render(img, (self.size * 4,) * 2)
        res = {}
        for on in (False, True):
            up = Upscaler(net, device=self.dev, precision="fp32", tf32=on)
            up.render(img, (64, 64))  # warm up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = up.render(img, (self.size * 4,) * 2)
            torch.cuda.synchronize()
            res[f"tf32 {'on' if on else 'off'}"] = {
                "seconds": round(time.perf_counter() - t0, 3),
                "max_abs_diff": float(np.abs(out - ref).max())}
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        if res["tf32 off"]["max_abs_diff"] > 1e-4:
            raise RuntimeError(f"fp32 with TF32 off is not exact: {res}")
        return res

    def bench(self) -> dict:
        self.need_cuda("bench on the GPU")
        js = self.work / "bench.json"
        # our engine against the official forward, both on the GPU (the CPU oracle is slow)
        p = ok(liif("bench", "--device", self.dev, "--size", str(self.size), "-s", "4",
                    "-m", self.model, "--json", js, "-q", "--overwrite"))
        return {"json": json.loads(js.read_text()) if js.exists() else p.stdout[-1000:]}

    def train(self) -> dict:
        data = self.work / "train"
        data.mkdir(exist_ok=True)
        for k in range(3):
            Image.fromarray(photo(64, 64, seed=20 + k)).save(data / f"{k}.png")
        tiny = self.work / "tiny.toml"
        tiny.write_text('hidden = [16, 16]\npatch_size = 12\nscale_max = 2.0\nsample_q = 50\n'
                        'batch_size = 2\nrepeat = 4\nworkers = 0\n'
                        '[encoder_args]\nn_resblocks = 1\nn_feats = 8\n')
        res = {}
        precisions = ["bf16", "fp16"] if self.cuda else ["bf16"]
        for prec in precisions:
            out = self.work / f"run_{prec}"
            ok(liif("train", "--data", data, "--out", out, "--config", tiny, "--epochs", "1",
                    "--device", self.dev, "--precision", prec, "-q"))
            ok(liif("train", "--resume", "--out", out, "--epochs", "2", "--device", "cpu",
                    "--precision", "fp32", "-q"))
            ck = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
            if ck["epoch"] != 2:
                raise RuntimeError(f"{prec}: resumed run ended at epoch {ck['epoch']}")
            losses = [json.loads(line).get("loss") for line in
                      (out / "metrics.jsonl").read_text().splitlines()]
            res[prec] = {"epochs": ck["epoch"], "losses": [x for x in losses if x][-3:]}
        return res

    def export(self) -> dict:
        from liif_cli.runtime.weights import load_model
        from liif_cli.tasks.export import export_model

        net = load_model(self.model, device=self.dev).half() if self.cuda else load_model(
            self.model).to(torch.bfloat16)
        before = {(p.device.type, p.dtype) for p in net.parameters()}
        res = {}
        for fmt in ("safetensors", "onnx"):
            try:
                r = export_model(net, self.work / f"m.{fmt}", overwrite=True)
                res[fmt] = r.check if hasattr(r, "check") else "ok"
            except Exception as e:  # noqa: BLE001 - onnx not installed: say so
                res[fmt] = f"not run: {str(e).splitlines()[0][:160]}"
        after = {(p.device.type, p.dtype) for p in net.parameters()}
        if before != after:
            raise RuntimeError(f"export moved the caller's model: {before} -> {after}")
        return {**res, "model_stayed": str(sorted(map(str, after)))}

    def memory(self) -> dict:
        self.need_cuda("peak GPU memory")
        from liif_cli.runtime.upscaler import Upscaler

        up = Upscaler(self.model, device=self.dev, precision="auto")
        side = 512 if self.args.tiny else 1024
        img = torch.from_numpy(photo(side, side)).permute(2, 0, 1).float() / 255
        torch.cuda.reset_peak_memory_stats(up.device)
        base = torch.cuda.memory_allocated(up.device)
        t0 = time.perf_counter()
        up.render(img, (side * 4, side * 4), np.empty((side * 4, side * 4, 3), np.uint8))
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(up.device) - base
        res = {"budget_gib": round(up.max_memory / 2**30, 2), "peak_gib": round(peak / 2**30, 2),
               "seconds": round(time.perf_counter() - t0, 2), "output": f"{side * 4}^2"}
        if peak > up.max_memory * 1.25:
            raise RuntimeError(f"peak above the budget: {res}")
        return res

    def oom(self) -> dict:
        self.need_cuda("a CUDA out-of-memory")
        src = self.work / "rgb8.png"
        if not src.exists():
            _write(src, photo(self.size, self.size))
        code = ("import sys, torch; torch.cuda.set_per_process_memory_fraction(0.002); "
                "from liif_cli.cli import app; sys.argv = ['liif'] + sys.argv[1:]; app()")
        p = subprocess.run([sys.executable, "-c", code, "upscale", str(src), "-s", "8",
                            "-m", self.model, "--device", self.dev, "--max-memory", "64G",
                            "-o", str(self.work / "oom.png"), "--overwrite"],
                           capture_output=True, text=True, env=ENV, timeout=TIMEOUT_S)
        err = (p.stderr + p.stdout).strip()
        res = {"exit": p.returncode, "message": err[-300:]}
        if p.returncode == 0 or "Traceback" in err or "out of memory" not in err.lower():
            raise RuntimeError(f"OOM not reported as one line: {res}")
        if (self.work / "oom.png").exists():
            raise RuntimeError("OOM left an output file behind")
        return res


def _write(path: Path, px: np.ndarray) -> None:
    import cv2

    bgr = px[..., [2, 1, 0, 3][:px.shape[2]]] if px.ndim == 3 else px
    if not cv2.imwrite(str(path), np.ascontiguousarray(bgr)):
        raise RuntimeError(f"cannot write {path}")


def _psnrs(records) -> list[float]:
    rows = records if isinstance(records, list) else records.get("records", [])
    return [float(r["psnr"]) for r in rows if isinstance(r, dict) and "psnr" in r]


SECTIONS = ["env", "cuda_tests", "upscale", "batch", "eval", "tf32", "bench", "train", "export",
            "memory", "oom"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "device-check")))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="default", help="a model name or checkpoint path")
    ap.add_argument("--tiny", action="store_true", help="small images (a CPU trial)")
    ap.add_argument("--only", default="", help="comma-separated sections: " + ",".join(SECTIONS))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        check = Check(args, Path(tmp))
        for name in [s for s in SECTIONS if not args.only or s in args.only.split(",")]:
            t0 = time.perf_counter()
            try:
                detail, status = getattr(check, name)(), "ok"
            except Skip as e:
                detail, status = str(e), "skipped"
            except Exception as e:  # noqa: BLE001 - every section reports, whatever happens
                detail, status = f"{type(e).__name__}: {e}", "FAIL"
                (args.out / f"{name}.traceback.txt").write_text(traceback.format_exc())
            secs = round(time.perf_counter() - t0, 1)
            report[name] = {"status": status, "seconds": secs, "detail": detail}
            line = f"{name:<10} {status:<8} {secs:>6.1f}s  " + (
                detail if isinstance(detail, str) else json.dumps(detail, default=str)[:600])
            lines.append(line)
            print(line, flush=True)
            # written after every section: a run cut off by its time limit keeps what it did
            (args.out / "device_check.json").write_text(json.dumps(report, indent=1,
                                                                   default=str))
            (args.out / "device_check.txt").write_text("\n".join(lines) + "\n")
    failed = [k for k, v in report.items() if v["status"] == "FAIL"]
    print(f"report: {args.out}/device_check.txt; " + (f"FAILED: {', '.join(failed)}" if failed
                                                       else "no failures"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
