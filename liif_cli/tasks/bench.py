"""Benchmark: the engine against the oracle (the plain official forward) on the same weights.

The oracle is what the official `demo.py` does: encode once, then `LIIF.query` over the full
coordinate and cell tensors in batches of `OFFICIAL_BATCH` queries (its `batched_predict`).
For each device and precision we report seconds, µs per output pixel, max |Δ| of the raw
output against the fp32 oracle (or, with the oracle skipped, against the fp32 engine), the
largest difference in 8-bit levels, PSNR of reduced precisions against fp32, and peak memory:
on CUDA `torch.cuda.max_memory_allocated`; on the CPU the process's resident set, sampled every
`RSS_SAMPLE_S` during the run (getrusage's peak never goes down, so it cannot be given per run).

The engine runs through a `runtime.upscaler.Upscaler` per device, each precision as the whole
forward pass. Timings include encoding, not the decoder's one-time build (done in the warm-up,
as an Upscaler reuses it across images). They are in-process (no interpreter start or file
I/O); the whole `liif upscale` process is timed by `scripts/bench_upscale.py`.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from liif_cli.data.metrics import psnr
from liif_cli.errors import LiifWarning, UsageError
from liif_cli.io.images import DEFAULT_MAX_INPUT_PIXELS, pixel_count
from liif_cli.model import (
    LMLIIF,
    LiifConfig,
    LmfConfig,
    ModelConfig,
    SRModel,
    build_model,
    denormalise,
    normalise,
)
from liif_cli.model.coords import make_cell, make_coord
from liif_cli.runtime import engine
from liif_cli.runtime.device import (
    cpu_bf16_native,
    precision_name,
    resolve_device,
    resolve_precision,
)
from liif_cli.runtime.sizing import DEFAULT_MAX_OUTPUT_PIXELS, target_size
from liif_cli.runtime.upscaler import Upscaler

OFFICIAL_BATCH = 30000  # queries per call in the official batched_predict (demo.py, test.py)
RSS_SAMPLE_S = 0.005  # seconds between resident-set samples on the CPU
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

# Architectures to benchmark without a checkpoint: random weights, Kaiming-normal MLP as in the
# golden outputs (outputs far from flat, so differences show).
RANDOM_ARCHS: dict[str, ModelConfig] = {
    "edsr-baseline": LiifConfig(),  # the paper's EDSR-baseline-LIIF
    "edsr-baseline-small": LiifConfig(  # 2 blocks, MLP 32-32: the 8192² memory case
        encoder_args={"n_resblocks": 2, "n_feats": 64, "no_upsampling": True}, hidden=(32, 32)),
    "rdn": LiifConfig(encoder="rdn", encoder_args={"no_upsampling": True}),
    "lmf": LmfConfig(),  # the official EDSR-baseline LM-LIIF (the `fast` model's architecture)
}


def random_model(arch: str, seed: int = 0) -> SRModel:
    if arch not in RANDOM_ARCHS:
        raise UsageError(f"unknown --random-arch {arch!r}; use one of {', '.join(RANDOM_ARCHS)}")
    torch.manual_seed(seed)
    model = build_model(RANDOM_ARCHS[arch])
    for m in model.imnet.linears + (model.hypernet.linears if isinstance(model, LMLIIF) else []):
        torch.nn.init.kaiming_normal_(m.weight)
    return model.eval()


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """A size×size photo-like uint8 RGB image: smooth gradients, hard edges, fine noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    base = [np.sin(x / (9 + 4 * c) + c) * np.cos(y / (13 + 3 * c)) for c in range(3)]
    img = np.stack(base, -1) * 0.35 + 0.5
    img[((x // 23 + y // 17) % 2) == 0] += 0.1
    img += rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def oracle_forward(model: SRModel, img: torch.Tensor, out_hw: tuple[int, int], *,
                   batch: int = OFFICIAL_BATCH) -> np.ndarray:
    """The official demo path: (3, h, w) in [0, 1] -> raw (H, W, 3) float32 in [0, 1] units.

    LM-LIIF: the plain latent MLP once, then the render MLP in batches (as the official
    `batched_query_rgb` does)."""
    H, W = out_hw
    with torch.no_grad():
        feat = model.encode(normalise(img).unsqueeze(0))
        coord = make_coord((H, W), device=img.device).unsqueeze(0)  # (1, H*W, 2)
        cell = make_cell((H, W), H * W, device=img.device).unsqueeze(0)
        if isinstance(model, LMLIIF):
            mod = model.modulations_reference(feat, cell[:, :1])
            preds = [model.render(mod, feat, coord[:, q:q + batch], cell[:, q:q + batch])
                     for q in range(0, H * W, batch)]
        else:
            preds = [model.query(feat, coord[:, q:q + batch], cell[:, q:q + batch])
                     for q in range(0, H * W, batch)]
        pred = denormalise(torch.cat(preds, dim=1)[0])  # (H*W, 3)
    return pred.view(H, W, 3).cpu().numpy()


def official_demo(model_path: str, input: str, output: str, out_hw: tuple[int, int]) -> None:
    """What the official `demo.py` does, step for step, on the CPU (for whole-process timing):
    read RGB, encode, `batched_predict` in batches of 30000, clamp, truncate to 8 bits, save."""
    from PIL import Image

    from liif_cli.runtime.weights import load_checkpoint

    img = np.asarray(Image.open(input).convert("RGB"), dtype=np.float32) / 255  # ToTensor
    model = load_checkpoint(model_path)
    pred = oracle_forward(model, torch.from_numpy(img).permute(2, 0, 1), out_hw)
    # ToPILImage: mul(255) then byte(), which truncates
    from liif_cli.io.files import atomic_write

    out = Image.fromarray((np.clip(pred, 0, 1) * 255).astype(np.uint8))
    # a temporary name, then the rename, as every file the tool writes (PIL takes the format
    # from the real name's extension)
    atomic_write(output, lambda tmp: out.save(tmp, format=Image.registered_extensions().get(
        Path(output).suffix.lower(), "PNG")), overwrite=True)


def quantise(raw: np.ndarray) -> np.ndarray:
    return np.round(np.clip(raw, 0, 1) * 255).astype(np.uint8)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE_BYTES
    except OSError:  # not Linux: the lifetime peak is the best there is
        try:
            import resource  # POSIX only: none on Windows
        except ImportError:
            return 0
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class _PeakMemory:
    """Peak memory of what runs inside: CUDA allocator peak, or sampled RSS on the CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self.before = device, 0, 0

    def __enter__(self) -> "_PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            return self
        self.before = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())


@dataclass
class BenchRow:
    device: str
    path: str  # "engine" or "oracle"
    precision: str
    seconds: float
    us_per_pixel: float
    max_abs_diff: float | None  # raw output vs the fp32 reference (oracle, else fp32 engine)
    max_level_diff: int | None  # 8-bit levels, both rounded
    psnr_vs_fp32: float | None  # dB, 8-bit, against the same path in fp32
    peak_memory: int  # bytes: CUDA allocator peak, or sampled process RSS on the CPU
    memory_before: int  # bytes in use when the run started (model, input, the process)
    memory_kind: str  # "rss" or "cuda"
    speedup: float | None = None  # oracle seconds / these seconds, same device


@dataclass
class BenchReport:
    model: str
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    threads: int
    cpu_bf16_native: bool  # native bf16 on this CPU (runtime.device.cpu_bf16_native)
    fused_linear: bool  # the decoder's hidden layers use oneDNN's fused linear+ReLU
    rows: list[BenchRow] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _devices(spec: str) -> list[torch.device]:
    if spec == "auto":  # the CPU, and the GPU or Mac the one device policy picks
        other = resolve_device("auto")
        return [torch.device("cpu")] + ([other] if other.type != "cpu" else [])
    devices = [resolve_device(d.strip()) for d in spec.split(",") if d.strip()]
    if not devices:
        raise UsageError(f"--device {spec!r} names no device: use auto, cpu, cuda, cuda:N or "
                         "mps, or a list of them")
    return devices


def _precisions(spec: str, device: torch.device) -> list[torch.dtype]:
    names = [p.strip() for p in spec.split(",") if p.strip()]
    if not names:
        raise UsageError(f"--precision {spec!r} names no precision: use auto, or a list such "
                         "as fp32,bf16")
    out = []
    for name in names:
        if name == "fp16" and device.type == "cpu" and len(names) > 1:
            warnings.warn("fp16 is for GPUs: not measured on the CPU", LiifWarning,
                          stacklevel=2)
            continue
        if name == "auto":
            dts = [torch.float32, torch.bfloat16] if device.type == "cpu" else [
                torch.float32, resolve_precision("auto", device)]
        elif name == "bf16" and device.type == "cpu":  # measured even where it is emulated
            dts = [torch.bfloat16]
        else:
            dts = [resolve_precision(name, device)]
        out += [d for d in dts if d not in out]
    if torch.float32 in out:  # fp32 first: the others are compared against it
        out.remove(torch.float32)
        out.insert(0, torch.float32)
    return out


def _memory_kind(device: torch.device) -> str:
    return "cuda" if device.type == "cuda" else "rss"


def _warm_up(up: Upscaler, dtypes: list[torch.dtype], oracle: bool) -> None:
    """One tiny run of each path first, so one-time costs (kernel JIT, probes, building each
    precision's decoder) are not timed."""
    img = torch.rand(3, 12, 12, device=up.device)
    if oracle:
        oracle_forward(up.model, img, (24, 24))
    for dtype in dtypes:
        up.render(img, (24, 24), dtype=dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bench(model: SRModel, *, image: np.ndarray | None = None, size: int = 256,
              scale: float = 4.0, devices: str = "auto", precisions: str = "auto",
              skip_oracle: bool = False, max_memory: int | None = None,
              model_name: str = "model", on_stage: Callable[[str], None] | None = None,
              max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS) -> BenchReport:
    """Time engine (each precision) and oracle (fp32) on each device for one input and scale.

    `image`: (h, w, 3) uint8; default a synthetic size×size one. Output round(h·s)×round(w·s).
    """
    if not (math.isfinite(scale) and scale > 0):
        raise UsageError(f"--scale must be a positive finite number, got {scale}")
    if image is None:
        if size < 1:
            raise UsageError(f"--size must be at least 1, got {size}")
        if size * size > DEFAULT_MAX_INPUT_PIXELS:
            raise UsageError(f"--size {size} is over {pixel_count(DEFAULT_MAX_INPUT_PIXELS)}, "
                             "`liif upscale`'s input limit")
        image = synthetic_image(size)
    h, w = image.shape[:2]
    out_hw = target_size((h, w), scale=scale, max_pixels=max_output_pixels)  # as upscale does
    n_out = out_hw[0] * out_hw[1]
    report = BenchReport(model_name, (h, w), out_hw, torch.get_num_threads(),
                         cpu_bf16_native(),
                         engine.fused_linear_in_use("cpu", torch.float32))
    stage = on_stage or (lambda _s: None)
    for dev in _devices(devices):
        # the dtypes below are swept explicitly (bf16 measured even where it is emulated), each
        # through the one policy: the whole forward pass in that dtype
        up = Upscaler(model, device=dev, precision=torch.float32, max_memory=max_memory)
        net = up.model
        img = torch.from_numpy(image.copy()).permute(2, 0, 1).float().div(255).to(dev)
        reference, ref_u8 = None, {}
        oracle_s = None
        _warm_up(up, _precisions(precisions, dev), not skip_oracle)
        if not skip_oracle:
            stage(f"oracle fp32 on {dev}")
            with _PeakMemory(dev) as mem:
                _sync(dev)
                t0 = time.perf_counter()
                reference = oracle_forward(net, img, out_hw)
                _sync(dev)
                oracle_s = time.perf_counter() - t0
            report.rows.append(BenchRow(str(dev), "oracle", "fp32", oracle_s,
                                        oracle_s / n_out * 1e6, None, None, None, mem.peak,
                                        mem.before, _memory_kind(dev), 1.0))
        for dtype in _precisions(precisions, dev):
            name = precision_name(dtype)
            stage(f"engine {name} on {dev}")
            raw = np.empty((*out_hw, 3), np.float32)
            with _PeakMemory(dev) as mem:
                _sync(dev)
                t0 = time.perf_counter()
                up.render(img, out_hw, raw, dtype=dtype)
                _sync(dev)
                secs = time.perf_counter() - t0
            u8 = quantise(raw)
            if reference is None and dtype == torch.float32:
                reference = raw  # no oracle: the fp32 engine is the reference
            diff = None if reference is None or reference is raw else float(
                np.abs(raw - reference).max())
            levels = None if reference is None or reference is raw else int(
                np.abs(u8.astype(np.int16) - quantise(reference)).max())
            if dtype == torch.float32:
                ref_u8["fp32"] = u8
            quality = psnr(ref_u8["fp32"], u8) if dtype != torch.float32 and "fp32" in ref_u8 \
                else None
            report.rows.append(BenchRow(
                str(dev), "engine", name, secs, secs / n_out * 1e6, diff, levels, quality,
                mem.peak, mem.before, _memory_kind(dev),
                None if oracle_s is None else oracle_s / secs))
    return report


def iter_table(report: BenchReport) -> Iterator[list[str]]:
    """Rows of text for `TABLE_COLUMNS`."""
    for r in report.rows:
        mib = r.peak_memory / 2**20
        yield [r.device, r.path, r.precision, f"{r.seconds:.2f}", f"{r.us_per_pixel:.2f}",
               "" if r.speedup is None else f"{r.speedup:.2f}×",
               "" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}",
               "" if r.max_level_diff is None else str(r.max_level_diff),
               "" if r.psnr_vs_fp32 is None else f"{r.psnr_vs_fp32:.1f}",
               f"{mib:.0f} +{mib - r.memory_before / 2**20:.0f}"]


# s: seconds, encoding included; speed-up: oracle seconds / these; max|Δ| on raw [0, 1] output
# and in 8-bit levels (lvl, rounded) against the fp32 oracle; dB: PSNR against fp32; MiB: peak memory
# (CPU: process RSS; CUDA: allocator) and its growth during the run
TABLE_COLUMNS = ["device", "path", "prec", "s", "µs/px", "speed-up", "max|Δ|", "lvl", "dB",
                 "MiB"]
