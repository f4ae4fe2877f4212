"""Training: the paper's recipe, resumable, on CPU, one GPU or many (DDP via torchrun).

Defaults are the paper's (EDSR-baseline-LIIF on DIV2K): 48×48 LR patches, s ~ U(1, 4), 2304
queries, L1, Adam lr 1e-4 halved at epochs 200/400/600/800 of 1000, batch 16, repeat 20.

Run folder:
- last.pth: every epoch and on SIGINT/SIGTERM, atomically. Official layout (`model`, `optimizer`,
  top-level `epoch` = epochs completed) plus `train_state` (scheduler, iteration within the
  epoch, RNG state, best PSNR) and `liif_cli` (config, version, `steps`: optimizer steps in all,
  counting those behind --init's weights). `torch.load(weights_only=True)`.
- best.pth: best validation PSNR (mean over the validation scales); epoch-N.pth snapshots.
- metrics.jsonl: one JSON record per logged step and per validation.
Data randomness is a pure function of (seed, epoch, sample), so a resumed run continues exactly.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package (pyproject: tomli)
    import tomli as tomllib
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from liif_cli import __version__
from liif_cli.data.degrade import (
    DEGRADE_RECIPES,
    RealRanges,
    apply_spec,
    parse_spec,
    real_ranges,
    spec_seed,
    spec_text,
)
from liif_cli.data.metrics import psnr
from liif_cli.data.samples import (
    EpochBatches,
    ImageCache,
    RandomScaleSamples,
    find_images,
    load_rgb_uint8,
    make_lr,
    to_tensor,
)
from liif_cli.errors import TrainingError, UsageError
from liif_cli.model import LiifConfig, LmfConfig, ModelConfig, SRModel, build_model
from liif_cli.runtime.device import resolve_device, resolve_precision
from liif_cli.runtime.malloc import keep_freed_memory
from liif_cli.runtime.upscaler import Upscaler
from liif_cli.runtime.weights import (
    atomic_torch_save,
    checkpoint_dict,
    load_model,
    model_from_spec,
    read_checkpoint,
)

ENCODER_CHOICES = ("edsr-baseline", "edsr", "rdn")
DECODER_CHOICES = ("liif", "lmf")  # LIIF's MLP, or LM-LIIF's two MLPs (model/lmf.py)
LOG_EVERY = 10  # iterations between metrics.jsonl records


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

    def model_config(self) -> ModelConfig:
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


def config_from(toml_path: str | None, overrides: dict[str, Any], *,
                resume: bool = False) -> TrainConfig:
    """Paper defaults <- TOML file <- command-line options that were given (not None).

    With `resume`, the run's saved config (in OUT/last.pth) goes between the defaults and the
    TOML file: `--resume --out RUN` alone continues the run as it was, and any option given
    changes it from there on.
    """
    given = _read_toml(toml_path) if toml_path else {}
    given.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise UsageError(f"unknown training option(s) in config: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    if resume:
        last = Path(given.get("out", TrainConfig.out)) / "last.pth"
        if not last.exists():
            raise TrainingError(f"nothing to resume: {last} does not exist")
        saved = (read_checkpoint(last).get("liif_cli") or {}).get("config") or {}
        values.update({k: v for k, v in saved.items() if k in known and k != "out"})
    values.update(given)
    for k in ("lr_milestones", "val_scales", "hidden"):
        if k in values:
            values[k] = tuple(values[k])
    cfg = TrainConfig(**values)
    _check(cfg)
    return cfg


def _read_toml(path: str) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"cannot read config {path}: {e}") from None


def _retune_schedule(opt: torch.optim.Optimizer, sched: Any, cfg: TrainConfig,
                     saved: dict[str, Any]) -> None:
    """A resumed run takes a new --lr / --lr-milestones / --lr-gamma from here on.

    The optimizer and scheduler states restore the old base lr; a new base lr rescales the
    current lr by the same factor (decays already applied stay applied).
    """
    old_lr = float(saved.get("lr", cfg.lr))
    if not math.isclose(old_lr, cfg.lr, rel_tol=1e-9):
        for g in opt.param_groups:
            g["lr"] *= cfg.lr / old_lr
            g["initial_lr"] = cfg.lr
        sched.base_lrs = [cfg.lr for _ in sched.base_lrs]
    sched.milestones = Counter(cfg.lr_milestones)
    sched.gamma = cfg.lr_gamma


def decoder_of(model: SRModel) -> str:
    return "lmf" if isinstance(model.config, LmfConfig) else "liif"


def _init_model(cfg: TrainConfig, init: SRModel) -> tuple[SRModel, TrainConfig]:
    """The model --init starts from: its own weights, or with another --decoder, its trained
    encoder under a fresh decoder (e.g. `--decoder lmf --init default`)."""
    if cfg.decoder is None or cfg.decoder == decoder_of(init):
        return init, cfg
    enc = init.config
    cfg = replace(cfg, encoder=enc.encoder, encoder_args={
        k: v for k, v in enc.encoder_args.items() if k != "no_upsampling"})
    model = build_model(cfg.model_config())
    model.encoder.load_state_dict(init.encoder.state_dict(), strict=True)
    return model, cfg


def _check(cfg: TrainConfig) -> None:
    if not cfg.data:
        raise UsageError("say where the training images are: --data DIR")
    if cfg.encoder not in ENCODER_CHOICES:
        raise UsageError(f"unknown encoder {cfg.encoder!r}: use {', '.join(ENCODER_CHOICES)}")
    if cfg.decoder is not None and cfg.decoder not in DECODER_CHOICES:
        raise UsageError(f"unknown decoder {cfg.decoder!r}: use {', '.join(DECODER_CHOICES)}")
    if cfg.decoder == "lmf" and tuple(cfg.hidden) != TrainConfig.hidden:
        raise UsageError("hidden sets LIIF's MLP; the lmf decoder has the official sizes")
    if not (0 < cfg.scale_min <= cfg.scale_max):
        raise UsageError("need 0 < --scale-min <= --scale-max")
    for name in ("epochs", "batch_size", "patch_size", "sample_q", "repeat"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.precision not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"unknown precision {cfg.precision!r}: use fp32, bf16 or fp16")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise UsageError("--lr must be a positive number")
    if cfg.warmup < 0:
        raise UsageError("--warmup must be 0 (none) or a number of steps")
    if cfg.degrade is not None and cfg.degrade not in DEGRADE_RECIPES:
        raise UsageError(f"unknown --degrade {cfg.degrade!r}: use {', '.join(DEGRADE_RECIPES)}")
    if cfg.degrade_ranges and not cfg.degrade:
        raise UsageError("degrade_ranges given without degrade = \"real\"")
    cfg.degrade_ranges_obj()  # checks the ranges
    if cfg.val_degrade is not None:
        parse_spec(cfg.val_degrade)


# ----------------------------------------------------------------------------------------------
# validation

def validate(model: SRModel, images: list[np.ndarray], scales: tuple[float, ...],
             dtype: torch.dtype = torch.float32, degrade: str | None = None) -> dict[str, float]:
    """Mean PSNR per scale (official div2k protocol: RGB, shave scale + 6; LR made from HR).

    `dtype` is the precision of the whole forward pass, as `liif upscale --precision` sets it
    (a bf16 run validates in bf16: within ~0.01 dB of fp32, and faster on the CPU); it is
    taken as resolved (train resolved it). The model renders through a fresh `Upscaler` on its
    own device: the weights changed since the last validation, so its decoder is rebuilt.
    `degrade`: a spec (`degrade.parse_spec`); the LR is also degraded by it, seeded per image,
    and those scores are added under keys such as "x2 jpeg=75".
    """
    up = Upscaler(model, device=next(model.parameters()).device, precision=dtype)
    res = {}
    specs = [()] + ([parse_spec(degrade)] if degrade else [])
    for steps, s in [(st, s) for st in specs for s in scales]:
        vals = []
        for i, hr in enumerate(images):
            crop, lr = make_lr(hr, s)
            if steps:
                lr = apply_spec(lr, steps, np.random.default_rng(spec_seed(str(i), s, steps)))
            pred = up.render(to_tensor(lr), crop.shape[:2])
            vals.append(psnr(np.clip(pred, 0, 1), crop, protocol="div2k", scale=s))
        res[f"x{s:g}" + (f" {spec_text(steps)}" if steps else "")] = float(np.mean(vals))
    return res


# ----------------------------------------------------------------------------------------------
# the loop

@dataclass
class Progress:
    """What the trainer reports to its `on_event` callback."""

    kind: str  # "load" (decoding the images), "start", "step", "val", "epoch", "stop"
    epoch: int
    iteration: int = 0  # within the epoch ("load": images decoded)
    iterations: int = 0  # per epoch ("load": images in all)
    loss: float | None = None
    lr: float | None = None
    its: float | None = None  # iterations per second
    psnr: dict[str, float] | None = None
    message: str = ""


class _Stop:
    """SIGINT/SIGTERM set a flag; the loop saves and stops at the next iteration."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, sig, frame):
        if self.signal is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = sig

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def train(cfg: TrainConfig, *, resume: bool = False,
          on_event: Callable[[Progress], None] | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns a summary dict. Only rank 0 writes files.

    Training owns the process: it keeps freed memory for reuse (`malloc.keep_freed_memory`;
    page faults took a quarter of a CPU step's time) and holds its peak memory until exit.
    Under torchrun with gloo, end the process with os._exit once done, as `liif train` does
    (`cli._leave_distributed`): gloo's worker threads can abort a finalizing interpreter.
    """
    keep_freed_memory()
    rank, world, local_rank = _dist_info()
    emit = on_event if (on_event and rank == 0) else (lambda e: None)
    if world > 1:
        import torch.distributed as dist

        dev = resolve_device(cfg.device if cfg.device != "auto" else
                             ("cuda" if torch.cuda.is_available() else "cpu"))
        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    else:
        dev = resolve_device(cfg.device)
    if cfg.precision == "fp16" and dev.type != "cuda":
        raise UsageError("fp16 training needs a CUDA GPU; on the CPU use --precision bf16")

    out = Path(cfg.out)
    last = out / "last.pth"
    state: dict[str, Any] | None = None
    if resume:
        if not last.exists():
            raise TrainingError(f"nothing to resume: {last} does not exist")
        state = read_checkpoint(last)
        saved = (state.get("liif_cli") or {}).get("config") or {}
        # the run's architecture and data recipe come from the checkpoint; the command line
        # may change only how it runs (device, workers, epochs, validation, ...)
        for k in ("encoder", "encoder_args", "hidden", "decoder", "patch_size", "seed",
                  "batch_size", "degrade", "degrade_ranges"):
            if k in saved:
                v = saved[k]
                cfg = replace(cfg, **{k: tuple(v) if isinstance(v, list) else v})

    torch.manual_seed(cfg.seed)
    init_steps = 0  # optimizer steps behind --init's weights (their file's 'steps', if any)
    if state is not None:
        model = model_from_spec(state["model"], source=str(last))  # the file read above
    elif cfg.init:
        init = load_model(cfg.init)  # a path, or a bundled or user model name
        model, cfg = _init_model(cfg, init.model)
        if model is init.model:
            init_steps = int(init.meta.get("steps") or 0)
    else:
        model = build_model(cfg.model_config())
    cfg = replace(cfg, decoder=decoder_of(model))  # stored: resume rebuilds the same
    model.to(dev).train()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.lr_milestones),
                                                 gamma=cfg.lr_gamma)
    start_epoch, skip, best = 0, 0, -math.inf
    if state is not None:
        opt.load_state_dict(state["optimizer"]["sd"])
        ts = state.get("train_state") or {}
        sched.load_state_dict(ts.get("scheduler", {}))
        start_epoch, skip = int(state.get("epoch", 0)), int(ts.get("iteration", 0))
        best = float(ts.get("best_psnr", -math.inf))
        init_steps = int(ts.get("init_steps", 0))
        _retune_schedule(opt, sched, cfg, saved)
        if "rng" in ts:
            torch.set_rng_state(ts["rng"]["torch"])
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)

    files = find_images(cfg.data)
    cache = ImageCache(files, min_side=round(cfg.patch_size * cfg.scale_max),
                       on_progress=lambda i, n: emit(Progress("load", start_epoch, i, n)))
    dataset = RandomScaleSamples(cache, repeat=cfg.repeat, patch=cfg.patch_size,
                                 scale_min=cfg.scale_min, scale_max=cfg.scale_max,
                                 sample_q=cfg.sample_q, seed=cfg.seed,
                                 degrade=cfg.degrade_ranges_obj())
    val_imgs = []
    if cfg.val_data and rank == 0:
        val_imgs = [load_rgb_uint8(p) for p in find_images(cfg.val_data)[:cfg.val_images]]
    iters = len(dataset) // cfg.batch_size
    if iters == 0:
        raise UsageError(f"{len(dataset)} samples per epoch is less than one batch of "
                         f"{cfg.batch_size}; lower --batch-size or raise --repeat")

    def run_steps(epoch: int, iteration: int) -> int:
        """Optimizer steps of this run after `iteration` steps of (0-based) `epoch`."""
        return epoch * iters + iteration

    emit(Progress("start", start_epoch, skip, iters, message=
                  f"{len(cache)} training images"
                  + (f" ({len(cache.skipped)} smaller than {round(cfg.patch_size * cfg.scale_max)}"
                     f"px skipped, e.g. {cache.skipped[0].name})" if cache.skipped else "")
                  + ", "
                  f"{iters} iterations/epoch, device {dev}, {cfg.precision}, world {world}"))

    # bf16 on a CPU without native bf16 trains in fp32 (emulated bf16 is 6-7x slower), with a note
    amp_dtype = resolve_precision(cfg.precision, dev)
    amp_dtype = None if amp_dtype == torch.float32 else amp_dtype
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    log = open(out / "metrics.jsonl", "a") if rank == 0 else None

    def save(path: Path, epoch_done: int, iteration: int) -> None:
        if rank != 0:
            return
        ckpt = checkpoint_dict(
            model, optimizer={"name": "adam", "args": {"lr": cfg.lr}, "sd": opt.state_dict()},
            epoch=epoch_done,
            train_state={"scheduler": sched.state_dict(), "iteration": iteration,
                         "best_psnr": best, "rng": _rng_state(), "init_steps": init_steps},
            liif_cli={"version": __version__, "config": cfg.as_dict(),
                      "epoch": epoch_done, "iteration": iteration,
                      "steps": init_steps + run_steps(epoch_done, iteration)})
        atomic_torch_save(ckpt, path)

    def record(**kw) -> None:
        if log is not None:
            log.write(json.dumps({"time": time.time(), **kw}) + "\n")
            log.flush()

    stopped = None
    epoch = start_epoch
    t_start = time.time()
    with _Stop() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            batches = EpochBatches(len(dataset), batch_size=cfg.batch_size, epoch=epoch,
                                   seed=cfg.seed, rank=rank, world=world, skip=skip)
            loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches,
                                                 num_workers=cfg.workers,
                                                 pin_memory=dev.type == "cuda")
            net.train()
            t0, it, n_run = time.time(), skip, 0
            for batch in loader:
                inp = (batch["inp"].to(dev, non_blocking=True) - 0.5) / 0.5
                coord = batch["coord"].to(dev, non_blocking=True)
                cell = batch["cell"].to(dev, non_blocking=True)
                gt = (batch["gt"].to(dev, non_blocking=True) - 0.5) / 0.5
                with torch.autocast(dev.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    pred = net(inp, coord, cell)
                loss = F.l1_loss(pred.float(), gt)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"loss became {loss.item()} at epoch {epoch + 1} iteration {it + 1}; "
                        f"stopped, the last good checkpoint is kept ({last}). Try a lower --lr "
                        "or --precision fp32")
                opt.zero_grad(set_to_none=True)
                # linear warm-up over the run's first steps (a fresh Adam on --init weights
                # otherwise takes full-size steps from noisy moments); the schedule is untouched
                warm = min(1.0, run_steps(epoch, it + 1) / cfg.warmup) if cfg.warmup else 1.0
                base_lr = [g["lr"] for g in opt.param_groups]
                for g in opt.param_groups:
                    g["lr"] *= warm
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                step_lr = opt.param_groups[0]["lr"]
                for g, lr in zip(opt.param_groups, base_lr):
                    g["lr"] = lr
                it += 1
                n_run += 1
                its = n_run / max(time.time() - t0, 1e-9)
                if it % LOG_EVERY == 0 or it == iters:
                    record(kind="step", epoch=epoch + 1, iteration=it,
                           steps=init_steps + run_steps(epoch, it), loss=loss.item(),
                           lr=step_lr, its=its)
                emit(Progress("step", epoch, it, iters, loss=loss.item(), lr=step_lr, its=its))
                if stop.signal is not None:
                    break
            if stop.signal is not None and it < iters:
                save(last, epoch, it)
                stopped = f"stopped by signal {signal.Signals(stop.signal).name} at epoch " \
                          f"{epoch + 1}, iteration {it}/{iters}; resume with --resume"
                break
            skip = 0
            with warnings.catch_warnings():
                # resuming at an epoch's end steps the schedule before this process's first
                # optimizer step; torch warns, but the order over the whole run is right
                warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
                sched.step()
            done = epoch + 1
            psnr = None
            if val_imgs and (done % cfg.val_every == 0 or done == cfg.epochs):
                psnr = validate(model, val_imgs, cfg.val_scales, amp_dtype or torch.float32,
                                cfg.val_degrade)
                mean = float(np.mean(list(psnr.values())))
                record(kind="val", epoch=done, steps=init_steps + run_steps(done, 0), psnr=psnr)
                emit(Progress("val", epoch, it, iters, psnr=psnr))
                if mean > best:
                    best = mean
                    save(out / "best.pth", done, 0)
            save(last, done, 0)
            if cfg.save_every and done % cfg.save_every == 0:
                save(out / f"epoch-{done}.pth", done, 0)
            emit(Progress("epoch", epoch, it, iters, psnr=psnr))
            if stop.signal is not None:
                stopped = f"stopped by signal {signal.Signals(stop.signal).name} after epoch " \
                          f"{done}; resume with --resume"
                break
    if log is not None:
        log.close()
    summary = {"epochs_done": epoch + 1 if stopped is None else None, "best_psnr": best,
               "seconds": time.time() - t_start, "out": str(out), "stopped": stopped,
               "signal": stop.signal if stopped is not None else None}
    emit(Progress("stop", epoch, message=stopped or "finished"))
    return summary
