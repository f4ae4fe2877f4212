"""The `liif` command: a thin Typer layer over the library.

This is the only module that prints, colours or picks exit codes. Library errors (`LiifError`)
become one red line on stderr and the error's exit code (the contract in errors.py), in one place:
`_App.invoke`. Options shared by several commands are declared once, as `Annotated` aliases.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer.core import TyperGroup

try:  # Typer ≥ 0.23 vendors Click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older Typer uses Click itself
    from click.exceptions import ClickException

from liif_cli import __version__
from liif_cli.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    LiifError,
    LiifWarning,
    UsageError,
    signal_exit_code,
)

console = Console(stderr=True, highlight=False)
out = Console(highlight=False)  # results people may pipe: tables, listings


def _error_line(message: str) -> None:
    """The one red line every error ends in (message printed as is, never as markup)."""
    console.print("[red]error:[/] " + escape(message), soft_wrap=True)


def _notes(show_other):
    """A `warnings.showwarning` that prints library warnings (`LiifWarning`) as one `note:`
    line on stderr and hands any other warning to `show_other`."""
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, LiifWarning):
            console.print("note: " + escape(str(message)), soft_wrap=True)
        else:
            show_other(message, category, filename, lineno, file, line)
    return show


def _usage_error(e: ClickException) -> typer.Exit:
    """A command-line mistake Typer found (missing argument, bad option): one line, exit 2."""
    ctx = getattr(e, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    _error_line(e.format_message().strip().replace("\n", " ") + hint)
    return typer.Exit(e.exit_code)


class _App(TyperGroup):
    """Turns library errors into one line and an exit code, for every command.

    Typer's own usage errors (bad options, missing arguments) too: one line, exit 2, instead
    of Rich's multi-line box. `liif` alone still prints the help.
    """

    def make_context(self, info_name, args, parent=None, **extra):  # noqa: D102
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except ClickException as e:  # options of `liif` itself
            if type(e).__name__ == "NoArgsIsHelpError":
                raise
            raise _usage_error(e) from None

    def invoke(self, ctx):  # noqa: D102
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _notes(warnings.showwarning)
                return super().invoke(ctx)
        except LiifError as e:
            _error_line(str(e))
            raise typer.Exit(e.exit_code) from None
        except ClickException as e:  # a command's arguments and options
            raise _usage_error(e) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except MemoryError:
            console.print("[red]error:[/] out of memory; lower --max-memory or the output size")
            raise typer.Exit(EXIT_FAILURE) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # a bug: still one line, with a way to get the details
            if os.environ.get("LIIF_DEBUG"):
                raise
            console.print(f"[red]internal error:[/] {type(e).__name__}: {e} "
                          "(rerun with LIIF_DEBUG=1 for the traceback, and please report it)",
                          soft_wrap=True)
            raise typer.Exit(EXIT_FAILURE) from None


app = typer.Typer(cls=_App, no_args_is_help=True, add_completion=True,
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

# Common options also come from LIIF_* environment variables (the command line wins).
_MODEL_HELP = ("Bundled or user model name, or a checkpoint path (.pth, .safetensors). "
               "Default: bundled.")
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help=_MODEL_HELP, envvar="LIIF_MODEL", show_envvar=True)]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.",
                                        envvar="LIIF_DEVICE", show_envvar=True)]
PrecisionOpt = Annotated[str, typer.Option(
    help="auto (fp32 on CPU, bf16/fp16 on GPU), fp32, bf16 or fp16.", envvar="LIIF_PRECISION",
    show_envvar=True)]
ScaleOpt = Annotated[Optional[str], typer.Option(
    "--scale", "-s", help="Factor (4, 7.5) or WxH factors (3x2.5).")]
SizeOpt = Annotated[Optional[str], typer.Option(
    help="Output size WxH, e.g. 1920x1080: exactly, or as --fit says.")]
WidthOpt = Annotated[Optional[int], typer.Option(help="Output width; height keeps the aspect.")]
HeightOpt = Annotated[Optional[int], typer.Option(help="Output height; width keeps the aspect.")]
MaxMemoryOpt = Annotated[str, typer.Option(
    help="Working-memory budget for tiles and chunks, e.g. 256M, 2G.", envvar="LIIF_MAX_MEMORY",
    show_envvar=True)]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary.")]
QualityOpt = Annotated[int, typer.Option(min=1, max=100, help="JPEG/WebP quality.",
                                         envvar="LIIF_QUALITY", show_envvar=True)]
FitOpt = Annotated[Optional[str], typer.Option(
    help="How --size is met: fill (exactly WxH, the default), contain (largest inside WxH, "
    "aspect kept) or cover (smallest covering WxH), as ImageMagick's WxH!, WxH and WxH^.",
    show_default=False)]
MaxOutOpt = Annotated[int, typer.Option(help="Refuse outputs above this many pixels.")]
MaxInOpt = Annotated[int, typer.Option(help="Refuse inputs above this many pixels.")]
DenoiseOpt = Annotated[Optional[float], typer.Option(
    help="0 to 1: blend the default model (0, keeps grain and detail) into the real-world "
    "model (1, removes JPEG blocks and noise). Picks that pair; --model real alone runs at 1.",
    show_default=False)]


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
    """Yield an `on_progress(done, total)` callback drawing a Rich bar (or doing nothing).

    No bar when stderr is not a terminal (logs, pipes): it would only print blank lines there.
    """
    if quiet or not console.is_terminal:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(description, total=None)

        def on_progress(done: int, total: int) -> None:
            bar.update(task, completed=done * unit_scale, total=total * unit_scale)

        yield on_progress


def _check_options(*, precision: str | None = None, device: str | None = None,
                   denoise: float | None = None, degrade: str | None = None,
                   scales: str | None = None, sizes: dict | None = None) -> None:
    """Option values that need no torch, checked before it is imported: a usage error is
    answered at once (`runtime.options`; the library checks them again where used)."""
    from liif_cli.runtime import options

    if precision is not None:
        options.check_precision(precision)
    if device is not None:
        for name in str(device).split(","):
            if name.strip().lower() != "all":
                options.check_device(name.strip().lower())
    if denoise is not None:
        options.check_denoise(denoise)
    if scales is not None or sizes is not None:
        from liif_cli.runtime import sizing

        if scales is not None:
            sizing.parse_scales(scales)
        if sizes is not None:
            sizing.size_request(**sizes)
    if degrade is not None:
        from liif_cli.data.degrade import parse_spec

        parse_spec(degrade)


# ----------------------------------------------------------------------------------------------
# upscale

def _owns_the_process() -> None:
    """A command that renders owns its process: keep freed memory for reuse (glibc), which
    spares the encoder's large activations a fresh, zero-filled mapping each time (a 500×500
    input's EDSR-baseline encoder: 6.3 s → 3.4 s on the 2-core machine; docs/fast-model.md)."""
    from liif_cli.runtime.malloc import keep_freed_memory

    keep_freed_memory()


@app.command()
def upscale(
    input: Annotated[Path, typer.Argument(help="Image to upscale, or - to read stdin.",
                                          show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Output file; format from its extension (png, jpg, webp, tif, "
        "bmp), or - for stdout. Default: next to the input, e.g. photo_x7.5.png (stdout when "
        "the input is -).")] = None,
    fmt: Annotated[Optional[str], typer.Option(
        "--format", "-f", help="png, jpg, webp, tiff or bmp: stdout's format (default png), or "
        "the default output name's.", show_default=False)] = None,
    scale: ScaleOpt = None, size: SizeOpt = None, width: WidthOpt = None,
    height: HeightOpt = None, fit: FitOpt = None, model: ModelOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto", max_memory: MaxMemoryOpt = "512M",
    overwrite: OverwriteOpt = False, quiet: QuietOpt = False, quality: QualityOpt = 95,
    max_output_pixels: MaxOutOpt = 1_000_000_000, max_input_pixels: MaxInOpt = 200_000_000,
    denoise: DenoiseOpt = None,
):
    """Upscale one image to any scale or size.

    Examples: liif upscale photo.jpg --scale 7.5 · liif upscale scan.png --size 1920x1080
    --fit contain · cat a.jpg | liif upscale - -s 2 --format webp > b.webp
    """
    _check_options(precision=precision, device=device, denoise=denoise,
                   sizes=dict(scale=scale, size=size, width=width, height=height, fit=fit))
    budget = parse_bytes(max_memory)
    _owns_the_process()
    from liif_cli.tasks.upscale import upscale_file

    if denoise is not None:
        from liif_cli.runtime.weights import load_model

        model = load_model(model, denoise=denoise)

    no_bar = quiet or not console.is_terminal  # no bar (nor its blank line) in logs, pipes
    shown = "stdin" if str(input) == "-" else input.name
    with progress_bar(f"upscaling {shown}", quiet=no_bar, unit_scale=1e-6) as on_progress:
        res = upscale_file(input, output, model=model, scale=scale, size=size, width=width,
                           height=height, fit=fit, fmt=fmt, device=device, precision=precision,
                           max_memory=budget,
                           overwrite=overwrite, quality=quality,
                           max_input_pixels=max_input_pixels,
                           max_output_pixels=max_output_pixels, on_progress=on_progress)
    if not quiet:
        (h, w), (oh, ow) = res.in_hw, res.out_hw
        where = "stdout" if str(res.output) == "-" else res.output
        console.print(f"wrote {where}  {w}×{h} → {ow}×{oh} {res.kind}  model {res.model}  "
                      f"{res.device} {res.precision}  {res.seconds:.1f}s", markup=False,
                      soft_wrap=True)


# ----------------------------------------------------------------------------------------------
# models

@app.command()
def models(
    json_out: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
):
    """List the bundled models and those in your models folder.

    A table in a terminal; piped, one tab-separated row per model (name, source, arch, encoder,
    parameters, trained, bytes, path) with no header; --json for everything as JSON.
    """
    import json

    from liif_cli.runtime.weights import list_models, user_models_dir

    rows = list_models()
    if json_out:
        # plain print: Rich would wrap long lines at the console width
        print(json.dumps([{**r, "path": str(r["path"])} for r in rows], indent=1))
        return
    if not out.is_terminal:  # scripts: plain rows, easy to cut and grep
        for r in rows:
            print("\t".join(str(v) for v in (r["name"], r["source"], r["arch"], r["encoder"],
                                             r["params"], r["trained"], r["bytes"], r["path"])))
        return
    table = Table(title="LIIF models")
    for col in ("name", "source", "arch", "encoder", "params", "trained", "size", "path"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["source"], r["arch"], r["encoder"], f"{r['params'] / 1e6:.2f}M",
                      r["trained"], f"{r['bytes'] / 2**20:.1f} MiB", str(r["path"]))
    out.print(table)
    out.print(f"User models folder: {user_models_dir()} (drop official-layout .pth or "
              ".safetensors files here)")


# ----------------------------------------------------------------------------------------------
# export

@app.command()
def export(
    model: Annotated[str, typer.Argument(
        help="Model name (see `liif models`) or checkpoint path.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Output file. Default: MODEL.safetensors/.onnx/.pth here.")
    ] = None,
    fmt: Annotated[Optional[str], typer.Option(
        "--format", "-f", help="safetensors, onnx (needs the [onnx] extra) or pth. Default: "
        "from -o's extension, else safetensors.", show_default=False)] = None,
    overwrite: OverwriteOpt = False, quiet: QuietOpt = False,
):
    """Write a model as .safetensors (no pickle), an ONNX graph, or the official .pth.

    Examples: liif export default -o default.safetensors · liif export default -f onnx
    """
    from liif_cli.tasks.export import export_format, export_model

    kind = export_format(fmt, output)
    if kind == "onnx" and not quiet:
        console.print("tracing the model for ONNX (takes a few seconds) …", style="dim",
                      markup=False)
    res = export_model(model, output, fmt=kind, overwrite=overwrite)
    if not quiet:
        console.print(f"wrote {res.path}  {res.format}  {res.bytes / 2**20:.1f} MiB  model "
                      f"{res.model}  {res.check}  {res.seconds:.1f}s", markup=False,
                      soft_wrap=True)


# ----------------------------------------------------------------------------------------------
# train

@app.command()
def train(
    data: Annotated[Optional[str], typer.Option(help="Folder of HR training images (recursive).")] = None,
    val_data: Annotated[Optional[str], typer.Option(help="Folder of HR validation images.")] = None,
    out: Annotated[Optional[str], typer.Option(help="Run folder. (default: runs/liif)")] = None,
    encoder: Annotated[Optional[str], typer.Option(help="edsr-baseline, edsr or rdn. (default: edsr-baseline)")] = None,
    decoder: Annotated[Optional[str], typer.Option(help="liif, or lmf (LM-LIIF: the fast model's). With --init of the other kind, its encoder is copied. (default: liif, or --init's)")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="(default: 1000)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch. (default: 16)")] = None,
    patch_size: Annotated[Optional[int], typer.Option(help="LR patch side. (default: 48)")] = None,
    scale_min: Annotated[Optional[float], typer.Option(help="(default: 1)")] = None,
    scale_max: Annotated[Optional[float], typer.Option(help="(default: 4)")] = None,
    sample_q: Annotated[Optional[int], typer.Option(help="Queries per sample. (default: 2304)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="(default: 1e-4)")] = None,
    lr_milestones: Annotated[Optional[str], typer.Option(help="Epochs, comma-separated. (default: 200,400,600,800)")] = None,
    lr_gamma: Annotated[Optional[float], typer.Option(help="(default: 0.5)")] = None,
    warmup: Annotated[Optional[int], typer.Option(
        help="Steps of linear lr warm-up at the start of the run, e.g. 100 when fine-tuning "
        "with --init. (default: 0)")] = None,
    repeat: Annotated[Optional[int], typer.Option(help="Passes over the images per epoch. (default: 20)")] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers. (default: 2)")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N, mps.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32, bf16 or fp16. (default: fp32)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="(default: 0)")] = None,
    init: Annotated[Optional[str], typer.Option(help="Start from this checkpoint or model name (fine-tune).")] = None,
    freeze_encoder: Annotated[Optional[bool], typer.Option("--freeze-encoder", help="Train the decoder only, on --init's encoder (about twice the steps per second; e.g. a new --decoder on a trained model).", show_default=False)] = None,
    distill: Annotated[Optional[str], typer.Option(help="Teacher model (path or name): the loss also pulls the prediction towards its output at the same queries, e.g. a fast model learning from default.")] = None,
    distill_weight: Annotated[Optional[float], typer.Option(help="The teacher's share of the loss, in (0, 1]; the rest is L1 to the ground truth. (default: 0.5)")] = None,
    val_every: Annotated[Optional[int], typer.Option(help="Epochs between validations. (default: 1)")] = None,
    val_images: Annotated[Optional[int], typer.Option(help="Validate on the first K images. (default: 10)")] = None,
    save_every: Annotated[Optional[int], typer.Option(help="Epochs between snapshots. (default: 100)")] = None,
    degrade: Annotated[Optional[str], typer.Option(help="real: train on blurred, noisy, JPEG-compressed LR (ranges: TOML [degrade_ranges]).")] = None,
    val_degrade: Annotated[Optional[str], typer.Option(help="Also validate on LR degraded by this spec, e.g. noise=5,jpeg=75.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from last.pth.")] = False,
    config: Annotated[Optional[Path], typer.Option(help="TOML file of these options (keys with _).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Plot RUN_DIR's loss and PSNR to RUN_DIR/curves.png and exit.")] = None,
    quiet: QuietOpt = False,
):
    """Train a LIIF model with the paper's recipe (every default is the paper's).

    Example: liif train --data DIV2K/DIV2K_train_HR --val-data DIV2K/DIV2K_valid_HR
    """
    from liif_cli.recipe import check_new_run, config_from

    if plot is not None:
        from liif_cli.io.plot import plot_run

        png = plot_run(plot)
        console.print(f"[green]wrote[/] {png}")
        return
    milestones = None if lr_milestones is None else _int_list(lr_milestones, "--lr-milestones")
    overrides = dict(data=data, val_data=val_data, out=out, encoder=encoder, decoder=decoder,
                     epochs=epochs,
                     batch_size=batch_size, patch_size=patch_size, scale_min=scale_min,
                     scale_max=scale_max, sample_q=sample_q, lr=lr, lr_milestones=milestones,
                     lr_gamma=lr_gamma, warmup=warmup, repeat=repeat, workers=workers, device=device,
                     precision=precision, seed=seed, init=init, freeze_encoder=freeze_encoder,
                     distill=distill, distill_weight=distill_weight,
                     val_every=val_every,
                     val_images=val_images, save_every=save_every, degrade=degrade,
                     val_degrade=val_degrade)
    cfg = config_from(str(config) if config else None, overrides, resume=resume)
    if not resume:
        check_new_run(cfg.out)
    from liif_cli.tasks.train import train as run_training

    if not quiet and int(os.environ.get("RANK", 0)) == 0:
        console.print("[bold]liif train[/] " + "  ".join(
            f"{k}={v}" for k, v in cfg.as_dict().items() if v not in (None, {}, "")),
            soft_wrap=True)
    with _train_display(quiet) as on_event:
        summary = run_training(cfg, resume=resume, on_event=on_event)
    if summary["stopped"]:
        console.print(f"[yellow]{summary['stopped']}[/]")
        raise typer.Exit(signal_exit_code(summary.get("signal")))
    if not quiet:
        best = summary["best_psnr"]
        val = (f"best val PSNR {best:.2f} dB" if math.isfinite(best) else
               "no validation (give --val-data)")
        console.print(f"[green]done[/] {summary['out']}  {val}  "
                      f"{summary['seconds'] / 60:.1f} min")


def _int_list(text: str, name: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{name} takes comma-separated integers, e.g. 200,400") from None


@contextmanager
def _train_display(quiet: bool) -> Iterator:
    """Rich display of training: a bar per epoch with loss, lr, it/s; lines for validations."""
    if quiet:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                  console=console) as bar:
        task = bar.add_task("starting", total=None, info="")

        def on_event(ev) -> None:
            if ev.kind == "load":  # decoding the training images into memory
                bar.update(task, description="decoding images", completed=ev.iteration,
                           total=ev.iterations, info=f"{ev.iteration}/{ev.iterations}")
            elif ev.kind == "start":
                console.print(ev.message)
            elif ev.kind == "step":
                bar.update(task, description=f"epoch {ev.epoch + 1}", completed=ev.iteration,
                           total=ev.iterations, info=f"loss {ev.loss:.4f} lr {ev.lr:.2e} "
                           f"{ev.its:.2f} it/s")
            elif ev.kind == "val":
                console.print(f"epoch {ev.epoch + 1} validation PSNR: " + "  ".join(
                    f"{k} {v:.2f} dB" for k, v in ev.psnr.items()))

        yield on_event


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
    degrade: Annotated[Optional[str], typer.Option(
        help="Degrade every LR input, in this order, seeded per image: e.g. jpeg=70, "
        "noise=5,jpeg=80, blur=1.5 (keys blur, noise, gray, poisson, jpeg).")] = None,
    device: DeviceOpt = "auto", precision: PrecisionOpt = "fp32",
    max_memory: MaxMemoryOpt = "512M", overwrite: OverwriteOpt = False, quiet: QuietOpt = False,
):
    """PSNR (and SSIM) of a model on a folder of HR images, under the LIIF paper's protocols.

    Example: liif eval --data Set5/HR --lr-dir Set5/LR_bicubic --model my.pth --scales 2,3,4
    """
    from rich.markup import escape

    _check_options(precision=precision, device=device, degrade=degrade, scales=scales)
    budget = parse_bytes(max_memory)
    _owns_the_process()
    from liif_cli.io.files import check_output_path
    from liif_cli.tasks.evaluate import BICUBIC, evaluate, write_csv, write_json

    reports = [(p.expanduser(), w) for p, w in ((json_path, write_json), (csv_path, write_csv))
               if p]
    for path, _ in reports:
        check_output_path(path, overwrite=overwrite)
    with progress_bar(f"eval {data.name}", quiet=quiet, unit_scale=1e-6) as on_progress:
        res = evaluate(model, data, scales=scales, protocol=protocol, lr_dir=lr_dir,
                       bicubic=not no_bicubic, with_ssim=ssim, device=device,
                       precision=precision, max_memory=budget, examples_dir=save_examples,
                       overwrite=overwrite, degrade=degrade, on_progress=on_progress)
    for path, write in reports:
        write(path, res.rows(per_image=per_image), overwrite=overwrite)

    def cell(psnr: float, ssim_v: float | None) -> str:
        return f"{psnr:.2f}" + ("" if ssim_v is None else f" / {ssim_v:.4f}")

    methods = ([BICUBIC] if not no_bicubic else []) + [res.model]
    by = {(r.scale, r.method): r for r in res.records}
    table = Table(title=escape(f"{res.dataset} · {res.protocol} · PSNR dB"
                               f"{' / SSIM' if ssim else ''}"
                               + (f" · LR degraded: {res.degrade}" if res.degrade != "none"
                                  else "")),
                  caption=f"{res.images} image{'s' if res.images != 1 else ''} · "
                          f"{res.seconds:.1f}s · {res.device} {res.precision}")
    for col in ("scale", "LR", *methods, *(["gain"] if not no_bicubic else [])):
        table.add_column(escape(col), justify="left" if col in ("scale", "LR") else "right")
    for scale in dict.fromkeys(r.scale for r in res.records):
        mine = by[(scale, res.model)]
        row = [f"×{scale:g}", mine.lr] + [cell(by[(scale, m)].psnr, by[(scale, m)].ssim)
                                          for m in methods]
        if not no_bicubic:
            row.append(f"{mine.psnr - by[(scale, BICUBIC)].psnr:+.2f}")
        table.add_row(*row)
    out.print(table)
    if per_image:
        pt = Table(title=escape(f"{res.dataset}: per image"))
        for col in ("image", "scale", *methods):
            pt.add_column(escape(col), justify="left" if col in ("image", "scale") else "right")
        scores = {(s.image, s.scale, s.method): s for s in res.per_image}
        for img, scale in dict.fromkeys((s.image, s.scale) for s in res.per_image):
            pt.add_row(escape(img), f"×{scale:g}", *(cell(scores[(img, scale, m)].psnr,
                                                  scores[(img, scale, m)].ssim) for m in methods))
        out.print(pt)
    if not quiet:
        for path, _ in reports:
            console.print(f"[green]wrote[/] {escape(str(path))}")
        if res.examples:
            console.print(f"[green]wrote[/] {len(res.examples)} example crops to "
                          f"{escape(str(save_examples))}")


# ----------------------------------------------------------------------------------------------
# batch

# Not DeviceOpt: batch takes several devices (one worker each) where upscale takes one.
DevicesOpt = Annotated[str, typer.Option(
    "--device", help="auto, cpu, cuda:N, mps, a list (cuda:0,cuda:1) or all (every GPU).",
    envvar="LIIF_DEVICE", show_envvar=True)]


@contextmanager
def _stop_on_signals() -> Iterator[dict]:
    """First Ctrl-C (or SIGTERM) sets state['stop'] to stop cleanly; a second one stops now."""
    import signal
    import threading

    state = {"stop": threading.Event(), "signal": None}

    def handler(signum, frame):
        if state["stop"].is_set():
            raise KeyboardInterrupt
        state["signal"] = signum
        state["stop"].set()

    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def _batch_display(quiet: bool) -> Iterator:
    """Rich bar over files with MP/s and ETA; failures as lines above it (even when quiet)."""
    from rich.markup import escape
    from rich.progress import MofNCompleteColumn

    def failure_line(ev, printer) -> None:
        if ev.kind == "file" and ev.record.status == "failed":
            r = ev.record
            text = r.reason if r.input in r.reason else f"{r.input}: {r.reason}"
            printer.print("[red]failed:[/] " + escape(text), soft_wrap=True, highlight=False)

    if quiet:
        yield lambda ev: failure_line(ev, console)
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("batch", total=None, rate="")
        t0, megapixels = time.perf_counter(), 0.0

        def on_event(ev) -> None:
            nonlocal t0, megapixels
            if ev.kind == "start":
                t0 = time.perf_counter()
                bar.update(task, total=ev.total, description=f"batch on {ev.message}")
            elif ev.kind in ("file", "progress"):
                if ev.kind == "file" and ev.record.status == "done":
                    megapixels += ev.record.out_megapixels
                mp = megapixels + ev.partial_megapixels
                rate = mp / max(time.perf_counter() - t0, 1e-6)
                bar.update(task, completed=ev.done + ev.partial, rate=f"{rate:.2f} MP/s")
                failure_line(ev, bar.console)
            elif ev.kind == "worker" and " failed: " in ev.message:
                bar.console.print(f"[yellow]worker {ev.message}[/]", soft_wrap=True)
            elif ev.kind == "stopping":
                bar.console.print(f"[yellow]stopping ({ev.message}): finishing outputs being "
                                  "written; Ctrl-C again quits at once[/]")

        yield on_event


def _print_plan(plan) -> None:
    for item in plan.items:
        why = f"  ({item.reason})" if item.reason else ""
        out.print(f"{item.action:8} {item.input} → {item.output}{why}", markup=False,
                  soft_wrap=True)
    parts = [f"{plan.count('upscale')} to upscale", f"{plan.count('skip')} skipped (output "
             f"exists)", f"{plan.count('fail')} failing"]
    if plan.shard[1] > 1:
        parts.append(f"{plan.other_shards} in other shards")
    if plan.stale_temps:
        parts.append(f"{len(plan.stale_temps)} stale temporary file(s) to remove")
    if plan.ignored:
        parts.append(f"{plan.ignored} non-image file(s) ignored")
    out.print("dry run: " + ", ".join(parts) + "; nothing written", soft_wrap=True)


def _print_batch_summary(res) -> None:
    from rich.markup import escape

    from liif_cli.tasks.batch import STATUSES

    done_mp = res.megapixels("done")
    caption = (f"{res.seconds:.1f}s · {done_mp / max(res.seconds, 1e-6):.2f} output MP/s · "
               f"model {res.model} on {', '.join(res.workers)}")
    if res.plan.shard[1] > 1:
        caption += f" · shard {res.plan.shard[0]}/{res.plan.shard[1]}"
    if res.removed_temps:
        caption += f" · removed {res.removed_temps} stale temporary file(s)"
    if res.plan.ignored:
        caption += f" · {res.plan.ignored} non-image file(s) ignored"
    table = Table(title=escape(f"liif batch {res.plan.input_dir} → {res.plan.output_dir}"),
                  caption=escape(caption))
    for col in ("status", "files", "input MP", "output MP", "seconds"):
        table.add_column(col, justify="left" if col == "status" else "right")
    for status in STATUSES:
        rows = [r for r in res.records if r.status == status]
        if rows or status != "cancelled":
            table.add_row(status, str(len(rows)), f"{sum(r.in_megapixels for r in rows):.2f}",
                          f"{sum(r.out_megapixels for r in rows):.2f}",
                          f"{sum(r.seconds for r in rows):.1f}")
    out.print(table)


@app.command(context_settings={"allow_extra_args": True})  # --summary r1.jsonl r2.jsonl r3…
def batch(
    ctx: typer.Context,
    input_dir: Annotated[Optional[Path], typer.Argument(
        help="Folder of images.", show_default=False, metavar="INPUT_DIR")] = None,
    output_dir: Annotated[Optional[Path], typer.Argument(
        help="Folder for the results (created if missing); mirrors the input tree.",
        show_default=False, metavar="OUTPUT_DIR")] = None,
    scale: ScaleOpt = None, size: SizeOpt = None, width: WidthOpt = None,
    height: HeightOpt = None, fit: FitOpt = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r",
                                            help="Descend into subfolders.")] = False,
    glob: Annotated[Optional[str], typer.Option(
        help="Only names matching this pattern, e.g. '*.jpg' (case-insensitive; with a / it "
        "matches the path under INPUT_DIR).")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="png, jpg, webp, tiff, or same as "
                                     "each input (png for formats we cannot write).")] = "same",
    suffix: Annotated[str, typer.Option(help="Added to output names, e.g. _x4. Needed when "
                                        "OUTPUT_DIR is INPUT_DIR.")] = "",
    overwrite: OverwriteOpt = False, model: ModelOpt = None, device: DevicesOpt = "auto",
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Workers per device; on the "
                                      "CPU, processes sharing its cores.")] = 1,
    precision: PrecisionOpt = "auto", max_memory: MaxMemoryOpt = "512M",
    shard: Annotated[Optional[str], typer.Option(
        help="Do only part I of N (1/4 … 4/4), e.g. one per machine; parts never overlap. "
        "auto: from the job engine (Slurm array, srun, torchrun, Kubernetes Indexed Job).")
    ] = None,
    shards: Annotated[Optional[int], typer.Option(
        help="With --shard auto in a Kubernetes Indexed Job: its completions (or set "
        "LIIF_SHARD_COUNT).")] = None,
    files_from: Annotated[Optional[str], typer.Option(
        help="Do the paths listed in this file (- for stdin), relative to INPUT_DIR, one per "
        "line (or NUL-separated), instead of walking INPUT_DIR.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")
                       ] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failure.")
                         ] = False,
    report: Annotated[Optional[Path], typer.Option(
        help="Record each file (input, output, status, reason, seconds …): FILE.jsonl gets "
        "a line as each file ends (appended); FILE.json one document at the end.")] = None,
    summary: Annotated[bool, typer.Option(
        "--summary", help="Print the merged table of the reports given instead of folders: "
        "liif batch --summary r*.jsonl.")] = False,
    quiet: QuietOpt = False, quality: QualityOpt = 95,
    max_output_pixels: MaxOutOpt = 1_000_000_000, max_input_pixels: MaxInOpt = 200_000_000,
    denoise: DenoiseOpt = None,
):
    """Upscale every image in a folder; run it again to resume. Exit 1 if any file failed.

    Example: liif batch photos/ big/ --scale 4 --recursive --report big.json
    """
    paths = [p for p in (input_dir, output_dir, *map(Path, ctx.args)) if p is not None]
    if summary:
        _print_report_summary(paths)
        return
    if len(paths) != 2:
        raise UsageError("liif batch takes INPUT_DIR and OUTPUT_DIR" + (
            f" (got {len(paths)} paths; --summary reads reports)" if len(paths) > 2 else ""))
    _check_options(precision=precision, device=device, denoise=denoise,
                   sizes=dict(scale=scale, size=size, width=width, height=height, fit=fit))
    parse_bytes(max_memory)
    _owns_the_process()
    from liif_cli.runtime.sizing import size_request
    from liif_cli.tasks.batch import (
        JsonlReport,
        is_jsonl,
        plan_batch,
        read_file_list,
        resolve_shard,
        run_batch,
        write_report,
    )

    part = resolve_shard(shard, count=shards)
    if part.auto:  # the run's first line (even with --quiet: it belongs in a task's log)
        console.print(f"shard {part.index}/{part.count} from {part.found}", markup=False,
                      soft_wrap=True)
    spec = size_request(scale=scale, size=size, width=width, height=height, fit=fit)
    budget = parse_bytes(max_memory)
    if denoise is not None:
        from liif_cli.runtime.weights import load_model

        model = load_model(model, denoise=denoise)
    if report is not None and not report.parent.is_dir():
        raise UsageError(f"--report folder does not exist: {report.parent}")
    listed = None if files_from is None else read_file_list(files_from)
    plan = plan_batch(input_dir, output_dir, recursive=recursive, pattern=glob, fmt=fmt,
                      suffix=suffix, overwrite=overwrite, shard=part.shard, files=listed)
    if dry_run:
        _print_plan(plan)
        return
    if not plan.items and not quiet:
        hint = "" if recursive else " (add --recursive for subfolders)"
        console.print(f"no images to do in {input_dir}{hint}", style="yellow", markup=False)
    for item in plan.items:  # failures the plan found from names alone (even when quiet)
        if item.action == "fail":
            text = item.reason if str(item.input) in item.reason else \
                f"{item.input}: {item.reason}"
            console.print("[red]failed:[/] " + escape(text), soft_wrap=True)
    stream = JsonlReport(report, shard=part.shard) if report and is_jsonl(report) else None
    with _stop_on_signals() as sig, _batch_display(quiet) as on_event, _closing(stream):
        res = run_batch(plan, model, size=spec, max_output_pixels=max_output_pixels,
                        devices=device, jobs=jobs, precision=precision, max_memory=budget, quality=quality, max_input_pixels=max_input_pixels,
                        fail_fast=fail_fast, stop=sig["stop"], on_event=on_event,
                        on_record=stream.write if stream else None)
    if stream is not None and stream.error:
        _error_line(f"{stream.error} ({stream.lost} record(s) not written)")
    elif report is not None and stream is None:
        write_report(res, report)
    if not quiet:
        _print_batch_summary(res)
        if res.stopped_early:
            console.print("[yellow]stopped at the first failure (--fail-fast)[/]")
        if res.failed:
            console.print(f"[red]{len(res.failed)} file(s) failed[/] (named above)")
    if res.interrupted:
        console.print(f"[yellow]interrupted:[/] {res.count('cancelled')} file(s) not done; "
                      "run the same command again to resume")
        raise typer.Exit(signal_exit_code(sig["signal"]))
    if res.failed or (stream is not None and stream.error):
        raise typer.Exit(EXIT_FAILURE)


@contextmanager
def _closing(thing) -> Iterator:
    try:
        yield thing
    finally:
        if thing is not None:
            thing.close()


def _print_report_summary(paths: list[Path]) -> None:
    """`liif batch --summary r*.jsonl`: reports of many tasks as one table; exit 1 when a file
    is still failed or cancelled (it failed, or no run has finished it)."""
    import glob as globbing

    from rich.markup import escape

    from liif_cli.tasks.batch import STATUSES, summarize_reports, summary_totals

    files: list[str] = []
    for p in paths:  # patterns the shell left alone (quoted, or matching nothing) are ours
        matches = sorted(globbing.glob(str(p))) if not p.exists() and globbing.has_magic(
            str(p)) else [str(p)]
        if not matches:
            raise UsageError(f"--summary: no report matches {p}")
        files.extend(matches)
    res = summarize_reports(files)
    caption = [f"{res.reports} report(s)", f"{res.lines} record(s)",
               f"{len(res.files)} file(s)"]
    if res.shards:
        caption.append("shards " + ", ".join(res.shards))
    if res.hosts:
        caption.append(f"{len(res.hosts)} host(s)")
    if res.bad_lines:
        caption.append(f"{res.bad_lines} unreadable line(s) skipped")
    table = Table(title="liif batch reports", caption=escape(" · ".join(caption)))
    for col in ("status", "files", "input MP", "output MP", "seconds"):
        table.add_column(col, justify="left" if col == "status" else "right")
    for status in STATUSES:
        rows = res.rows(status)
        if rows or status != "cancelled":
            t = summary_totals(rows)
            table.add_row(status, str(len(rows)), f"{t['in_mp']:.2f}", f"{t['out_mp']:.2f}",
                          f"{t['seconds']:.1f}")
    for rec in res.rows("failed"):
        reason = rec.get("reason") or ""
        text = reason if rec["input"] in reason else f"{rec['input']}: {reason}"
        console.print("[red]failed:[/] " + escape(text), soft_wrap=True)
    out.print(table)
    if res.done_twice:
        console.print(f"[yellow]{len(res.done_twice)} file(s) done more than once[/] "
                      f"(overlapping shards, or reruns with --overwrite), e.g. "
                      f"{escape(res.done_twice[0])}", soft_wrap=True)
    left = res.count("failed") + res.count("cancelled")
    if left:
        console.print(f"[red]{left} file(s) not done[/] (failed or cancelled); rerun the "
                      "tasks to resume", soft_wrap=True)
        raise typer.Exit(EXIT_FAILURE)


# ----------------------------------------------------------------------------------------------
# bench

@app.command()
def bench(
    size: Annotated[int, typer.Option(help="Side of the synthetic square input, in pixels.")
                    ] = 256,
    scale: Annotated[float, typer.Option("--scale", "-s", help="Upscaling factor.")] = 4.0,
    model: Annotated[Optional[str], typer.Option(  # no LIIF_MODEL here: --random-arch
        "--model", "-m", help=_MODEL_HELP)] = None,
    random_arch: Annotated[Optional[str], typer.Option(
        help="Benchmark random weights of an architecture instead of a checkpoint: "
        "edsr-baseline, edsr-baseline-small (2 blocks, MLP 32-32), rdn, or lmf (LM-LIIF, the "
        "fast model's).")] = None,
    input: Annotated[Optional[Path], typer.Option(
        "--input", "-i", help="Use this image instead of the synthetic one.")] = None,
    device: Annotated[str, typer.Option(
        help="auto (CPU, and CUDA if present), or a list such as cpu,cuda:0.")] = "auto",
    precision: Annotated[str, typer.Option(
        help="auto (fp32 and bf16 on CPU, fp32 and the GPU default on GPUs) or a list such "
        "as fp32,bf16,fp16.")] = "auto",
    skip_oracle: Annotated[bool, typer.Option(
        "--skip-oracle", help="Do not run the slow official forward; compare with fp32.")
    ] = False,
    max_memory: MaxMemoryOpt = "512M",
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", help="Also write the results to this JSON file.")] = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
):
    """Time the engine against the official forward on the same weights.

    Example: liif bench --random-arch edsr-baseline --size 256 --scale 4
    """
    import json

    from liif_cli.tasks.bench import TABLE_COLUMNS, iter_table, random_model, run_bench

    if (model is None) == (random_arch is None):
        raise UsageError("give --model PATH|NAME or --random-arch ARCH (one of them)")
    budget = parse_bytes(max_memory)
    _owns_the_process()  # both sides of the comparison run with it
    if json_out is not None:
        from liif_cli.io.files import check_output_path

        check_output_path(json_out, overwrite=overwrite)
    image = None
    if input is not None:
        from liif_cli.io.images import read_image

        data = read_image(input)
        image = data.pixels if data.channels == 3 else data.pixels.repeat(3, axis=2)
        if data.bit_depth == 16:
            from liif_cli.io.images import to_8bit

            image = to_8bit(image)
    if random_arch is not None:
        net, name = random_model(random_arch), f"random {random_arch}"
    else:
        from liif_cli.runtime.weights import load_model

        loaded = load_model(model)
        net, name = loaded.model, loaded.name

    def on_stage(text: str) -> None:
        if not quiet:
            console.print(f"running {text} …", style="dim", markup=False)

    report = run_bench(net, image=image, size=size, scale=scale, devices=device,
                       precisions=precision, skip_oracle=skip_oracle, max_memory=budget,
                       model_name=name, on_stage=on_stage)
    (h, w), (oh, ow) = report.in_hw, report.out_hw
    yes_no = {True: "yes", False: "no"}
    table = Table(title=escape(f"liif bench: {name}, {w}×{h} → {ow}×{oh}"), box=None,
                  padding=(0, 1), pad_edge=False,
                  caption=f"{report.threads} CPU threads · native CPU bf16: "
                  f"{yes_no[report.cpu_bf16_native]} · fused oneDNN linear: "
                  f"{yes_no[report.fused_linear]} · MiB: peak (CPU: process RSS) +growth")
    for col in TABLE_COLUMNS:
        table.add_column(col, justify="left" if col in ("device", "path", "prec") else "right",
                         header_style="bold", no_wrap=True)
    for row in iter_table(report):
        table.add_row(*row)
    out.print(table)
    if json_out is not None:
        from liif_cli.io.files import atomic_write_text

        atomic_write_text(json_out, json.dumps(report.as_dict(), indent=1), overwrite=overwrite)


def main() -> None:
    # OpenMP threads that spin while waiting make torch several times slower on a busy machine
    # (measured beside a training job: 126 vs 22 µs per output pixel). Set here, before any
    # command imports torch, not on `import liif_cli`; a value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        app()
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    _leave_distributed(code)
    sys.exit(code)


def _leave_distributed(code: int | str | None) -> None:
    """Under torchrun, end the process without interpreter finalization.

    A gloo worker thread may still be dropping the last reference to a finished collective when
    the interpreter finalizes; the drop needs the GIL, a finalizing interpreter ends the thread
    instead, and the C++ runtime aborts the process (SIGABRT, "terminate called without an
    active exception"); torchrun then kills the other ranks. This raced in 3 of 94 runs on
    a busy 2-core CPU. Training has written and renamed its files by now, so the process flushes
    its output, releases the process group and exits at once.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    dist.destroy_process_group()
    if isinstance(code, str):  # what sys.exit would print
        print(code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
