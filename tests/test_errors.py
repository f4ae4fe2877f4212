"""The exit-code contract (liif_cli.errors): usage 2, failure 1, interrupted 130, terminated 143,
and an existing output is the same usage error for every command."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import photo_like
from PIL import Image
from typer.testing import CliRunner

from liif_cli import errors
from liif_cli.cli import app
from liif_cli.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    OutputExistsError,
    signal_exit_code,
)

runner = CliRunner()


def test_the_codes():
    assert (EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED) == (1, 2, 130, 143)
    assert signal_exit_code(signal.SIGTERM) == 143
    assert signal_exit_code(signal.SIGINT) == signal_exit_code(None) == 130
    assert errors.LiifError("x").exit_code == 1 and errors.DataError("x").exit_code == 1
    assert errors.UsageError("x").exit_code == 2
    e = OutputExistsError("out.png")
    assert str(e) == "output exists: out.png (pass --overwrite to replace it)"
    assert e.exit_code == 2
    assert isinstance(e, errors.ImageWriteError) and isinstance(e, errors.ExportError)


@pytest.fixture
def made(tmp_path, tiny_ckpt):
    img = tmp_path / "in.png"
    Image.fromarray(photo_like(12, 12)).save(img)
    (tmp_path / "taken.png").write_bytes(b"keep")
    (tmp_path / "taken.json").write_text("keep")
    (tmp_path / "taken.safetensors").write_bytes(b"keep")
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(photo_like(24, 24)).save(hr / "a.png")
    return tmp_path, tiny_ckpt


@pytest.mark.parametrize("command", ["upscale", "eval --json", "export"])
def test_an_existing_output_is_exit_2_everywhere(made, command):
    d, ckpt = made
    argv = {
        "upscale": ["upscale", str(d / "in.png"), "-s", "2", "-m", str(ckpt), "-o",
                    str(d / "taken.png")],
        "eval --json": ["eval", "--data", str(d / "hr"), "-m", str(ckpt), "--scales", "2", "--json",
                        str(d / "taken.json")],
        "export": ["export", str(ckpt), "-o", str(d / "taken.safetensors")],
    }[command]
    r = runner.invoke(app, argv)
    assert r.exit_code == 2, r.output
    assert "output exists" in r.output and "--overwrite" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert {p.read_bytes() for p in d.glob("taken.*")} == {b"keep"}


def test_train_stopped_by_sigterm_exits_143_and_by_sigint_130(tmp_path, monkeypatch):
    import liif_cli.tasks.train as tr

    data = tmp_path / "hr"
    data.mkdir()
    for i in range(2):
        Image.fromarray(photo_like(40, 44, seed=i)).save(data / f"{i}.png")
    recipe = tmp_path / "tiny.toml"  # the tiny model of tests/test_train.py
    recipe.write_text("hidden = [16, 16]\npatch_size = 12\nscale_max = 2.0\nsample_q = 50\n"
                      "batch_size = 2\nrepeat = 2\nworkers = 0\nepochs = 2\n"
                      "device = \"cpu\"\n[encoder_args]\nn_resblocks = 1\nn_feats = 8\n")
    real_train = tr.train
    sent = []

    def train_then_signal(cfg, *, resume=False, on_event=None):
        def on(ev):  # the signal arrives during the first epoch, as from a scheduler
            if ev.kind == "step" and not sent:
                sent.append(True)
                os.kill(os.getpid(), signum)
            if on_event:
                on_event(ev)
        return real_train(cfg, resume=resume, on_event=on)

    monkeypatch.setattr(tr, "train", train_then_signal)
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        sent.clear()
        out = tmp_path / f"run-{code}"
        r = runner.invoke(app, ["train", "--data", str(data), "--out", str(out), "--config",
                                str(recipe), "-q"])
        assert sent and r.exit_code == code, r.output
        assert f"stopped by signal {signal.Signals(signum).name}" in r.output
        assert (out / "last.pth").exists()
