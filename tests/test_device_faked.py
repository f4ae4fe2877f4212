"""What a first CUDA, multi-GPU or Apple-silicon user would hit (issue 33), each with the
device's answer faked: torch's refusals on older Macs, out-of-memory errors of every kind, one
GPU per rank, several renderers on one GPU. The real checks are scripts/device_check.py's.
"""

from __future__ import annotations

import signal
import warnings
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import photo_like
from PIL import Image
from typer.testing import CliRunner

from liif_cli import errors
from liif_cli.cli import app
from liif_cli.runtime import device, engine, upscaler
from liif_cli.runtime.device import PrecisionWarning, resolve_precision

runner = CliRunner()
G = 2**30
MPS = torch.device("mps")


def _notes(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, PrecisionWarning)]


# ----------------------------------------------------------------------------------------------
# 1. a Mac with torch 2.3-2.5: no (or fp16-only) autocast on MPS

@pytest.fixture
def old_mps(monkeypatch):
    """An Apple-silicon Mac on macOS 14 whose torch answers autocast("mps") as `version` did:
    "2.4" raises whatever the dtype, "2.5" takes fp16 and disables itself (a warning) for bf16."""
    real = torch.autocast

    def fake(version: str) -> None:
        def autocast(device_type, dtype=None, *args, **kw):
            if device_type == "mps" and version == "2.4":
                raise RuntimeError("User specified an unsupported autocast device_type 'mps'")
            if device_type == "mps" and dtype == torch.bfloat16:
                warnings.warn("In MPS autocast, but the target dtype is not supported. "
                              "Disabling autocast.")
            return real(device_type, *args, dtype=dtype, **kw)

        monkeypatch.setattr(torch, "autocast", autocast)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
        monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda *a: True)
        device.mps_autocast.cache_clear()

    yield fake
    monkeypatch.undo()
    device.mps_autocast.cache_clear()


def test_no_mps_autocast_means_fp32_on_the_mac_and_says_why(old_mps):
    old_mps("2.4")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_precision("auto", MPS) == torch.float32  # auto: silently what runs
        assert _notes(caught) == []
        assert resolve_precision("fp16", MPS) == torch.float32
        assert resolve_precision("bf16", MPS) == torch.float32
    notes = _notes(caught)
    assert len(notes) == 2 and all("autocast on Apple MPS" in n and n.endswith("using fp32")
                                   for n in notes), notes


def test_fp16_only_mps_autocast_keeps_fp16_and_turns_bf16_into_it(old_mps):
    old_mps("2.5")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_precision("auto", MPS) == torch.float16
        assert resolve_precision("fp16", MPS) == torch.float16
        assert _notes(caught) == []
        assert resolve_precision("bf16", MPS) == torch.float16
    assert [n.split(":")[-1] for n in _notes(caught)] == [" using fp16"]


def test_training_on_an_old_mac_enters_no_autocast_region(old_mps):
    from liif_cli.tasks.train.loop import TrainConfig, _Run

    old_mps("2.4")
    run = _Run(TrainConfig(data="x", out="unused", precision="auto"), MPS, 1, 1,
               None, None, None, None)  # rank 1: no files
    run.choose_precision()
    assert run.amp_dtype is None and run.scaler is None  # fp32: `_autocast` is a null context


# ----------------------------------------------------------------------------------------------
# 2. 16-bit outputs on a device without unsigned 16-bit tensors (MPS before torch 2.9)

def test_16_bit_levels_never_need_uint16_on_the_device(monkeypatch, tiny_model):
    img = torch.from_numpy(photo_like(10, 12)).permute(2, 0, 1).float() / 255
    up = upscaler.Upscaler(tiny_model, device="cpu", precision="fp32")
    want = np.round(np.clip(up.render(img, (23, 29)), 0, 1) * 65535)
    real_to = torch.Tensor.to

    def to(self, *args, **kw):
        if torch.uint16 in args or kw.get("dtype") == torch.uint16:
            raise TypeError("Trying to convert UInt16 to the MPS backend but it does not "
                            "have support for that dtype.")
        return real_to(self, *args, **kw)

    monkeypatch.setattr(torch.Tensor, "to", to)
    got = up.render(img, (23, 29), np.empty((23, 29, 3), np.uint16))
    assert np.array_equal(got, want.astype(np.uint16))


# ----------------------------------------------------------------------------------------------
# 3. out of memory, whatever torch raises: one line, the command's advice; a GPU retries once

CUDA_LAUNCH_OOM = ("CUDA error: out of memory\nCUDA kernel errors might be asynchronously "
                   "reported at some other API call, so the stacktrace below might be "
                   "incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1")
CUBLAS_OOM = ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling "
              "`cublasCreate(handle)`")


@pytest.mark.parametrize("exc", [torch.AcceleratorError(CUDA_LAUNCH_OOM),
                                 RuntimeError(CUBLAS_OOM),
                                 torch.OutOfMemoryError("CUDA out of memory. Tried 2 GiB")],
                         ids=["accelerator", "cublas", "oom"])
def test_every_out_of_memory_is_one_line_with_the_commands_advice(exc):
    assert errors.describe(exc) == (errors.OUT_OF_MEMORY, 1)
    assert errors.describe(exc, "batch") == (errors.OUT_OF_MEMORY, 1)
    line, code = errors.describe(exc, "train")
    assert code == 1 and "--batch-size" in line and "--max-memory" not in line
    for command in ("train", "eval", "bench", "view", "export", "upscale"):
        assert "\n" not in errors.describe(exc, command)[0]
    assert not errors.is_bug(exc)


def test_an_internal_error_is_one_line_too():
    line, code = errors.describe(RuntimeError("first\nsecond\nthird"))
    assert (line, code) == ("internal error: RuntimeError: first", 1)
    assert errors.describe(ValueError())[0] == "internal error: ValueError"


def test_train_out_of_memory_advises_trains_own_options(monkeypatch, tmp_path):
    from liif_cli.tasks import train as train_task

    def oom(*a, **k):
        raise torch.AcceleratorError(CUDA_LAUNCH_OOM)

    monkeypatch.setattr(train_task, "train", oom)
    r = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                            "-q"])
    assert r.exit_code == 1
    assert r.output == f"error: out of memory; {errors.OOM_ADVICE['train']}\n"


@pytest.fixture
def view_files(tmp_path, tiny_ckpt):
    src = tmp_path / "in.png"
    Image.fromarray(photo_like(12, 14)).save(src)
    return src, tiny_ckpt


def test_a_viewer_export_out_of_memory_is_the_clis_line(monkeypatch, view_files):
    from liif_cli.runtime.upscaler import Upscaler
    from liif_cli.view.session import ViewSession

    def oom(*a, **k):
        raise torch.AcceleratorError(CUDA_LAUNCH_OOM)

    monkeypatch.setattr(Upscaler, "upscale_image", oom)  # the export renders the loaded pixels
    src, ckpt = view_files
    session = ViewSession([src], models=[str(ckpt)], device="cpu")
    try:
        job = session.start_export(0, "2")
        for t in session._job_threads:
            t.join(timeout=60)
    finally:
        session.close()
    assert (job.state, job.message) == ("failed", errors.describe(MemoryError(), "view")[0])


def test_a_viewer_tile_out_of_memory_is_the_clis_line(monkeypatch, view_files):
    import urllib.error
    import urllib.request

    from liif_cli.view.server import ViewServer
    from liif_cli.view.session import ViewSession

    def oom(*a, **k):
        raise torch.AcceleratorError(CUDA_LAUNCH_OOM)

    monkeypatch.setattr(engine, "render", oom)
    src, ckpt = view_files
    srv = ViewServer(ViewSession([src], models=[str(ckpt)], device="cpu"), "127.0.0.1", 0)
    srv.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/api/tile?token={srv.token}"
                                   "&image=0&scale=2&x=0&y=0&w=8&h=8", timeout=60)
    finally:
        srv.stop()
    assert e.value.code == 500
    assert e.value.read().decode() == errors.describe(MemoryError(), "view")[0] + "\n"


@pytest.fixture
def first_render_ooms(monkeypatch):
    """engine.render runs out of memory on its first call; the budgets of every call."""
    real, budgets = engine.render, []

    def render(*args, max_memory, **kw):
        budgets.append(max_memory)
        if len(budgets) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args, max_memory=max_memory, **kw)

    monkeypatch.setattr(engine, "render", render)
    return budgets


def test_a_gpu_retries_out_of_memory_once_at_half_the_budget(monkeypatch, tiny_model,
                                                            first_render_ooms):
    monkeypatch.setattr(upscaler, "OOM_RETRY_DEVICES", ("cpu",))  # the CPU plays the GPU
    img = torch.from_numpy(photo_like(10, 12)).permute(2, 0, 1).float() / 255
    want = upscaler.Upscaler(tiny_model, device="cpu").render(img, (20, 24))  # budgets[0]
    first_render_ooms.clear()
    up = upscaler.Upscaler(tiny_model, device="cpu", max_memory=256 * 2**20)
    seen = []
    got = up.render(img, (20, 24), on_progress=lambda done, total: seen.append(done))
    assert np.array_equal(got, want)
    assert first_render_ooms == [256 * 2**20, 128 * 2**20] and up.max_memory == 128 * 2**20
    assert seen == sorted(seen) and seen[-1] == 20 * 24
    up.render(img, (20, 24))  # the next image starts at the budget that worked
    assert first_render_ooms[-1] == 128 * 2**20


def test_out_of_memory_twice_or_on_the_cpu_goes_up(monkeypatch, tiny_model, first_render_ooms):
    img = torch.rand(3, 8, 8)
    up = upscaler.Upscaler(tiny_model, device="cpu", max_memory=256 * 2**20)
    with pytest.raises(torch.OutOfMemoryError):  # the CPU: not retried
        up.render(img, (16, 16))
    assert len(first_render_ooms) == 1
    monkeypatch.setattr(upscaler, "OOM_RETRY_DEVICES", ("cpu",))
    monkeypatch.setattr(engine, "render", lambda *a, **k: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(torch.OutOfMemoryError):  # once only
        up.render(img, (16, 16))
    monkeypatch.setattr(engine, "render", lambda *a, **k: (_ for _ in ()).throw(
        ValueError("not memory")))
    with pytest.raises(ValueError):
        up.render(img, (16, 16))


# ----------------------------------------------------------------------------------------------
# 4. several renderers on one GPU share what `auto` promises one

def test_budgets_on_one_gpu_add_up_to_what_auto_promises(fake_gpus):
    fake_gpus({0: (8, 0)})  # 10 GiB free
    gpu = torch.device("cuda", 0)
    whole = device.memory_budget(gpu)
    assert whole == 5 * G
    for n in (2, 3, 4):
        assert n * device.memory_budget(gpu, sharers=n) <= whole
    assert device.memory_budget(gpu, 4 * G, sharers=2) == 2.5 * G  # a given size is capped
    assert device.memory_budget(torch.device("cpu"), sharers=4) == device.CPU_MAX_MEMORY


def test_batch_jobs_on_one_gpu_split_its_budget(fake_gpus, monkeypatch, tiny_model):
    from liif_cli.tasks.batch import dispatch

    fake_gpus({0: (8, 0), 1: (8, 0)})
    gpus = [torch.device("cuda", 0)] * 3 + [torch.device("cuda", 1)]
    names = dispatch.worker_names(gpus)
    run = dispatch._Dispatch(SimpleNamespace(items=[], overwrite=False),
                             SimpleNamespace(workers=names), [], deque(), names,
                             threaded=False, fail_fast=False, emit=print, record=print)
    started = []
    run.ctx = SimpleNamespace(Queue=lambda: SimpleNamespace(put=lambda item: None),
                              Process=lambda **kw: SimpleNamespace(
                                  start=lambda: started.append(kw["args"][0])))
    run.start_workers(gpus, tiny_model, size=None, max_output_pixels=1, quality=90,
                      precisions={d: "bf16" for d in gpus}, max_memory=None,
                      max_input_pixels=1)
    assert [(c.device, c.sharers) for c in started] == [("cuda:0", 3)] * 3 + [("cuda:1", 1)]


def test_the_viewers_tiles_and_export_share_one_budget(monkeypatch, view_files):
    from liif_cli.view import session as view

    asked = []

    def budget(dev, max_memory=None, *, sharers=1):
        asked.append(sharers)
        return 64 * 2**20

    monkeypatch.setattr(device, "memory_budget", budget)
    src, ckpt = view_files
    s = view.ViewSession([src], models=[str(ckpt)], device="cpu")
    try:
        assert s.upscaler(s.cli_models[0], None).max_memory == 64 * 2**20
        job = s.start_export(0, "2")
        for t in s._job_threads:
            t.join(timeout=60)
    finally:
        s.close()
    assert job.state == "done", job.message
    assert asked == [view.RENDERERS] * 2 and view.RENDERERS == 2  # tiles, then the export


# ----------------------------------------------------------------------------------------------
# 5. the viewer: each image on the device once; the engine normalises only a tile's crop

class _Spy(torch.Tensor):
    """Records every new allocation (not a view) of at least `big` elements made from it."""

    big = 0
    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        if isinstance(out, torch.Tensor) and out.numel() >= cls.big:
            ptrs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
            if out.untyped_storage().data_ptr() not in ptrs:
                cls.seen.append(getattr(func, "__name__", str(func)))
        return out


def test_a_window_allocates_nothing_the_size_of_the_whole_image(tiny_model):
    img = torch.rand(3, 300, 400)
    _Spy.big, _Spy.seen = img.numel(), []
    out = np.empty((16, 16, 3), np.uint8)
    with torch.inference_mode():
        engine.render(tiny_model, img.as_subclass(_Spy), (600, 800), out, window=(40, 50, 16, 16))
    assert _Spy.seen == []
    want = np.empty((16, 16, 3), np.uint8)  # and the pixels are the same as without the spy
    with torch.inference_mode():
        engine.render(tiny_model, img, (600, 800), want, window=(40, 50, 16, 16))
    assert np.array_equal(out, want)


def test_the_viewer_uploads_each_image_once(view_files, monkeypatch):
    from liif_cli.view.session import ViewSession

    src, ckpt = view_files
    s = ViewSession([src], models=[str(ckpt)], device="cpu")
    try:
        img = s.images[0]
        meta = torch.device("meta")  # a device tensors can go to here, standing for a GPU
        assert img.on(meta) is img.on(meta) and img.on(meta).device == meta
        assert img.on(torch.device("cpu")) is img.rgb
        up = s.upscaler(s.cli_models[0], None)
        given = []
        monkeypatch.setattr(up, "device", meta)
        monkeypatch.setattr(up, "render", lambda rgb, *a, **k: given.append(rgb))
        for x in (0, 8):
            s.tile(0, "2", x, 0, 8, 8)
    finally:
        s.close()
    assert len(given) == 2 and given[0] is given[1] and given[0].device == meta


# ----------------------------------------------------------------------------------------------
# 6. DDP: one GPU seen per rank; the second SIGTERM of a forwarded stop

@pytest.mark.parametrize("gpus, local_rank, want", [(1, "1", 0), (1, "3", 0), (2, "3", 1)])
def test_each_rank_takes_its_own_gpu_even_when_it_sees_one(fake_gpus, monkeypatch, gpus,
                                                           local_rank, want):
    import torch.distributed as dist

    from liif_cli.tasks.train.loop import TrainConfig, _start_device

    fake_gpus({i: (8, 0) for i in range(gpus)})
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    for name in ("auto", "cuda", "cuda:0"):
        got = _start_device(TrainConfig(data="x", device=name), world=2)
        assert got == torch.device("cuda", want), name


def test_a_ddp_rank_without_cuda_trains_on_the_cpu_even_on_a_mac(monkeypatch):
    import torch.distributed as dist

    from liif_cli.tasks.train.loop import TrainConfig, _start_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    assert _start_device(TrainConfig(data="x"), world=2) == torch.device("cpu")


def test_a_forwarded_second_sigterm_does_not_break_the_save():
    from liif_cli.tasks.train.distributed import StopSignal

    stop = StopSignal()
    stop._handle(signal.SIGTERM, None)
    stop._handle(signal.SIGTERM, None)  # torchrun forwarding Slurm's: the stop goes on
    assert stop.signal == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C still stops at once
        stop._handle(signal.SIGINT, None)
    again = StopSignal()
    again._handle(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        again._handle(signal.SIGINT, None)


# ----------------------------------------------------------------------------------------------
# 7. the caller's module and current GPU

def test_a_callers_half_precision_module_renders_at_any_precision(tiny_model):
    net = tiny_model.to(torch.bfloat16).eval()  # the caller's, on the device, not float32
    img = torch.rand(3, 9, 10)
    up = upscaler.Upscaler(net, device="cpu", precision="fp32")
    out = up.render(img, (18, 20), np.empty((18, 20, 3), np.uint16))  # 16-bit: fp32
    assert up.model is not net and next(net.parameters()).dtype == torch.bfloat16
    ref = upscaler.Upscaler(net.float(), device="cpu", precision="fp32")
    assert np.array_equal(out, ref.render(img, (18, 20), np.empty((18, 20, 3), np.uint16)))


def test_an_upscaler_leaves_the_callers_current_gpu_alone(fake_gpus, monkeypatch, tiny_model):
    fake_gpus({0: (8, 0), 1: (8, 0)})
    set_to = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: set_to.append(dev))
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)  # "on" the GPU
    up = upscaler.Upscaler(tiny_model, device="cuda:1")
    assert up.device == torch.device("cuda", 1) and set_to == []
    # a render makes its GPU current for its own duration only
    assert isinstance(device.current(up.device), torch.cuda.device)
    assert device.current(torch.device("cuda")).__class__.__name__ == "nullcontext"


def test_render_runs_under_its_devices_current(monkeypatch, tiny_model):
    entered = []
    real = upscaler.current
    monkeypatch.setattr(upscaler, "current", lambda dev: entered.append(dev) or real(dev))
    upscaler.Upscaler(tiny_model, device="cpu").render(torch.rand(3, 6, 6), (12, 12))
    assert entered == [torch.device("cpu")]


# ----------------------------------------------------------------------------------------------
# 8. LIIF_DEVICE for train and bench; bench's auto is the one policy's

def test_liif_device_sets_train_and_bench_devices(monkeypatch, tmp_path):
    from liif_cli.tasks import bench as bench_task
    from liif_cli.tasks import train as train_task

    got = {}

    def fake_train(cfg, **kw):
        got["train"] = cfg.device
        return {"stopped": "x", "exit_code": 0}

    def fake_bench(net, *, devices, **kw):
        got["bench"] = devices
        raise errors.UsageError("enough")

    monkeypatch.setattr(train_task, "train", fake_train)
    monkeypatch.setattr(bench_task, "run_bench", fake_bench)
    monkeypatch.setenv("LIIF_DEVICE", "cuda:1")
    r = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                            "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["bench", "--random-arch", "edsr-baseline-small", "-q"])
    assert r.exit_code == 2 and "enough" in r.output
    assert got == {"train": "cuda:1", "bench": "cuda:1"}
    r = runner.invoke(app, ["bench", "--random-arch", "edsr-baseline-small", "--device", "cpu"])
    assert got["bench"] == "cpu"  # the command line wins


def test_bench_auto_is_the_cpu_and_the_device_auto_picks(fake_gpus, monkeypatch):
    from liif_cli.tasks.bench import _devices

    assert _devices("auto") == [torch.device("cpu")]
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert _devices("auto") == [torch.device("cpu"), MPS]
    fake_gpus({0: (8, 0), 1: (8, 0)})
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _devices("auto") == [torch.device("cpu"), torch.device("cuda", 1)]


# ----------------------------------------------------------------------------------------------
# 9. the device check: every failure in one file (a lent GPU machine returns 8 files at most)

def test_the_device_checks_failures_go_to_one_file(monkeypatch, tmp_path):
    import importlib.util
    import sys

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("device_check",
                                                  REPO / "scripts" / "device_check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    broken = ("env", "upscale", "batch", "eval", "train")

    def fail(self):
        raise RuntimeError("as on a GPU that fails")

    for name in broken:
        monkeypatch.setattr(check.Check, name, fail)
    (tmp_path / "failures.txt").write_text("a previous run's\n")
    monkeypatch.setattr(sys, "argv", ["device_check.py", "--device", "cpu", "--out",
                                      str(tmp_path), "--only", ",".join(broken) + ",memory"])
    assert check.main() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "device_check.json", "device_check.txt", "failures.txt"]
    failures = (tmp_path / "failures.txt").read_text()
    assert [line for line in failures.splitlines() if line.startswith("== ")] == [
        f"== {name}" for name in broken] and "previous" not in failures
    assert "memory     skipped" in (tmp_path / "device_check.txt").read_text()
