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


# ----------------------------------------------------------------------------------------------
# one describe(exc) for the CLI and batch; out of memory the same line from every command

def test_describe_gives_one_line_and_the_code():
    import torch

    oom = errors.OUT_OF_MEMORY
    assert oom == "out of memory; lower --max-memory or the output size"
    assert errors.describe(errors.UsageError("bad scale")) == ("bad scale", 2)
    assert errors.describe(errors.DataError("no images")) == ("no images", 1)
    assert errors.describe(OutputExistsError("a.png"))[1] == 2
    assert errors.describe(MemoryError()) == (oom, 1)
    # CUDA's (and newer MPS's) out-of-memory error is a RuntimeError, not a MemoryError
    assert errors.describe(torch.OutOfMemoryError("CUDA out of memory. Tried 2 GiB")) == (oom, 1)
    try:  # the CPU allocator's failure is a plain RuntimeError
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as e:
        assert errors.describe(e) == (oom, 1), e
    assert errors.describe(KeyboardInterrupt()) == ("interrupted", 130)
    assert errors.describe(ValueError("boom")) == ("internal error: ValueError: boom", 1)
    assert errors.is_bug(ValueError("boom")) and not errors.is_bug(MemoryError())
    assert not errors.is_bug(errors.LiifError("x"))


def test_the_same_mistake_gets_the_same_code(made):
    d, ckpt = made
    for argv in (["-o", str(d / "out.xyz")], ["-o", "-", "--format", "xyz"]):
        r = runner.invoke(app, ["upscale", str(d / "in.png"), "-s", "2", "-m", str(ckpt), *argv])
        assert r.exit_code == 2, (argv, r.output)
        assert len(r.output.strip().splitlines()) == 1 and "xyz" in r.output
    assert not list(d.glob("out*"))


@pytest.fixture(params=["cuda", "host"])
def oom_in_engine(request, monkeypatch):
    """The engine runs out of memory mid-render: CUDA's error (a RuntimeError) or MemoryError."""
    import torch

    from liif_cli.runtime import engine

    def render(*args, **kw):
        if request.param == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        raise MemoryError

    monkeypatch.setattr(engine, "render", render)


def test_out_of_memory_is_one_line_from_upscale(made, oom_in_engine):
    d, ckpt = made
    r = runner.invoke(app, ["upscale", str(d / "in.png"), "-s", "2", "-m", str(ckpt), "-o",
                            str(d / "out.png")])
    assert r.exit_code == EXIT_FAILURE, r.output
    assert r.output == f"error: {errors.OUT_OF_MEMORY}\n"
    assert not (d / "out.png").exists()


def test_out_of_memory_is_the_same_line_from_batch(made, oom_in_engine):
    d, ckpt = made
    src = d / "photos"
    src.mkdir()
    (d / "in.png").rename(src / "in.png")
    r = runner.invoke(app, ["batch", str(src), str(d / "big"), "-s", "2", "-m", str(ckpt),
                            "--device", "cpu", "-q"])
    assert r.exit_code == EXIT_FAILURE, r.output
    assert r.output == f"failed: {src / 'in.png'}: {errors.OUT_OF_MEMORY}\n"
    assert not (d / "big" / "in.png").exists()


def test_batch_stopped_by_sigterm_exits_143_and_by_sigint_130(made, monkeypatch):
    """The exit code is the result's (`BatchResult.exit_code`), from the signal that stopped it."""
    from liif_cli.runtime import engine

    d, ckpt = made
    src = d / "photos"
    src.mkdir()
    for i in range(3):
        Image.fromarray(photo_like(12, 12, seed=i)).save(src / f"{i}.png")
    real_render, sent = engine.render, []

    def render(*args, **kw):  # the signal arrives while the first file renders
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signum)
        return real_render(*args, **kw)

    monkeypatch.setattr(engine, "render", render)
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        sent.clear()
        r = runner.invoke(app, ["batch", str(src), str(d / f"big{code}"), "-s", "2", "-m",
                                str(ckpt), "--device", "cpu", "-q", "--overwrite"])
        assert sent and r.exit_code == code, r.output
        assert "interrupted:" in r.output and "run the same command again" in r.output
