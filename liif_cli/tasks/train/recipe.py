"""The training recipe: `TrainConfig`, its checks, TOML files and what a resume may change.

Torch-free, so that `liif train` answers a mistake in its options at once; `tasks.train` runs
the recipe. A resumed run's saved config is read from its last.pth (`saved_run`, which then
needs torch).
"""

from __future__ import annotations

import json
import math
import os
import warnings

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package (pyproject: tomli)
    import tomli as tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liif_cli.data.degrade import DEGRADE_RECIPES, RealRanges, parse_spec, real_ranges
from liif_cli.errors import LiifWarning, TrainingError, UsageError
from liif_cli.io.files import check_folder_makeable

if TYPE_CHECKING:
    from liif_cli.model import ModelConfig

ENCODER_CHOICES = ("edsr-baseline", "edsr", "rdn")
DECODER_CHOICES = ("liif", "lmf")  # LIIF's MLP, or LM-LIIF's two MLPs (model/lmf.py)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; stored in every checkpoint (`liif_cli.config`)."""

    data: str = ""  # folder of HR training images (searched recursively)
    val_data: str | None = None  # folder of HR validation images
    out: str = "runs/liif"  # run folder
    encoder: str = "edsr-baseline"  # edsr-baseline, edsr or rdn (paper's encoders)
    epochs: int = 1000
    batch_size: int = 16  # global batch, split across DDP processes
    patch_size: int = 48  # LR patch side (px)
    scale_min: float = 1.0
    scale_max: float = 4.0
    sample_q: int = 2304  # HR pixels queried per sample
    lr: float = 1e-4
    lr_milestones: tuple[int, ...] = (200, 400, 600, 800)  # epochs at which lr *= lr_gamma
    lr_gamma: float = 0.5
    warmup: int = 0  # first optimizer steps of the run with lr rising linearly (0: the paper's)
    repeat: int = 20  # passes over the image list per epoch
    workers: int = 2  # DataLoader worker processes
    device: str = "auto"
    precision: str = "fp32"  # fp32, bf16 or fp16 (autocast; fp16 with a grad scaler, GPU only)
    seed: int = 0
    init: str | None = None  # checkpoint to start from (fine-tuning)
    freeze_encoder: bool = False  # train the decoder only (the encoder as --init gave it)
    # a teacher model (path or name): the loss also pulls the prediction towards its output at
    # the same queries, `distill_weight` of it (the rest: L1 to the ground truth)
    distill: str | None = None
    distill_weight: float = 0.5
    val_every: int = 1  # epochs between validations
    val_images: int = 10  # first K validation images
    val_scales: tuple[float, ...] = (2.0, 3.0, 4.0)
    save_every: int = 100  # epochs between epoch-N.pth snapshots
    hidden: tuple[int, ...] = (256, 256, 256, 256)  # MLP hidden widths (paper)
    # liif, or lmf: LM-LIIF with the official EDSR-baseline LM-LIIF decoder. None: liif, or
    # --init's architecture; the run stores the one it built
    decoder: str | None = None
    encoder_args: dict[str, Any] = field(default_factory=dict)  # e.g. {"n_resblocks": 16}
    degrade: str | None = None  # "real": LR through degrade.py's blur/noise/JPEG pipeline
    degrade_ranges: dict[str, Any] = field(default_factory=dict)  # RealRanges fields to change
    val_degrade: str | None = None  # also validate on LR degraded by this spec (e.g. jpeg=75)
    # decay of an exponential moving average of the weights (e.g. 0.999; 0: none), which then
    # is what validation sees and every checkpoint's model holds (`model.ema.WeightAverage`)
    ema: float = 0.0

    def model_config(self) -> ModelConfig:
        from liif_cli.model import LiifConfig, LmfConfig

        encoder_args = {"no_upsampling": True, **self.encoder_args}
        if self.decoder == "lmf":
            return LmfConfig(encoder=self.encoder, encoder_args=encoder_args)
        return LiifConfig(encoder=self.encoder, encoder_args=encoder_args,
                          hidden=tuple(self.hidden))

    def degrade_ranges_obj(self) -> RealRanges | None:
        return real_ranges(self.degrade_ranges) if self.degrade else None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# What `--resume` may change: how long the run goes on, its lr schedule, how it validates, logs
# and snapshots, and where it runs. Every other key (bar `out`, the run folder itself) is the
# run's *recipe* and stays as the run was made (see `resume_config`).
RESUME_MAY_CHANGE = frozenset({
    "epochs", "lr", "lr_milestones", "lr_gamma", "warmup",  # length and lr schedule
    "val_data", "val_every", "val_images", "val_scales", "val_degrade", "save_every",
    "workers", "device", "precision",  # where and how fast, not what is learned
})


def resume_config(saved: dict[str, Any], given: dict[str, Any], *, run: str | Path
                  ) -> dict[str, Any]:
    """The config of a resumed run: its saved config (OUT/last.pth), then the options `given`.

    Options that may change on resume (`RESUME_MAY_CHANGE`) take their new value from here on:
    epochs, lr, lr_milestones, lr_gamma, warmup (the lr schedule; `_retune_schedule` applies
    it), val_data, val_every, val_images, val_scales, val_degrade (validation; best.pth still
    compares against the run's best so far), save_every, workers, device and precision. `out`
    is the run folder being resumed. Every other key is the recipe: data, encoder,
    encoder_args, hidden, decoder, batch_size, patch_size, scale_min, scale_max, sample_q,
    repeat, seed, init, freeze_encoder, distill, distill_weight, degrade, degrade_ranges and
    ema (the weights a run produces are its average from the start).
    Giving one the value the run has is fine; another value is a UsageError naming the key
    and both values, since changing the data or the model midway would no longer be this run
    (start a new --out for that). `given` holds only options that were given: a `decoder` of
    None means "the run's".
    """
    values = {k: v for k, v in saved.items() if k in _FIELDS and k != "out"}
    for k, v in given.items():
        if k == "decoder" and v is None:
            continue
        if k in _FIELDS and k not in RESUME_MAY_CHANGE and k != "out" and k in values \
                and not _same(k, values[k], v):
            raise UsageError(
                f"--resume cannot change {k}: {run} was trained with {_shown(values[k])}, this "
                f"asks for {_shown(v)}; a run keeps its recipe, so start a new --out to change it")
        values[k] = v
    return values


_FIELDS = frozenset(f.name for f in fields(TrainConfig))


def check_init_architecture(cfg: TrainConfig, arch: dict[str, Any]) -> None:
    """A UsageError when an option asks for another architecture than --init's (`arch`: its
    encoder, encoder_args and perhaps hidden) rather than its own or the default's."""
    for k, theirs in arch.items():
        mine = getattr(cfg, k)
        if _plain(mine) not in (_plain(theirs), _plain(getattr(TrainConfig(), k))):
            name = "--encoder" if k == "encoder" else k  # the others are TOML keys only
            raise UsageError(
                f"{name} {_shown(mine)} differs from --init {cfg.init}'s {_shown(theirs)}: a "
                f"fine-tune keeps --init's architecture, so leave {name} out (or drop --init)")


def _plain(v: Any) -> Any:
    """Tuples as lists, all the way down: a config read from TOML, a checkpoint or Python."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _same(key: str, old: Any, new: Any) -> bool:
    if _plain(old) == _plain(new):
        return True
    # one folder, named another way (relative here, absolute there)
    return key in ("data", "init") and isinstance(old, str) and isinstance(new, str) \
        and Path(old).exists() and Path(old).resolve() == Path(new).resolve()


def _shown(v: Any) -> str:
    return json.dumps(_plain(v)) if isinstance(v, (list, tuple, dict)) else repr(v)


def saved_run(out: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(last.pth, its checkpoint, the config saved in it) of the run to resume."""
    last = Path(out) / "last.pth"
    if not last.exists():
        raise TrainingError(f"nothing to resume: {last} does not exist")
    from liif_cli.errors import CheckpointError
    from liif_cli.runtime.weights import read_checkpoint

    try:
        state = read_checkpoint(last)
    except CheckpointError as e:  # cut short (a full disk, a copy stopped): say the way on
        snaps = sorted(Path(out).glob("epoch-*.pth"),
                       key=lambda p: int(p.stem[6:]) if p.stem[6:].isdigit() else -1)
        other = snaps[-1].name if snaps else "best.pth" if (Path(out) / "best.pth").exists() \
            else None
        raise TrainingError(f"{e}; to go on from the run's newest snapshot, copy {other} over "
                            "last.pth and --resume again" if other else str(e)) from None
    return last, state, (state.get("liif_cli") or {}).get("config") or {}


def make_config(values: dict[str, Any]) -> TrainConfig:
    """A `TrainConfig` of plain values (a TOML file's or a checkpoint's lists become tuples);
    not checked here (`config_from` checks)."""
    for k in ("lr_milestones", "val_scales", "hidden"):
        if k in values:
            values[k] = tuple(values[k])
    return TrainConfig(**values)


def config_from(toml_path: str | None, overrides: dict[str, Any], *,
                resume: bool = False) -> TrainConfig:
    """Paper defaults <- TOML file <- command-line options that were given (not None).

    With `resume`, the run's saved config (in OUT/last.pth) goes between the defaults and the
    TOML file, merged by `resume_config`: `--resume --out RUN` alone continues the run as it
    was; a schedule, validation or device option given changes it from there on, and a recipe
    option that differs from the run's is refused.
    """
    given = _read_toml(toml_path) if toml_path else {}
    # a folder or file may come as a Path (a library caller's): kept as the string TOML gives
    given.update({k: os.fspath(v) if isinstance(v, os.PathLike) else v
                  for k, v in overrides.items() if v is not None})
    unknown = sorted(set(given) - _FIELDS)
    if unknown:
        raise UsageError(f"unknown training option(s) in config: {', '.join(unknown)}")
    for k, v in given.items():
        _check_type(k, v)
    values = dict(given)
    if resume:
        out = given.get("out", TrainConfig.out)
        _, _, saved = saved_run(out)
        values = resume_config(saved, given, run=out)
    cfg = make_config(values)
    check_config(cfg)
    return cfg


def _default(f: Any) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


# the type each option takes, by its default's (None: a string that may be left out); `ema` is
# checked with its range in `_check`
_DEFAULTS = {f.name: _default(f) for f in fields(TrainConfig)}
_KINDS = {k: type(v) for k, v in _DEFAULTS.items() if k != "ema"}
_ITEM_KINDS = {"lr_milestones": int, "hidden": int, "val_scales": float}


def _is(v: Any, kind: type) -> bool:
    """`v` is a value of `kind` as TOML writes it: a whole number is a number too, a bool is
    neither."""
    if kind is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, kind)


def _check_type(key: str, v: Any) -> None:
    """A TOML file's (or a caller's) value of the wrong type: one line, before any work."""
    kind = _KINDS.get(key)
    if kind is None:
        return
    if kind is tuple:
        item = _ITEM_KINDS[key]
        if not (isinstance(v, (list, tuple)) and all(_is(x, item) for x in v)):
            what = "whole numbers" if item is int else "numbers"
            raise UsageError(f"{key} must be a list of {what}, e.g. {_shown(_DEFAULTS[key])}, "
                             f"not {_shown(v)}")
        return
    ok = isinstance(v, (str, type(None))) if kind is type(None) else _is(v, kind)
    if not ok:
        what = {int: "a whole number", float: "a number", bool: "true or false",
                dict: "a table", str: "a string", type(None): "a string"}[kind]
        raise UsageError(f"{key} must be {what}, not {_shown(v)}")


def _read_toml(path: str) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        reason = "not UTF-8 text (a TOML file is)" if isinstance(e, UnicodeDecodeError) else e
        raise UsageError(f"cannot read config {path}: {reason}") from None


def check_config(cfg: TrainConfig) -> None:
    """A UsageError, before any work, for a recipe that cannot run (`config_from` and
    `train` both ask)."""
    if not cfg.data:
        raise UsageError("say where the training images are: --data DIR")
    if cfg.encoder not in ENCODER_CHOICES:
        raise UsageError(f"unknown encoder {cfg.encoder!r}: use {', '.join(ENCODER_CHOICES)}")
    if cfg.decoder is not None and cfg.decoder not in DECODER_CHOICES:
        raise UsageError(f"unknown decoder {cfg.decoder!r}: use {', '.join(DECODER_CHOICES)}")
    if cfg.decoder == "lmf" and tuple(cfg.hidden) != TrainConfig.hidden:
        raise UsageError("hidden sets LIIF's MLP; the lmf decoder has the official sizes")
    if not (0 < cfg.scale_min <= cfg.scale_max and math.isfinite(cfg.scale_max)):
        raise UsageError("need 0 < --scale-min <= --scale-max, both finite")
    for name in ("epochs", "batch_size", "patch_size", "sample_q", "repeat", "val_every",
                 "val_images"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    smallest = round(cfg.patch_size * cfg.scale_min)  # side of the smallest HR crop
    if cfg.sample_q > smallest ** 2:  # each crop gives sample_q of its pixels, none twice
        raise UsageError(f"--sample-q {cfg.sample_q} is more than the {max(smallest, 0) ** 2} "
                         f"pixels of the smallest HR crop ({cfg.patch_size}·{cfg.scale_min:g} "
                         "px a side): lower it, or raise --patch-size or --scale-min")
    if not cfg.out or not str(cfg.out).strip():
        raise UsageError("--out is empty: give the run folder")
    if not cfg.hidden and cfg.decoder != "lmf":
        raise UsageError("hidden must list LIIF's MLP widths, e.g. [256, 256, 256, 256]")
    if cfg.val_data and not cfg.val_scales:
        raise UsageError("val_scales is empty: validation needs scales, e.g. [2, 3, 4]")
    if cfg.workers < 0:
        raise UsageError("--workers must be 0 (load in this process) or more")
    if cfg.save_every < 0:
        raise UsageError("--save-every must be 0 (no epoch-N.pth snapshots) or more")
    if not 0 <= cfg.seed < 2**32:
        raise UsageError("--seed must be a whole number from 0 to 2**32 - 1")
    if not (math.isfinite(cfg.lr_gamma) and cfg.lr_gamma > 0):
        raise UsageError("--lr-gamma must be a positive number (the lr's factor at each "
                         "milestone)")
    if any(m < 1 for m in cfg.lr_milestones):
        raise UsageError("--lr-milestones must be epochs, 1 or more")
    if not all(math.isfinite(s) and s > 0 for s in cfg.val_scales):
        raise UsageError("val_scales must be positive numbers, e.g. [2, 3, 4]")
    if any(h < 1 for h in cfg.hidden):
        raise UsageError("hidden widths must be at least 1")
    if cfg.precision not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"unknown precision {cfg.precision!r}: use fp32, bf16 or fp16")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise UsageError("--lr must be a positive number")
    if cfg.warmup < 0:
        raise UsageError("--warmup must be 0 (none) or a number of steps")
    if isinstance(cfg.ema, bool) or not isinstance(cfg.ema, (int, float)) \
            or not (0 <= cfg.ema < 1):
        raise UsageError("--ema must be in [0, 1): the average's decay, e.g. 0.999 (0: none)")
    if cfg.freeze_encoder and not cfg.init:
        raise UsageError("--freeze-encoder keeps --init's encoder: give --init MODEL")
    if not (math.isfinite(cfg.distill_weight) and 0 < cfg.distill_weight <= 1):
        raise UsageError("--distill-weight must be in (0, 1]: the teacher's share of the loss")
    if cfg.distill_weight != TrainConfig.distill_weight and not cfg.distill:
        raise UsageError("--distill-weight given without --distill MODEL")
    if cfg.degrade is not None and cfg.degrade not in DEGRADE_RECIPES:
        raise UsageError(f"unknown --degrade {cfg.degrade!r}: use {', '.join(DEGRADE_RECIPES)}")
    if cfg.degrade_ranges and not cfg.degrade:
        raise UsageError("degrade_ranges given without degrade = \"real\"")
    cfg.degrade_ranges_obj()  # checks the ranges
    if cfg.val_degrade is not None:
        parse_spec(cfg.val_degrade)


def note_idle_milestones(cfg: TrainConfig, start: int) -> None:
    """A note when no --lr-milestones epoch falls in the epochs left (`start` done): e.g. a
    fine-tune of 50 epochs under the paper's 200/400/..., whose lr never halves."""
    if cfg.lr_milestones and not any(start < m < cfg.epochs for m in cfg.lr_milestones):
        warnings.warn(LiifWarning(
            f"no --lr-milestones epoch ({','.join(map(str, cfg.lr_milestones))}) falls in this "
            f"run's epochs {start + 1}-{cfg.epochs}: the learning rate stays where it is "
            "(give --lr-milestones to lower it)"), stacklevel=3)


def check_run_folder(out: str | Path) -> None:
    """The run folder can be made and written, checked before any work: otherwise the first
    save would fail after the images were decoded and an epoch trained."""
    check_folder_makeable(out, "the run folder", "--out")


def check_new_run(out: str | Path) -> None:
    """A new run may not start in a folder that holds one (its last.pth): it would overwrite
    that run's checkpoints and append to its metrics. The folder must be one it can write."""
    check_run_folder(out)
    if (Path(out) / "last.pth").exists():
        raise UsageError(f"{out} already holds a training run (last.pth): give --resume to "
                         "continue it, or another --out for a new run")
