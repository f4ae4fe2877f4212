"""scripts/gpu_train.sh and its helpers against the lent GPU machine's limits (on the CPU):
one command within its budget, at most 8 returned files of at most 16 MiB, checkpoints in $OUT
while it runs, a returned last.pth that resumes, a carried pack measured against 64 MiB."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, photo_like
from PIL import Image

from liif_cli.runtime.weights import load_model, model_from_spec
from liif_cli.tasks.train import TrainConfig, train

MiB = 2**20


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # by path: scripts/ is not put on sys.path
    return mod


gpu_out = _script("gpu_out")
pack = _script("pack_gpu_data")


def _images(folder: Path, n: int, hw=(40, 44), seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(photo_like(*hw, seed=seed + i)).save(folder / f"{i}.png")
    return folder


def _env(tmp_path: Path, **kw: str) -> dict[str, str]:
    """The script's documented interface in a tiny CPU setting (a tiny model from --init)."""
    from liif_cli.model import build_model
    from liif_cli.runtime.weights import save_checkpoint

    init = tmp_path / "tiny.pth"
    cfg = TrainConfig(encoder_args={"n_resblocks": 1, "n_feats": 8}, hidden=(16, 16))
    save_checkpoint(build_model(cfg.model_config()), init)
    return {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"),
            "DATA": str(_images(tmp_path / "hr", 4)),
            "VAL": str(_images(tmp_path / "val", 2, (36, 40), seed=10)),
            "INIT": str(init), "RESUME": str(tmp_path / "no-resume.pth"),
            "DEVICE": "cpu", "PRECISION": "fp32", "BATCH": "2", "WORKERS": "0",
            "REPEAT": "4", "SAVE_S": "4", "RESERVE_S": "20", "GRACE_S": "5",
            "CHECK_ARGS": "--only env --tiny", "OMP_NUM_THREADS": "1",
            "EXTRA": "--patch-size 12 --scale-max 2 --sample-q 50", **kw}


def _resumes(tmp_path: Path, last: Path) -> dict:
    """`liif train --resume` from a returned last.pth, one more epoch; the new last.pth."""
    run = tmp_path / "again"
    run.mkdir()
    shutil.copy(last, run / "last.pth")
    epoch = torch.load(last, weights_only=True)["epoch"]
    r = subprocess.run([sys.executable, "-m", "liif_cli", "train", "--resume", "--out", str(run),
                        "--epochs", str(epoch + 1), "-q"], env={
                            **os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return torch.load(run / "last.pth", weights_only=True)


@pytest.mark.slow
def test_the_gpu_command_fits_the_device_limits_here_in_a_tiny_setting(tmp_path):
    """The whole command on the CPU: done within BUDGET_S, $OUT within the limits, fp16
    weights, a resumable last.pth, PSNR before and after in the summary."""
    if shutil.which("timeout") is None:
        pytest.skip("needs coreutils' timeout")
    budget = 60
    env = _env(tmp_path, BUDGET_S=str(budget))
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_train.sh")], env=env,
                       capture_output=True, text=True, timeout=budget + 60)
    took = time.monotonic() - t0
    out = tmp_path / "out"
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    # the script's own clock: every step has a timeout within the budget (+ a kill's 2 s)
    assert took <= budget + 5, f"{took:.0f}s for a budget of {budget}s"
    assert gpu_out.check_limits(out) == []
    assert sorted(p.name for p in out.iterdir()) == [
        "last.pth", "log.txt", "metrics.jsonl", "model.pth", "summary.txt"]
    assert r.stdout.count("[gpu_out] exported") >= 2  # every SAVE_S while training
    model = torch.load(out / "model.pth", weights_only=True)
    assert {v.dtype for v in model["model"]["sd"].values()} == {torch.float16}
    assert set(model) == {"model", "epoch", "liif_cli"} and model["liif_cli"]["steps"] > 0
    assert load_model(out / "model.pth").card.meta["steps"] == model["liif_cli"]["steps"]
    summary = (out / "summary.txt").read_text()
    assert "PSNR before: x2 " in summary and "PSNR after : x2 " in summary, summary
    assert "env        ok" in (out / "log.txt").read_text()  # the device check ran
    again = _resumes(tmp_path, out / "last.pth")
    assert again["liif_cli"]["steps"] > model["liif_cli"]["steps"]


@pytest.mark.slow
def test_a_run_cut_off_hard_has_already_returned_its_checkpoints(tmp_path):
    """SIGKILL to the whole command mid-training (the tool's limit, a machine taken back):
    $OUT still holds whole, loadable files from the last minute's export, within the limits."""
    env = _env(tmp_path, BUDGET_S="120", CHECK="0")
    p = subprocess.Popen(["bash", str(REPO / "scripts" / "gpu_train.sh")], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    out, seen = tmp_path / "out", ""
    try:
        deadline = time.monotonic() + 100
        while seen.count("[gpu_out] exported") < 2 and time.monotonic() < deadline:
            seen += p.stdout.readline()
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert seen.count("[gpu_out] exported") >= 2, seen[-2000:]
    assert gpu_out.check_limits(out) == []
    assert load_model(out / "model.pth").card.meta["steps"] > 0
    assert torch.load(out / "last.pth", weights_only=True)["optimizer"]["sd"]["state"]


@pytest.mark.slow
def test_the_real_models_resume_state_comes_back_under_16_mib(tmp_path):
    """EDSR-baseline-LIIF with --ema: last.pth 24 MiB in fp32; returned: model.pth ~3 MiB
    (fp16) and last.pth ~12 MiB (weights fp16, Adam's moments bf16), which resumes with the
    moments back in fp32 within bf16's rounding."""
    run = tmp_path / "run"
    cfg = TrainConfig(data=str(_images(tmp_path / "hr", 2)), out=str(run), init="default",
                      ema=0.999, epochs=1, batch_size=1, repeat=1, patch_size=12,
                      scale_max=2.0, sample_q=50, workers=0, device="cpu")
    train(cfg)
    assert (run / "last.pth").stat().st_size > 16 * MiB  # why the compact copy exists
    assert gpu_out.export(run, tmp_path / "out") == []
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "out").iterdir()}
    assert sizes["model.pth"] < 3.5 * MiB and sizes["last.pth"] < 13 * MiB
    full = torch.load(run / "last.pth", weights_only=True)
    small = torch.load(tmp_path / "out" / "last.pth", weights_only=True)
    model = model_from_spec(full["model"])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    opt.load_state_dict(small["optimizer"]["sd"])  # as the trainer's resume does
    for i, p in enumerate(opt.param_groups[0]["params"]):
        for k in gpu_out.MOMENTS:
            got, want = opt.state[p][k], full["optimizer"]["sd"]["state"][i][k]
            assert got.dtype == torch.float32
            # bf16's relative rounding; below fp32's smallest normal number (subnormal moments,
            # far under Adam's eps) bf16 keeps fewer bits, hence the absolute floor there
            torch.testing.assert_close(got, want, rtol=2**-8,
                                       atol=torch.finfo(torch.float32).tiny)
    raw = small["train_state"]["ema"]["raw"]
    assert all(raw[k].dtype == torch.float16 for k in raw)


def test_check_limits_names_what_would_not_come_back(tmp_path):
    out = tmp_path / "out"
    (out / "a" / "b" / "c").mkdir(parents=True)
    assert gpu_out.check_limits(out) == []
    for i in range(8):
        (out / f"f{i}.txt").write_text("x")
    assert gpu_out.check_limits(out) == []  # 8 files: the most that come back
    with open(out / "big.pth", "wb") as f:
        f.truncate(16 * MiB + 1)
    (out / "a" / "b" / "c" / "deep.txt").write_text("x")
    (out / "odd name.txt").write_text("x")
    problems = gpu_out.check_limits(out)
    assert problems[0] == "11 files, more than 8"
    assert any(x.startswith("big.pth: 16.0 MiB") for x in problems)
    assert "a/b/c/deep.txt: too deep or an odd name" in problems
    assert "odd name.txt: too deep or an odd name" in problems


def test_the_pack_fills_its_budget_in_a_fixed_order_losslessly(tmp_path):
    src = _images(tmp_path / "src" / "set", 6)
    files = pack.shuffled(sorted(src.iterdir()), src.parent)
    assert files == pack.shuffled(list(reversed(files)), src.parent)  # fixed, not listing order
    one = pack.pack_one(files[0], tmp_path / "probe", Path("x.png")).stat().st_size
    n, size = pack.pack(files, src.parent, tmp_path / "dst", int(one * 3.5))
    got = sorted((tmp_path / "dst" / "set").iterdir())
    assert n == len(got) == 3 and size == sum(p.stat().st_size for p in got)
    assert [p.stem for p in got] == sorted(f.stem for f in files[:3])
    for p in got:  # WebP, pixels as they were
        with Image.open(p) as a, Image.open(src / f"{p.stem}.png") as b:
            assert a.format == "WEBP" and a.tobytes() == b.convert("RGB").tobytes()


def test_the_documented_exclude_line_lets_the_first_pack_run(tmp_path):
    """docs/gpu-run.md's `echo /.gpu_data/ >> .git/info/exclude` before any pack: the folder
    does not exist yet, and a directory-only pattern must still count as ignoring it."""
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    dst = tmp_path / ".gpu_data"
    assert pack._not_ignored(dst, tmp_path)
    with open(tmp_path / ".git" / "info" / "exclude", "a") as f:
        f.write("/.gpu_data/\n")
    assert not dst.exists() and not pack._not_ignored(dst, tmp_path)


def test_the_tracked_tree_leaves_room_for_the_gpu_pack():
    """What travels with every device run besides .gpu_data. Past 20 MiB the pack (56 MiB in
    all) keeps under 60% of the 48.7 MiB of training photos: make room before adding more."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    assert pack.tree_bytes() < 20 * MiB, f"tree {pack.tree_bytes() / MiB:.1f} MiB"
