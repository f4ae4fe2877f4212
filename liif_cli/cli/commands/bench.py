"""`liif bench`: the engine timed against the official forward on the same weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from liif_cli.cli import displays
from liif_cli.cli.options import (
    DEFAULT_MAX_MEMORY,
    DEFAULT_MAX_OUTPUT_PIXELS,
    DEVICE_ENV,
    MaxMemoryOpt,
    MaxOutOpt,
    OverwriteOpt,
    QuietTableOpt,
    own_the_process,
    parse_bytes,
)
from liif_cli.errors import UsageError

BENCH_MODEL_HELP = ("Bundled or user model name, or a checkpoint path (.pth, .safetensors). "
                    "This or --random-arch is needed.")


def bench(
    size: Annotated[int, typer.Option(help="Side of the synthetic square input, in pixels.")
                    ] = 256,
    scale: Annotated[float, typer.Option("--scale", "-s", help="Upscaling factor.")] = 4.0,
    model: Annotated[Optional[str], typer.Option(  # no LIIF_MODEL here: --random-arch
        "--model", "-m", help=BENCH_MODEL_HELP, show_default=False)] = None,
    random_arch: Annotated[Optional[str], typer.Option(
        help="Benchmark random weights of an architecture instead of a checkpoint: "
        "edsr-baseline, edsr-baseline-small (2 blocks, MLP 32-32), rdn, or lmf (LM-LIIF).")] = None,
    input: Annotated[Optional[Path], typer.Option(
        "--input", "-i", help="Use this image instead of the synthetic one.")] = None,
    device: Annotated[str, typer.Option(
        help="auto (the CPU, plus the GPU or Mac that --device auto picks elsewhere), or a "
        "list such as cpu,cuda:0.", envvar=DEVICE_ENV, show_envvar=True)] = "auto",
    precision: Annotated[str, typer.Option(
        help="auto (fp32 and bf16 on CPU, fp32 and the GPU default on GPUs) or a list such "
        "as fp32,bf16,fp16 (fp16 is measured on GPUs only).")] = "auto",
    skip_oracle: Annotated[bool, typer.Option(
        "--skip-oracle", help="Do not run the slow official forward; compare with fp32.")
    ] = False,
    max_memory: MaxMemoryOpt = DEFAULT_MAX_MEMORY,
    max_output_pixels: MaxOutOpt = DEFAULT_MAX_OUTPUT_PIXELS,
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", help="Also write the results to this JSON file.")] = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietTableOpt = False,
):
    """Time the engine against the official forward on the same weights.

    Example: liif bench --random-arch edsr-baseline --size 256 --scale 4
    """
    from liif_cli.tasks.bench import random_model, run_bench

    if (model is None) == (random_arch is None):
        raise UsageError("give --model PATH|NAME or --random-arch ARCH (one of them)")
    budget = parse_bytes(max_memory)
    own_the_process()  # both sides of the comparison run with it
    if json_out is not None:
        from liif_cli.io.files import check_output_path

        check_output_path(json_out, overwrite=overwrite)
    image = None if input is None else _rgb8(input)
    if random_arch is not None:
        net, name = random_model(random_arch), f"random {random_arch}"
    else:
        from liif_cli.runtime.weights import load_model

        net = load_model(model, device="cpu")  # run_bench moves it to each device it times
        name = net.card.name
    report = run_bench(net, image=image, size=size, scale=scale, devices=device,
                       precisions=precision, skip_oracle=skip_oracle, max_memory=budget,
                       model_name=name, max_output_pixels=max_output_pixels,
                       on_stage=None if quiet else lambda s: displays.stage_line(f"running {s} …"))
    displays.bench_table(report, name)
    if json_out is not None:
        from liif_cli.io.files import atomic_write_text, json_text

        atomic_write_text(json_out, json_text(report.as_dict()), overwrite=overwrite)


def _rgb8(path: Path):
    """An image file as 8-bit RGB pixels (grey repeated, 16-bit rounded), as bench takes it."""
    from liif_cli.io.images import read_image, to_8bit

    data = read_image(path)
    image = data.pixels if data.channels == 3 else data.pixels.repeat(3, axis=2)
    return to_8bit(image) if data.bit_depth == 16 else image
