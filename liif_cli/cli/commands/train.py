"""`liif train`: the paper's recipe (`tasks.train`), options over `TrainConfig`.

Every recipe option defaults to None, "not given", so that a TOML file and a resumed run's
saved config can fill it (`liif_cli.tasks.train.config_from`); `--help` shows the default each
one falls back to, read from `TrainConfig` itself when the help is printed (not when `liif`
starts: the recipe's module imports numpy).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from liif_cli.cli import displays
from liif_cli.cli.options import DEVICE_ENV, QuietOpt
from liif_cli.errors import UsageError

# the defaults `--help` cannot read from TrainConfig (None there means "decided later")
SHOWN_DEFAULTS = {"decoder": "liif, or --init's"}


class TrainCommand(TyperCommand):
    """`liif train`'s command: its help appends each option's TrainConfig default."""

    def format_help(self, ctx, formatter):  # noqa: D102
        from dataclasses import fields

        from liif_cli.tasks.train import TrainConfig

        defaults = {f.name: getattr(TrainConfig(), f.name) for f in fields(TrainConfig)}
        defaults.update(SHOWN_DEFAULTS)
        for param in self.params:
            value = defaults.get(param.name)
            if value is None or value is False or value == "" or "(default:" in (param.help or ""):
                continue
            shown = ",".join(map(_shown, value)) if isinstance(value, tuple) else _shown(value)
            param.help = f"{param.help or ''} (default: {shown})".strip()
        return super().format_help(ctx, formatter)


def _shown(value) -> str:
    """A default as one would type it: 1e-4, 4, 0.5, runs/liif."""
    if not isinstance(value, float):
        return str(value)
    if value and abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{value:g}"


def _opt(help: str = "", **kw):
    return typer.Option(help=help, show_default=False, **kw)


Str, Int, Float = Optional[str], Optional[int], Optional[float]
IntOpt, FloatOpt = Annotated[Int, _opt()], Annotated[Float, _opt()]  # help: the default alone
DataOpt = Annotated[Str, _opt("Folder of HR training images (recursive).")]
ValDataOpt = Annotated[Str, _opt("Folder of HR validation images.")]
OutOpt = Annotated[Str, _opt("Run folder.")]
EncoderOpt = Annotated[Str, _opt("edsr-baseline, edsr or rdn.")]
DecoderOpt = Annotated[Str, _opt(
    "liif, or lmf (LM-LIIF). With --init of the other kind, its encoder is "
    "copied.")]
BatchSizeOpt = Annotated[Int, _opt("Global batch.")]
PatchSizeOpt = Annotated[Int, _opt("LR patch side.")]
SampleQOpt = Annotated[Int, _opt("Queries per sample.")]
MilestonesOpt = Annotated[Str, _opt("Epochs, comma-separated.")]
WarmupOpt = Annotated[Int, _opt(
    "Steps of linear lr warm-up at the start of the run, e.g. 100 when fine-tuning with --init.")]
RepeatOpt = Annotated[Int, _opt("Passes over the images per epoch.")]
WorkersOpt = Annotated[Int, _opt("DataLoader workers.")]
DeviceOpt = Annotated[Str, _opt("auto, cpu, cuda, cuda:N, mps.", envvar=DEVICE_ENV,
                                show_envvar=True)]
PrecisionOpt = Annotated[Str, _opt("fp32, bf16 or fp16.")]
InitOpt = Annotated[Str, _opt("Start from this checkpoint or model name (fine-tune).")]
FreezeOpt = Annotated[Optional[bool], typer.Option(
    "--freeze-encoder", help="Train the decoder only, on --init's encoder (about twice the steps "
    "per second; e.g. a new --decoder on a trained model).", show_default=False)]
DistillOpt = Annotated[Str, _opt(
    "Teacher model (path or name): the loss also pulls the prediction towards its output at the "
    "same queries, e.g. a fast model learning from default.")]
DistillWeightOpt = Annotated[Float, _opt(
    "The teacher's share of the loss, in (0, 1]; the rest is L1 to the ground truth.")]
EmaOpt = Annotated[Float, _opt(
    "Decay of a moving average of the weights, e.g. 0.999: validated and saved as the model.")]
ValEveryOpt = Annotated[Int, _opt("Epochs between validations.")]
ValImagesOpt = Annotated[Int, _opt("Validate on the first K images.")]
SaveEveryOpt = Annotated[Int, _opt("Epochs between snapshots.")]
DegradeOpt = Annotated[Str, _opt(
    "real: train on blurred, noisy, JPEG-compressed LR (ranges: the TOML's degrade_ranges "
    "table).")]
ValDegradeOpt = Annotated[Str, _opt(
    "Also validate on LR degraded by this spec, e.g. noise=5,jpeg=75.")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Continue the run in --out from last.pth.")]
ConfigOpt = Annotated[Optional[Path], _opt("TOML file of these options (keys with _).")]
PlotOpt = Annotated[Optional[Path], _opt(
    "Plot RUN_DIR's loss and PSNR to RUN_DIR/curves.png and exit.")]
NOT_RECIPE = ("resume", "config", "plot", "quiet")  # the options that are no TrainConfig key


def train(
    ctx: typer.Context, data: DataOpt = None, val_data: ValDataOpt = None, out: OutOpt = None,
    encoder: EncoderOpt = None, decoder: DecoderOpt = None, epochs: IntOpt = None,
    batch_size: BatchSizeOpt = None, patch_size: PatchSizeOpt = None,
    scale_min: FloatOpt = None, scale_max: FloatOpt = None, sample_q: SampleQOpt = None,
    lr: FloatOpt = None, lr_milestones: MilestonesOpt = None, lr_gamma: FloatOpt = None,
    warmup: WarmupOpt = None, repeat: RepeatOpt = None, workers: WorkersOpt = None,
    device: DeviceOpt = None, precision: PrecisionOpt = None, seed: IntOpt = None,
    init: InitOpt = None, freeze_encoder: FreezeOpt = None, distill: DistillOpt = None,
    distill_weight: DistillWeightOpt = None, ema: EmaOpt = None,
    val_every: ValEveryOpt = None, val_images: ValImagesOpt = None, save_every: SaveEveryOpt = None,
    degrade: DegradeOpt = None, val_degrade: ValDegradeOpt = None, resume: ResumeOpt = False,
    config: ConfigOpt = None, plot: PlotOpt = None, quiet: QuietOpt = False,
):
    """Train a LIIF model with the paper's recipe (every default is the paper's).

    Example: liif train --data DIV2K/DIV2K_train_HR --val-data DIV2K/DIV2K_valid_HR
    """
    from liif_cli.tasks.train import check_new_run, config_from

    if plot is not None:
        given = [k for k in ctx.params if k not in ("plot", "quiet") and getattr(
            ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"]  # (not LIIF_DEVICE)
        if given:
            raise UsageError(f"--plot draws a run's curves from its metrics: leave out "
                             f"--{given[0].replace('_', '-')}")
        from liif_cli.io.plot import plot_run

        path = plot_run(plot)
        if not quiet:
            displays.console.print(f"[green]wrote[/] {path}")
        return
    overrides = {k: v for k, v in ctx.params.items() if k not in NOT_RECIPE}
    if lr_milestones is not None:
        overrides["lr_milestones"] = _int_list(lr_milestones, "--lr-milestones")
    cfg = config_from(str(config) if config else None, overrides, resume=resume)
    if not resume:
        check_new_run(cfg.out)
    from liif_cli.runtime.process import torchrun_ranks
    from liif_cli.tasks.train import train as run_training

    if not quiet and torchrun_ranks()[0] == 0:
        displays.console.print("[bold]liif train[/] " + "  ".join(
            f"{k}={v}" for k, v in cfg.as_dict().items() if v not in (None, {}, "")),
            soft_wrap=True)
    from liif_cli.errors import Interrupted
    from liif_cli.runtime.process import on_stop_signals

    def before_the_loop(signum, frame):  # decoding, --init: SIGTERM as Ctrl-C (the loop
        raise Interrupted(signum)  # has its own handler, which saves and stops)

    with on_stop_signals(before_the_loop), displays.train_display(quiet) as on_event:
        summary = run_training(cfg, resume=resume, on_event=on_event)
    if summary["stopped"] or (summary.get("nothing_to_do") and not quiet):
        displays.console.print(f"[yellow]{summary['stopped'] or summary['nothing_to_do']}[/]",
                               soft_wrap=True)
    elif not quiet:
        best = summary["best_psnr"]
        val = (f"best val PSNR {best:.2f} dB" if math.isfinite(best) else
               "no validation (give --val-data)")
        displays.console.print(f"[green]done[/] {summary['out']}  {val}  "
                               f"{summary['seconds'] / 60:.1f} min")
    raise typer.Exit(summary["exit_code"])


def _int_list(text: str, name: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{name} takes comma-separated integers, e.g. 200,400") from None
