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
  memory    a tile plan at the GPU's real budget (one tile as large as `auto`'s budget allows:
            its P convolution's output passes 2^31 elements on an 80 GB GPU), in fp32: the
            same pixels as small tiles, peak memory within the budget, no out-of-memory retry
  budgets   `batch --jobs 2` and the viewer on one GPU: the budgets together within `auto`'s
  view      the viewer's tiles of a 12 MP image: the image on the GPU once, each tile's peak
            memory far below a copy of it
  caller    a caller's fp16 module on the GPU renders fp32 and 16-bit; neither it nor the
            current GPU changes
  oom       real CUDA out-of-memory errors: through the CLI (upscale, train: one line, the
            command's advice, non-zero exit, no traceback), and a render retried once at half
            the budget with the failed attempt's memory freed
  mps       Apple MPS (a Mac): autocast and precision policy, 16-bit upscale against the CPU
  video     `liif video` on the device (`fast`, bf16 on a GPU): a 1 s 854×480 clip with sound to
            1920×1080 (on a CPU 160×90 to ×2, --tiny 48×32), lossless (ffv1 bgr0): every frame and the sound
            kept, frame 0 equal to `liif upscale` of frame 0 on the device within one level,
            and the frames per second of the whole call
  ddp       two ranks, one GPU each by CUDA_VISIBLE_DEVICES (as Slurm sets it): `liif train`
Writes OUT/device_check.json, OUT/device_check.txt and, if anything fails, OUT/failures.txt
(every failing section's traceback): three files at most, whatever fails. On a GPU it takes
about 3-5 minutes. On a CPU (`python scripts/device_check.py`) what needs CUDA, a Mac or two
GPUs is skipped and named.
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
        data, tiny = self.train_data(), self.tiny_recipe()
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
        """One tile as big as the real budget allows (an input of that side, the whole image
        one tile) against tiles of 1 GiB's plan, both fp32: the same pixels."""
        self.need_cuda("peak GPU memory")
        from liif_cli.runtime import engine
        from liif_cli.runtime.decoders import decoder_type
        from liif_cli.runtime.upscaler import Upscaler

        up = Upscaler(self.model, device=self.dev, precision="fp32")
        budget = up.max_memory
        big = engine.make_plan(up.model, (10**6, 10**6), max_memory=budget, device=up.device)
        side = min(big.tile, 1024) if self.args.tiny else big.tile
        width = decoder_type(up.model).plan_widths(up.model.config)[0]
        p_elems = (side + 2 * engine.TILE_MARGIN) ** 2 * width
        img = torch.from_numpy(photo(side, side)).permute(2, 0, 1).float() / 255
        out_hw = (side, side)
        torch.cuda.reset_peak_memory_stats(up.device)
        base = torch.cuda.memory_allocated(up.device)
        t0 = time.perf_counter()
        got = up.render(img, out_hw, np.empty((*out_hw, 3), np.uint8))
        torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(up.device) - base
        small = Upscaler(up.model, device=self.dev, precision="fp32", max_memory=2**30)
        want = small.render(img, out_hw, np.empty((*out_hw, 3), np.uint8))
        diff = int(np.abs(got.astype(int) - want).max())
        res = {"budget_gib": round(budget / 2**30, 2), "tile": side,
               "small_tiles": engine.make_plan(up.model, (side, side), max_memory=2**30,
                                               device=up.device).tile,
               "p_conv_elements": p_elems, "p_conv_over_2^31": p_elems > 2**31,
               "peak_gib": round(peak / 2**30, 2), "seconds": round(secs, 2),
               "max_diff_vs_small_tiles": diff, "retried_at_half": up.max_memory != budget}
        if res["retried_at_half"]:
            raise RuntimeError(f"the plan ran out of memory at its own budget: {res}")
        if peak > budget * 1.25:
            raise RuntimeError(f"peak above the budget: {res}")
        if diff > 1:
            raise RuntimeError(f"a tile at the real budget differs from small tiles: {res}")
        return res

    def budgets(self) -> dict:
        self.need_cuda("a GPU's free memory")
        from liif_cli.runtime.device import memory_budget, resolve_device
        from liif_cli.view.session import RENDERERS

        dev = resolve_device(self.dev)
        one = memory_budget(dev)
        res = {"auto_gib": round(one / 2**30, 2)}
        for n in (2, 4, RENDERERS):
            res[f"{n} sharers, each_gib"] = round(memory_budget(dev, sharers=n) / 2**30, 2)
            if n * memory_budget(dev, sharers=n) > one * 1.01:  # free memory moves a little
                raise RuntimeError(f"{n} budgets exceed auto's: {res}")
        return res

    def view(self) -> dict:
        self.need_cuda("GPU memory per tile")
        from liif_cli.view.session import ViewSession

        sizes = [(300, 400), (600, 800) if self.args.tiny else (3000, 4000)]
        srcs = []
        for k, (h, w) in enumerate(sizes):
            srcs.append(self.work / f"view{k}.png")
            _write(srcs[-1], photo(h, w, seed=3))
        session = ViewSession(srcs, models=[self.model], device=self.dev)
        peaks = {}
        try:
            dev = session.upscaler(session.cli_models[0], None).device
            for k in range(2):
                session.tile(k, "4", 0, 0, 256, 256)  # the upload, the decoder
            for k in range(2):  # the same windows of a small and a large image
                torch.cuda.synchronize(dev)
                held = torch.cuda.memory_allocated(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                for t in range(1, 4):
                    session.tile(k, "4", 256 * t, 256 * t, 256, 256)
                peaks[k] = torch.cuda.max_memory_allocated(dev) - held
        finally:
            session.close()
        image_bytes = 3 * sizes[1][0] * sizes[1][1] * 4
        res = {"large_image_mib": round(image_bytes / 2**20),
               "tile_peak_mib": {f"{h}x{w}": round(peaks[k] / 2**20)
                                 for k, (h, w) in enumerate(sizes)}}
        if peaks[1] - peaks[0] > image_bytes / 2:
            raise RuntimeError(f"a tile of the large image costs a copy of it: {res}")
        return res

    def caller(self) -> dict:
        self.need_cuda("a caller's module on the GPU")
        from liif_cli.runtime.upscaler import Upscaler
        from liif_cli.runtime.weights import load_model

        net = load_model(self.model, device=self.dev).half().eval()
        before = torch.cuda.current_device()
        img = torch.from_numpy(photo(32, 40)).permute(2, 0, 1).float() / 255
        ref = Upscaler(self.model, device="cpu", precision="fp32").render(
            img, (64, 80), np.empty((64, 80, 3), np.uint16))
        last = f"cuda:{torch.cuda.device_count() - 1}"
        got = Upscaler(net, device=last, precision="fp32").render(
            img, (64, 80), np.empty((64, 80, 3), np.uint16))
        res = {"max_diff_16bit": int(np.abs(got.astype(int) - ref).max()),
               "current_gpu": [before, torch.cuda.current_device()],
               "caller_dtype": str(next(net.parameters()).dtype), "rendered_on": last}
        if res["max_diff_16bit"] > 1 or before != torch.cuda.current_device() or (
                res["caller_dtype"] != "torch.float16"):
            raise RuntimeError(f"the caller's module or GPU changed, or 16-bit is off: {res}")
        return res

    def oom(self) -> dict:
        self.need_cuda("a CUDA out-of-memory")
        from liif_cli.errors import OOM_ADVICE, OUT_OF_MEMORY

        src = self.work / "rgb8.png"
        if not src.exists():
            _write(src, photo(self.size, self.size))
        self.train_data()
        code = ("import sys, torch; torch.cuda.set_per_process_memory_fraction(0.002); "
                "from liif_cli.cli import app; sys.argv = ['liif'] + sys.argv[1:]; app()")
        runs = {"upscale": (["upscale", src, "-s", "8", "-m", self.model, "--max-memory", "64G",
                             "-o", self.work / "oom.png", "--overwrite"], OUT_OF_MEMORY),
                "train": (["train", "--data", self.work / "train", "--out", self.work / "oom_run",
                           "--epochs", "1", "--batch-size", "64", "--patch-size", "12",
                           "--workers", "0"], f"out of memory; {OOM_ADVICE['train']}")}
        res = {}
        for name, (argv, want) in runs.items():
            p = subprocess.run([sys.executable, "-c", code, *map(str, argv), "--device", self.dev],
                               capture_output=True, text=True, env=ENV, timeout=TIMEOUT_S)
            err = (p.stderr + p.stdout).strip()
            res[name] = {"exit": p.returncode, "message": err[-300:]}
            if p.returncode != 1 or "Traceback" in err or f"error: {want}" not in err:
                raise RuntimeError(f"{name}: OOM not reported as its one line: {res}")
        if (self.work / "oom.png").exists():
            raise RuntimeError("OOM left an output file behind")
        res["retry"] = self._oom_retry()
        return res

    def _oom_retry(self) -> dict:
        """A real CUDA OOM in the first attempt, with 60% of the free memory held by it: the
        retry at half the budget must find that memory free again."""
        from liif_cli.runtime import engine, upscaler

        up = upscaler.Upscaler(self.model, device=self.dev, precision="auto")
        budget, real, calls = up.max_memory, engine.render, []

        def render(*args, **kw):
            calls.append(kw["max_memory"])
            if len(calls) == 1:
                free, total = torch.cuda.mem_get_info(up.device)
                held = torch.empty(int(free * 0.6), dtype=torch.uint8, device=up.device)
                torch.empty(2 * total, dtype=torch.uint8, device=up.device)  # raises
                del held
            return real(*args, **kw)

        engine.render = render
        try:
            img = torch.from_numpy(photo(self.size, self.size)).permute(2, 0, 1).float() / 255
            up.render(img, (self.size * 2, self.size * 2))
        finally:
            engine.render = real
        res = {"budgets_gib": [round(b / 2**30, 2) for b in calls]}
        if len(calls) != 2 or calls[1] != max(16 * 2**20, budget // 2):
            raise RuntimeError(f"not retried once at half the budget: {res}")
        return res

    def train_data(self) -> Path:
        data = self.work / "train"
        data.mkdir(exist_ok=True)
        for k in range(3):
            Image.fromarray(photo(64, 64, seed=20 + k)).save(data / f"{k}.png")
        return data

    def video(self) -> dict:
        try:
            import av
        except ImportError:
            raise Skip("needs PyAV: pip install '.[video]'") from None
        # the clip on a GPU; on a CPU a small one (fp32 there: minutes a 1080p frame)
        w, h, n = (854, 480, 30) if self.cuda else (48, 32, 6) if self.args.tiny else (160, 90, 10)
        size = "1920x1080" if self.cuda else f"{w * 2}x{h * 2}"
        precision = "bf16" if self.cuda else "fp32"
        src, dst = self.work / "clip.mp4", self.work / "clip_up.mkv"
        with av.open(str(src), "w") as out:
            v = out.add_stream("libx264", rate=30, options={"crf": "10"})
            v.width, v.height, v.pix_fmt = w, h, "yuv420p"
            a = out.add_stream("aac", rate=48000)
            big = photo(h + n, w + n, seed=7)
            for k in range(n):  # a slow pan: 1 px per frame
                for p in v.encode(av.VideoFrame.from_ndarray(
                        np.ascontiguousarray(big[k:k + h, k:k + w]), format="rgb24")):
                    out.mux(p)
            for p in v.encode():
                out.mux(p)
            tone = (0.1 * np.sin(np.arange(48000 * n // 30) / 48000 * 2 * np.pi * 440)
                    ).astype(np.float32)[None]
            for k in range(0, tone.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(tone[:, k:k + 1024], format="flt",
                                                   layout="mono")
                frame.sample_rate = 48000
                for p in a.encode(frame):
                    out.mux(p)
            for p in a.encode():
                out.mux(p)
        t0 = time.perf_counter()
        ok(liif("video", src, "-o", dst, "--size", size, "-m", "fast", "--device", self.dev,
                "--precision", precision, "--codec", "ffv1", "--pix-fmt", "bgr0", "-q"))
        secs = time.perf_counter() - t0

        def streams(path: Path) -> tuple[list, int]:
            with av.open(str(path)) as c:
                frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
            with av.open(str(path)) as c:
                audio = sum(1 for p in c.demux(audio=0) if p.size)
            return frames, audio

        (first, *_), audio_in = streams(src)
        frames, audio_out = streams(dst)
        if len(frames) != n or audio_out != audio_in:
            raise RuntimeError(f"{len(frames)} of {n} frames, {audio_out} of {audio_in} audio "
                               "packets")
        Image.fromarray(first).save(self.work / "frame0.png")
        ok(liif("upscale", self.work / "frame0.png", "-o", self.work / "frame0_up.png",
                "--size", size, "-m", "fast", "--device", self.dev, "--precision", precision,
                "-q", "--overwrite"))
        ref = np.asarray(Image.open(self.work / "frame0_up.png").convert("RGB")).astype(int)
        worst = int(np.abs(frames[0].astype(int) - ref).max())
        if worst > 1:
            raise RuntimeError(f"frame 0 differs from liif upscale by {worst} levels")
        return {"frames": n, "size": size, "precision": precision, "seconds": round(secs, 1),
                "fps_whole_call": round(n / secs, 2), "frame0_max_diff": worst}

    def mps(self) -> dict:
        if not (torch.backends.mps.is_available()):
            raise Skip("needs Apple MPS (a Mac): autocast on MPS, 16-bit levels off MPS")
        from liif_cli.runtime import device

        mps = torch.device("mps")
        res = {"torch": torch.__version__,
               "autocast": {n: device.mps_autocast(d) for n, d in device.DTYPES.items()
                            if n != "fp32"},
               "auto": device.precision_name(device.resolve_precision("auto", mps))}
        src = self.work / "mps16.png"
        _write(src, photo(self.size, self.size + 3, bits=16))
        outs = {}
        for dev, prec in (("cpu", "fp32"), ("mps", "auto")):
            outs[dev] = self.work / f"mps16_{dev}.png"
            ok(liif("upscale", src, "-s", "3", "-m", self.model, "--device", dev,
                    "--precision", prec, "-o", outs[dev], "-q", "--overwrite"))
        res["max_diff_16bit"] = int(np.abs(read(outs["mps"]) - read(outs["cpu"])).max())
        if res["max_diff_16bit"] > 1:
            raise RuntimeError(f"16-bit on MPS differs from the CPU: {res}")
        return res

    def ddp(self) -> dict:
        """Two ranks, each shown one GPU (CUDA_VISIBLE_DEVICES), LOCAL_RANK 0 and 1: rank 1
        must take its only GPU, cuda:0, not cuda:1."""
        self.need_cuda("DDP")
        if torch.cuda.device_count() < 2:
            raise Skip("needs 2 CUDA GPUs: DDP with one GPU per rank (CUDA_VISIBLE_DEVICES)")
        data, out, tiny = self.train_data(), self.work / "ddp_run", self.tiny_recipe()
        procs = []
        for rank in range(2):
            env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533",
                   "CUDA_VISIBLE_DEVICES": str(rank)}
            procs.append(subprocess.Popen(
                [*PY, "train", "--data", str(data), "--out", str(out), "--config", str(tiny),
                 "--epochs", "1", "--device", "auto", "-q"], env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
        res = {"exits": [p.returncode for p in procs], "output": [o[-300:] for o in outs]}
        if any(res["exits"]) or not (out / "last.pth").exists():
            raise RuntimeError(f"DDP with one GPU per rank failed: {res}")
        return res

    def tiny_recipe(self) -> Path:
        tiny = self.work / "tiny.toml"
        tiny.write_text('hidden = [16, 16]\npatch_size = 12\nscale_max = 2.0\nsample_q = 50\n'
                        'batch_size = 2\nrepeat = 4\nworkers = 0\n'
                        '[encoder_args]\nn_resblocks = 1\nn_feats = 8\n')
        return tiny


def _write(path: Path, px: np.ndarray) -> None:
    import cv2

    bgr = px[..., [2, 1, 0, 3][:px.shape[2]]] if px.ndim == 3 else px
    if not cv2.imwrite(str(path), np.ascontiguousarray(bgr)):
        raise RuntimeError(f"cannot write {path}")


def _psnrs(records) -> list[float]:
    rows = records if isinstance(records, list) else records.get("records", [])
    return [float(r["psnr"]) for r in rows if isinstance(r, dict) and "psnr" in r]


SECTIONS = ["env", "cuda_tests", "upscale", "batch", "eval", "tf32", "bench", "train", "export",
            "memory", "budgets", "view", "caller", "oom", "video", "mps", "ddp"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "device-check")))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="default", help="a model name or checkpoint path")
    ap.add_argument("--tiny", action="store_true", help="small images (a CPU trial)")
    ap.add_argument("--only", default="", help="comma-separated sections: " + ",".join(SECTIONS))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failures.txt").unlink(missing_ok=True)  # this run's failures only
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
                # one file for every failure: a lent GPU machine returns 8 files at most
                with open(args.out / "failures.txt", "a") as f:
                    f.write(f"== {name}\n{traceback.format_exc()}\n")
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
