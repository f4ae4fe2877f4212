"""The fast model's cost and speed against exact LIIF (the `default` model), same encoder.

1. Multiply-adds per output pixel, by part (encoder, per-latent decoder work, per-query decoder
   work), from the architectures, and checked against torch's FLOP counter on a real
   `engine.render` of a small input (matmuls and convolutions; elementwise work not counted).
2. Whole-process `liif upscale` seconds, fp32, for one input (default: a 500×500 synthetic
   photo at ×4, a 4-megapixel output), the reference model then the fast one, one run each:
   wall-clock and CPU time (user + system; on a busy machine the wall-clock ratio is noise).

The two models: `--models REF,FAST`, each a bundled name or a checkpoint path (default:
`default,fast` when `fast` is bundled); or random weights of two architectures, `--models
random:liif,random:lmf` (LIIF against LM-LIIF; `random:lite` is LIIF without local ensemble
and a 256-64-64 MLP, the fast model's shape).

    python scripts/bench_fast.py [--models default,fast] [--size 500] [--scale 4]
                                 [--no-timing] [--json out.json]

Run it on a quiet machine for figures to quote (`nice` and a busy CPU slow both runs).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from liif_cli.model import LMLIIF
from liif_cli.model.encoders import MeanShift
from liif_cli.runtime import engine
from liif_cli.runtime.decoders import kernels
from liif_cli.runtime.weights import save_checkpoint
from liif_cli.tasks.bench import random_model, synthetic_image

ARCHS = {"liif": "edsr-baseline", "lmf": "lmf"}  # liif_cli.tasks.bench.RANDOM_ARCHS names
LITE = {"local_ensemble": False, "hidden": (256, 64, 64)}  # the fast model's LIIF decoder


def model_of(ref: str):
    """A bundled name or checkpoint path, or `random:ARCH` (liif, lmf, lite): the network."""
    from dataclasses import replace

    from liif_cli.model import LIIF
    from liif_cli.runtime.weights import load_model

    if not ref.startswith("random:"):
        return load_model(ref)
    arch = ref.removeprefix("random:")
    if arch == "lite":
        torch.manual_seed(0)
        return LIIF(replace(random_model("edsr-baseline").config, **LITE)).eval()
    return random_model(ARCHS[arch])


def default_models() -> list[str]:
    from liif_cli.runtime.weights import BUNDLED

    return ["default", "fast"] if "fast" in BUNDLED else ["random:liif", "random:lmf"]


def encoder_macs_per_pixel(model) -> int:
    """Multiply-adds per input pixel of the encoder's convolutions (all keep the size)."""
    return sum(m.weight.numel() for m in model.encoder.modules()
               if isinstance(m, torch.nn.Conv2d) and not isinstance(m, MeanShift))  # unused


def decoder_macs(model) -> tuple[int, int]:
    """(per latent, per output pixel) multiply-adds of the engine's decoder.

    LIIF: the first layer's latent part per latent (a 3×3 convolution), its offset part and
    the other layers per query and member. LM-LIIF: the latent MLP and the render MLP's first
    layer per latent; per query and member the offset terms, the hidden layers, the
    modulations (a multiply and an add per hidden unit) and the output layer.
    """
    members = 4 if model.config.local_ensemble else 1
    if isinstance(model, LMLIIF):
        cfg = model.config
        lat = sum(m.weight.numel() for m in model.hypernet.linears)
        r = model.imnet.linears
        zc = cfg.render_hidden if cfg.mod_input else model.feat_dim
        lat += r[0].weight.shape[0] * zc  # first render layer on the compressed latent
        per_member = (2 * cfg.render_hidden  # offset terms
                      + sum(m.weight.numel() for m in r[1:])
                      + cfg.render_depth * cfg.render_hidden)  # scale multiplies
        return lat, members * per_member
    lin = model.imnet.linears
    c = model.feat_dim * (9 if model.config.feat_unfold else 1)
    lat = lin[0].weight.shape[0] * c
    per_member = lin[0].weight.shape[0] * 2 + sum(m.weight.numel() for m in lin[1:])
    return lat, members * per_member


def counted_macs(model, size: int, scale: float) -> float:
    """Matmul and convolution multiply-adds of one engine.render, per output pixel."""
    img = torch.from_numpy(synthetic_image(size)).permute(2, 0, 1).float() / 255
    out_hw = (round(size * scale), round(size * scale))
    fused = dict(kernels._FUSED_OK)
    kernels._FUSED_OK[torch.float32] = False  # the counter sees addmm, not oneDNN's fused op
    try:
        with FlopCounterMode(display=False) as fc, torch.inference_mode():
            engine.render(model, img, out_hw)
    finally:
        kernels._FUSED_OK.clear()
        kernels._FUSED_OK.update(fused)
    return fc.get_total_flops() / 2 / (out_hw[0] * out_hw[1])


def cost_table(refs: list[str], scales: list[float]) -> dict:
    rows = {}
    for name in refs:
        m = model_of(name)
        enc = encoder_macs_per_pixel(m)
        lat, query = decoder_macs(m)
        for s in scales:
            per_out = {"encoder": enc / s**2, "decoder_per_latent": lat / s**2,
                       "decoder_per_query": query}
            per_out["decoder"] = per_out["decoder_per_latent"] + query
            per_out["total"] = per_out["decoder"] + per_out["encoder"]
            per_out["counted_total"] = counted_macs(m, 24, s)
            rows[f"{name} x{s:g}"] = per_out
    return rows


def time_upscale(refs: list[str], size: int, scale: float) -> dict[str, float]:
    """Whole-process `liif upscale` seconds for each model (fp32, CPU), and the first's over
    the second's."""
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Image.fromarray(synthetic_image(size)).save(tmp / "in.png")
        for i, name in enumerate(refs):
            ref = name
            if name.startswith("random:"):
                ref = str(tmp / f"m{i}.pth")
                save_checkpoint(model_of(name), ref)
            cmd = [sys.executable, "-m", "liif_cli", "upscale", str(tmp / "in.png"),
                   "--model", ref, "--scale", f"{scale:g}",
                   "--precision", "fp32", "--device", "cpu", "-o", str(tmp / f"m{i}.png"),
                   "-q"]
            cpu0 = _children_cpu()
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            res[name] = time.perf_counter() - t0
            res[f"{name}_cpu"] = _children_cpu() - cpu0
            print(f"{name}: {res[name]:.1f} s wall, {res[f'{name}_cpu']:.1f} s CPU", flush=True)
    a, b = refs
    res["speedup"] = res[a] / res[b]
    res["speedup_cpu"] = res[f"{a}_cpu"] / res[f"{b}_cpu"]
    return res


def _children_cpu() -> float:
    """User + system CPU seconds of finished child processes: robust to a busy machine."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="REF,FAST: bundled names, checkpoint paths or "
                    "random:ARCH (liif, lmf, lite); default: default,fast when fast is bundled, "
                    "else random:liif,random:lmf")
    ap.add_argument("--size", type=int, default=500)
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--no-timing", action="store_true", help="Only the multiply-add counts.")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    refs = args.models.split(",") if args.models else default_models()
    if len(refs) != 2:
        ap.error("--models takes two models, REF,FAST")
    report = {"threads": torch.get_num_threads(), "models": refs,
              "macs_per_output_pixel": cost_table(refs, [2, 4])}
    for k, r in report["macs_per_output_pixel"].items():
        print(f"{k:16s} encoder {r['encoder'] / 1e3:8.1f}k  decoder {r['decoder'] / 1e3:8.1f}k "
              f"(per latent {r['decoder_per_latent'] / 1e3:.1f}k + per query "
              f"{r['decoder_per_query'] / 1e3:.1f}k)  total {r['total'] / 1e3:8.1f}k  "
              f"counted {r['counted_total'] / 1e3:8.1f}k")
    t = report["macs_per_output_pixel"]
    a, b = refs
    for s in ("x2", "x4"):
        ratio = t[f"{a} x{s[1:]}"]["decoder"] / t[f"{b} x{s[1:]}"]["decoder"]
        print(f"{s}: {b} decoder = 1/{ratio:.0f} of {a}'s; whole model 1/"
              f"{t[f'{a} x{s[1:]}']['total'] / t[f'{b} x{s[1:]}']['total']:.1f}")
    if not args.no_timing:
        secs = report["upscale_seconds"] = time_upscale(refs, args.size, args.scale)
        report["upscale_input"] = [args.size, args.size, args.scale]
        print(f"liif upscale {args.size}² ×{args.scale:g} fp32: {a} {secs[a]:.1f} s, {b} "
              f"{secs[b]:.1f} s, {secs['speedup']:.2f}× (CPU time {secs['speedup_cpu']:.2f}×)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
