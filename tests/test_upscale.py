"""`upscale` (library) and `liif upscale` (CLI): sizes, devices, precision, real-world files, and
one line + exit code + nothing written for every bad input."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from conftest import listing, photo_like, random_model
from PIL import Image, ImageCms
from typer.testing import CliRunner

from liif_cli.cli import app
from liif_cli.errors import DeviceError, LiifWarning, UsageError
from liif_cli.io.images import ImageData, read_image, write_image
from liif_cli.runtime import engine
from liif_cli.runtime.device import resolve_device, resolve_precision
from liif_cli.runtime.sizing import size_request, target_size
from liif_cli.tasks.upscale import default_output_path, upscale, upscale_file

runner = CliRunner()


def model_output(model, pixels: np.ndarray, out_hw, top=255) -> np.ndarray:
    """What the engine makes of (h, w, 3) pixels, unquantised, in [0, 1] units."""
    img = torch.from_numpy(pixels.astype(np.float32) / top).permute(2, 0, 1)
    with torch.inference_mode():
        return engine.render(model, img, out_hw)


# ----------------------------------------------------------------------------------------------
# sizes

@pytest.mark.parametrize("kw,expected", [
    ({"scale": "4"}, (124, 228)),
    ({"scale": 3.5}, (109, 200)),  # halves round up, as the official demo (golden 31×57 → ×3.5)
    ({"scale": "3x2.5"}, (78, 171)),  # WxH factors: width ×3, height ×2.5
    ({"scale": "0.5"}, (16, 29)),
    ({"scale": (1.0, 2.0)}, (62, 57)),  # (horizontal, vertical), as "1x2" and size=(W, H)
    ({"scale": [3, 2.5]}, (78, 171)),
    ({"size": "640x480"}, (480, 640)),
    ({"size": (10, 20)}, (20, 10)),
    ({"width": 114}, (62, 114)),
    ({"height": 62}, (62, 114)),
    ({"width": 100, "height": 7}, (7, 100)),
    ({"width": 114.0}, (62, 114)),  # a whole float, as `w * 2` of a float scale gives
    ({"size": (np.int64(10), np.int64(20))}, (20, 10)),
])
def test_target_size(kw, expected):
    out = target_size((31, 57), **kw)
    assert out == expected and all(type(v) is int for v in out)


@pytest.mark.parametrize("kw,message", [
    ({}, "say how big"),
    ({"scale": "0"}, "positive finite"),
    ({"scale": "-2"}, "positive finite"),
    ({"scale": "nan"}, "positive finite"),
    ({"scale": "inf"}, "positive finite"),
    ({"scale": (1.0, float("nan"))}, "positive finite"),
    ({"scale": "2x"}, "bad scale"),
    ({"scale": "four"}, "bad scale"),
    ({"size": "0x10"}, "at least 1"),
    ({"size": "10x"}, "bad size"),
    ({"size": "1x2x3"}, "bad size"),
    ({"scale": "2", "size": "10x10"}, "only one of --scale, --size"),
    ({"scale": "2", "width": 5}, "only one of --scale, --width"),
    ({"width": 0}, "--width must be at least 1"),
    ({"width": 20.5}, "--width must be a whole number of pixels, got 20.5"),
    ({"height": "62"}, "--height must be a whole number of pixels, got '62'"),
    ({"size": (10.5, 20)}, "bad size"),
    ({"scale": "0.001"}, "output would be 0×0"),
    ({"scale": "1000"}, "over the 1,000.0 MP limit.*--max-output-pixels"),
])
def test_bad_sizes(kw, message):
    with pytest.raises(UsageError, match=message):
        target_size((31, 57), max_pixels=10**9, **kw)


def test_default_output_names():
    def name(**kw):
        return default_output_path("/a/photo.JPG", size_request(**kw), kw.get("scale")).name

    assert name(scale="7.5") == "photo_x7.5.jpg"
    assert name(scale="3X2.5") == "photo_x3x2.5.jpg"
    assert name(scale=" 3 × 2.5 ") == "photo_x3x2.5.jpg"  # was "photo_x3 x 2.5.jpg"
    assert name(size="1920x1080") == "photo_1920x1080.jpg"
    # the three fits give three different files: each its own name
    assert name(size="1920x1080", fit="fill") == "photo_1920x1080.jpg"
    assert name(size="1920x1080", fit="contain") == "photo_1920x1080_contain.jpg"
    assert name(size="1920x1080", fit="cover") == "photo_1920x1080_cover.jpg"
    assert name(width=800) == "photo_800w.jpg"
    assert name(height=600) == "photo_600h.jpg"
    assert default_output_path("a/s.gif", size_request(scale=2.0)).name == "s_x2.png"


# ----------------------------------------------------------------------------------------------
# devices and precision

def test_devices_and_precisions():
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "tpu:0", "cuda:x"):
        with pytest.raises(UsageError, match="use auto, cpu, cuda, cuda:N or mps"):
            resolve_device(bad)
    with pytest.raises(DeviceError, match="cuda:7"):
        resolve_device("cuda:7")  # no machine here has eight GPUs
    assert resolve_precision("auto", torch.device("cpu")) == torch.float32
    # bf16 on the CPU depends on what the CPU can do: tests/test_device.py covers both cases
    with pytest.raises(UsageError, match="fp16 is for GPUs"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(UsageError, match="unknown precision"):
        resolve_precision("int8", torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(DeviceError, match="no CUDA GPU is available.*--device cpu"):
        resolve_device("cuda")


# ----------------------------------------------------------------------------------------------
# the library

def test_rgb_array_is_the_engine_quantised(tiny_model):
    px = photo_like(10, 12)
    out = upscale(tiny_model, px, scale=2.5, device="cpu")
    assert out.shape == (25, 30, 3) and out.dtype == np.uint8
    expected = np.round(np.clip(model_output(tiny_model, px, (25, 30)), 0, 1) * 255)
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_alpha_grey_and_layouts_kept(tiny_model):
    px = photo_like(10, 12)
    alpha = np.linspace(0, 255, 120).reshape(10, 12).astype(np.uint8)
    rgba = upscale(tiny_model, np.dstack([px, alpha]), size=(30, 20), device="cpu")
    assert rgba.shape == (20, 30, 4)
    assert np.array_equal(rgba[:, :, 3], cv2.resize(alpha, (30, 20),
                                                    interpolation=cv2.INTER_CUBIC))
    assert np.array_equal(rgba[:, :, :3], upscale(tiny_model, px, size=(30, 20), device="cpu"))
    grey = upscale(tiny_model, px[:, :, 0], scale=2, device="cpu")
    assert grey.shape == (20, 24) and grey.dtype == np.uint8
    raw = model_output(tiny_model, np.repeat(px[:, :, :1], 3, axis=2), (20, 24))
    expected = np.round(np.clip(raw.mean(axis=2), 0, 1) * 255)
    assert np.abs(grey.astype(int) - expected).max() <= 1
    la = upscale(tiny_model, np.dstack([px[:, :, 0], alpha]), scale=2, device="cpu")
    assert la.shape == (20, 24, 2) and np.array_equal(la[:, :, 0], grey)
    with pytest.raises(UsageError, match="uint8 or uint16"):
        upscale(tiny_model, px.astype(np.float32), scale=2)
    with pytest.raises(UsageError, match="expected"):
        upscale(tiny_model, np.zeros((4, 4, 5), np.uint8), scale=2)


@pytest.mark.parametrize("image", [Image.new("RGB", (4, 4)), [[0, 0], [0, 0]], b"in.png"],
                         ids=["pil", "list", "bytes"])
def test_an_image_of_another_type_is_a_usage_error(tiny_model, image):
    with pytest.raises(UsageError, match="give a path, ImageData or a uint8/uint16 numpy array"):
        upscale(tiny_model, image, scale=2, device="cpu")


@pytest.mark.filterwarnings("ignore::liif_cli.runtime.device.PrecisionWarning")  # no native bf16 here
def test_16_bit_computed_at_full_precision(tiny_model):
    px16 = (photo_like(8, 9).astype(np.uint16) * 257 + 100)
    out = upscale(tiny_model, px16, scale=2, device="cpu", precision="bf16")  # fp32 anyway
    assert out.dtype == np.uint16
    raw = model_output(tiny_model, px16, (16, 18), top=65535)
    assert np.abs(out.astype(int) - np.round(np.clip(raw, 0, 1) * 65535)).max() <= 1


def test_file_metadata_scaled_and_carried(tmp_path, tiny_model):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(photo_like(10, 12)).save(tmp_path / "in.png", dpi=(72, 144), icc_profile=icc)
    img = upscale(tiny_model, tmp_path / "in.png", scale="3x2", device="cpu")
    assert isinstance(img, ImageData) and img.pixels.shape == (20, 36, 3)
    assert img.dpi == pytest.approx((216, 288), abs=0.1) and img.icc_profile == icc


@pytest.mark.filterwarnings("ignore::liif_cli.runtime.device.PrecisionWarning")  # no native bf16 here
def test_bf16_close_to_fp32(tiny_model):
    px = photo_like(16, 16)
    fp32 = upscale(tiny_model, px, scale=4, device="cpu", precision="fp32").astype(float)
    bf16 = upscale(tiny_model, px, scale=4, device="cpu", precision="bf16")
    assert 10 * np.log10(255**2 / max(np.mean((fp32 - bf16) ** 2), 1e-12)) > 40


def test_upscale_file(tmp_path, tiny_ckpt):
    Image.fromarray(photo_like(10, 12)).save(tmp_path / "photo.jpg", quality=95)
    res = upscale_file(tmp_path / "photo.jpg", model=tiny_ckpt, scale="2", device="cpu")
    assert res.output == tmp_path / "photo_x2.jpg" and res.out_hw == (20, 24)
    assert res.model == "tiny" and res.precision == "fp32" and res.kind == "RGB 8-bit"
    assert read_image(res.output).pixels.shape == (20, 24, 3)


@pytest.mark.cuda
def test_cuda_upscale_matches_cpu(tiny_model):
    px = photo_like(12, 12)
    cpu = upscale(tiny_model, px, scale=3, device="cpu").astype(int)
    gpu = upscale(tiny_model, px, scale=3, device="cuda", precision="fp32")
    assert np.abs(cpu - gpu).max() <= 1


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto"])
def test_cuda_half_precisions(tiny_model, precision):
    px = photo_like(16, 16)
    fp32 = upscale(tiny_model, px, scale=4, device="cpu").astype(float)
    half = upscale(tiny_model, px, scale=4, device="cuda", precision=precision)
    assert 10 * np.log10(255**2 / max(np.mean((fp32 - half) ** 2), 1e-12)) > 35


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "auto"])
def test_cuda_16_bit_upscale_is_exact_fp32_at_any_precision(tiny_model, precision):
    """16-bit images are computed in fp32 whatever --precision, and their levels leave the GPU
    as integers (engine.QUANTISED): the CPU's within one level of 65,535."""
    px = photo_like(12, 14).astype(np.uint16) * 257
    cpu = upscale(tiny_model, px, scale=3, device="cpu", precision="fp32").astype(int)
    gpu = upscale(tiny_model, px, scale=3, device="cuda", precision=precision)
    assert gpu.dtype == np.uint16 and np.abs(cpu - gpu.astype(int)).max() <= 1


@pytest.mark.cuda
def test_cuda_callers_half_module_and_current_gpu_stay_as_they_were(tiny_model):
    from liif_cli.runtime.upscaler import Upscaler

    net = tiny_model.cuda().half().eval()
    before = torch.cuda.current_device()
    last = torch.cuda.device_count() - 1
    up = Upscaler(net, device=f"cuda:{last}", precision="fp32")
    out = up.render(torch.rand(3, 9, 10), (18, 20), np.empty((18, 20, 3), np.uint16))
    assert out.max() > 0 and torch.cuda.current_device() == before
    assert next(net.parameters()).dtype == torch.float16  # the caller's, not cast


# ----------------------------------------------------------------------------------------------
# the command

@pytest.fixture
def folder(tmp_path):
    Image.fromarray(photo_like(10, 12)).save(tmp_path / "in.png")
    return tmp_path


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("native", [None, False], ids=["this-cpu", "no-native-bf16"])
def test_cli_writes_and_summarises(folder, tiny_ckpt, native, monkeypatch):
    """Whatever the CPU does with bf16 (as it is, then as an AVX2-only CPU), -q prints nothing:
    not even the note that bf16 fell back to fp32."""
    from liif_cli.runtime import device

    if native is not None:
        monkeypatch.setattr(device, "cpu_bf16_native", lambda: native)
    r = run("upscale", folder / "in.png", "--scale", "2.5", "--model", tiny_ckpt)
    assert r.exit_code == 0, r.output
    assert "in_x2.5.png" in r.stderr and "12×10 → 30×25" in r.stderr and "tiny" in r.stderr
    assert "cpu fp32" in r.stderr
    assert read_image(folder / "in_x2.5.png").pixels.shape == (25, 30, 3)
    r = run("upscale", folder / "in.png", "-o", folder / "o.webp", "--width", "24", "-q",
            "--model", tiny_ckpt, "--precision", "bf16", "--quality", "80", "--max-memory", "64M")
    assert r.exit_code == 0 and r.output == ""
    assert read_image(folder / "o.webp").pixels.shape == (20, 24, 3)
    r = run("upscale", folder / "in.png", "-o", folder / "p.png", "-s", "2", "--model",
            tiny_ckpt, "--precision", "bf16")  # not quiet: the note, and what ran
    ran = "bf16" if device.cpu_bf16_native() else "fp32"
    assert r.exit_code == 0 and f"cpu {ran}" in r.stderr, r.output
    assert ("no native bf16" in r.stderr) is (ran == "fp32")


def test_cli_overwrite(folder, tiny_ckpt):
    (folder / "out.png").write_bytes(b"keep me")
    r = run("upscale", folder / "in.png", "-o", folder / "out.png", "-s", "2", "-m", tiny_ckpt)
    assert r.exit_code == 2 and "output exists" in r.stderr and "--overwrite" in r.stderr
    assert (folder / "out.png").read_bytes() == b"keep me"
    r = run("upscale", folder / "in.png", "-o", folder / "out.png", "-s", "2", "-m", tiny_ckpt,
            "--overwrite")
    assert r.exit_code == 0 and read_image(folder / "out.png").width == 24


BAD_INPUTS = {  # name -> (args after the input, exit code, message)
    "missing": ([], 1, "input not found"),
    "empty": ([], 1, "input is empty"),
    "truncated": ([], 1, "truncated"),
    "text": ([], 1, "not an image file"),
    "scale 0": (["--scale", "0"], 2, "scale must be a positive finite number"),
    "scale negative": (["--scale", "-3"], 2, "scale must be a positive finite number"),
    "scale nan": (["--scale", "nan"], 2, "scale must be a positive finite number"),
    "scale inf": (["--scale", "inf"], 2, "scale must be a positive finite number"),
    "size 0x10": (["--size", "0x10"], 2, "width and height must be at least 1"),
    "scale and size": (["--scale", "2", "--size", "10x10"], 2, "give only one of"),
    "no size": ([], 2, "say how big"),
    "exists": (["-o", "{d}/exists.png"], 2, "output exists"),
    # a usage mistake like --format xyz (issue 23: it was exit 1)
    "extension": (["-o", "{d}/out.xyz"], 2, "unknown output format '.xyz'"),
    "bad model file": (["--model", "{d}/bad.pth"], 1, "not a readable PyTorch checkpoint"),
    "unknown model": (["--model", "no-such-model"], 1, "unknown model 'no-such-model'"),
    "corrupt bundled model": (["--model", None], 1, "corrupt"),
    "cuda:7": (["--device", "cuda:7"], 1, "cuda:7"),
    "bad device": (["--device", "gpu"], 2, "unknown device 'gpu'"),
    "fp16 on cpu": (["--device", "cpu", "--precision", "fp16"], 2, "fp16 is for GPUs"),
    "too large": (["--scale", "100", "--max-output-pixels", "1000000"], 2,
                  "over the 1.0 MP limit.*--max-output-pixels"),
    "bomb": (["--max-input-pixels", "100"], 1, "safety limit against decompression bombs"),
    "max memory": (["--max-memory", "1K"], 2, "--max-memory 1K is too small"),
    "missing argument": (None, 2, "Missing argument 'INPUT'"),
    "bad option": (["--bogus"], 2, "No such option: --bogus"),
    "bad quality": (["--quality", "0"], 2, "--quality must be a whole number from 1 to 100"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_cli_bad_input_one_line_and_nothing_written(tmp_path, tiny_ckpt, case, monkeypatch):
    args, code, message = BAD_INPUTS[case]
    d = tmp_path / "work"
    d.mkdir()
    if case == "corrupt bundled model":
        import liif_cli.runtime.weights as w

        if "default" not in w.BUNDLED:
            pytest.skip("no bundled model in this build")
        broken = tmp_path / "bundled"
        broken.mkdir()
        (broken / w.BUNDLED["default"].file).write_bytes(b"damaged")
        monkeypatch.setattr(w, "PACKAGE_WEIGHTS_DIR", broken)
    Image.fromarray(photo_like(10, 12)).save(d / "good.png")
    (d / "exists.png").write_bytes(b"old")
    (d / "bad.pth").write_text("not a checkpoint")
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("plain text")
    full = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(full[: len(full) // 2])
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    inp = {"missing": d / "nope.png", "empty": d / "empty.png", "truncated": d / "truncated.png",
           "text": d / "text.png"}.get(case, d / "good.png")
    if args is None:
        argv = ["upscale"]
    else:
        extra = [a.format(d=d) if isinstance(a, str) else a for a in args]
        size = [] if case == "no size" or any(a in extra for a in ("--scale", "--size")) else [
            "--scale", "2"]
        model = [] if "--model" in extra else ["--model", tiny_ckpt]
        extra = [a for a in extra if a is not None]
        if case == "corrupt bundled model":
            extra.remove("--model")
        argv = ["upscale", inp, *size, *model, *extra]
    r = run(*argv)
    assert r.exit_code == code, (r.exit_code, r.output)
    line = r.stderr.strip()
    assert line.startswith("error:") and "\n" not in line and "Traceback" not in r.output, line
    assert __import__("re").search(message, line), line
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cli_cuda_without_cuda(folder, tiny_ckpt):
    r = run("upscale", folder / "in.png", "-s", "2", "-m", tiny_ckpt, "--device", "cuda")
    assert r.exit_code == 1 and "no CUDA GPU is available" in r.stderr
    assert listing(folder) == ["in.png", "tiny.pth"]


def test_cli_errors_from_a_variable_name_it(folder, tiny_ckpt):
    """An error a LIIF_* value causes says where the value came from; the same value given as
    an option does not."""
    missing = folder / "mine.pth"
    r = runner.invoke(app, ["upscale", str(folder / "in.png"), "-s", "2"],
                      env={"LIIF_MODEL": str(missing)})
    assert r.exit_code == 1 and f"(LIIF_MODEL={missing}, from the environment)" in r.stderr
    r = run("upscale", folder / "in.png", "-s", "2", "-m", missing)
    assert r.exit_code == 1 and "LIIF_MODEL" not in r.stderr
    r = runner.invoke(app, ["upscale", str(folder / "in.png"), "-s", "2", "-m", str(tiny_ckpt)],
                      env={"LIIF_MAX_MEMORY": "1K"})
    assert r.exit_code == 2 and "(LIIF_MAX_MEMORY=1K, from the environment)" in r.stderr
    (folder / "fp32.png").write_bytes(b"keep")  # an error that merely contains the value
    r = runner.invoke(app, ["upscale", str(folder / "in.png"), "-s", "2", "-m", str(tiny_ckpt),
                            "-o", str(folder / "fp32.png")], env={"LIIF_PRECISION": "fp32"})
    assert r.exit_code == 2 and "output exists" in r.stderr and "LIIF_PRECISION" not in r.stderr


def test_cli_denoise_wins_over_a_liif_model_without_a_partner(folder):
    """The README: --denoise picks the default/real pair whatever LIIF_MODEL says (one note);
    --model fast given with it is still a mistake."""
    args = ["upscale", str(folder / "in.png"), "-s", "2", "--denoise", "0.5"]
    r = runner.invoke(app, [*args, "-o", str(folder / "a.png")], env={"LIIF_MODEL": "fast"})
    assert r.exit_code == 0, r.output
    assert "note: --denoise picks the default/real pair: LIIF_MODEL=fast not used" in r.stderr
    assert "model real@0.5" in r.stderr
    r = runner.invoke(app, [*args, "-o", str(folder / "b.png"), "-m", "fast"])
    assert r.exit_code == 2 and "'fast' has none" in r.stderr


def test_stdout_onto_a_terminal_is_refused_before_any_work(folder, tiny_ckpt, monkeypatch):
    """`-o -` onto a terminal is a usage error, as `-` from a terminal is: nothing is read."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    with pytest.raises(UsageError, match="stdout is a terminal"):
        upscale_file(folder / "missing.png", "-", model=tiny_ckpt, scale=2, device="cpu")


def test_cli_models_piped_prints_a_header_line():
    r = run("models")  # stdout is not a terminal here
    lines = r.stdout.splitlines()
    assert r.exit_code == 0 and lines[0].split("\t") == [
        "name", "source", "arch", "encoder", "params", "trained", "bytes", "path"]
    assert [ln.split("\t")[0] for ln in lines[1:4]] == ["default", "real", "fast"]


def test_cli_help_still_works():
    r = run("upscale", "--help")
    assert r.exit_code == 0 and "--scale" in r.output and "--max-output-pixels" in r.output
    r = run()
    assert "Usage" in r.output and "upscale" in r.output  # `liif` alone shows the help


def test_cli_root_usage_errors_are_one_line():
    r = run("--bogus")
    assert r.exit_code == 2 and r.stderr.startswith("error: No such option: --bogus (see '")
    assert r.stderr.count("\n") == 1
    r = run("no-such-command")
    assert r.exit_code == 2 and "No such command 'no-such-command'" in r.stderr
    assert r.stderr.count("\n") == 1


def test_cli_16bit_grey_alpha_round_trip(tmp_path, tiny_ckpt):
    rng = np.random.default_rng(0)
    img = ImageData(rng.integers(0, 65536, (6, 7, 1), dtype=np.uint16),
                    rng.integers(0, 65536, (6, 7), dtype=np.uint16), dpi=(100.0, 100.0))
    write_image(tmp_path / "in.png", img)
    r = run("upscale", tmp_path / "in.png", "-s", "2", "-m", tiny_ckpt, "-o", tmp_path / "o.tif")
    assert r.exit_code == 0, r.output
    assert "grey+alpha 16-bit" in r.stderr
    out = read_image(tmp_path / "o.tif")
    assert out.bit_depth == 16 and out.alpha is not None and out.width == 14
    assert out.dpi == pytest.approx((200, 200), abs=0.01)


@pytest.mark.parametrize("mode, bits, out, kind, notes", [
    ("RGBA", 8, "out.jpg", "RGB 8-bit", ["JPEG has no alpha channel"]),
    ("RGBA", 8, "out.bmp", "RGB 8-bit", ["BMP has no alpha channel"]),
    ("RGB", 16, "out.jpg", "RGB 8-bit", ["JPEG is 8-bit"]),
    ("RGBA", 16, "out.webp", "RGB+alpha 8-bit", ["WebP is 8-bit"]),
    ("L", 8, "out.webp", "RGB 8-bit", []),  # WebP has no grey: RGB, nothing lost
    ("LA", 16, "out.png", "grey+alpha 16-bit", []),
    ("RGBA", 16, "out.tif", "RGB+alpha 16-bit", []),
])
def test_the_summary_describes_the_file_on_disk(tmp_path, tiny_ckpt, mode, bits, out, kind,
                                                notes):
    """`kind` is what the written file holds (read back), and each thing the format cannot hold
    (alpha, 16 bits) is one note."""
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    px = photo_like(8, 10, channels=channels)
    px = px.astype(np.uint16) * 257 if bits == 16 else px
    colour = 1 if channels <= 2 else 3
    write_image(tmp_path / "in.png", ImageData(px[:, :, :colour], px[:, :, -1]
                                               if channels in (2, 4) else None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = upscale_file(tmp_path / "in.png", tmp_path / out, model=tiny_ckpt, scale=2,
                           device="cpu")
    assert res.kind == kind == read_image(res.output).kind()
    said = [str(w.message) for w in caught if issubclass(w.category, LiifWarning)]
    assert len(said) == len(notes) and all(n in s for n, s in zip(notes, said)), said


def test_metadata_a_format_cannot_hold_is_one_note(tmp_path, tiny_ckpt):
    """EXIF into TIFF or BMP, XMP into BMP, DPI into WebP were dropped without the note the
    README promises for what a format cannot hold."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F] = "Camera"
    Image.fromarray(photo_like(8, 10)).save(tmp_path / "in.jpg", exif=exif, dpi=(300, 300),
                                            xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    for out, note in (("o.tif", "TIFF keeps no EXIF (camera, date, GPS): dropped"),
                      ("o.bmp", "BMP keeps no EXIF (camera, date, GPS) and no XMP: dropped"),
                      ("o.webp", "WebP keeps no DPI: dropped"), ("o.png", None)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            upscale_file(tmp_path / "in.jpg", tmp_path / out, model=tiny_ckpt, scale=2,
                         device="cpu")
        said = [str(w.message) for w in caught if issubclass(w.category, LiifWarning)]
        assert said == ([] if note is None else [note + " (.png or .jpg keep them)"]), said


def test_a_command_refused_before_any_work_draws_no_progress_bar(monkeypatch):
    """The bar is drawn from the first progress call: an error found first (stdin or stdout a
    terminal, a missing file) is shown alone, not after a flashed bar."""
    from liif_cli.cli import displays

    monkeypatch.setattr(type(displays.console), "is_terminal", property(lambda self: True))
    started = []

    class Recorded(displays.Progress):
        def start(self):
            started.append(self)
            super().start()

    monkeypatch.setattr(displays, "Progress", Recorded)
    for bar in (displays.progress_bar("upscaling x", quiet=False),
                displays.video_bar("upscaling x", quiet=False)):
        with pytest.raises(UsageError), bar:
            raise UsageError("stdout is a terminal")
    assert started == []
    with displays.video_bar("upscaling x", quiet=False) as on_progress:
        on_progress(1, 4)
        on_progress(2, 4)
    assert len(started) == 1 and not started[0].live.is_started  # drawn once, then gone


def test_another_packages_warning_is_one_note_line(tmp_path, tiny_ckpt, monkeypatch):
    """A JPEG whose EXIF block is cut short: Pillow warns (Python's two lines, with its source
    path); the command prints it as one `note: FILE: PIL: ...` line, none under --quiet, and
    with LIIF_DEBUG the whole warning. `liif batch` decodes on threads: its note names the
    file too."""
    import io

    buf = io.BytesIO()
    Image.fromarray(photo_like(24, 32)).save(
        buf, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03")
    src = tmp_path / "cut_exif.jpg"
    src.write_bytes(buf.getvalue())
    args = ["upscale", str(src), "-s", "2", "-m", str(tiny_ckpt), "--overwrite", "-o"]
    r = runner.invoke(app, [*args, str(tmp_path / "a.png")])
    assert r.exit_code == 0, r.output
    lines = r.stderr.strip().splitlines()
    note = "PIL: Corrupt EXIF data. Expecting to read 12 bytes but only got 4."
    assert lines[0] == f"note: {src}: {note}"
    assert len(lines) == 2 and lines[1].startswith("wrote ") and (tmp_path / "a.png").exists()
    (tmp_path / "in").mkdir()
    Image.fromarray(photo_like(24, 32)).save(tmp_path / "in" / "fine.png")
    (tmp_path / "in" / "cut.jpg").write_bytes(buf.getvalue())
    r = runner.invoke(app, ["batch", str(tmp_path / "in"), str(tmp_path / "out"), "-s", "2",
                            "-m", str(tiny_ckpt)])
    assert r.exit_code == 0, r.output
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("note:")] == [
        f"note: {tmp_path / 'in' / 'cut.jpg'}: {note}"]
    r = runner.invoke(app, [*args, str(tmp_path / "b.png"), "--quiet"])
    assert r.exit_code == 0 and r.stderr == ""
    monkeypatch.setenv("LIIF_DEBUG", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runner.invoke(app, [*args, str(tmp_path / "c.png"), "--quiet"])
    assert any("Corrupt EXIF data" in str(w.message) for w in caught)


# ----------------------------------------------------------------------------------------------
# the library's own checks (the CLI's options were checked by typer alone)

def test_library_calls_with_a_callers_mistake_are_one_line_usage_errors(tmp_path, tiny_ckpt,
                                                                         tiny_model):
    from liif_cli import Upscaler
    from liif_cli.tasks.batch import plan_batch, run_batch

    rgb = photo_like(6, 8)
    src = tmp_path / "in.png"
    Image.fromarray(rgb).save(src)
    up = Upscaler(tiny_model, device="cpu")
    for scale in ((2,), (2, "a"), (2, 3, 4)):  # `(2,)` was a bare ValueError from unpacking
        with pytest.raises(UsageError, match=r"bad scale .*\(horizontal, vertical\)"):
            upscale(up, rgb, scale=scale)
    assert upscale(up, rgb, scale=(3, 2)).shape == upscale(up, rgb, scale="3x2").shape == (
        12, 24, 3)
    # quality: refused before the upscale (500 and "high" were written, -1 failed after it)
    for quality in (0, 101, 500, "high", 9.5, True):
        with pytest.raises(UsageError, match="--quality must be a whole number from 1 to 100"):
            upscale_file(src, tmp_path / "out.jpg", model=up, scale=2, quality=quality)
        with pytest.raises(UsageError, match="--quality"):
            write_image(tmp_path / "out.webp", ImageData(rgb), quality=quality)
    assert not list(tmp_path.glob("out*"))
    with pytest.raises(UsageError, match="upscale_file reads a file"):
        upscale_file(rgb, tmp_path / "o.png", model=up, scale=2)
    # run_batch's size is a SizeRequest: size=2 failed every file as an internal error
    (tmp_path / "imgs").mkdir()
    Image.fromarray(rgb).save(tmp_path / "imgs" / "a.png")
    plan = plan_batch(tmp_path / "imgs", tmp_path / "outs")
    for kw, message in ((dict(size=2), "size is a int: give a SizeRequest"),
                        (dict(size=size_request(scale=2), quality=0), "--quality")):
        with pytest.raises(UsageError, match=message):
            run_batch(plan, str(tiny_ckpt), devices="cpu", **kw)
    assert not (tmp_path / "outs").exists()
    with pytest.raises(UsageError, match="not a LIIF model"):
        Upscaler(torch.nn.Linear(2, 2), device="cpu")


def test_a_big_endian_uint16_array_is_uint16():
    """'>u2' (as read from a FITS or a raw big-endian file) was refused as "not uint16"."""
    from liif_cli import Upscaler

    deep = photo_like(6, 8).astype(np.uint16) * 257
    up = Upscaler(random_model(), device="cpu", precision="fp32")
    got = upscale(up, deep.astype(">u2"), scale=2)
    assert got.dtype == np.uint16 and np.array_equal(got, upscale(up, deep, scale=2))


def test_float_tiffs_are_read_as_0_to_1(tmp_path):
    """A float TIFF in [0, 1] came out nearly black (grey, mode F, was clipped to 0-255 as
    8-bit levels: values 0 to 6 of 255) or was refused (colour)."""
    import tifffile

    rng = np.random.default_rng(0)
    grey = rng.random((6, 5), dtype=np.float32)
    Image.fromarray(grey, mode="F").save(tmp_path / "grey.tiff")
    colour = rng.random((6, 5, 3), dtype=np.float32)
    tifffile.imwrite(tmp_path / "colour.tiff", colour, photometric="rgb")
    for path, want in ((tmp_path / "grey.tiff", grey[:, :, None]),
                       (tmp_path / "colour.tiff", colour)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # all inside 0 to 1: no note
            px = read_image(path).pixels
        assert px.dtype == np.uint16 and px.shape == want.shape
        assert np.abs(px / 65535 - want).max() <= 0.5 / 65535 + 1e-7
    tifffile.imwrite(tmp_path / "hdr.tiff", colour * 2, photometric="rgb")
    with pytest.warns(LiifWarning, match=r"hdr.tiff: .*% of its floating-point samples lie "
                                         r"outside 0 to 1 .* clipped"):
        assert read_image(tmp_path / "hdr.tiff").pixels.max() == 65535


def test_a_bad_quality_typed_is_not_blamed_on_the_environment(tmp_path, monkeypatch):
    """Click's range check said "Invalid value for '--quality' (env var: 'LIIF_QUALITY')" of a
    value typed on the command line."""
    src = tmp_path / "a.png"
    Image.fromarray(photo_like(6, 8)).save(src)
    monkeypatch.delenv("LIIF_QUALITY", raising=False)
    for q in ("0", "101", "abc", "9.5"):
        r = CliRunner().invoke(app, ["upscale", str(src), "-s", "2", "--quality", q])
        assert r.exit_code == 2 and r.output == (
            f"error: --quality must be a whole number from 1 to 100, not {q}\n"), r.output
    monkeypatch.setenv("LIIF_QUALITY", "500")
    r = CliRunner().invoke(app, ["upscale", str(src), "-s", "2"])
    assert r.exit_code == 2 and "(LIIF_QUALITY=500, from the environment)" in r.output
    assert not list(tmp_path.glob("a_x2*"))
