"""Training: the paper's recipe, resumable, on CPU, one GPU or many (DDP via torchrun).

Defaults are the paper's (EDSR-baseline-LIIF on DIV2K): 48×48 LR patches, s ~ U(1, 4), 2304
queries, L1, Adam lr 1e-4 halved at epochs 200/400/600/800 of 1000, batch 16, repeat 20.

Run folder:
- last.pth: every epoch and on SIGINT/SIGTERM, atomically. Official layout (`model`, `optimizer`,
  top-level `epoch` = epochs completed) plus `train_state` (scheduler, iteration within the
  epoch, RNG state, best PSNR) and `liif_cli` (config, version, `steps`: optimizer steps in all,
  counting those behind --init's weights). `torch.load(weights_only=True)`.
- best.pth: best validation PSNR (mean over the validation scales); epoch-N.pth snapshots.
- With --ema, every file's `model` holds the moving average of the weights
  (`model.ema.WeightAverage`: what is validated, what users load); last.pth's `train_state["ema"]["raw"]` holds the weights being
  trained, with the average's update count, so that a resume continues both exactly.
- metrics.jsonl: one JSON record per logged step and per validation.
Data randomness is a pure function of (seed, epoch, sample), so a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
import warnings
from collections import Counter
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from liif_cli.data.samples import (
    EpochBatches,
    ImageCache,
    RandomScaleSamples,
    training_images,
)
from liif_cli.errors import TrainingError, UsageError, signal_exit_code
from liif_cli.model import LmfConfig, SRModel, build_model, normalise
from liif_cli.model.ema import WeightAverage
from liif_cli.runtime.device import resolve_device, resolve_precision, set_tf32, use_device
from liif_cli.runtime.malloc import keep_freed_memory
from liif_cli.runtime.process import ignore_stop_signals, stop_signals_held, torchrun_ranks
from liif_cli.runtime.weights import (
    atomic_torch_save,
    checkpoint_dict,
    load_model,
    model_from_spec,
)
from liif_cli.tasks.train.distributed import StopSignal
from liif_cli.tasks.train.recipe import (  # TrainConfig and config_from: also public from here
    TrainConfig,
    check_config,
    check_init_architecture,
    check_new_run,
    check_run_folder,
    config_from,
    make_config,
    note_idle_milestones,
    resume_config,
    saved_run,
)
from liif_cli.tasks.train.validation import load_val_images, validate  # validate: public here
from liif_cli.version import __version__

__all__ = ["Progress", "TrainConfig", "config_from", "train", "validate"]

LOG_EVERY = 10  # iterations between metrics.jsonl records
# iterations between the checks that wait for the device (a finite loss, the loss shown) and,
# under DDP, the ranks' agreement to stop: each is a host sync, which a GPU step should not have
CHECK_EVERY = LOG_EVERY


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
    encoder under a fresh decoder (e.g. `--decoder lmf --init default`). `cfg` then records
    --init's architecture (what a resume and the checkpoint's config say); an option that asks
    for another (a different `encoder`, `encoder_args` or, keeping the decoder, `hidden`) is
    refused rather than ignored."""
    enc = init.config
    arch = {"encoder": enc.encoder, "encoder_args": {
        k: v for k, v in enc.encoder_args.items() if k != "no_upsampling"}}
    same_decoder = cfg.decoder is None or cfg.decoder == decoder_of(init)
    if same_decoder:  # LIIF's MLP widths are --init's too (an LM-LIIF has no `hidden`)
        arch["hidden"] = tuple(getattr(enc, "hidden", TrainConfig.hidden))
    check_init_architecture(cfg, arch)
    cfg = replace(cfg, **arch)
    if same_decoder:
        return init, cfg
    model = build_model(cfg.model_config())
    model.encoder.load_state_dict(init.encoder.state_dict(), strict=True)
    return model, cfg


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


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def train(cfg: TrainConfig, *, resume: bool = False,
          on_event: Callable[[Progress], None] | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns a summary dict. Only rank 0 writes files.

    With `resume`, `cfg` is merged into OUT/last.pth's config by `resume_config` (as
    `config_from(..., resume=True)` does; a recipe key that differs is a UsageError).
    Training owns the process: it keeps freed memory for reuse (`malloc.keep_freed_memory`;
    page faults took a quarter of a CPU step's time) and holds its peak memory until exit.
    Under torchrun with gloo, end the process with os._exit once done, as `liif train` does
    (`cli._leave_distributed`): gloo's worker threads can abort a finalizing interpreter.
    """
    keep_freed_memory(kept_max=None)  # all of it: the peak recurs on every step
    rank, world = torchrun_ranks()
    emit = on_event if (on_event and rank == 0) else (lambda e: None)
    dev = _start_device(cfg, world)
    state, saved = None, {}
    if resume:
        cfg, state, saved = _resumed_config(cfg)
    check_config(cfg)  # a TrainConfig made in Python, too
    if resume:
        done = int(state.get("epoch", 0))
        if done >= cfg.epochs:  # a finished run: say so, rather than "done" with no step
            message = (f"nothing to do: {cfg.out} has trained {done} epoch"
                       f"{'' if done == 1 else 's'} (--epochs {cfg.epochs}); give a larger "
                       "--epochs to train on")
            emit(Progress("stop", done, message=message))
            return {"epochs_done": done, "seconds": 0.0, "out": str(cfg.out), "stopped": None,
                    "best_psnr": float((state.get("train_state") or {}).get(
                        "best_psnr", -math.inf)),
                    "signal": None, "exit_code": 0, "nothing_to_do": message}
    else:
        check_new_run(cfg.out)
    if rank == 0:
        note_idle_milestones(cfg, int(state.get("epoch", 0)) if state else 0)
    run = _build_run(cfg, dev, rank=rank, world=world, state=state, saved=saved)
    run.choose_precision()  # before the start line, which names the precision used
    data = _build_data(run, emit)
    run.open_folder()
    stopped, epoch, it = None, run.start_epoch, run.skip
    t_start = time.time()
    with StopSignal() as stop:
        for epoch in range(run.start_epoch, run.cfg.epochs):
            it = _train_epoch(run, data, epoch, stop, emit)
            if stop.stopping and it < run.iters:
                run.save(run.last, epoch, it)
                stopped = f"stopped by signal {signal.Signals(_signal_of(stop)).name} at epoch " \
                          f"{epoch + 1}, iteration {it}/{run.iters}; resume with --resume"
                break
            _end_epoch(run, data, epoch, it, emit)
            if stop.stopping:
                name = signal.Signals(_signal_of(stop)).name
                stopped = f"stopped by signal {name} after epoch {epoch + 1}; resume with --resume"
                break
    run.close()
    summary = {"epochs_done": epoch + 1 if stopped is None else None, "best_psnr": run.best,
               "seconds": time.time() - t_start, "out": str(run.out), "stopped": stopped,
               "signal": _signal_of(stop) if stopped is not None else None,
               "exit_code": signal_exit_code(_signal_of(stop)) if stopped is not None else 0}
    emit(Progress("stop", epoch, message=stopped or "finished"))
    return summary


def _signal_of(stop: StopSignal) -> int:
    """The signal that stopped the run; SIGTERM on a rank that only agreed to another's."""
    return stop.signal if stop.signal is not None else signal.SIGTERM


# ----------------------------------------------------------------------------------------------
# the steps of `train`

def _start_device(cfg: TrainConfig, world: int) -> torch.device:
    """The device of this process; under torchrun, its GPU and the process group."""
    if world > 1:
        import torch.distributed as dist

        # the one device policy: cuda:(local rank mod GPUs seen), so one GPU per rank works
        dev = resolve_device(cfg.device, ranks=world)
        use_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    else:
        dev = resolve_device(cfg.device)
        use_device(dev)  # cuda:N current, so pinned-memory threads stay off GPU 0
    set_tf32(dev, False)  # fp32 is exact fp32, as in every render (runtime.device)
    if cfg.precision == "fp16" and dev.type != "cuda":
        raise UsageError("fp16 training needs a CUDA GPU; on the CPU use --precision bf16")
    return dev


def _resumed_config(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any], dict[str, Any]]:
    """(the resumed run's config, its last.pth, the config saved there)."""
    _, state, saved = saved_run(cfg.out)
    check_run_folder(cfg.out)
    given = {f.name: getattr(cfg, f.name) for f in fields(TrainConfig)}
    return make_config(resume_config(saved, given, run=cfg.out)), state, saved


@dataclass
class _Run:
    """What the steps of `train` share: the model, its optimizer and schedule, and counters."""

    cfg: TrainConfig
    dev: torch.device
    rank: int
    world: int
    model: SRModel
    net: torch.nn.Module  # the model, or its DDP wrapper
    opt: torch.optim.Optimizer
    sched: Any  # MultiStepLR
    init_steps: int = 0  # optimizer steps behind --init's weights (their file's 'steps', if any)
    start_epoch: int = 0  # epochs completed when this process started
    skip: int = 0  # iterations of start_epoch already done
    best: float = -math.inf  # best mean validation PSNR
    iters: int = 0  # iterations per epoch
    amp_dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    scaler: Any = None  # fp16's GradScaler
    log: Any = None  # metrics.jsonl, on rank 0
    teacher: SRModel | None = None  # --distill's model, frozen
    shared_latent: bool = False  # the teacher decodes the student's (frozen, same) latent
    ema: WeightAverage | None = None  # --ema's average of the weights, on rank 0

    @property
    def eval_model(self) -> SRModel:
        """The weights validated and saved as every checkpoint's model: the average's, if any."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def last(self) -> Path:
        return self.out / "last.pth"

    def run_steps(self, epoch: int, iteration: int) -> int:
        """Optimizer steps of this run after `iteration` steps of (0-based) `epoch`."""
        return epoch * self.iters + iteration

    def choose_precision(self) -> None:
        """bf16 on a CPU without native bf16 trains in fp32 (2-7x faster), with a note."""
        amp_dtype = resolve_precision(self.cfg.precision, self.dev)
        if amp_dtype == torch.float16 and self.dev.type != "cuda":  # bf16's fallback on a Mac:
            amp_dtype = torch.float32  # GradScaler's unscale fails on MPS (float64)
        self.amp_dtype = None if amp_dtype == torch.float32 else amp_dtype
        # fp16 (asked for, or bf16's fallback on an older GPU) needs loss scaling
        self.scaler = torch.amp.GradScaler(self.dev.type) if amp_dtype == torch.float16 else None

    @property
    def precision(self) -> str:
        """The precision the steps run in (after `choose_precision`)."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def open_folder(self) -> None:
        """The run folder and its metrics log (rank 0)."""
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            # appended to by a resume; a new run's replaces a failed one's (which saved nothing)
            resumed = (self.out / "last.pth").exists()
            self.log = open(self.out / "metrics.jsonl", "a" if resumed else "w")

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    def save(self, path: Path, epoch_done: int, iteration: int) -> None:
        if self.rank != 0:
            return
        cfg = self.cfg
        train_state = {"scheduler": self.sched.state_dict(), "iteration": iteration,
                       "best_psnr": self.best, "rng": _rng_state(), "init_steps": self.init_steps}
        if self.ema is not None:
            train_state["ema"] = {"decay": self.ema.decay, "updates": self.ema.updates}
            if path == self.last:  # what a resume needs: the weights being trained
                train_state["ema"]["raw"] = {k: v.detach().cpu()
                                             for k, v in self.model.state_dict().items()}
        ckpt = checkpoint_dict(
            self.eval_model,
            optimizer={"name": "adam", "args": {"lr": cfg.lr}, "sd": self.opt.state_dict()},
            epoch=epoch_done,
            train_state=train_state,
            liif_cli={"version": __version__, "config": cfg.as_dict(),
                      "epoch": epoch_done, "iteration": iteration,
                      "steps": self.init_steps + self.run_steps(epoch_done, iteration)})
        atomic_torch_save(ckpt, path)

    def record(self, **kw) -> None:
        if self.log is not None:
            self.log.write(json.dumps({"time": time.time(), **kw}) + "\n")
            self.log.flush()


def _build_run(cfg: TrainConfig, dev: torch.device, *, rank: int, world: int,
               state: dict[str, Any] | None, saved: dict[str, Any]) -> _Run:
    """Model, optimizer and schedule: new, from --init, or restored from `state` (a resume)."""
    torch.manual_seed(cfg.seed)
    model, cfg, init_steps = _build_model(cfg, state)
    model.to(dev).train()
    if cfg.freeze_encoder:
        # no gradients into the encoder: autograd then skips its backward (about half a
        # step's work for EDSR-baseline) and Adam holds no state for it
        model.encoder.requires_grad_(False)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.lr_milestones),
                                                 gamma=cfg.lr_gamma)
    run = _Run(cfg, dev, rank, world, model, model, opt, sched, init_steps=init_steps)
    if cfg.distill:
        run.teacher, run.shared_latent = _build_teacher(cfg.distill, model, dev)
    if cfg.ema and rank == 0:
        # a copy of the model as built: on a resume, last.pth's model, which is the average
        # (or, for a run that had none, the weights it starts from); `_restore` then loads
        # the weights being trained into `model`
        run.ema = WeightAverage(model, cfg.ema)
    if state is not None:
        _restore(run, state, saved)
    if world > 1:
        run.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    return run


def _build_teacher(ref: str, model: SRModel, dev: torch.device) -> tuple[SRModel, bool]:
    """--distill's model on `dev`, frozen, and whether it may decode the student's latent: when
    the student's encoder is frozen and equal to the teacher's (`--init T --freeze-encoder
    --distill T`), the teacher's own encoder pass would compute the same grid again."""
    teacher = load_model(ref, device=dev).eval().requires_grad_(False)
    mine = model.encoder.state_dict()
    theirs = teacher.encoder.state_dict()
    shared = (not any(p.requires_grad for p in model.encoder.parameters())
              and mine.keys() == theirs.keys()
              and all(mine[k].shape == theirs[k].shape and torch.equal(mine[k], theirs[k].to(
                  mine[k].dtype)) for k in mine))
    return teacher, shared


def _build_model(cfg: TrainConfig, state: dict[str, Any] | None
                 ) -> tuple[SRModel, TrainConfig, int]:
    """(model, cfg with the decoder built, optimizer steps behind --init's weights)."""
    init_steps = 0
    if state is not None:
        model = model_from_spec(state["model"], source=str(Path(cfg.out) / "last.pth"))
    elif cfg.init:
        init = load_model(cfg.init, device="cpu")  # a path, or a bundled or user model name
        model, cfg = _init_model(cfg, init)
        if model is init:
            init_steps = int(init.card.meta.get("steps") or 0)
    else:
        model = build_model(cfg.model_config())
    return model, replace(cfg, decoder=decoder_of(model)), init_steps  # stored: resume rebuilds


def _restore(run: _Run, state: dict[str, Any], saved: dict[str, Any]) -> None:
    """A resume: optimizer, schedule (retuned to the new options), counters and RNG state."""
    run.opt.load_state_dict(state["optimizer"]["sd"])
    ts = state.get("train_state") or {}
    run.sched.load_state_dict(ts.get("scheduler", {}))
    run.start_epoch, run.skip = int(state.get("epoch", 0)), int(ts.get("iteration", 0))
    run.best = float(ts.get("best_psnr", -math.inf))
    run.init_steps = int(ts.get("init_steps", 0))
    ema = ts.get("ema") or {}
    if "raw" in ema:  # the checkpoint's model is the average; these are the trained weights
        run.model.load_state_dict(ema["raw"], strict=True)
    if run.ema is not None:
        run.ema.updates = int(ema.get("updates", 0))
    _retune_schedule(run.opt, run.sched, run.cfg, saved)
    if "rng" in ts:
        torch.set_rng_state(ts["rng"]["torch"])


@dataclass
class _Data:
    dataset: RandomScaleSamples
    val_images: dict[str, np.ndarray]  # path under --val-data -> image, rank 0; {} without
    loader: Any = None  # one DataLoader for the run: its workers persist across epochs
    batches: EpochBatches | None = None  # the loader's sampler, set to each epoch in turn

    def epoch_batches(self, run: _Run, epoch: int, skip: int) -> Iterator[dict[str, Any]]:
        """The loader's batches, its sampler set to `epoch` (from batch `skip`); the loader is
        made on first use.

        Its workers are forked once (`persistent_workers`), not every epoch: the sampler runs
        in this process and the dataset reads the epoch from each index, so the workers need
        not know it. They ignore SIGINT/SIGTERM (`ignore_stop_signals`, held off until then):
        this process decides a stop, saves, and ends them.
        """
        cfg = run.cfg
        if self.loader is None:
            self.batches = EpochBatches(len(self.dataset), batch_size=cfg.batch_size,
                                        epoch=epoch, seed=cfg.seed, rank=run.rank,
                                        world=run.world, skip=skip)
            self.loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=self.batches, num_workers=cfg.workers,
                pin_memory=run.dev.type == "cuda", persistent_workers=cfg.workers > 0,
                worker_init_fn=ignore_stop_signals if cfg.workers > 0 else None)
        self.batches.epoch, self.batches.skip = epoch, skip
        with stop_signals_held():  # the first epoch forks the workers
            return iter(self.loader)


def _build_data(run: _Run, emit: Callable[[Progress], None]) -> _Data:
    """Decode the training (and validation) images; say how the run starts."""
    cfg = run.cfg
    # first: a wrong --val-data is found before the training images are decoded
    val_imgs = load_val_images(cfg.val_data, cfg.val_images, cfg.val_scales) \
        if cfg.val_data and run.rank == 0 else {}
    files = training_images(cfg.data)
    cache = ImageCache(files, min_side=round(cfg.patch_size * cfg.scale_max),
                       on_progress=lambda i, n: emit(Progress("load", run.start_epoch, i, n)))
    dataset = RandomScaleSamples(cache, repeat=cfg.repeat, patch=cfg.patch_size,
                                 scale_min=cfg.scale_min, scale_max=cfg.scale_max,
                                 sample_q=cfg.sample_q, seed=cfg.seed,
                                 degrade=cfg.degrade_ranges_obj())
    run.iters = len(dataset) // cfg.batch_size
    if run.iters == 0:
        raise UsageError(f"{len(dataset)} samples per epoch is less than one batch of "
                         f"{cfg.batch_size}; lower --batch-size or raise --repeat")
    emit(Progress("start", run.start_epoch, run.skip, run.iters, message=
                  f"{len(cache)} training images"
                  + (f" ({len(cache.skipped)} smaller than {round(cfg.patch_size * cfg.scale_max)}"
                     f"px skipped, e.g. {cache.skipped[0].name})" if cache.skipped else "")
                  + (f" ({len(cache.unreadable)} unreadable skipped, e.g. "
                     f"{cache.unreadable[0].name})" if cache.unreadable else "")
                  + ", "
                  f"{run.iters} iterations/epoch, device {run.dev}, {run.precision}, "
                  f"world {run.world}"))
    return _Data(dataset, val_imgs)


def _train_epoch(run: _Run, data: _Data, epoch: int, stop: StopSignal,
                 emit: Callable[[Progress], None]) -> int:
    """One epoch's optimizer steps (from run.skip on); returns the iterations done, fewer than
    run.iters when a signal stopped it."""
    cfg, dev, opt, iters = run.cfg, run.dev, run.opt, run.iters
    skip = run.skip if epoch == run.start_epoch else 0
    batches = data.epoch_batches(run, epoch, skip)
    run.net.train()
    latents: list[torch.Tensor] = []  # the student's latent, for a teacher that shares it
    hook = run.model.encoder.register_forward_hook(
        lambda _m, _i, out: latents.append(out)) if run.shared_latent else None
    t0, it, n_run = time.time(), skip, 0
    loss_teacher = None
    shown: dict[str, float] = {}  # the losses as last read from the device
    nonfinite = torch.zeros((), dtype=torch.bool, device=dev)  # any step's loss not finite
    try:
        for batch in batches:
            inp = normalise(batch["inp"].to(dev, non_blocking=True))
            coord = batch["coord"].to(dev, non_blocking=True)
            cell = batch["cell"].to(dev, non_blocking=True)
            gt = normalise(batch["gt"].to(dev, non_blocking=True))
            with _autocast(run):
                pred = run.net(inp, coord, cell)
            loss_gt = F.l1_loss(pred.float(), gt)
            loss = loss_gt
            if run.teacher is not None:
                loss_teacher = _teacher_loss(run, pred, inp, coord, cell, latents)
                loss = (1 - cfg.distill_weight) * loss_gt + cfg.distill_weight * loss_teacher
            nonfinite |= ~torch.isfinite(loss.detach())  # on the device: no sync
            opt.zero_grad(set_to_none=True)
            # linear warm-up over the run's first steps (a fresh Adam on --init weights
            # otherwise takes full-size steps from noisy moments); the schedule is untouched
            warm = min(1.0, run.run_steps(epoch, it + 1) / cfg.warmup) if cfg.warmup else 1.0
            base_lr = [g["lr"] for g in opt.param_groups]
            for g in opt.param_groups:
                g["lr"] *= warm
            if run.scaler is not None:
                run.scaler.scale(loss).backward()
                run.scaler.step(opt)
                run.scaler.update()
            else:
                loss.backward()
                opt.step()
            if run.ema is not None:
                run.ema.update()
            step_lr = opt.param_groups[0]["lr"]
            for g, lr in zip(opt.param_groups, base_lr):
                g["lr"] = lr
            it += 1
            n_run += 1
            its = n_run / max(time.time() - t0, 1e-9)
            # the checks that wait for the device: every CHECK_EVERY steps, at the epoch's
            # end and on the first step (every step alone: no collective, a CPU has no sync)
            check = (n_run == 1 or it % CHECK_EVERY == 0 or it == iters
                     or (run.world == 1 and stop.signal is not None))
            if check:
                shown["loss"] = loss_gt.item()
                if loss_teacher is not None:
                    shown["loss_teacher"] = loss_teacher.item()
                if nonfinite.item():
                    now = loss.item()
                    kept = (f"the last good checkpoint is kept ({run.last})" if
                            Path(run.last).exists() else "no checkpoint was saved yet")
                    raise TrainingError(
                        f"loss became {now if not math.isfinite(now) else 'non-finite'} at "
                        f"epoch {epoch + 1} (by iteration {it}); stopped, {kept}. Try a lower "
                        "--lr or --precision fp32")
            if it % LOG_EVERY == 0 or it == iters:  # `loss`: L1 to the ground truth, always
                extra = {k: v for k, v in shown.items() if k == "loss_teacher"}
                run.record(kind="step", epoch=epoch + 1, iteration=it,
                           steps=run.init_steps + run.run_steps(epoch, it), loss=shown["loss"],
                           lr=step_lr, its=its, **extra)
            emit(Progress("step", epoch, it, iters, loss=shown["loss"], lr=step_lr, its=its))
            if (check or run.world == 1) and stop.agree(run.world, run.dev):  # alone: no collective, no sync
                break
    except RuntimeError as e:
        if not stop.lost_worker(e, run.world):
            raise
        stop.agree(1, dev)  # the stop asked for goes on, with the iterations done
    finally:
        if hook is not None:
            hook.remove()
    return it


def _autocast(run: _Run) -> contextlib.AbstractContextManager:
    """Autocast to the training precision; in fp32 no autocast region at all (torch 2.3-2.5
    reject `torch.autocast("mps", enabled=False)` before reading `enabled`)."""
    if run.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(run.dev.type, dtype=run.amp_dtype)


def _teacher_loss(run: _Run, pred: torch.Tensor, inp: torch.Tensor, coord: torch.Tensor,
                  cell: torch.Tensor, latents: list[torch.Tensor]) -> torch.Tensor:
    """L1 from `pred` to the --distill teacher's output at the same queries; the teacher
    decodes the student's latent (`latents`, from the encoder's hook) when it shares it."""
    with torch.no_grad(), _autocast(run):
        target = (run.teacher.decode(latents.pop(), coord, cell) if run.shared_latent
                  else run.teacher(inp, coord, cell))
    return F.l1_loss(pred.float(), target.float())


def _end_epoch(run: _Run, data: _Data, epoch: int, it: int,
               emit: Callable[[Progress], None]) -> None:
    """After a whole epoch: step the schedule, validate, save last/best/epoch-N.pth."""
    cfg = run.cfg
    with warnings.catch_warnings():
        # resuming at an epoch's end steps the schedule before this process's first
        # optimizer step; torch warns, but the order over the whole run is right
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
        run.sched.step()
    done = epoch + 1
    psnr = None
    if data.val_images and (done % cfg.val_every == 0 or done == cfg.epochs):
        psnr = validate(run.eval_model, data.val_images, cfg.val_scales,
                        run.amp_dtype or torch.float32, cfg.val_degrade)
        mean = float(np.mean(list(psnr.values())))
        run.record(kind="val", epoch=done, steps=run.init_steps + run.run_steps(done, 0),
                   psnr=psnr)
        emit(Progress("val", epoch, it, run.iters, psnr=psnr))
        if mean > run.best:
            run.best = mean
            run.save(run.out / "best.pth", done, 0)
    run.save(run.last, done, 0)
    if cfg.save_every and done % cfg.save_every == 0:
        run.save(run.out / f"epoch-{done}.pth", done, 0)
    emit(Progress("epoch", epoch, it, run.iters, psnr=psnr))
