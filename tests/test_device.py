"""liif_cli.runtime.device: one precision policy by what the CPU can do, the same in upscale and train.

The CPU's capability is monkeypatched both ways, so both branches run on any machine.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import photo_like
from PIL import Image
from typer.testing import CliRunner

from liif_cli.cli import app
from liif_cli.errors import UsageError
from liif_cli.runtime import device
from liif_cli.runtime.device import PrecisionWarning, cpu_bf16_native, resolve_precision

runner = CliRunner()
CPU = torch.device("cpu")
NOTE = "note: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 runs 6-7x slower " \
       "than fp32: using fp32"


@pytest.fixture(params=[True, False], ids=["native-bf16", "emulated-bf16"])
def native(request, monkeypatch) -> bool:
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: request.param)
    return request.param


def test_bf16_on_the_cpu_only_where_it_runs_natively(native):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dtype = resolve_precision("bf16", CPU)
    notes = [str(w.message) for w in caught if issubclass(w.category, PrecisionWarning)]
    if native:
        assert dtype == torch.bfloat16 and notes == []
    else:
        assert dtype == torch.float32
        assert notes == [NOTE.removeprefix("note: ")]


def test_auto_never_picks_a_slow_path_and_fp16_is_refused_on_the_cpu(native):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note either: auto and fp32 never fall back
        assert resolve_precision("auto", CPU) == torch.float32
        assert resolve_precision("fp32", CPU) == torch.float32
    with pytest.raises(UsageError, match="fp16 is for GPUs"):
        resolve_precision("fp16", CPU)


def test_the_capability_probe_is_guarded(monkeypatch):
    def broken():
        raise RuntimeError("no such op in this build")

    cpu_bf16_native.cache_clear()
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", broken)
    try:
        assert cpu_bf16_native() is False
    finally:
        monkeypatch.undo()  # the real op back before the cache fills again
        cpu_bf16_native.cache_clear()
    assert cpu_bf16_native() is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_upscale_names_the_precision_it_ran_in_and_notes_a_fallback(native, tmp_path,
                                                                     tiny_ckpt):
    img = tmp_path / "in.png"
    Image.fromarray(photo_like(9, 11)).save(img)
    res = runner.invoke(app, ["upscale", str(img), "-s", "2", "-m", str(tiny_ckpt),
                              "--precision", "bf16", "-o", str(tmp_path / "out.png")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert (NOTE in lines) is not native
    wrote = next(line for line in lines if line.startswith("wrote "))
    assert wrote.endswith(("cpu bf16" if native else "cpu fp32") + f"  {wrote.split()[-1]}")
    assert Image.open(tmp_path / "out.png").size == (22, 18)


def test_train_bf16_on_an_emulating_cpu_trains_in_fp32(native, tmp_path, monkeypatch, autocasts):
    from test_train import TINY

    from liif_cli.tasks.train import TrainConfig, train

    data = tmp_path / "hr"
    data.mkdir()
    for i in range(2):
        Image.fromarray(photo_like(40, 44, seed=i)).save(data / f"{i}.png")
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "run"),
                      **{**TINY, "epochs": 1, "repeat": 1, "precision": "bf16"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train(cfg)["stopped"] is None
    notes = [w for w in caught if issubclass(w.category, PrecisionWarning)]
    if native:
        assert autocasts, "the training step ran no autocast region"
        assert set(autocasts) == {(torch.bfloat16, True)} and notes == []
    else:  # fp32 enters no autocast region at all (torch 2.3-2.5 refuse a disabled one on MPS)
        assert autocasts == [] and len(notes) == 1
