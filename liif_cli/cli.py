"""The `liif` command: a thin Typer layer over the library.

This is the only module that prints, colours or picks exit codes. Library errors (`LiifError`)
become one red line on stderr and the error's exit code (1, or 2 for usage), in exactly one place:
`_App.invoke`. Options shared by several commands are declared once, as `Annotated` aliases.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table
from typer.core import TyperGroup

from . import __version__
from .errors import LiifError, UsageError

console = Console(stderr=True, highlight=False)
out = Console(highlight=False)  # results people may pipe: tables, listings


class _App(TyperGroup):
    """Turns library errors into one line and an exit code, for every command."""

    def invoke(self, ctx):  # noqa: D102
        try:
            return super().invoke(ctx)
        except LiifError as e:
            console.print(f"[red]error:[/] {e}", soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except MemoryError:
            console.print("[red]error:[/] out of memory; lower --max-memory or the output size")
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # a bug: still one line, with a way to get the details
            if os.environ.get("LIIF_DEBUG"):
                raise
            console.print(f"[red]internal error:[/] {type(e).__name__}: {e} "
                          "(rerun with LIIF_DEBUG=1 for the traceback, and please report it)",
                          soft_wrap=True)
            raise typer.Exit(1) from None


app = typer.Typer(cls=_App, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Upscale images to any scale or size with LIIF.")


def _version(value: bool) -> None:
    if value:
        out.print(f"liif-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version and exit.")] = False):
    """Upscale images to any scale or size with LIIF (Local Implicit Image Function)."""


# ----------------------------------------------------------------------------------------------
# shared options

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Bundled or user model name, or a checkpoint path. Default: bundled.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOpt = Annotated[str, typer.Option(
    help="auto (fp32 on CPU, bf16/fp16 on GPU), fp32, bf16 or fp16.")]
ScaleOpt = Annotated[Optional[str], typer.Option(
    "--scale", "-s", help="Factor (4, 7.5) or WxH factors (3x2.5).")]
SizeOpt = Annotated[Optional[str], typer.Option(help="Exact output size WxH, e.g. 1920x1080.")]
WidthOpt = Annotated[Optional[int], typer.Option(help="Output width; height keeps the aspect.")]
HeightOpt = Annotated[Optional[int], typer.Option(help="Output height; width keeps the aspect.")]
MaxMemoryOpt = Annotated[str, typer.Option(
    help="Working-memory budget for tiles and chunks, e.g. 256M, 2G.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary.")]
QualityOpt = Annotated[int, typer.Option(min=1, max=100, help="JPEG/WebP quality.")]
MaxOutOpt = Annotated[int, typer.Option(help="Refuse outputs above this many pixels.")]
MaxInOpt = Annotated[int, typer.Option(help="Refuse inputs above this many pixels.")]


def parse_bytes(text: str) -> int:
    """'512M' -> 536870912; plain numbers are bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    try:
        n = float(t[:-1] if t[-1:] in "KMGT" else t) * mult
    except ValueError:
        raise UsageError(f"bad memory size {text!r}: use e.g. 512M or 2G") from None
    if n < 16 * 2**20:
        raise UsageError(f"--max-memory {text} is too small; give at least 16M")
    return int(n)


@contextmanager
def progress_bar(description: str, *, quiet: bool, unit_scale: float = 1.0) -> Iterator:
    """Yield an `on_progress(done, total)` callback drawing a Rich bar (or doing nothing)."""
    if quiet:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(description, total=None)

        def on_progress(done: int, total: int) -> None:
            bar.update(task, completed=done * unit_scale, total=total * unit_scale)

        yield on_progress


# ----------------------------------------------------------------------------------------------
# upscale

def default_output(inp: Path, *, scale: str | None, size: str | None, width: int | None,
                   height: int | None) -> Path:
    """photo.jpg --scale 7.5 -> photo_x7.5.jpg; --size 1920x1080 -> photo_1920x1080.jpg."""
    from .imageio import FORMATS

    if scale is not None:
        tag = "x" + scale.strip().lower().replace("×", "x")
    elif size is not None:
        tag = size.strip().lower().replace("×", "x")
    else:
        tag = f"{width or ''}x{height or ''}".strip("x") + ("w" if width and not height else
                                                            "h" if height and not width else "")
    suffix = inp.suffix.lower() if inp.suffix.lower() in FORMATS else ".png"
    return inp.with_name(f"{inp.stem}_{tag}{suffix}")


@app.command()
def upscale(
    input: Annotated[Path, typer.Argument(help="Image to upscale.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Output file; format from its extension. "
        "Default: next to the input, e.g. photo_x7.5.png.")] = None,
    scale: ScaleOpt = None, size: SizeOpt = None, width: WidthOpt = None,
    height: HeightOpt = None, model: ModelOpt = None, device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto", max_memory: MaxMemoryOpt = "512M",
    overwrite: OverwriteOpt = False, quiet: QuietOpt = False, quality: QualityOpt = 95,
    max_output_pixels: MaxOutOpt = 1_000_000_000, max_input_pixels: MaxInOpt = 200_000_000,
):
    """Upscale one image to any scale or size.

    Examples: liif upscale photo.jpg --scale 7.5 · liif upscale scan.png --size 1920x1080
    """
    from .imageio import check_output_path, read_image, write_image
    from .upscale import target_size, upscale_image
    from .weights import load_model

    t0 = time.perf_counter()
    budget = parse_bytes(max_memory)
    dst = output or default_output(input, scale=scale, size=size, width=width, height=height)
    image = read_image(input, max_pixels=max_input_pixels)
    out_hw = target_size((image.height, image.width), scale=scale, size=size, width=width,
                         height=height, max_pixels=max_output_pixels)
    check_output_path(dst, overwrite=overwrite)
    loaded = load_model(model)
    with progress_bar(f"{input.name} → {out_hw[1]}×{out_hw[0]}", quiet=quiet,
                      unit_scale=1e-6) as on_progress:
        res = upscale_image(loaded, image, out_hw=out_hw, device=device, precision=precision,
                            max_memory=budget, on_progress=on_progress)
    write_image(dst, res.image, quality=quality, overwrite=overwrite)
    if not quiet:
        console.print(f"[green]wrote[/] {dst}  {image.width}×{image.height} → "
                      f"{out_hw[1]}×{out_hw[0]}  model {loaded.name}  {res.device} "
                      f"{res.precision}  {time.perf_counter() - t0:.1f}s", soft_wrap=True)


# ----------------------------------------------------------------------------------------------
# models

@app.command()
def models():
    """List the bundled models and those in your models folder."""
    from .weights import list_models, user_models_dir

    rows = list_models()
    table = Table(title="LIIF models")
    for col in ("name", "source", "encoder", "params", "size", "path"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["source"], r["encoder"], f"{r['params'] / 1e6:.2f}M",
                      f"{r['bytes'] / 2**20:.1f} MiB", str(r["path"]))
    out.print(table)
    out.print(f"User models folder: {user_models_dir()} (drop official-layout .pth files here)")


# ----------------------------------------------------------------------------------------------
# eval

@app.command(name="eval")
def eval_(
    data: Annotated[Path, typer.Option(help="Folder of HR images (or one with an HR/ subfolder).",
                                       show_default=False)],
    model: ModelOpt = None,
    scales: Annotated[str, typer.Option(help="Comma-separated scales, each > 1.")] =
    "2,3,4,6,12,18,24,30",
    protocol: Annotated[str, typer.Option(
        help="div2k (RGB, shave s+6), benchmark (Y, shave s), rgb (no shave), or auto: div2k "
        "for DIV2K folders, else benchmark.")] = "auto",
    lr_dir: Annotated[Optional[Path], typer.Option(
        help="Paired LR folder with X2/ X3/ X4/ (names like babyx2.png); other scales are "
        "made from HR.")] = None,
    no_bicubic: Annotated[bool, typer.Option("--no-bicubic", help="Skip the bicubic row.")] = False,
    ssim: Annotated[bool, typer.Option("--ssim", help="Also report SSIM.")] = False,
    per_image: Annotated[bool, typer.Option("--per-image", help="Also a per-image table.")] = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write records as JSON.")] =
    None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write records as CSV.")] = None,
    save_examples: Annotated[Optional[Path], typer.Option(
        help="Folder for side-by-side crops (bicubic | model | ground truth).")] = None,
    device: DeviceOpt = "auto", precision: PrecisionOpt = "fp32",
    max_memory: MaxMemoryOpt = "512M", overwrite: OverwriteOpt = False, quiet: QuietOpt = False,
):
    """PSNR (and SSIM) of a model on a folder of HR images, under the LIIF paper's protocols.

    Example: liif eval --data Set5/HR --lr-dir Set5/LR_bicubic --model my.pth --scales 2,3,4
    """
    from .evaluate import BICUBIC, check_report_path, evaluate, write_csv, write_json

    budget = parse_bytes(max_memory)
    reports = [(p, w) for p, w in ((json_path, write_json), (csv_path, write_csv)) if p]
    for path, _ in reports:
        check_report_path(path, overwrite=overwrite)
    with progress_bar(f"eval {data.name}", quiet=quiet, unit_scale=1e-6) as on_progress:
        res = evaluate(model, data, scales=scales, protocol=protocol, lr_dir=lr_dir,
                       bicubic=not no_bicubic, with_ssim=ssim, device=device,
                       precision=precision, max_memory=budget, examples_dir=save_examples,
                       overwrite=overwrite, on_progress=on_progress)
    for path, write in reports:
        write(path, res.rows(per_image=per_image))

    def cell(psnr: float, ssim_v: float | None) -> str:
        return f"{psnr:.2f}" + ("" if ssim_v is None else f" / {ssim_v:.4f}")

    methods = ([BICUBIC] if not no_bicubic else []) + [res.model]
    by = {(r.scale, r.method): r for r in res.records}
    table = Table(title=f"{res.dataset}: PSNR (dB){' / SSIM' if ssim else ''}, "
                        f"{res.protocol} protocol",
                  caption=f"{res.images} images · {res.seconds:.1f}s · {res.device} "
                          f"{res.precision}")
    for col in ("scale", "LR", *methods, *(["gain"] if not no_bicubic else [])):
        table.add_column(col, justify="left" if col in ("scale", "LR") else "right")
    for scale in dict.fromkeys(r.scale for r in res.records):
        mine = by[(scale, res.model)]
        row = [f"×{scale:g}", mine.lr] + [cell(by[(scale, m)].psnr, by[(scale, m)].ssim)
                                          for m in methods]
        if not no_bicubic:
            row.append(f"{mine.psnr - by[(scale, BICUBIC)].psnr:+.2f}")
        table.add_row(*row)
    out.print(table)
    if per_image:
        pt = Table(title=f"{res.dataset}: per image")
        for col in ("image", "scale", *methods):
            pt.add_column(col, justify="left" if col in ("image", "scale") else "right")
        scores = {(s.image, s.scale, s.method): s for s in res.per_image}
        for img, scale in dict.fromkeys((s.image, s.scale) for s in res.per_image):
            pt.add_row(img, f"×{scale:g}", *(cell(scores[(img, scale, m)].psnr,
                                                  scores[(img, scale, m)].ssim) for m in methods))
        out.print(pt)
    if not quiet:
        for path, _ in reports:
            console.print(f"[green]wrote[/] {path}")
        if res.examples:
            console.print(f"[green]wrote[/] {len(res.examples)} example crops to {save_examples}")


def main() -> None:
    sys.exit(app())
