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
NOTE = "note: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 runs 2-7x slower " \
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


@pytest.fixture
def probes(monkeypatch):
    """Set the CPU's answers: `probes("x86_64", avx512_bf16=False, amx=False, onednn=True)`."""
    def answer(value):
        if isinstance(value, Exception):
            def broken():
                raise value
            return broken
        return lambda: value

    def set_probes(machine: str, avx512_bf16=False, amx=False, onednn=False) -> bool:
        monkeypatch.setattr(device.platform, "machine", lambda: machine)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", answer(avx512_bf16))
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", answer(amx))
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", answer(onednn))
        cpu_bf16_native.cache_clear()
        return cpu_bf16_native()

    yield set_probes
    monkeypatch.undo()  # the real probes back before the cache fills again
    cpu_bf16_native.cache_clear()


def test_an_avx512_cpu_without_avx512_bf16_or_amx_emulates_bf16(probes):
    # oneDNN says yes on Skylake-SP to Ice Lake server; its bf16 is emulated there (2x slower)
    assert probes("x86_64", onednn=True) is False
    assert probes("x86_64", avx512_bf16=True, onednn=True) is True  # Cooper Lake, Zen 4
    assert probes("AMD64", amx=True, onednn=True) is True  # Sapphire Rapids (Windows' name)
    assert probes("aarch64", onednn=True) is True  # Arm: oneDNN's probe (BF16 extension)
    assert probes("aarch64", avx512_bf16=True, onednn=False) is False


def test_the_capability_probes_are_guarded(probes):
    # the probes exist in the torch we test with: a rename would quietly turn native bf16 off
    assert callable(torch.cpu._is_avx512_bf16_supported)
    assert callable(torch.cpu._is_amx_tile_supported)
    no_such = RuntimeError("no such probe in this build")
    assert probes("x86_64", avx512_bf16=no_such, amx=True) is False
    assert probes("arm64", onednn=no_such) is False


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
    events = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train(cfg, on_event=events.append)["stopped"] is None
    notes = [w for w in caught if issubclass(w.category, PrecisionWarning)]
    start = next(e.message for e in events if e.kind == "start")  # names the precision used
    assert f", {'bf16' if native else 'fp32'}, world 1" in start, start
    if native:
        assert autocasts, "the training step ran no autocast region"
        assert set(autocasts) == {(torch.bfloat16, True)} and notes == []
    else:  # fp32 enters no autocast region at all (torch 2.3-2.5 refuse a disabled one on MPS)
        assert autocasts == [] and len(notes) == 1


# ----------------------------------------------------------------------------------------------
# GPUs and Macs, faked: what torch would answer there (issue 25)

REAL_CUDA_AVAILABLE = torch.cuda.is_available


def test_the_suite_runs_on_the_cpu_even_where_a_gpu_answers(fake_gpus, monkeypatch, tmp_path,
                                                            tiny_ckpt):
    from conftest import force_cpu

    fake_gpus({0: (8, 0), 1: (8, 0)})
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device.resolve_device("auto").type == "cuda"  # what a GPU box would give
    force_cpu(monkeypatch)  # what tests/conftest.py does for every test not marked cuda
    assert device.resolve_device("auto") == CPU
    import os
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and os.environ["LIIF_DEVICE"] == "cpu"
    img = tmp_path / "in.png"
    Image.fromarray(photo_like(9, 11)).save(img)
    res = runner.invoke(app, ["upscale", str(img), "-s", "2", "-m", str(tiny_ckpt),
                              "-o", str(tmp_path / "out.png")])
    assert res.exit_code == 0 and "cpu fp32" in res.output, res.output


def test_an_ordinary_test_sees_no_gpu():
    assert torch.cuda.is_available is not REAL_CUDA_AVAILABLE  # the autouse fixture's
    assert not torch.cuda.is_available() and device.resolve_device("auto") == CPU


def test_auto_picks_bf16_only_where_the_chosen_gpu_has_it_natively(fake_gpus):
    fake_gpus({0: (9, 0), 1: (7, 5), 2: (6, 1)})  # H100, T4, GTX 1080
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never notes
        assert resolve_precision("auto", torch.device("cuda", 0)) == torch.bfloat16
        assert resolve_precision("auto", torch.device("cuda", 1)) == torch.float16
        assert resolve_precision("auto", torch.device("cuda", 2)) == torch.float16
        assert resolve_precision("bf16", torch.device("cuda", 0)) == torch.bfloat16
        assert resolve_precision("fp16", torch.device("cuda", 1)) == torch.float16
        assert resolve_precision("fp32", torch.device("cuda", 1)) == torch.float32


def test_explicit_bf16_on_a_gpu_without_it_falls_back_to_fp16_with_one_note(fake_gpus):
    fake_gpus({0: (8, 6), 1: (7, 0)})  # the question is asked of cuda:1, not GPU 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_precision("bf16", torch.device("cuda", 1)) == torch.float16
    notes = [str(w.message) for w in caught if issubclass(w.category, PrecisionWarning)]
    assert notes == [device.CUDA_BF16_FALLBACK_NOTE.format(cap="7.0")]


@pytest.mark.parametrize("macos14", [True, False])
def test_bf16_on_mps_needs_macos_14(monkeypatch, macos14):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer",
                        lambda major, minor: macos14 or (major, minor) < (14, 0))
    mps = device.resolve_device("auto")
    assert mps.type == "mps" and resolve_precision("auto", mps) == torch.float16
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = resolve_precision("bf16", mps)
    notes = [str(w.message) for w in caught if issubclass(w.category, PrecisionWarning)]
    assert (got, notes) == ((torch.bfloat16, []) if macos14 else
                            (torch.float16, [device.MPS_BF16_FALLBACK_NOTE]))


def test_tf32_is_off_on_a_gpu_unless_asked_for(fake_gpus, monkeypatch):
    fake_gpus({0: (8, 0)})
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)
    # saved and restored by hand: the cuBLAS flag is a module __getattr__, which pytest's
    # monkeypatch (9.2) cannot undo
    before = [f.allow_tf32 for f in flags]
    try:
        for flag in flags:
            flag.allow_tf32 = True  # cuDNN's default on Ampere
        device.set_tf32(CPU, False)  # the CPU: nothing to do
        assert torch.backends.cudnn.allow_tf32 is True
        device.set_tf32(torch.device("cuda", 0))
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        device.set_tf32(torch.device("cuda", 0), True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        for flag, was in zip(flags, before):
            flag.allow_tf32 = was


def test_every_upscaler_applies_the_tf32_policy(monkeypatch, tiny_model):
    from liif_cli.runtime import upscaler

    calls = []
    monkeypatch.setattr(upscaler, "set_tf32", lambda dev, on=False: calls.append((dev, on)))
    upscaler.Upscaler(tiny_model, device="cpu")
    upscaler.Upscaler(tiny_model, device="cpu", tf32=True)
    assert calls == [(CPU, False), (CPU, True)]


def test_auto_gives_each_local_rank_its_own_gpu(fake_gpus, monkeypatch):
    fake_gpus({0: (8, 0), 1: (8, 0)})
    set_to = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: set_to.append(torch.device(dev)))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("SLURM_LOCALID", raising=False)
    assert device.resolve_device("auto") == torch.device("cuda")  # alone: the current GPU
    for var, rank, want in [("LOCAL_RANK", "1", 1), ("LOCAL_RANK", "3", 1),
                            ("SLURM_LOCALID", "2", 0)]:
        monkeypatch.setenv(var, rank)
        assert device.resolve_device("auto") == torch.device("cuda", want), (var, rank)
        assert device.resolve_device("cuda") == torch.device("cuda", want)
        assert device.resolve_device("cuda:0") == torch.device("cuda", 0)  # named: as named
        monkeypatch.delenv(var)
    device.use_device(torch.device("cuda", 1))  # a single process on cuda:N makes it current
    device.use_device(CPU)
    assert set_to == [torch.device("cuda", 1)]


def test_the_memory_budget_takes_a_share_of_a_gpus_free_memory(fake_gpus):
    fake_gpus({0: (8, 0)})
    gpu, G = torch.device("cuda", 0), 2**30
    assert device.memory_budget(gpu) == 5 * G  # half of the 10 GiB free
    assert device.memory_budget(gpu, 2 * G) == 2 * G  # --max-memory caps it
    assert device.memory_budget(gpu, 100 * G) == 5 * G  # and cannot exceed it
    assert device.memory_budget(CPU) == 512 * 2**20
    assert device.memory_budget(CPU, 2 * G) == 2 * G


def test_max_memory_auto_on_the_command_line():
    from liif_cli.cli.options import parse_bytes

    assert parse_bytes("auto") is None and parse_bytes("2G") == 2 * 2**30
    for bad in ("nan", "inf", "-1G"):  # nan and inf were a ValueError / OverflowError traceback
        with pytest.raises(UsageError, match="bad memory size|too small"):
            parse_bytes(bad)


def test_max_memory_in_the_library_is_checked_and_takes_text():
    """`max_memory="1G"` failed deep in the engine (str // int); 0 and -5 were kept."""
    assert device.memory_budget(CPU, "1G") == 2**30 and device.memory_budget(CPU, 2**20) == 2**20
    assert device.memory_budget(CPU, "auto") == device.memory_budget(CPU)
    for bad in (0, -5, "0", float("nan"), True, [1]):
        with pytest.raises(UsageError, match="memory"):
            device.memory_budget(CPU, bad)


def test_batch_under_torchrun_puts_each_local_rank_on_its_own_gpu(fake_gpus, monkeypatch):
    from liif_cli.tasks.batch import parse_devices

    fake_gpus({0: (8, 0), 1: (8, 0)})
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert parse_devices("auto", jobs=2) == [torch.device("cuda", 1)] * 2
    assert parse_devices("all") == [torch.device("cuda", 0), torch.device("cuda", 1)]


@pytest.mark.slow
def test_the_device_check_script_runs_here_and_says_why_it_skips(tmp_path):
    """scripts/device_check.py on a CPU: what needs CUDA is skipped with its reason, and the
    report is written (the full CPU trial: `--tiny`, every section, a few minutes)."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO

    r = subprocess.run([sys.executable, str(REPO / "scripts" / "device_check.py"), "--tiny",
                        "--device", "cpu", "--out", str(tmp_path),
                        "--only", "env,cuda_tests,tf32,memory,budgets,view,caller,oom,video,mps,ddp"],
                       capture_output=True, text=True, timeout=180,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["env"]["status"] == "ok" and report["env"]["detail"]["device"] == "cpu"
    # `liif video` runs on any device: every frame and the sound kept, frame 0 = `liif upscale`
    assert report["video"]["status"] == "ok", report["video"]
    assert report["video"]["detail"]["frame0_max_diff"] <= 1
    for name in ("cuda_tests", "tf32", "memory", "budgets", "view", "caller", "oom", "ddp",
                 "mps"):
        assert report[name]["status"] == "skipped"
        assert report[name]["detail"].startswith(
            "needs Apple MPS" if name == "mps" else "needs a CUDA GPU")
        assert f"{name:<10} skipped" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device_check.json",
                                                          "device_check.txt"]


def test_training_bf16_on_a_gpu_without_it_trains_fp16_with_loss_scaling(fake_gpus):
    from liif_cli.tasks.train.loop import TrainConfig, _Run

    fake_gpus({0: (7, 5)})
    cfg = TrainConfig(data="x", out="unused", precision="bf16")
    run = _Run(cfg, torch.device("cuda", 0), 1, 1, None, None, None, None)  # rank 1: no files
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.choose_precision()
    assert run.amp_dtype == torch.float16 and run.scaler is not None
    assert [str(w.message) for w in caught if issubclass(w.category, PrecisionWarning)] == [
        device.CUDA_BF16_FALLBACK_NOTE.format(cap="7.5")]
