"""`liif upscale`: one image to any scale or size (`tasks.upscale.upscale_file`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from liif_cli.cli import displays
from liif_cli.cli.options import (
    DEFAULT_MAX_INPUT_PIXELS,
    DEFAULT_MAX_MEMORY,
    DEFAULT_MAX_OUTPUT_PIXELS,
    DEFAULT_QUALITY,
    DenoiseOpt,
    DeviceOpt,
    FitOpt,
    HeightOpt,
    MaxInOpt,
    MaxMemoryOpt,
    MaxOutOpt,
    ModelOpt,
    OverwriteOpt,
    PrecisionOpt,
    QualityOpt,
    QuietOpt,
    ScaleOpt,
    SizeOpt,
    WidthOpt,
    check_options,
    model_for_denoise,
    own_the_process,
    parse_bytes,
)

InputArg = Annotated[Path, typer.Argument(help="Image to upscale, or - to read stdin.", metavar="INPUT",
                                          show_default=False)]
OutputOpt = Annotated[Optional[Path], typer.Option(
    "--output", "-o", help="Output file; format from its extension (png, jpg, webp, tif, bmp), "
    "or - for stdout. Default: next to the input in its format, e.g. photo.jpg -s 7.5 -> "
    "photo_x7.5.jpg (stdout when the input is -).")]
FormatOpt = Annotated[Optional[str], typer.Option(
    "--format", "-f", help="png, jpg, webp, tiff or bmp: stdout's format (default png), or the "
    "default output name's.", show_default=False)]


def upscale(
    input: InputArg, output: OutputOpt = None, fmt: FormatOpt = None,
    scale: ScaleOpt = None, size: SizeOpt = None, width: WidthOpt = None,
    height: HeightOpt = None, fit: FitOpt = None, model: ModelOpt = None,
    device: DeviceOpt = "auto", precision: PrecisionOpt = "auto",
    max_memory: MaxMemoryOpt = DEFAULT_MAX_MEMORY, overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False, quality: QualityOpt = DEFAULT_QUALITY,
    max_output_pixels: MaxOutOpt = DEFAULT_MAX_OUTPUT_PIXELS,
    max_input_pixels: MaxInOpt = DEFAULT_MAX_INPUT_PIXELS, denoise: DenoiseOpt = None,
):
    """Upscale one image to any scale or size.

    Examples: liif upscale photo.jpg --scale 7.5 · liif upscale scan.png --size 1920x1080
    --fit contain · cat a.jpg | liif upscale - -s 2 --format webp > b.webp
    """
    sizes = dict(scale=scale, size=size, width=width, height=height, fit=fit)
    check_options(precision=precision, device=device, denoise=denoise, sizes=sizes)
    budget = parse_bytes(max_memory)
    own_the_process()
    from liif_cli.tasks.upscale import upscale_file

    if denoise is not None:  # the task blends the pair; a LIIF_MODEL may give way to it
        model = model_for_denoise(model)
    shown = "stdin" if str(input) == "-" else input.name
    with displays.progress_bar(f"upscaling {shown}", quiet=quiet, unit_scale=1e-6) as on_progress:
        res = upscale_file(input, output, model=model, **sizes, fmt=fmt, device=device,
                           precision=precision, max_memory=budget, overwrite=overwrite,
                           quality=quality, max_input_pixels=max_input_pixels,
                           max_output_pixels=max_output_pixels, denoise=denoise,
                           on_progress=on_progress)
    if not quiet:
        displays.upscale_summary(res)
