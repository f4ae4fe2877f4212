"""Options shared by several commands, declared once as `Annotated` aliases, and the checks of
option values that run before torch is imported (a usage mistake is answered at once).

Common options also come from LIIF_* environment variables (the command line wins). Defaults
that the library owns are read from it (`runtime.engine`'s memory budget is not: importing the
engine imports torch, so `DEFAULT_MAX_MEMORY` here is the text of the same 512 MiB).
"""

from __future__ import annotations

import warnings
from typing import Annotated, Optional

import typer

from liif_cli.errors import LiifWarning, UsageError
from liif_cli.runtime.options import DEVICE_ENV, parse_bytes  # noqa: F401 - the commands'

DEFAULT_MAX_MEMORY = "auto"  # runtime.device.memory_budget: 512M on a CPU, a share of a GPU
DEFAULT_QUALITY = 95  # JPEG/WebP quality, io.images.write_image's default
DEFAULT_MAX_OUTPUT_PIXELS = 1_000_000_000  # sizing's guard against absurd outputs
DEFAULT_MAX_INPUT_PIXELS = 200_000_000  # io.images' decompression-bomb guard

ENV_META = "liif_env"  # ctx.meta key: {option name: (variable, value)} of values from LIIF_*


def from_env(ctx: typer.Context, param: typer.CallbackParam, value):
    """Callback of the options that a LIIF_* variable sets: remembers which values came from
    the environment (in ctx.meta, shared by the whole command), so that an error caused by one
    names its variable (`cli.app`) and --denoise can override LIIF_MODEL."""
    source = ctx.get_parameter_source(param.name)
    if value is not None and source is not None and source.name == "ENVIRONMENT":
        ctx.meta.setdefault(ENV_META, {})[param.name] = (param.envvar, value)
    return value


def env_values() -> dict[str, tuple[str, object]]:
    """{option name: (variable, value)} for the options of the running command that came
    from the environment."""
    ctx = _current_context()
    return {} if ctx is None else ctx.meta.get(ENV_META, {})


def _current_context():
    try:  # Typer ≥ 0.23 vendors Click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older Typer uses Click itself
        from click import get_current_context
    return get_current_context(silent=True)


def model_for_denoise(model: str | None) -> str | None:
    """`--denoise` given on the command line picks the default/real pair: a LIIF_MODEL from the
    environment that has no denoise partner gives way to it, with one note (an option given
    wins over a variable); one given with --model is still an error."""
    var, value = env_values().get("model", (None, None))
    if isinstance(value, (list, tuple)):  # `liif view --model` repeats: one value from there
        value = value[0] if len(value) == 1 else None
    if value is None or value != model:
        return model
    from liif_cli.runtime.weights import denoise_pair

    try:
        denoise_pair(model)
    except UsageError:
        warnings.warn(f"--denoise picks the default/real pair: {var}={model} not used",
                      LiifWarning, stacklevel=2)
        return None
    return model


MODEL_HELP = ("Bundled or user model name, or a checkpoint path (.pth, .safetensors). "
              "Default: bundled.")
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help=MODEL_HELP, envvar="LIIF_MODEL", show_envvar=True, callback=from_env)]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.",
                                        envvar=DEVICE_ENV, show_envvar=True,
                                        callback=from_env)]
# Not DeviceOpt: batch takes several devices (one worker each) where upscale takes one.
DevicesOpt = Annotated[str, typer.Option(
    "--device", help="auto, cpu, cuda:N, mps, a list (cuda:0,cuda:1) or all (every GPU).",
    envvar=DEVICE_ENV, show_envvar=True, callback=from_env)]
PrecisionOpt = Annotated[str, typer.Option(
    help="auto (fp32 on CPU, bf16/fp16 on GPU), fp32, bf16 or fp16.", envvar="LIIF_PRECISION",
    show_envvar=True, callback=from_env)]
ScaleOpt = Annotated[Optional[str], typer.Option(
    "--scale", "-s", help="Factor (4, 7.5) or WxH factors (3x2.5).")]
SizeOpt = Annotated[Optional[str], typer.Option(
    help="Output size WxH, e.g. 1920x1080: exactly, or as --fit says.")]
WidthOpt = Annotated[Optional[int], typer.Option(help="Output width; height keeps the aspect.")]
HeightOpt = Annotated[Optional[int], typer.Option(help="Output height; width keeps the aspect.")]
FitOpt = Annotated[Optional[str], typer.Option(
    help="How --size is met: fill (exactly WxH, the default), contain (largest inside WxH, "
    "aspect kept) or cover (smallest covering WxH), as ImageMagick's WxH!, WxH and WxH^.",
    show_default=False)]
MaxMemoryOpt = Annotated[str, typer.Option(
    help="Working-memory budget for tiles and chunks, e.g. 256M, 2G; auto: 512M on a CPU, "
    "half the free memory of a GPU (which also caps a size given).", envvar="LIIF_MAX_MEMORY",
    show_envvar=True, callback=from_env)]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
# --quiet as parsed, for the notes of threads that have no command context (batch's decoders):
# `app._quiet` reads it there; each command's parsing sets it
QUIET = {"on": False}


def _remember_quiet(value: bool) -> bool:
    QUIET["on"] = bool(value)
    return value


QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", help="No progress, notes or summary: errors only.",
    callback=_remember_quiet)]
# eval's and bench's results are their table: -q leaves it
QuietTableOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", help="No progress or notes: the results table and errors only.",
    callback=_remember_quiet)]
def _quality(ctx: typer.Context, param: typer.CallbackParam, value):
    """--quality checked here, not by Click's range: its refusal said "(env var:
    'LIIF_QUALITY')" of a value typed on the command line. One given by LIIF_QUALITY is
    named so by `cli.app`."""
    from liif_cli.io.formats import check_quality

    value = from_env(ctx, param, value)
    return None if value is None else check_quality(str(value))


QualityOpt = Annotated[str, typer.Option(help="JPEG/WebP quality, 1 to 100.",
                                         envvar="LIIF_QUALITY", show_envvar=True,
                                         callback=_quality)]
MaxOutOpt = Annotated[int, typer.Option(help="Refuse outputs above this many pixels.")]
MaxInOpt = Annotated[int, typer.Option(help="Refuse inputs above this many pixels.")]
DenoiseOpt = Annotated[Optional[float], typer.Option(
    help="0 to 1: blend the default model (0, keeps grain and detail) into the real-world "
    "model (1, removes JPEG blocks and noise). Picks that pair; --model real alone runs at 1.",
    show_default=False)]


def check_options(*, precision: str | None = None, device: str | None = None,
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


def own_the_process() -> None:
    """A command that renders owns its process: keep freed memory for reuse (glibc), which
    spares the encoder's large activations a fresh, zero-filled mapping each time (a 500×500
    input's EDSR-baseline encoder: 6.3 s → 3.4 s on the 2-core machine; docs/fast-model.md)."""
    from liif_cli.runtime.malloc import keep_freed_memory

    keep_freed_memory()
