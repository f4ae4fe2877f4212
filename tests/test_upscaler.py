"""liif_cli.runtime.upscaler: one precision policy, the decoder built once, tasks as siblings."""

from __future__ import annotations

import ast
import copy
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, photo_like, random_model
from PIL import Image

import liif_cli
from liif_cli.data.samples import to_tensor
from liif_cli.errors import UsageError
from liif_cli.io.images import ImageData, read_image
from liif_cli.model import LIIF
from liif_cli.runtime import device, engine
from liif_cli.runtime.device import PrecisionWarning
from liif_cli.runtime.sizing import size_request
from liif_cli.runtime.upscaler import Upscaler
from liif_cli.runtime.weights import ModelCard, card_of, load_model

CPU = torch.device("cpu")


@pytest.fixture
def decoders_built(monkeypatch) -> list[torch.dtype]:
    """Every engine.make_decoder call (from an Upscaler or from engine.render), by dtype."""
    built: list[torch.dtype] = []
    real = engine.make_decoder

    def spy(model, dtype, dev):
        built.append(dtype)
        return real(model, dtype, dev)

    monkeypatch.setattr(engine, "make_decoder", spy)
    return built


def _notes(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, PrecisionWarning)]


# ----------------------------------------------------------------------------------------------
# the policy

def test_bf16_on_a_cpu_without_native_bf16_falls_back_to_fp32_with_one_note(monkeypatch):
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        up = Upscaler(random_model(), device="cpu", precision="bf16")
    assert up.dtype == torch.float32 and up.precision == "fp32"
    assert _notes(caught) == [device.BF16_FALLBACK_NOTE]


def test_bf16_where_the_cpu_runs_it_natively_runs_the_whole_pass_in_bf16(monkeypatch, autocasts):
    monkeypatch.setattr(device, "cpu_bf16_native", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note
        up = Upscaler(random_model(), device="cpu", precision="bf16")
    assert up.dtype == torch.bfloat16
    up.render(torch.rand(3, 8, 9), (16, 18))
    assert up.decoder().dtype == torch.bfloat16  # the decoder MLP ...
    assert set(autocasts) == {(torch.bfloat16, True)}  # ... and the encoder


def test_auto_on_the_cpu_is_fp32_and_fp16_is_refused(monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(device, "cpu_bf16_native", lambda native=native: native)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # auto never falls back, so never notes
            assert Upscaler(random_model(), device="cpu").dtype == torch.float32
    with pytest.raises(UsageError, match="fp16 is for GPUs"):
        Upscaler(random_model(), device="cpu", precision="fp16")
    with pytest.raises(UsageError, match="unsupported dtype"):
        Upscaler(random_model(), device="cpu", precision=torch.float64)


def test_usage_errors_come_before_the_model_is_loaded(tmp_path):
    missing = tmp_path / "nope.pth"  # loading it would fail with a CheckpointError
    with pytest.raises(UsageError, match="unknown precision"):
        Upscaler(missing, device="cpu", precision="fp8")
    with pytest.raises(UsageError, match="unknown device"):
        Upscaler(missing, device="tpu")


# ----------------------------------------------------------------------------------------------
# one decoder, exact output

def test_output_is_engine_render_exactly():
    model = random_model()
    img = to_tensor(photo_like(13, 17))
    up = Upscaler(model, device="cpu", precision="fp32", max_memory=2**20)
    got = up.render(img, (29, 40))
    with torch.inference_mode():
        want = engine.render(model, img, (29, 40), max_memory=2**20)
    np.testing.assert_array_equal(got, want)
    out = np.empty((29, 40, 3), np.uint8)
    assert up.render(img, (29, 40), out) is out
    with torch.inference_mode():
        np.testing.assert_array_equal(
            out, engine.render(model, img, (29, 40), np.empty_like(out), max_memory=2**20))


@pytest.mark.parametrize("img, out_hw, message", [
    (torch.rand(1, 3, 6, 8), (12, 16), r"\(3, h, w\) tensor .*got \(1, 3, 6, 8\)"),  # a batch
    (torch.rand(1, 6, 8), (12, 16), r"got \(1, 6, 8\)"),  # grey: model_input repeats it
    (np.zeros((3, 6, 8), np.float32), (12, 16), "got ndarray"),
    (torch.rand(3, 6, 8), (0, 16), r"out_hw \(0, 16\)"),
    (torch.rand(3, 6, 8), (12.5, 16), r"out_hw \(12.5, 16\) must be \(H, W\)"),
    (torch.rand(3, 6, 8), 12, r"out_hw 12 must be"),
    ((torch.rand(3, 6, 8) * 255).to(torch.uint8), (12, 16), r"floats in \[0, 1\].*uint8"),
    (torch.full((3, 6, 8), float("nan")), (12, 16), "NaN"),  # came out as plausible pixels
], ids=["batch", "grey", "numpy", "empty-output", "fractional-output", "one-number-output",
        "uint8-input", "nan-input"])
def test_render_refuses_what_it_cannot_take_in_one_line(img, out_hw, message):
    up = Upscaler(random_model(), device="cpu")
    with pytest.raises(UsageError, match=message):
        up.render(img, out_hw)


@pytest.mark.parametrize("out, window, message", [
    (np.zeros((5, 5, 3), np.uint8), None, r"\(12, 16, 3\) or \(12, 16, 1\) array, not uint8 "
                                          r"\(5, 5, 3\)"),
    (np.zeros((12, 16, 3), np.int32), None, "not int32"),  # it came back holding 0 and 1
    (None, (8, 0, 8, 8), r"window \(8, 0, 8, 8\) is not inside the 12×16 output"),
    (None, (0, 0, 4.5, 4), "whole pixels"),
    (np.zeros((12, 16, 3), np.uint8), (0, 0, 4, 4), r"\(4, 4, 3\) or \(4, 4, 1\)"),
])
def test_render_refuses_an_out_or_window_it_cannot_fill(out, window, message):
    up = Upscaler(random_model(), device="cpu")
    with pytest.raises(UsageError, match=message):
        up.render(torch.rand(3, 6, 8), (12, 16), out, window=window)


def test_image_data_that_is_not_what_it_says_is_refused_in_one_line():
    """ImageData built by hand: a torch error from deep inside, or float pixels divided by 255
    again (values near 0, no error), or an alpha plane resized to fit."""
    from liif_cli import upscale
    from liif_cli.runtime.upscaler import check_image_data

    up = Upscaler(random_model(), device="cpu")
    rgb = photo_like(6, 8)
    for bad, message in [
            (ImageData(rgb[:, :, 0]), r"pixels must be .* not uint8 \(6, 8\)"),
            (ImageData(rgb.tolist()), "not list"),
            (ImageData(rgb.astype(np.float32) / 255), "not float32"),
            (ImageData(np.dstack([rgb, rgb[:, :, :1]])), r"\(6, 8, 4\).*splits their alpha"),
            (ImageData(rgb, alpha=np.zeros((5, 5), np.uint8)), r"alpha must be .* not uint8 "
                                                                r"\(5, 5\)"),
            (ImageData(rgb, alpha=np.zeros((6, 8), np.uint16)), "alpha must be")]:
        with pytest.raises(UsageError, match=message):
            check_image_data(bad)
        with pytest.raises(UsageError, match=message):
            upscale(up, bad, scale=2)
        with pytest.raises(UsageError, match=message):
            up.upscale_image(bad, (12, 16))
    assert check_image_data(ImageData(rgb, alpha=rgb[:, :, 0].copy())).width == 8


def test_the_decoder_is_built_once_across_renders(decoders_built):
    up = Upscaler(random_model(), device="cpu", precision="fp32")
    assert decoders_built == []  # built on first use
    for side in (8, 11, 9):
        up.render(torch.rand(3, side, side), (2 * side, 3 * side))
    assert decoders_built == [torch.float32]
    # a 16-bit image needs fp32: with an fp32 Upscaler, still the same one decoder
    deep = ImageData((photo_like(6, 7).astype(np.uint16) * 257))
    assert up.upscale_image(deep, (12, 14)).image.pixels.dtype == np.uint16
    assert decoders_built == [torch.float32]


def test_a_16_bit_image_gets_an_fp32_decoder_of_its_own_once(decoders_built):
    up = Upscaler(random_model(), device="cpu", precision=torch.bfloat16)
    deep = ImageData(photo_like(6, 7).astype(np.uint16) * 257)
    for _ in range(2):
        res = up.upscale_image(deep, (12, 14))
        assert res.precision == "fp32"
    up.upscale_image(ImageData(photo_like(6, 7)), (12, 14))
    assert sorted(decoders_built, key=str) == [torch.bfloat16, torch.float32]


def test_a_decoder_of_another_dtype_is_refused():
    model = random_model()
    dec = engine.make_decoder(model, torch.bfloat16, CPU)
    with pytest.raises(ValueError, match="decoder was built for"):
        engine.render(model, torch.rand(3, 8, 8), (16, 16), decoder=dec)


def test_upscale_image_matches_the_task_function_and_keeps_alpha_and_grey(tmp_path):
    from liif_cli.tasks.upscale import upscale_image

    model = random_model()
    up = Upscaler(model, device="cpu")
    rgba = np.dstack([photo_like(9, 10), np.full((9, 10), 200, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    Image.fromarray(photo_like(9, 10, channels=1)[..., 0]).save(tmp_path / "g.png")
    for name in ("a.png", "g.png"):
        image = read_image(tmp_path / name)
        got = up.upscale_image(image, (18, 25))
        want = upscale_image(model, image, out_hw=(18, 25), device="cpu")
        np.testing.assert_array_equal(got.image.pixels, want.image.pixels)
        assert got.image.channels == image.channels
        assert (got.image.alpha is None) == (image.alpha is None)
    assert got.in_hw == (9, 10) and got.out_hw == (18, 25) and got.device == "cpu"


def test_the_public_api_takes_an_upscaler(decoders_built):
    up = liif_cli.Upscaler(random_model(), device="cpu")
    arrs = [liif_cli.upscale(up, photo_like(6, 8, seed=i), scale=2) for i in range(3)]
    assert [a.shape for a in arrs] == [(12, 16, 3)] * 3
    assert decoders_built == [torch.float32]


def test_batch_builds_one_decoder_per_worker(tmp_path, tiny_ckpt, decoders_built):
    from liif_cli.tasks.batch import plan_batch, run_batch

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for i in range(3):
        Image.fromarray(photo_like(10, 12, seed=i)).save(inp / f"{i}.png")
    res = run_batch(plan_batch(inp, out), str(tiny_ckpt), size=size_request(scale=2),
                    devices="cpu")
    assert [r.status for r in res.records] == ["done"] * 3
    assert len(res.workers) == 1 and decoders_built == [torch.float32]


@pytest.mark.parametrize("command", ["upscale", "eval", "batch"])
def test_each_command_notes_a_bf16_fallback_once(command, tmp_path, tiny_ckpt, monkeypatch):
    """The precision is resolved once per command (upscale noted it twice, batch three times)."""
    from typer.testing import CliRunner

    from liif_cli.cli import app

    monkeypatch.setattr(device, "cpu_bf16_native", lambda: False)
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(photo_like(30, 32)).save(hr / "a.png")
    args = {"upscale": [str(hr / "a.png"), "-s", "2", "-o", str(tmp_path / "o.png")],
            "eval": ["--data", str(hr), "--scales", "2"],
            "batch": [str(hr), str(tmp_path / "out"), "-s", "2"]}[command]
    res = CliRunner().invoke(app, [command, *args, "-m", str(tiny_ckpt), "--device", "cpu",
                                   "--precision", "bf16"])
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if line.startswith("note:")]
    assert notes == ["note: " + device.BF16_FALLBACK_NOTE]


# ----------------------------------------------------------------------------------------------
# load_model returns the network; Upscaler and export leave a caller's module as it was

def test_load_model_returns_the_network_with_its_card(tiny_ckpt):
    net = load_model(str(tiny_ckpt))
    assert isinstance(net, torch.nn.Module) and isinstance(net, LIIF) and not net.training
    assert net.card == ModelCard("tiny", Path(tiny_ckpt), {}) and card_of(net) is net.card
    assert card_of(random_model()) is None  # built in code: no card
    assert "card" not in str(net.state_dict().keys())  # not a weight
    for twin in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert twin.card == net.card
        assert torch.equal(twin.imnet.linears[0].weight, net.imnet.linears[0].weight)


def _state(model: torch.nn.Module) -> tuple:
    return (model.training, {p.device for p in model.parameters()},
            {p.dtype for p in model.parameters()}, [p.data_ptr() for p in model.parameters()])


def test_an_upscaler_never_moves_or_flips_the_callers_module(tiny_model, monkeypatch):
    tiny_model.train()
    before = _state(tiny_model)
    up = Upscaler(tiny_model, device="cpu", precision="fp32")
    assert _state(tiny_model) == before and up.model is not tiny_model  # rendered from a copy
    assert not up.model.training
    img = torch.rand(3, 6, 7)
    a = up.render(img, (12, 14))
    tiny_model.eval()
    ready = Upscaler(tiny_model, device="cpu", precision="fp32")
    assert ready.model is tiny_model  # on the device, in eval mode: used as it is
    assert np.array_equal(ready.render(img, (12, 14)), a)
    # nothing is ever asked of the caller's module: `.to` (a move) only on the Upscaler's own
    moved = []
    real_to = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: (
        moved.append(self), real_to(self, *a, **k))[1])
    Upscaler(tiny_model, device="cpu")
    assert moved == []
    tiny_model.train()
    second = Upscaler(tiny_model, device="cpu")
    assert moved == [second.model] and second.model is not tiny_model and tiny_model.training


@pytest.mark.parametrize("fmt", ["safetensors", pytest.param("onnx", marks=pytest.mark.slow)])
def test_export_leaves_the_callers_module_where_and_as_it_was(tiny_model, tmp_path, fmt):
    from liif_cli.tasks.export import export_model

    if fmt == "onnx":
        pytest.importorskip("onnx")
    model = tiny_model.to(torch.bfloat16).train()
    before = _state(model)
    assert export_model(model, tmp_path / f"m.{fmt}").path.exists()
    assert _state(model) == before


def test_upscaler_is_exported_lazily():
    assert "Upscaler" in liif_cli.__all__ and liif_cli.Upscaler is Upscaler


# ----------------------------------------------------------------------------------------------
# tasks are siblings

TASKS = REPO / "liif_cli" / "tasks"


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function-level imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against liif_cli.tasks
                base = ".".join(["liif_cli", "tasks"][:3 - node.level])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}  # from liif_cli.tasks import x
    return names


def _task_of(path: Path) -> str:
    """The task a file belongs to: its module (tasks/upscale.py) or its package (tasks/batch/)."""
    return path.relative_to(TASKS).parts[0].removesuffix(".py")


def test_no_task_imports_another_task():
    files = [p for p in sorted(TASKS.rglob("*.py")) if p != TASKS / "__init__.py"]
    tasks = {_task_of(p) for p in files}
    assert {"upscale", "batch", "evaluate", "train", "bench", "export"} <= tasks
    found = {}
    for p in files:
        others = {f"liif_cli.tasks.{t}" for t in tasks - {_task_of(p)}}
        hits = sorted(n for n in _imports(p) if any(n == o or n.startswith(o + ".")
                                                    for o in others))
        if hits:
            found[str(p.relative_to(TASKS))] = hits
    assert found == {}


def test_the_import_check_sees_imports(tmp_path):
    """The parser above would catch the imports this layout removed."""
    sample = tmp_path / "task.py"
    sample.write_text("def f():\n    from liif_cli.tasks.evaluate import psnr\n"
                      "from liif_cli.tasks import upscale\nfrom . import bench\n")
    names = _imports(sample)
    assert {"liif_cli.tasks.evaluate", "liif_cli.tasks.upscale", "liif_cli.tasks.bench"} <= names


def test_decoder_is_built_once_for_threads(monkeypatch):
    """`liif view` asks from several render threads at once: one decoder, built once."""
    import threading
    import time

    from liif_cli.runtime import engine

    built = []

    def slow_make(model, dtype, device):
        built.append(dtype)
        time.sleep(0.05)  # long enough for the other threads to arrive while it builds
        return object()

    monkeypatch.setattr(engine, "make_decoder", slow_make)
    up = Upscaler(random_model(), device="cpu", precision="fp32")
    got = []
    threads = [threading.Thread(target=lambda: got.append(up.decoder())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and len(got) == 4 and all(d is got[0] for d in got)
