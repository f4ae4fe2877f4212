"""Training: the recipe's samples, a tiny run end to end, exact resume, NaN stop, DDP on CPU."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, photo_like
from PIL import Image
from typer.testing import CliRunner

from liif_cli.cli import app
from liif_cli.data.samples import (
    EpochBatches,
    ImageCache,
    RandomScaleSamples,
    training_images,
)
from liif_cli.errors import DataError, TrainingError, UsageError
from liif_cli.tasks.train import TrainConfig, config_from, train

runner = CliRunner()
TINY = dict(encoder_args={"n_resblocks": 1, "n_feats": 8}, hidden=(16, 16), patch_size=12,
            scale_max=2.0, sample_q=50, batch_size=2, repeat=2, workers=0, epochs=2,
            val_images=2, val_scales=(2.0,), precision="fp32", device="cpu")


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "hr"
    (d / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(photo_like(40, 44, seed=i)).save(d / ("sub" if i == 2 else "") / f"{i}.png")
    Image.fromarray(photo_like(10, 10)).save(d / "small.png")  # below the largest crop
    (d / "notes.txt").write_text("not an image")
    return d


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]["sd"]


def steps(path: Path) -> int:
    return torch.load(path, weights_only=True)["liif_cli"]["steps"]


def test_samples_follow_the_recipe(folder):
    cache = ImageCache(training_images(folder), min_side=24)
    assert len(cache) == 3 and [p.name for p in cache.skipped] == ["small.png"]
    ds = RandomScaleSamples(cache, repeat=2, patch=12, scale_max=2.0, sample_q=50)
    s = ds[3]
    assert s["inp"].shape == (3, 12, 12) and s["coord"].shape == (50, 2)
    assert s["gt"].shape == (50, 3) and s["cell"].shape == (50, 2)
    side = round(2 / s["cell"][0, 0].item())  # HR crop side from the cell: round(12 * s)
    assert 12 <= side <= 24 and torch.allclose(s["cell"][:, 1], s["cell"][:, 0])
    assert s["coord"].abs().max() < 1 and 0 <= s["gt"].min() and s["gt"].max() <= 1
    assert len({tuple(c) for c in s["coord"].tolist()}) == 50  # without replacement
    # a pure function of (seed, epoch, index): same twice, different for another epoch
    assert torch.equal(ds[3]["coord"], s["coord"])
    assert not torch.equal(ds[3 + len(ds)]["coord"], s["coord"])


def test_epoch_batches_split_across_ranks_like_one_process():
    one = list(EpochBatches(20, batch_size=4, epoch=1, seed=0))
    r0 = list(EpochBatches(20, batch_size=4, epoch=1, seed=0, rank=0, world=2))
    r1 = list(EpochBatches(20, batch_size=4, epoch=1, seed=0, rank=1, world=2))
    assert len(one) == 5 and all(min(b) >= 20 for b in one)  # epoch 1 offsets the indices
    for b, x, y in zip(one, r0, r1):
        assert sorted(b) == sorted(x + y)
    assert list(EpochBatches(20, batch_size=4, epoch=1, seed=0, skip=2)) == one[2:]


def test_tiny_run_trains_validates_resumes_and_upscales(folder, tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(folder), val_data=str(folder), out=str(out), **TINY)
    events = []
    summary = train(cfg, on_event=events.append)
    assert summary["stopped"] is None
    assert {"last.pth", "best.pth", "metrics.jsonl"} <= {p.name for p in out.iterdir()}
    ck = torch.load(out / "last.pth", weights_only=True)
    assert ck["epoch"] == 2 and ck["liif_cli"]["config"]["patch_size"] == 12
    assert set(ck["optimizer"]) >= {"sd"} and "scheduler" in ck["train_state"]
    vals = [e for e in events if e.kind == "val"]
    assert len(vals) == 2 and np.isfinite(vals[0].psnr["x2"])
    loads = [(e.iteration, e.iterations) for e in events if e.kind == "load"]
    assert loads == [(1, 4), (2, 4), (3, 4), (4, 4)]  # decoding progress, small.png included
    assert events.index(next(e for e in events if e.kind == "start")) == 4
    # more epochs with --resume continue from epoch 2
    summary = train(TrainConfig(**{**cfg.__dict__, "epochs": 3}), resume=True)
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 3
    img = tmp_path / "in.png"
    Image.fromarray(photo_like(9, 11)).save(img)
    res = runner.invoke(app, ["upscale", str(img), "-s", "2.5", "-m", str(out / "last.pth"),
                              "-o", str(tmp_path / "up.png"), "-q"])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "up.png").size == (28, 23)  # 27.5 and 22.5 round up
    res = runner.invoke(app, ["train", "--plot", str(out)])
    assert res.exit_code == 0 and (out / "curves.png").exists()


def test_curves_smooth_the_loss_and_show_validation_as_gains():
    """A long fine-tune gains hundredths of a dB: on an absolute axis shared with ×2's 30 dB
    they were a flat line. Each scale is drawn as its gain since the first validation."""
    from liif_cli.io.plot import curves, running_mean

    assert running_mean([(0, 1.0), (1, 3.0), (2, 5.0), (3, 7.0)], 2) == [
        (0, 1.0), (1, 2.0), (2, 4.0), (3, 6.0)]
    recs = [{"kind": "step", "epoch": 1 + i // 4, "iteration": 1 + i % 4, "loss": 0.1 + i % 2}
            for i in range(400)]
    recs += [{"kind": "val", "epoch": e, "psnr": {"x2": 30.0 + e / 100, "x4": 26.0 + e / 200}}
             for e in (8, 16, 24)]
    panels = curves(recs)
    assert len(panels["loss"]["loss"]) == 400
    smooth = panels["loss"]["running mean of 10"]  # 400 points / 40
    assert len(smooth) == 400 and all(abs(y - 0.6) < 1e-9 for _, y in smooth[10:])
    assert list(panels["val"]) == ["x2 30.080 -> 30.240 dB", "x4 26.040 -> 26.120 dB"]
    for pts, want in zip(panels["val"].values(), ((0, 0.08, 0.16), (0, 0.04, 0.08))):
        assert [x for x, _ in pts] == [8, 16, 24]
        assert all(abs(y - w) < 1e-9 for (_, y), w in zip(pts, want)), pts


def test_interrupted_and_resumed_run_equals_uninterrupted(folder, tmp_path):
    base = dict(data=str(folder), **TINY)
    full = tmp_path / "full"
    train(TrainConfig(out=str(full), **base))

    part = tmp_path / "part"
    steps = []

    def interrupt(ev):  # a Ctrl-C in the middle of epoch 1
        if ev.kind == "step":
            steps.append(ev.iteration)
            if len(steps) == 2:
                os.kill(os.getpid(), signal.SIGINT)

    summary = train(TrainConfig(out=str(part), **base), on_event=interrupt)
    assert summary["stopped"] and "resume" in summary["stopped"]
    ck = torch.load(part / "last.pth", weights_only=True)
    assert ck["epoch"] == 0 and ck["train_state"]["iteration"] == 2
    train(TrainConfig(out=str(part), **base), resume=True)
    a, b = weights(full / "last.pth"), weights(part / "last.pth")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(
        folder, tmp_path, monkeypatch):
    import liif_cli.tasks.train.loop as tr

    out = tmp_path / "run"
    calls = {"n": 0}
    real = tr.F.l1_loss

    def poisoned(a, b):
        calls["n"] += 1
        loss = real(a, b)
        return loss * float("nan") if calls["n"] > 6 else loss  # epoch 1 has 3 iterations

    monkeypatch.setattr(tr.F, "l1_loss", poisoned)
    with pytest.raises(TrainingError, match="loss became nan at epoch 3"):
        train(TrainConfig(data=str(folder), out=str(out), **{**TINY, "epochs": 4}))
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 2


def test_bad_training_input_gets_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for args, msg in [
        (["--data", str(tmp_path / "nope")], "data folder not found"),
        (["--data", str(tmp_path / "empty")], "no images in"),
        (["--data", str(tmp_path), "--encoder", "vgg"], "unknown encoder"),
        (["--data", str(tmp_path), "--resume", "--out", str(tmp_path / "r")], "nothing to resume"),
    ]:
        res = runner.invoke(app, ["train", "-q", "--workers", "0", *args])
        assert res.exit_code != 0 and msg in res.output, (args, res.output)
        assert "Traceback" not in res.output


def test_config_file_and_overrides(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('data = "x"\nepochs = 5\nlr_milestones = [2, 4]\n')
    cfg = config_from(str(toml), {"epochs": 7, "lr": None})
    assert cfg.epochs == 7 and cfg.lr_milestones == (2, 4) and cfg.lr == 1e-4
    toml.write_text('data = "x"\nbogus = 1\n')
    with pytest.raises(UsageError, match="unknown training option"):
        config_from(str(toml), {})


@pytest.mark.parametrize("toml", sorted((REPO / "docs" / "recipes").glob("*.toml")),
                         ids=lambda p: p.name)
def test_the_documented_recipes_load(toml):
    cfg = config_from(str(toml), {})  # unknown keys, bad ranges and values are refused here
    assert cfg.data and cfg.out.startswith("runs/")
    assert (cfg.degrade_ranges_obj() is None) == (not cfg.degrade)  # unknown range keys refused


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(folder, tmp_path):
    """torchrun, gloo, 2 ranks × batch 1 == 1 process × batch 2 (same global batch); with
    --ema, rank 0's average and trained weights both."""
    common = ["--data", str(folder), "--epochs", "1", "--batch-size", "2", "--repeat", "2",
              "--patch-size", "12", "--scale-max", "2", "--sample-q", "50", "--workers", "0",
              "--device", "cpu", "--ema", "0.5", "--quiet"]
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('hidden = [16, 16]\n[encoder_args]\nn_resblocks = 1\nn_feats = 8\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "liif_cli", "train", *common, "--config",
                          str(tiny), "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "liif_cli", "train", *common, "--config",
                          str(tiny), "--out", str(tmp_path / "two")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = weights(tmp_path / "one" / "last.pth"), weights(tmp_path / "two" / "last.pth")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    a, b = (torch.load(tmp_path / r / "last.pth", weights_only=True)["train_state"]["ema"]
            for r in ("one", "two"))
    assert a["updates"] == b["updates"] == 3
    for k in a["raw"]:
        assert torch.allclose(a["raw"][k], b["raw"][k], atol=1e-5), k


LEAVE = """
import atexit, sys, torch.distributed as dist
from liif_cli.cli import main
if sys.argv[1] == "dist":
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
atexit.register(lambda: print("finalized"))
sys.argv = ["liif", "train", "--data", sys.argv[2], "--out", sys.argv[3], "--quiet"]
main()
"""


@pytest.mark.parametrize("mode", ["dist", "single"])
@pytest.mark.slow
def test_a_distributed_rank_exits_without_interpreter_finalization(mode, tmp_path):
    """Under torchrun the CLI ends with os._exit after the run, keeping the command's exit code.

    A gloo worker thread that drops a finished collective during interpreter finalization
    aborts the rank (SIGABRT); skipping finalization removes that race. The atexit hook tells
    whether finalization ran; the run fails (no data folder) to show its exit code is kept.
    """
    r = subprocess.run([sys.executable, "-c", LEAVE, mode, str(tmp_path / "none"),
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: data folder not found")
    assert ("finalized" in r.stdout) == (mode == "single")


def test_init_fine_tunes_from_a_path_or_a_model_name(folder, tmp_path, monkeypatch):
    first = tmp_path / "first"
    train(TrainConfig(data=str(folder), out=str(first), **{**TINY, "epochs": 1}))
    monkeypatch.setenv("LIIF_MODELS_DIR", str(first))  # last.pth is now the model "last"
    for init in (str(first / "last.pth"), "last"):
        out = tmp_path / f"ft-{init[-4:]}"
        cfg = TrainConfig(data=str(folder), out=str(out), init=init, **{**TINY, "epochs": 1,
                                                                        "lr": 1e-12})
        train(cfg)
        a, b = weights(first / "last.pth"), weights(out / "last.pth")
        for k in a:  # a negligible learning rate: the weights are where the init put them
            assert torch.allclose(a[k], b[k], atol=1e-6), (init, k)
        # optimizer steps are counted across the lineage: 3 behind the init, 3 of this run
        assert steps(first / "last.pth") == 3 and steps(out / "last.pth") == 6, init
    train(replace(cfg, epochs=2), resume=True)  # a resumed fine-tune keeps counting
    assert steps(out / "last.pth") == 9


def test_help_shows_the_recipe_defaults():
    # Rich markup would swallow "[default: ...]" as a style tag; the defaults must be visible
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for text in ("(default: 1e-4)", "(default: 2304)", "(default: 200,400,600,800)"):
        assert text in res.output, text


def test_cli_run_without_validation_says_so(folder, tmp_path):
    res = runner.invoke(app, ["train", "--data", str(folder), "--out", str(tmp_path / "r"),
                              "--epochs", "1", "--batch-size", "2", "--patch-size", "12",
                              "--scale-max", "2", "--sample-q", "50", "--repeat", "2",
                              "--workers", "0"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "no validation (give --val-data)" in res.output and "-inf" not in res.output
    assert "3 training images" in res.output


def test_warmup_ramps_the_lr_over_the_runs_first_steps_across_a_resume(folder, tmp_path):
    cfg = TrainConfig(data=str(folder), out=str(tmp_path / "w"), warmup=5,
                      **{**TINY, "epochs": 1, "lr": 1e-3})
    events = []
    train(cfg, on_event=events.append)  # 3 steps per epoch
    train(replace(cfg, epochs=2), resume=True, on_event=events.append)
    lrs = [e.lr for e in events if e.kind == "step"]
    assert np.allclose(lrs, [2e-4, 4e-4, 6e-4, 8e-4, 1e-3, 1e-3]), lrs
    ck = torch.load(tmp_path / "w" / "last.pth", weights_only=True)
    assert ck["optimizer"]["sd"]["param_groups"][0]["lr"] == 1e-3  # the schedule's own lr
    with pytest.raises(UsageError, match="--warmup must be 0"):
        config_from(None, {"data": "x", "warmup": -1})


def test_resume_keeps_the_runs_options_and_takes_new_ones(folder, tmp_path):
    out = tmp_path / "r"
    res = runner.invoke(app, ["train", "-q", "--data", str(folder), "--out", str(out),
                              "--epochs", "1", "--batch-size", "2", "--patch-size", "12",
                              "--scale-max", "2", "--sample-q", "50", "--repeat", "2",
                              "--workers", "0", "--lr", "1e-3"])
    assert res.exit_code == 0, res.output
    # --resume --out alone continues the run as it was (its data, recipe and lr 1e-3) ...
    res = runner.invoke(app, ["train", "-q", "--out", str(out), "--resume", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    ck = torch.load(out / "last.pth", weights_only=True)
    assert ck["epoch"] == 2 and ck["liif_cli"]["config"]["data"] == str(folder)
    assert ck["liif_cli"]["config"]["lr"] == 1e-3
    assert ck["optimizer"]["sd"]["param_groups"][0]["lr"] == 1e-3
    # ... and a new --lr (or milestones) applies from the resumed step on
    cfg = config_from(None, {"out": str(out), "epochs": 4, "lr": 5e-4,
                             "lr_milestones": [3]}, resume=True)
    events = []
    train(cfg, resume=True, on_event=events.append)
    lrs = [e.lr for e in events if e.kind == "step"]
    assert np.allclose(lrs, [5e-4] * 3 + [2.5e-4] * 3), lrs
    ck = torch.load(out / "last.pth", weights_only=True)
    assert ck["liif_cli"]["config"]["lr"] == 5e-4
    assert np.isclose(ck["optimizer"]["sd"]["param_groups"][0]["lr"], 2.5e-4)


def test_validation_runs_in_the_training_precision():
    from liif_cli.model import LIIF
    from liif_cli.tasks.train import validate

    torch.manual_seed(0)
    model = LIIF(TrainConfig(**{k: v for k, v in TINY.items()
                                if k in ("encoder_args", "hidden")}).model_config())
    imgs = [photo_like(40, 44, seed=i) for i in range(2)]
    fp32 = validate(model, imgs, (2.0, 3.0))
    bf16 = validate(model, imgs, (2.0, 3.0), torch.bfloat16)
    assert fp32.keys() == bf16.keys() == {"x2", "x3"}
    for k in fp32:  # the same function, in bf16: close, but not the fp32 numbers
        assert bf16[k] != fp32[k]
        assert abs(bf16[k] - fp32[k]) < 0.2


def test_resume_refuses_another_recipe_and_takes_another_schedule(folder, tmp_path):
    out = tmp_path / "r"
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('hidden = [16, 16]\n[encoder_args]\nn_resblocks = 1\nn_feats = 8\n')
    recipe = ["--data", str(folder), "--config", str(tiny), "--batch-size", "2",
              "--patch-size", "12", "--scale-max", "2", "--sample-q", "50", "--repeat", "2"]
    res = runner.invoke(app, ["train", "-q", "--out", str(out), "--epochs", "1", "--workers",
                              "0", *recipe])
    assert res.exit_code == 0, res.output
    before = (out / "last.pth").read_bytes()
    other = tmp_path / "other.toml"
    other.write_text('[encoder_args]\nn_resblocks = 1\nn_feats = 16\n')
    for args, key, old, new in [
        (["--seed", "3"], "seed", "0", "3"),
        (["--sample-q", "60"], "sample_q", "50", "60"),
        (["--scale-max", "3"], "scale_max", "2.0", "3.0"),
        (["--data", str(tmp_path)], "data", repr(str(folder)), repr(str(tmp_path))),
        (["--decoder", "lmf"], "decoder", "'liif'", "'lmf'"),
        (["--config", str(other)], "encoder_args", '{"n_resblocks": 1, "n_feats": 8}',
         '{"n_resblocks": 1, "n_feats": 16}'),
    ]:
        res = runner.invoke(app, ["train", "-q", "--out", str(out), "--resume", "--epochs", "2",
                                  *args])
        assert res.exit_code == 2, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert f"--resume cannot change {key}: {out} was trained with {old}, this asks for " \
               f"{new};" in res.output and "start a new --out" in res.output, res.output
    assert (out / "last.pth").read_bytes() == before  # refused before any work
    # the same recipe again is fine, and the schedule and validation options take effect
    res = runner.invoke(app, ["train", "-q", "--out", str(out), "--resume", *recipe,
                              "--epochs", "2", "--lr-milestones", "2", "--lr-gamma", "0.1",
                              "--save-every", "2"])
    assert res.exit_code == 0, res.output
    ck = torch.load(out / "last.pth", weights_only=True)
    cfg = ck["liif_cli"]["config"]
    assert ck["epoch"] == 2 and (out / "epoch-2.pth").exists()
    assert cfg["lr_milestones"] == [2] and cfg["lr_gamma"] == 0.1 and cfg["save_every"] == 2
    assert cfg["data"] == str(folder) and cfg["seed"] == 0 and cfg["hidden"] == [16, 16]
    assert np.isclose(ck["optimizer"]["sd"]["param_groups"][0]["lr"], 1e-5)  # 1e-4 × 0.1
    # the library merges the same way: a full config with another recipe key is refused
    lib = config_from(None, {"out": str(out)}, resume=True)
    assert lib.sample_q == 50 and lib.epochs == 2
    with pytest.raises(UsageError, match="cannot change seed"):
        train(replace(lib, seed=1, epochs=3), resume=True)


def test_a_new_run_into_a_folder_holding_one_is_refused(folder, tmp_path):
    out = tmp_path / "r"
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('hidden = [16, 16]\n[encoder_args]\nn_resblocks = 1\nn_feats = 8\n')
    args = ["train", "-q", "--out", str(out), "--epochs", "1", "--workers", "0", "--data",
            str(folder), "--config", str(tiny), "--batch-size", "2", "--patch-size", "12",
            "--scale-max", "2", "--sample-q", "50"]
    assert runner.invoke(app, args).exit_code == 0
    before = (out / "last.pth").read_bytes()
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert res.output.strip() == f"error: {out} already holds a training run (last.pth): give " \
        "--resume to continue it, or another --out for a new run"
    assert (out / "last.pth").read_bytes() == before


def test_every_config_key_is_either_recipe_or_may_change_on_resume():
    """A new TrainConfig field is recipe (refused on resume) unless listed; this pins the lists
    (and resume_config's docstring) so that adding one is a decision."""
    from dataclasses import fields

    from liif_cli.tasks.train.recipe import RESUME_MAY_CHANGE, resume_config

    recipe = {f.name for f in fields(TrainConfig)} - RESUME_MAY_CHANGE - {"out"}
    assert recipe == {"data", "encoder", "encoder_args", "hidden", "decoder", "batch_size",
                      "patch_size", "scale_min", "scale_max", "sample_q", "repeat", "seed",
                      "init", "freeze_encoder", "distill", "distill_weight", "degrade",
                      "degrade_ranges", "ema"}
    for k in recipe | RESUME_MAY_CHANGE:
        assert re.search(rf"\b{k}\b", resume_config.__doc__), k
    saved = TrainConfig(data="d", hidden=(16, 16)).as_dict()
    merged = resume_config(saved, {"hidden": (16, 16), "lr": 1e-3, "decoder": None}, run="r")
    assert merged["lr"] == 1e-3 and merged["hidden"] == (16, 16) and merged["decoder"] is None


def test_distill_pulls_towards_the_teacher_on_its_latent_or_its_own(folder, tmp_path):
    """--distill T: at the first step of a run started from T itself the student *is* the
    teacher, so the teacher term is 0, whether the teacher decodes the student's frozen latent
    (shared) or encodes the input itself; and the option's checks."""
    teacher = tmp_path / "t"
    train(TrainConfig(data=str(folder), out=str(teacher), **{**TINY, "epochs": 1}))
    t_pth = str(teacher / "last.pth")
    logs = {}
    for name, freeze in (("shared", True), ("own", False)):
        cfg = TrainConfig(data=str(folder), out=str(tmp_path / name), init=t_pth,
                          freeze_encoder=freeze, distill=t_pth, distill_weight=1.0,
                          lr=1e-12, **{**TINY, "epochs": 1, "encoder_args": {}})
        train(cfg)
        recs = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
        logs[name] = [r for r in recs if r["kind"] == "step"]
    for name, steps in logs.items():
        assert steps and steps[0]["loss_teacher"] < 1e-6 < steps[0]["loss"], (name, steps)
    from liif_cli.runtime.weights import load_model
    from liif_cli.tasks.train.loop import _build_teacher

    student = load_model(t_pth)
    assert _build_teacher(t_pth, student, torch.device("cpu"))[1] is False  # encoder trains
    student.encoder.requires_grad_(False)
    assert _build_teacher(t_pth, student, torch.device("cpu"))[1] is True
    with pytest.raises(UsageError, match="must be in \\(0, 1\\]"):
        config_from(None, {"data": "x", "distill": "default", "distill_weight": 0})
    with pytest.raises(UsageError, match="without --distill"):
        config_from(None, {"data": "x", "distill_weight": 0.3})
    res = runner.invoke(app, ["train", "--data", str(folder), "--out", str(tmp_path / "c"),
                              "--distill", "default", "--distill-weight", "2"])
    assert res.exit_code == 2 and "--distill-weight must be in (0, 1]" in res.output, res.output


# ----------------------------------------------------------------------------------------------
# on GPUs and Macs (issue 25): no autocast in fp32, few host syncs, one loader, agreed stops

def test_an_fp32_step_enters_no_autocast_region(folder, tmp_path, monkeypatch):
    """torch 2.3-2.5 reject torch.autocast("mps", enabled=False): fp32 must not build one."""
    import liif_cli.tasks.train.loop as tr

    def refuse(*a, **k):
        raise RuntimeError("User specified an unsupported autocast device_type 'mps'")

    monkeypatch.setattr(torch, "autocast", refuse)
    monkeypatch.setattr(tr.torch, "autocast", refuse)
    cfg = TrainConfig(data=str(folder), out=str(tmp_path / "run"), **{**TINY, "epochs": 1})
    assert train(cfg)["stopped"] is None


def test_the_loop_waits_for_the_device_only_every_few_steps(folder, tmp_path, monkeypatch):
    import liif_cli.tasks.train.loop as tr

    reads = []  # a value of the step read on the host: the loss or a flag computed from it

    def spy(name):
        real = getattr(torch.Tensor, name)

        def read(t):
            if t.grad_fn is not None or (t.dtype == torch.bool and t.dim() == 0):
                reads.append(name)
            return real(t)
        monkeypatch.setattr(torch.Tensor, name, read)

    spy("item")
    spy("__bool__")
    steps = []
    cfg = TrainConfig(data=str(folder), out=str(tmp_path / "run"),
                      **{**TINY, "epochs": 1, "repeat": 16})  # (no --val-data: no validation)
    train(cfg, on_event=lambda e: steps.append(e.loss) if e.kind == "step" else None)
    assert len(steps) == 24 and all(isinstance(x, float) for x in steps)
    # checks at steps 1, 10, 20, 24: loss, finiteness (and nothing else per step)
    assert len(reads) <= 4 * 2 < len(steps), len(reads)
    assert tr.CHECK_EVERY == 10


def test_the_loaders_workers_are_forked_once_per_run(folder, tmp_path, monkeypatch):
    made = []
    real = torch.utils.data.DataLoader

    def spy(*a, **k):
        made.append(k.get("persistent_workers"))
        return real(*a, **k)

    monkeypatch.setattr(torch.utils.data, "DataLoader", spy)
    cfg = TrainConfig(data=str(folder), out=str(tmp_path / "run"),
                      **{**TINY, "epochs": 3, "workers": 1})
    train(cfg)
    assert made == [True]


def _children() -> set[int]:
    """The pids of this process's live multiprocessing children (DataLoader workers)."""
    import multiprocessing

    return {p.pid for p in multiprocessing.active_children()}


def _died(pid: int, within: float) -> bool:
    """Whether child `pid` ends within `within` seconds (left unreaped, for its owner)."""
    import time

    end = time.monotonic() + within
    while time.monotonic() < end:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.01)
    return False


def test_a_sigterm_to_the_process_group_leaves_the_workers_and_the_run_saves(folder, tmp_path):
    """SIGTERM to the trainer and its DataLoader workers alike (Slurm, `kill` of the group):
    the workers ignore it, the trainer saves where it stopped and reports exit 143."""
    out = tmp_path / "run"
    got, before = {}, _children()  # any other test's left alone

    def terminate(ev):  # at step 2, as `kill -TERM -PGID` does
        if ev.kind == "step" and ev.iteration == 2:
            got["workers"] = sorted(_children() - before)
            os.kill(os.getpid(), signal.SIGTERM)
            for pid in got["workers"]:
                os.kill(pid, signal.SIGTERM)
            got["died"] = [pid for pid in got["workers"] if _died(pid, 0.5)]

    summary = train(TrainConfig(data=str(folder), out=str(out), **{**TINY, "workers": 1}),
                    on_event=terminate)
    assert len(got["workers"]) == 1 and got["died"] == []
    assert summary["exit_code"] == 143 and "SIGTERM at epoch 1, iteration 2/3" in \
        summary["stopped"]
    ck = torch.load(out / "last.pth", weights_only=True)
    assert (ck["epoch"], ck["train_state"]["iteration"]) == (0, 2)


def test_a_worker_killed_during_a_stop_ends_in_the_stop_not_an_error(folder, tmp_path):
    """A worker that dies anyway once a stop was asked for (killed on its own): the run stops
    as asked and saves the steps done, instead of torch's "DataLoader worker ... is killed"."""
    out, before = tmp_path / "run", _children()

    def terminate(ev):
        if ev.kind == "step" and ev.iteration == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            (pid,) = _children() - before
            os.kill(pid, signal.SIGKILL)
            assert _died(pid, 10)  # torch's SIGCHLD handler raises here, in the main thread

    summary = train(TrainConfig(data=str(folder), out=str(out), **{**TINY, "workers": 1}),
                    on_event=terminate)
    assert summary["exit_code"] == 143 and "iteration 2/3" in summary["stopped"]
    ck = torch.load(out / "last.pth", weights_only=True)
    assert (ck["epoch"], ck["train_state"]["iteration"]) == (0, 2)


@pytest.mark.slow
def test_liif_train_stopped_by_sigterm_to_its_process_group_saves_and_resumes(folder, tmp_path):
    """`liif train --workers 1`, SIGTERM to its whole process group (what Slurm's preemption
    or a session's stop sends) after its first logged step: exit 143, one line, last.pth at
    the step it stopped at; --resume continues from that step."""
    import time

    tiny = tmp_path / "tiny.toml"
    tiny.write_text('hidden = [16, 16]\n[encoder_args]\nn_resblocks = 1\nn_feats = 8\n')
    out = tmp_path / "run"
    # 3 images x repeat 200 / batch 2: 300 steps an epoch, the first logged at step 10
    p = subprocess.Popen([sys.executable, "-m", "liif_cli", "train", "--data", str(folder),
                          "--out", str(out), "--config", str(tiny), "--epochs", "2",
                          "--batch-size", "2", "--repeat", "200", "--patch-size", "12",
                          "--scale-max", "2", "--sample-q", "50", "--workers", "1",
                          "--device", "cpu", "-q"], start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        metrics, end = out / "metrics.jsonl", time.monotonic() + 120
        while not (metrics.exists() and metrics.read_text().strip()) and p.poll() is None \
                and time.monotonic() < end:
            time.sleep(0.01)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 143, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and stdout == "", stderr
    stopped = re.fullmatch(r"stopped by signal SIGTERM at epoch (\d+), iteration (\d+)/300; "
                           r"resume with --resume", lines[0])
    assert stopped, lines[0]
    epoch, done = int(stopped[1]), int(stopped[2])
    ck = torch.load(out / "last.pth", weights_only=True)
    assert (ck["epoch"], ck["train_state"]["iteration"]) == (epoch - 1, done)
    assert (epoch - 1) * 300 + done >= 10
    first = []

    def interrupt(ev):  # the resumed run's first step, then a Ctrl-C
        if ev.kind == "step" and not first:
            first.append(ev.iteration)
            os.kill(os.getpid(), signal.SIGINT)

    summary = train(config_from(None, {"out": str(out), "workers": 0}, resume=True),
                    resume=True, on_event=interrupt)
    assert first == [done + 1] and summary["exit_code"] == 130
    assert torch.load(out / "last.pth", weights_only=True)["train_state"]["iteration"] == done + 1


def _agree_rank(rank: int, store_path: str, signalled: int, out) -> None:
    import torch.distributed as dist

    from liif_cli.tasks.train.distributed import StopSignal

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=2)
    stop = StopSignal()
    first = stop.agree(2, torch.device("cpu"))  # nobody signalled yet
    if rank == signalled:
        stop.signal = 15  # SIGTERM reaches one rank only
    second = stop.agree(2, torch.device("cpu"))
    out.put((rank, first, second, stop.stopping))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_agree_to_stop_when_one_is_signalled(tmp_path):
    """Over gloo, two processes: the rank without the signal stops at the same step."""
    ctx = torch.multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_agree_rank, args=(r, str(tmp_path / "store"), 1, out))
             for r in range(2)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert got == [(0, False, True, True), (1, False, True, True)]


SIGNAL_ONE_RANK = """
import os, signal, sys
import liif_cli.tasks.train.loop as tr
from liif_cli.cli import main
if os.environ["RANK"] == "1":  # SIGTERM reaches rank 1 alone, during its second step
    real, calls = tr.F.l1_loss, []
    def l1(a, b):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(a, b)
    tr.F.l1_loss = l1
sys.argv = ["liif", "train", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_signal_on_one_ddp_rank_stops_every_rank_and_rank_0_saves(folder, tmp_path):
    """torchrun, gloo, 2 ranks: rank 1 alone is signalled; both stop at the next agreement
    (step CHECK_EVERY) instead of rank 0 waiting alone in the gradient all-reduce."""
    driver = tmp_path / "driver.py"
    driver.write_text(SIGNAL_ONE_RANK)
    tiny = tmp_path / "tiny.toml"
    tiny.write_text('hidden = [16, 16]\n[encoder_args]\nn_resblocks = 1\nn_feats = 8\n')
    out = tmp_path / "run"
    # 3 images x repeat 8 / global batch 2: 12 steps an epoch, the stop agreed at step 10
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", str(driver), "--data", str(folder), "--out",
                        str(out), "--config", str(tiny), "--epochs", "2", "--batch-size", "2",
                        "--repeat", "8", "--patch-size", "12", "--scale-max", "2",
                        "--sample-q", "50", "--workers", "0", "--device", "cpu", "--quiet"],
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                       text=True, timeout=240)
    ck = torch.load(out / "last.pth", weights_only=True)
    assert (ck["epoch"], ck["train_state"]["iteration"]) == (0, 10), r.stderr[-3000:]


# ----------------------------------------------------------------------------------------------
# --ema: a moving average of the weights, validated and saved as the model

def _record_steps(monkeypatch) -> list[list[torch.Tensor]]:
    """The trained parameters before the first optimizer step and after each one."""
    seen: list[list[torch.Tensor]] = []
    step = torch.optim.Adam.step

    def recording(self, *a, **k):
        params = [p for g in self.param_groups for p in g["params"]]
        if not seen:
            seen.append([p.detach().clone() for p in params])
        out = step(self, *a, **k)
        seen.append([p.detach().clone() for p in params])
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    return seen


def test_ema_averages_the_trained_weights_and_changes_nothing_else(folder, tmp_path, monkeypatch):
    from liif_cli.data.samples import load_rgb_uint8
    from liif_cli.runtime.weights import load_checkpoint
    from liif_cli.tasks.train import validate

    base = dict(data=str(folder), val_data=str(folder), **{**TINY, "epochs": 1})
    train(TrainConfig(out=str(tmp_path / "off"), **base))  # the default: no average
    off = torch.load(tmp_path / "off" / "last.pth", weights_only=True)
    assert "ema" not in off["train_state"] and off["liif_cli"]["config"]["ema"] == 0.0
    seen = _record_steps(monkeypatch)
    events = []
    train(TrainConfig(out=str(tmp_path / "on"), ema=0.5, **base), on_event=events.append)
    last = torch.load(tmp_path / "on" / "last.pth", weights_only=True)
    raw, state = last["train_state"]["ema"].pop("raw"), last["train_state"]["ema"]
    assert state == {"decay": 0.5, "updates": 3}
    # the average changes neither the training nor the optimizer: raw weights as without it
    assert raw.keys() == off["model"]["sd"].keys()
    for k, v in off["model"]["sd"].items():
        assert torch.equal(raw[k], v), k
    # every saved model is the average: by hand, warm-up d = min(0.5, (1 + n) / (10 + n))
    ema = seen[0]
    for n, w in enumerate(seen[1:]):
        d = min(0.5, (1 + n) / (10 + n))
        ema = [d * e + (1 - d) * x for e, x in zip(ema, w)]
    model = load_checkpoint(tmp_path / "on" / "best.pth")
    trained = [k for k, p in model.named_parameters() if p.requires_grad]
    assert len(trained) == len(ema) < len(raw)  # EDSR's mean shifts are frozen: copied
    best = weights(tmp_path / "on" / "best.pth")
    for name, e in zip(trained, ema):
        assert torch.allclose(best[name], e, atol=1e-6), name
        assert not torch.allclose(best[name], raw[name], atol=1e-6), name
    for k in raw:
        assert torch.equal(best[k], last["model"]["sd"][k]), k
        if k not in trained:
            assert torch.equal(best[k], raw[k]), k
    # and it is what validation measured
    imgs = {p.relative_to(folder).as_posix(): load_rgb_uint8(p)
            for p in training_images(folder)[:TINY["val_images"]]}
    val = next(e for e in events if e.kind == "val").psnr
    assert val == pytest.approx(validate(model, imgs, (2.0,)), abs=1e-9)


def test_a_resumed_ema_run_continues_its_average_exactly(folder, tmp_path):
    base = dict(data=str(folder), ema=0.9, **TINY)  # 2 epochs of 3 steps
    train(TrainConfig(out=str(tmp_path / "full"), **base))
    part = TrainConfig(out=str(tmp_path / "part"), **{**base, "epochs": 1})
    train(part)
    train(replace(part, epochs=2), resume=True)
    a = torch.load(tmp_path / "full" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.pth", weights_only=True)
    assert a["train_state"]["ema"]["updates"] == b["train_state"]["ema"]["updates"] == 6
    for x, y in ((a["model"]["sd"], b["model"]["sd"]),
                 (a["train_state"]["ema"]["raw"], b["train_state"]["ema"]["raw"])):
        for k in x:
            assert torch.allclose(x[k], y[k], atol=1e-6), k
    with pytest.raises(UsageError, match="cannot change ema: .* with 0.9, this asks for 0.5"):
        config_from(None, {"out": part.out, "ema": 0.5}, resume=True)


def test_a_run_made_before_ema_can_turn_it_on_at_resume(folder, tmp_path):
    """A run whose config has no `ema` key (made by an older liif-cli) resumed with --ema:
    the average starts from the weights it resumes with."""
    out = tmp_path / "old"
    train(TrainConfig(data=str(folder), out=str(out), **{**TINY, "epochs": 1}))
    ck = torch.load(out / "last.pth", weights_only=True)
    del ck["liif_cli"]["config"]["ema"]
    torch.save(ck, out / "last.pth")
    train(config_from(None, {"out": str(out), "epochs": 2, "ema": 0.9}, resume=True),
          resume=True)
    ck = torch.load(out / "last.pth", weights_only=True)
    assert ck["liif_cli"]["config"]["ema"] == 0.9 and ck["train_state"]["ema"]["updates"] == 3
    raw = ck["train_state"]["ema"]["raw"]
    assert any(not torch.equal(v, raw[k]) for k, v in ck["model"]["sd"].items())


def test_ema_with_a_frozen_encoder_keeps_the_encoder_as_it_is(folder, tmp_path):
    train(TrainConfig(data=str(folder), out=str(tmp_path / "a"), **{**TINY, "epochs": 1}))
    init = weights(tmp_path / "a" / "last.pth")
    train(TrainConfig(data=str(folder), out=str(tmp_path / "b"), init=str(tmp_path / "a" /
                      "last.pth"), freeze_encoder=True, ema=0.5, lr=1e-3,
                      **{**TINY, "epochs": 1, "encoder_args": {}}))
    ck = torch.load(tmp_path / "b" / "last.pth", weights_only=True)
    sd, raw = ck["model"]["sd"], ck["train_state"]["ema"]["raw"]
    for k in sd:
        if k.startswith("encoder."):
            assert torch.equal(sd[k], init[k]) and torch.equal(raw[k], init[k]), k
        else:
            assert not torch.equal(sd[k], raw[k]) and not torch.equal(sd[k], init[k]), k


def test_bad_ema_values_are_refused(tmp_path):
    for value in ("1", "-0.1", "nan", "1.5"):
        res = runner.invoke(app, ["train", "--data", str(tmp_path), "--out",
                                  str(tmp_path / "r"), "--ema", value])
        assert res.exit_code == 2 and "--ema must be in [0, 1)" in res.output, (value, res.output)
    toml = tmp_path / "c.toml"
    toml.write_text('data = "x"\nema = "0.999"\n')
    with pytest.raises(UsageError, match="--ema must be in"):
        config_from(str(toml), {})
    assert config_from(None, {"data": "x", "ema": 0.999}).ema == 0.999
    assert "--ema" in runner.invoke(app, ["train", "--help"]).output


def test_options_of_a_wrong_type_or_out_of_range_are_refused_before_any_work(tmp_path):
    """A TOML value of the wrong type, or a value no run can use, is one line and exit 2 before
    anything is decoded or trained (not a TypeError, nor a ZeroDivisionError after an epoch)."""
    for key, value, msg in [
        ("epochs", '"ten"', "epochs must be a whole number"),
        ("epochs", "2.5", "epochs must be a whole number"),
        ("batch_size", "true", "batch_size must be a whole number"),
        ("lr", '"1e-4"', "lr must be a number"),
        ("lr_milestones", "5", "lr_milestones must be a list of whole numbers"),
        ("val_scales", '["x"]', "val_scales must be a list of numbers"),
        ("hidden", "16", "hidden must be a list of whole numbers"),
        ("encoder_args", "3", "encoder_args must be a table"),
        ("device", "5", "device must be a string"),
        ("freeze_encoder", '"yes"', "freeze_encoder must be true or false"),
    ]:
        toml = tmp_path / "c.toml"
        toml.write_text(f'data = "x"\n{key} = {value}\n')
        with pytest.raises(UsageError, match=msg):
            config_from(str(toml), {})
    for key, value, msg in [
        ("val_every", 0, "--val-every must be at least 1"),
        ("val_images", 0, "--val-images must be at least 1"),
        ("workers", -1, "--workers must be 0"),
        ("save_every", -1, "--save-every must be 0"),
        ("seed", -1, "--seed must be"),
        ("lr_gamma", 0.0, "--lr-gamma must be a positive number"),
        ("lr_milestones", (0, 5), "--lr-milestones must be epochs"),
        ("val_scales", (0.0,), "val_scales must be positive"),
        ("hidden", (16, 0), "hidden widths must be at least 1"),
    ]:
        with pytest.raises(UsageError, match=msg):
            config_from(None, {"data": "x", key: value})
    # folders as Paths (a library caller's) are fine, kept as strings
    assert config_from(None, {"data": tmp_path, "out": tmp_path / "r"}).data == str(tmp_path)
    for args in (["--val-every", "0"], ["--workers", "-1"], ["--seed", "-1"]):
        res = runner.invoke(app, ["train", "-q", "--data", str(tmp_path), "--out",
                                  str(tmp_path / "r"), *args])
        assert res.exit_code == 2 and res.output.startswith("error: --"), (args, res.output)
        assert not (tmp_path / "r").exists()


def test_a_validation_image_too_small_for_a_scale_is_refused_before_training(folder, tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    Image.fromarray(photo_like(40, 44)).save(val / "a.png")
    Image.fromarray(photo_like(12, 30)).save(val / "b.png")  # ×2: 12 px, shaved 8 a side
    events = []
    cfg = TrainConfig(data=str(folder), val_data=str(val), out=str(tmp_path / "r"), **TINY)
    with pytest.raises(DataError, match=r"validation image b\.png \(30×12\) is too small for "
                                         r"×2 .*needs at least 17 px"):
        train(cfg, on_event=events.append)
    assert not any(e.kind == "step" for e in events)  # no epoch of work lost to it
    train(replace(cfg, val_images=1))  # the first image alone is fine


def test_resuming_a_finished_run_says_so_and_trains_nothing(folder, tmp_path):
    out = tmp_path / "r"
    train(TrainConfig(data=str(folder), out=str(out), **{**TINY, "epochs": 1}))
    before = (out / "last.pth").read_bytes(), (out / "metrics.jsonl").read_bytes()
    for epochs in ([], ["--epochs", "1"]):
        res = runner.invoke(app, ["train", "--out", str(out), "--resume", *epochs],
                            env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        assert f"nothing to do: {out} has trained 1 epoch (--epochs 1); give a larger " \
               "--epochs to train on" in res.output, res.output
        assert "done" not in res.output and "decoding" not in res.output
    assert ((out / "last.pth").read_bytes(), (out / "metrics.jsonl").read_bytes()) == before
    res = runner.invoke(app, ["train", "-q", "--out", str(out), "--resume", "--epochs", "2"])
    assert res.exit_code == 0 and steps(out / "last.pth") == 6, res.output


def test_init_records_its_architecture_and_refuses_another(folder, tmp_path):
    """A fine-tune trains --init's network: the run records that architecture (so --resume and
    the checkpoint's config tell the truth), and an option asking for another is refused."""
    first = tmp_path / "first"
    train(TrainConfig(data=str(folder), out=str(first), **{**TINY, "epochs": 1}))
    arch = ("encoder_args", "hidden")
    plain = {k: v for k, v in TINY.items() if k not in arch}  # the architecture left out
    out = tmp_path / "ft"
    cfg = TrainConfig(data=str(folder), out=str(out), init=str(first / "last.pth"),
                      **{**plain, "epochs": 1})
    train(cfg)
    saved = torch.load(out / "last.pth", weights_only=True)["liif_cli"]["config"]
    assert saved["encoder"] == "edsr-baseline" and saved["hidden"] == [16, 16]
    assert saved["encoder_args"] == {"n_resblocks": 1, "n_feats": 8}
    res = runner.invoke(app, ["train", "-q", "--out", str(out), "--resume", "--epochs", "2",
                              "--encoder", "edsr-baseline"])
    assert res.exit_code == 0, res.output
    for change, name in [({"encoder": "rdn"}, "--encoder"), ({"hidden": (32, 32)}, "hidden"),
                         ({"encoder_args": {"n_feats": 16}}, "encoder_args")]:
        with pytest.raises(UsageError, match=rf"^{name} .* differs from --init"):
            train(replace(cfg, out=str(tmp_path / f"x-{name}"), **change))
        assert not (tmp_path / f"x-{name}").exists()


def test_init_from_a_file_that_is_no_checkpoint_says_so(folder, tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("garbage\n")  # a text file: its first byte is no pickle opcode torch allows
    res = runner.invoke(app, ["train", "-q", "--data", str(folder), "--out", str(tmp_path / "r"),
                              "--init", str(bad), "--workers", "0"])
    assert res.exit_code == 1
    assert res.output.strip() == f"error: {bad} is not a readable PyTorch checkpoint " \
        "(unrecognised content: not a torch.save file)", res.output


def test_a_run_folder_that_cannot_be_made_is_refused_before_any_work(folder, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    for out, msg in [(afile, f"--out {afile} is a file, not a folder"),
                     (afile / "run", f"cannot make the run folder {afile / 'run'}: {afile} is a "
                                     "file, not a folder")]:
        res = runner.invoke(app, ["train", "-q", "--data", str(folder), "--out", str(out),
                                  "--workers", "0"])
        assert res.exit_code == 2 and res.output.strip() == f"error: {msg}", res.output


def test_a_damaged_last_pth_names_the_snapshot_to_resume_from(folder, tmp_path):
    """last.pth cut short: one line that names the newest snapshot; copying it over last.pth
    resumes (from the snapshot's epoch)."""
    out = tmp_path / "r"
    train(TrainConfig(data=str(folder), out=str(out), **{**TINY, "epochs": 2, "save_every": 1}))
    last = out / "last.pth"
    last.write_bytes(last.read_bytes()[:5000])
    res = runner.invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "3"])
    assert res.exit_code != 0 and res.output.count("\n") == 1, res.output
    assert "last.pth is not a readable PyTorch checkpoint" in res.output
    assert "copy epoch-2.pth over last.pth and --resume again" in res.output
    shutil.copyfile(out / "epoch-2.pth", last)
    res = runner.invoke(app, ["train", "-q", "--out", str(out), "--resume", "--epochs", "3"])
    assert res.exit_code == 0 and steps(last) == 9, res.output


def test_milestones_that_never_fire_are_a_note(folder, tmp_path):
    """A fine-tune of 2 epochs under the paper's milestones (200, 400, ...) keeps its lr: one
    note says so; a milestone inside the run gives none."""
    toml = tmp_path / "tiny.toml"
    toml.write_text("hidden = [16, 16]\npatch_size = 12\nscale_max = 2.0\nsample_q = 50\n"
                    "batch_size = 2\nrepeat = 2\nworkers = 0\nepochs = 2\n"
                    "[encoder_args]\nn_resblocks = 1\nn_feats = 8\n")
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # pyproject's filter hides this note from the others
        res = runner.invoke(app, ["train", "--config", str(toml), "--data", str(folder),
                                  "--out", str(tmp_path / "a")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert res.output.count("note: no --lr-milestones epoch (200,400,600,800) falls in this "
                            "run's epochs 1-2: the learning rate stays where it is") == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(TrainConfig(data=str(folder), out=str(tmp_path / "b"),
                          **{**TINY, "lr_milestones": (1,)}))
    assert not [w for w in caught if "lr-milestones" in str(w.message)]


def test_an_unreadable_training_image_is_skipped_with_the_small_ones(folder, tmp_path):
    """A damaged photo in --data is left out and named in the start line (it stopped the run);
    a wrong --val-data is named as such before any training image is decoded."""
    good = (folder / "0.png").read_bytes()
    (folder / "cut.png").write_bytes(good[:len(good) // 3])
    events = []
    train(TrainConfig(data=str(folder), out=str(tmp_path / "r"), **{**TINY, "epochs": 1}),
          on_event=events.append)
    start = next(e.message for e in events if e.kind == "start")
    assert start.startswith("3 training images (1 smaller than 24px skipped, e.g. small.png) "
                            "(1 unreadable skipped, e.g. cut.png)"), start
    events.clear()
    with pytest.raises(DataError, match=r"^--val-data: data folder not found: .*nope$"):
        train(TrainConfig(data=str(folder), out=str(tmp_path / "v"), val_data=str(tmp_path / "nope"),
                          **TINY), on_event=events.append)
    assert not [e for e in events if e.kind == "load"]
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "cut.png").write_bytes(good[:100])
    with pytest.raises(DataError, match=r"^no training image could be read \(cannot read image "):
        train(TrainConfig(data=str(only_bad), out=str(tmp_path / "b"), **TINY))


def test_recipes_that_could_only_fail_later_are_refused_first(folder, tmp_path):
    """Each of these trained (an epoch at most), then failed as an internal error or silently
    did less: more query pixels than the smallest crop holds (a crash at a random step), an
    infinite scale, an empty --out (the current folder), no MLP widths, no validation scales."""
    base = dict(data=str(folder), out=str(tmp_path / "r"), **TINY)
    cases = [(dict(sample_q=145), r"--sample-q 145 is more than the 144 pixels of the smallest "
                                  r"HR crop \(12·1 px a side\)"),
             (dict(scale_min=0.01), "--sample-q 50 is more than the 0 pixels"),
             (dict(scale_max=float("inf")), "both finite"),
             (dict(out=""), "--out is empty"),
             (dict(hidden=()), "hidden must list"),
             (dict(val_data=str(folder), val_scales=()), "val_scales is empty")]
    for kw, message in cases:
        with pytest.raises(UsageError, match=message):
            train(TrainConfig(**{**base, **kw}))
    assert not (tmp_path / "r").exists() and not (Path.cwd() / "last.pth").exists()
    bad = tmp_path / "latin.toml"
    bad.write_bytes(b"# caf\xe9\nepochs = 2\n")
    r = runner.invoke(app, ["train", "--config", str(bad), "--data", str(folder)])
    assert r.exit_code == 2 and r.output == (f"error: cannot read config {bad}: not UTF-8 text "
                                             "(a TOML file is)\n"), r.output


def test_a_run_that_failed_before_saving_leaves_no_log_for_the_next_to_append_to(
        folder, tmp_path):
    out = tmp_path / "r"
    cfg = TrainConfig(data=str(folder), out=str(out), **{**TINY, "lr": 1e30, "repeat": 20})
    with pytest.raises(TrainingError, match="no checkpoint was saved yet") as e:
        train(cfg)  # diverges in its first epoch
    assert "last.pth" not in str(e.value) and not (out / "last.pth").exists()
    train(replace(cfg, lr=1e-4, repeat=1, epochs=1))
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["lr"] < 1 for r in steps if r["kind"] == "step"), steps  # the new run's only
    # --plot: a line cut short (a kill, a full disk) is left out; training options are refused
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "epo')
    r = runner.invoke(app, ["train", "--plot", str(out), "-q"])
    assert r.exit_code == 0 and r.output == "" and (out / "curves.png").exists(), r.output
    r = runner.invoke(app, ["train", "--plot", str(out), "--epochs", "5"])
    assert r.exit_code == 2 and "leave out --epochs" in r.output, r.output


def test_sigterm_before_the_loop_stops_as_ctrl_c_does(folder, tmp_path, monkeypatch):
    """SIGTERM while the images were decoded or --init loaded killed the process by the signal,
    silently (Ctrl-C there said "interrupted", exit 130)."""
    import liif_cli.tasks.train as train_pkg

    def decoding(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # a cluster's preemption, before the first step
        raise AssertionError("not stopped")

    monkeypatch.setattr(train_pkg, "train", decoding)
    r = runner.invoke(app, ["train", "--data", str(folder), "--out", str(tmp_path / "r")])
    assert r.exit_code == 143 and r.output.strip().endswith("interrupted"), r.output
