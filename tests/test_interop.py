"""Interop and the shell (issue 15): safetensors and ONNX export, --fit, stdin/stdout, the
`liif models` listing for scripts, shell completion and LIIF_* environment variables."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import README, listing, onnx_upscale, photo_like, random_model
from PIL import Image
from typer.testing import CliRunner

from liif_cli.cli import app
from liif_cli.errors import CheckpointError, UsageError
from liif_cli.io.images import read_image
from liif_cli.runtime.sizing import fit_size, size_request, target_size
from liif_cli.runtime.weights import load_checkpoint, load_model, save_checkpoint
from liif_cli.tasks.upscale import upscale

runner = CliRunner()


def run(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], **kw)


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(photo_like(12, 16, seed=3)).save(path)
    return path


@pytest.fixture
def tiny_st(tmp_path, tiny_ckpt):
    r = run("export", tiny_ckpt, "-o", tmp_path / "tiny.safetensors", "-q")
    assert r.exit_code == 0, r.output
    return tmp_path / "tiny.safetensors"


# ----------------------------------------------------------------------------------------------
# --fit: ImageMagick's -resize WxH (contain), WxH^ (cover), WxH! (fill)

@pytest.mark.parametrize("in_wh,box,fit,out_wh", [
    ((640, 480), (100, 100), "contain", (100, 75)),
    ((640, 480), (100, 100), "cover", (133, 100)),  # 480 * 100/480, 640 * 100/480 = 133.3
    ((640, 480), (100, 100), "fill", (100, 100)),
    ((1000, 333), (200, 200), "contain", (200, 67)),  # 66.6 rounds up
    ((1000, 333), (200, 200), "cover", (601, 200)),  # 1000 * 200/333 = 600.6
    ((3, 7), (2, 2), "contain", (1, 2)),  # 0.857 + 0.5 floors to 1
    ((1000, 1), (10, 10), "contain", (10, 1)),  # never below 1 pixel
    ((30, 20), (30, 20), "cover", (30, 20)),  # the box is the image: unchanged
    ((30, 20), (95, 40), "contain", (60, 40)),
    ((30, 20), (95, 40), "cover", (95, 63)),  # 20 * 95/30 = 63.33
])
def test_fit_rounds_as_imagemagick(in_wh, box, fit, out_wh):
    w, h = in_wh
    assert fit_size((h, w), box, fit) == (out_wh[1], out_wh[0])
    assert target_size((h, w), size=box, fit=fit) == (out_wh[1], out_wh[0])


def test_fit_usage_errors():
    with pytest.raises(UsageError, match="--fit contain needs --size"):
        size_request(scale=2, fit="contain")
    with pytest.raises(UsageError, match="unknown --fit 'squash'"):
        size_request(size="10x10", fit="squash")
    assert size_request(size="10x10").fit == "fill"  # today's behaviour stays the default


def test_fit_from_the_cli_upscale_and_batch(tmp_path, photo, tiny_ckpt):
    r = run("upscale", photo, "--size", "40x40", "--fit", "contain", "-m", tiny_ckpt,
            "-o", tmp_path / "c.png")
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "c.png").size == (40, 30)
    out = tmp_path / "b"
    r = run("batch", tmp_path, out, "--size", "40x40", "--fit", "cover", "-m", tiny_ckpt, "-q")
    assert r.exit_code == 0, r.output
    assert Image.open(out / "in.png").size == (53, 40)  # 16 * 40/12 = 53.3
    r = run("upscale", photo, "--scale", "2", "--fit", "cover", "-m", tiny_ckpt)
    assert r.exit_code == 2 and "--fit cover needs --size WxH" in r.output
    assert "Traceback" not in r.output and "in_x2.png" not in listing(tmp_path)


def test_fit_in_the_library(tiny_model):
    arr = photo_like(10, 20)
    assert upscale(tiny_model, arr, size=(30, 30), fit="contain").shape == (15, 30, 3)
    assert upscale(tiny_model, arr, size=(30, 30), fit="cover").shape == (30, 60, 3)


# ----------------------------------------------------------------------------------------------
# stdin and stdout

def test_stdin_to_stdout_png_by_default(photo, tiny_ckpt, tmp_path):
    r = run("upscale", "-", "-s", "2", "-m", tiny_ckpt, input=photo.read_bytes())
    assert r.exit_code == 0, r.stderr
    assert r.stdout_bytes[:8] == b"\x89PNG\r\n\x1a\n"  # the image, and only the image
    assert "wrote stdout  16×12 → 32×24" in r.stderr  # messages on stderr
    got = np.asarray(Image.open(io.BytesIO(r.stdout_bytes)))
    ref = tmp_path / "ref.png"
    assert run("upscale", photo, "-s", "2", "-m", tiny_ckpt, "-o", ref).exit_code == 0
    assert np.array_equal(got, np.asarray(Image.open(ref)))  # same pixels as a file run


def test_stdin_to_a_file(photo, tiny_ckpt, tmp_path):
    r = run("upscale", "-", "-s", "2", "-m", tiny_ckpt, "-o", tmp_path / "o.tif",
            input=photo.read_bytes())
    assert r.exit_code == 0, r.output
    assert r.stdout_bytes == b"" and f"wrote {tmp_path / 'o.tif'}" in r.stderr
    assert read_image(tmp_path / "o.tif").pixels.shape == (24, 32, 3)


@pytest.mark.parametrize("fmt,magic", [("webp", b"RIFF"), ("jpg", b"\xff\xd8"),
                                       ("tiff", b"II*\x00"), ("bmp", b"BM")])
def test_stdout_format_from_format_option(photo, tiny_ckpt, fmt, magic):
    r = run("upscale", photo, "-s", "1.5", "-m", tiny_ckpt, "-o", "-", "--format", fmt, "-q")
    assert r.exit_code == 0, r.stderr
    assert r.stdout_bytes.startswith(magic) and r.stderr == ""
    assert Image.open(io.BytesIO(r.stdout_bytes)).size == (24, 18)


def test_format_names_the_default_output(photo, tiny_ckpt, tmp_path):
    r = run("upscale", photo, "-s", "2", "-m", tiny_ckpt, "--format", "webp", "-q")
    assert r.exit_code == 0, r.output
    assert "in_x2.webp" in listing(tmp_path)
    r = run("upscale", photo, "-s", "2", "-m", tiny_ckpt, "--format", "png",
            "-o", tmp_path / "x.jpg")
    assert r.exit_code == 2 and "--format png disagrees" in r.output
    assert "x.jpg" not in listing(tmp_path)


@pytest.mark.parametrize("stdin,code,message", [
    (b"", 1, "no image on stdin: it was empty"),
    (b"not an image at all", 1, "cannot read stdin: not an image file"),
])
def test_bad_stdin_is_one_line_and_writes_nothing(tmp_path, tiny_ckpt, stdin, code, message):
    r = run("upscale", "-", "-s", "2", "-m", tiny_ckpt, input=stdin)
    assert r.exit_code == code and message in r.stderr
    assert r.stdout_bytes == b"" and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_unknown_format_is_a_usage_error(photo, tiny_ckpt, tmp_path):
    r = run("upscale", photo, "-s", "2", "-m", tiny_ckpt, "-o", "-", "--format", "gif")
    assert r.exit_code == 2 and "unknown --format 'gif'" in r.stderr and r.stdout_bytes == b""
    r = run("export", tiny_ckpt, "--format", "h5", "-o", tmp_path / "m.h5")
    assert r.exit_code == 2 and "unknown --format 'h5'" in r.output
    assert "m.h5" not in listing(tmp_path)


@pytest.mark.slow
def test_pipe_through_a_real_shell(photo, tiny_ckpt, tmp_path):
    """The installed command in a pipeline: cat | liif upscale - | file (stderr separate)."""
    cmd = (f"cat {photo} | {sys.executable} -m liif_cli upscale - -s 2 -m {tiny_ckpt} "
           f"--format jpg > {tmp_path / 'out.jpg'}")
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    assert "wrote stdout" in p.stderr
    assert Image.open(tmp_path / "out.jpg").size == (32, 24)
    # a terminal on stdin is a usage error, not a hang (here: stdin closed, not a pipe of data)
    p = subprocess.run([sys.executable, "-m", "liif_cli", "upscale", "-", "-s", "2"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "no image on stdin" in p.stderr


def test_exif_survives_the_cli(tmp_path, tiny_ckpt):
    from test_imageio import exif_with_thumbnail

    src = tmp_path / "cam.jpg"
    Image.fromarray(photo_like(6, 10)).save(src, exif=exif_with_thumbnail(6, 10, 6))
    r = run("upscale", src, "-s", "2", "-m", tiny_ckpt, "-o", tmp_path / "big.jpg")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "big.jpg") as im:
        exif = im.getexif()
        assert im.size == (12, 20) and exif[0x0112] == 1 and exif[0x010F] == "LiifCam"


# ----------------------------------------------------------------------------------------------
# safetensors

def test_safetensors_export_loads_without_pickle_and_pixels_identical(tmp_path, tiny_ckpt,
                                                                      tiny_st, monkeypatch):
    from safetensors import safe_open

    with safe_open(str(tiny_st), framework="pt") as f:
        meta = f.metadata()
    assert meta["name"] == "liif"
    assert json.loads(meta["args"]) == torch.load(tiny_ckpt, weights_only=True)["model"]["args"]

    def no_pickle(*a, **k):
        raise AssertionError("torch.load called for a .safetensors file")

    monkeypatch.setattr(torch, "load", no_pickle)
    st = load_model(str(tiny_st))
    monkeypatch.undo()
    pth = load_model(str(tiny_ckpt))
    arr = photo_like(9, 13, seed=5)
    assert np.array_equal(upscale(st, arr, scale=2.3), upscale(pth, arr, scale=2.3))
    # and from the CLI, --model x.safetensors
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(arr).save(tmp_path / "src.png")
    for model, out in ((tiny_st, a), (tiny_ckpt, b)):
        r = run("upscale", tmp_path / "src.png", "-s", "3", "-m", model, "-o", out)
        assert r.exit_code == 0, r.output
    assert np.array_equal(read_image(a).pixels, read_image(b).pixels)


def test_safetensors_keeps_dtype_and_round_trips_to_pth(tmp_path):
    model = random_model()
    save_checkpoint(model, tmp_path / "half.pth", half=True, liif_cli={"steps": 7})
    r = run("export", tmp_path / "half.pth", "-o", tmp_path / "half.safetensors")
    assert r.exit_code == 0 and "read back" in r.stderr
    # fp16 as in the .pth: about half the size of fp32 weights
    n = sum(v.numel() for v in model.state_dict().values())
    assert (tmp_path / "half.safetensors").stat().st_size < 2.5 * n + 4096
    assert load_model(str(tmp_path / "half.safetensors")).card.meta["steps"] == 7
    r = run("export", tmp_path / "half.safetensors", "-o", tmp_path / "back.pth", "-q")
    assert r.exit_code == 0, r.output
    a = torch.load(tmp_path / "half.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "back.pth", weights_only=True)["model"]
    assert a["args"] == b["args"] and all(torch.equal(a["sd"][k], b["sd"][k]) for k in a["sd"])


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_export_of_a_changed_network_writes_its_weights_not_its_files(tmp_path, tiny_ckpt, fmt):
    """A loaded network whose weights then changed (fine-tuned, `load_state_dict`) exports
    those weights: once its file's stale ones were written, and read back "equal"."""
    from liif_cli.runtime.weights import save_checkpoint
    from liif_cli.tasks.export import export_model

    trained = tmp_path / "trained.pth"
    save_checkpoint(load_model(str(tiny_ckpt)), trained,
                    liif_cli={"steps": 7, "epoch": 1, "config": {"lr": 1e-4}, "mine": "kept"})
    model = load_model(str(trained), device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    out = export_model(model, tmp_path / f"tuned.{fmt}", fmt=fmt).path
    loaded = load_model(str(out), device="cpu")
    back, want = loaded.state_dict(), model.state_dict()
    assert back.keys() == want.keys() and all(torch.equal(back[k], want[k]) for k in want)
    # the file's training record is not these weights': `liif models` showed "7 steps"
    meta = loaded.card.meta
    assert not {"steps", "epoch", "config"} & meta.keys() and meta["mine"] == "kept", meta
    assert meta["changed_from"] == "trained (7 steps)"


def test_models_folder_lists_and_loads_safetensors(tmp_path, tiny_st, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    tiny_st.rename(folder / "mine.safetensors")
    monkeypatch.setenv("LIIF_MODELS_DIR", str(folder))
    r = run("models")  # stdout is not a terminal here: plain rows
    assert r.exit_code == 0, r.output
    rows = [line.split("\t") for line in r.stdout.strip().splitlines()]
    mine = [row for row in rows if row[0] == "mine"]
    assert mine and mine[0][1] == "user" and mine[0][3] == "edsr-baseline"
    assert int(mine[0][4]) > 0 and mine[0][7].endswith("mine.safetensors")
    assert all(len(row) == 8 for row in rows)
    assert load_model("mine").card.name == "mine"  # by name, from the folder


def test_models_json(tmp_path, tiny_ckpt, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "t.pth").write_bytes(tiny_ckpt.read_bytes())
    monkeypatch.setenv("LIIF_MODELS_DIR", str(folder))
    r = run("models", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    t = next(row for row in rows if row["name"] == "t")
    assert t["source"] == "user" and t["params"] > 0 and t["path"].endswith("t.pth")


def _safetensors_without_spec(path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in random_model().state_dict().items()}, str(path))


@pytest.mark.parametrize("kind,message", [
    ("no-spec", "has weights but no LIIF spec in its metadata"),
    ("truncated", "is not a readable safetensors file (truncated or corrupt"),
    ("garbage", "is not a readable safetensors file"),
])
def test_bad_safetensors_is_one_line(tmp_path, tiny_st, photo, kind, message):
    bad = tmp_path / "bad.safetensors"
    if kind == "no-spec":
        _safetensors_without_spec(bad)
    elif kind == "truncated":
        bad.write_bytes(tiny_st.read_bytes()[:-1000])
    else:
        bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")):
        load_checkpoint(bad)
    before = listing(tmp_path)
    r = run("upscale", photo, "-s", "2", "-m", bad)
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output
    r2 = run("export", bad, "-o", tmp_path / "x.pth")
    assert r2.exit_code == 1 and message in r2.output
    assert listing(tmp_path) == before  # nothing written


def test_onnx_is_not_a_model_to_load(tmp_path, photo):
    for content in (b"", b"\x08\x07garbage"):
        path = tmp_path / "m.onnx"
        path.write_bytes(content)
        r = run("upscale", photo, "-s", "2", "-m", path)
        assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
        assert ("empty" if not content else "is an ONNX graph") in r.output
    assert "in_x2.png" not in listing(tmp_path)


def test_export_refuses_to_clobber(tmp_path, tiny_ckpt):
    dst = tmp_path / "m.safetensors"
    dst.write_bytes(b"precious")
    r = run("export", tiny_ckpt, "-o", dst)
    assert r.exit_code == 2 and "output exists" in r.output and dst.read_bytes() == b"precious"
    r = run("export", tiny_ckpt, "-o", dst, "--overwrite", "-q")
    assert r.exit_code == 0 and load_checkpoint(dst) is not None
    assert listing(tmp_path) == ["m.safetensors", "tiny.pth"]  # no temporaries left
    r = run("export", tiny_ckpt, "-o", tmp_path / "m.pth", "--format", "onnx")
    assert r.exit_code == 2 and "--format onnx disagrees" in r.output


# ----------------------------------------------------------------------------------------------
# ONNX

@pytest.fixture(scope="module")
def ort():
    return pytest.importorskip("onnxruntime", reason="needs the [onnx] extra")


@pytest.mark.slow
def test_onnx_graph_matches_liif_upscale(tmp_path, ort, tiny_ckpt, photo):
    import onnx

    dst = tmp_path / "tiny.onnx"
    r = run("export", tiny_ckpt, "--format", "onnx", "-o", dst)
    assert r.exit_code == 0, r.output
    assert "onnxruntime matches torch" in r.stderr
    m = onnx.load(str(dst))
    inputs = [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
              for i in m.graph.input]
    assert inputs == [("image", [1, 3, "h", "w"]), ("coord", [1, "N", 2]),
                      ("cell", [1, "N", 2])]  # the official order, h, w and N dynamic
    assert [o.name for o in m.graph.output] == ["rgb"]
    assert {p.key: p.value for p in m.metadata_props}["name"] == "liif"
    session = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    r = run("upscale", photo, "--size", "37x29", "-m", tiny_ckpt, "-o", tmp_path / "ref.png")
    assert r.exit_code == 0, r.output
    ref = read_image(tmp_path / "ref.png").pixels
    got = onnx_upscale(session, read_image(photo).pixels, (29, 37), chunk=300)
    diff = np.abs(got.astype(int) - ref.astype(int))
    assert diff.max() <= 1, diff.max()  # within one 8-bit level
    assert (diff == 0).mean() > 0.99
    # another input size, one query at a time for a few points: N = 1 works
    small = photo_like(7, 5, seed=9)
    one = onnx_upscale(session, small, (3, 2), chunk=1)
    assert np.abs(one.astype(int) - upscale(load_model(str(tiny_ckpt)), small, size=(2, 3))
                  .astype(int)).max() <= 1


@pytest.mark.slow
def test_readme_onnx_snippet_runs(tmp_path, ort, tiny_ckpt, photo, monkeypatch):
    """The README's onnxruntime example, as printed, gives `liif upscale`'s pixels."""
    readme = README.read_text()
    block = readme.split("From Python with onnxruntime", 1)[1].split("```python", 1)[1]
    code = "\n".join(line[2:] for line in block.split("```", 1)[0].splitlines())
    assert 'InferenceSession("default.onnx")' in code and "chunk" in code
    r = run("export", tiny_ckpt, "-f", "onnx", "-o", tmp_path / "default.onnx", "-q")
    assert r.exit_code == 0, r.output
    (tmp_path / "photo.png").write_bytes(photo.read_bytes())
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("chunk = 65536", "chunk = 100"), "README.md", "exec"), {})
    r = run("upscale", "photo.png", "-s", "2", "-m", tiny_ckpt, "-o", "ref.png")
    assert r.exit_code == 0, r.output
    got, ref = (read_image(tmp_path / n).pixels.astype(int) for n in ("photo_x2.png", "ref.png"))
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1


def test_corrupt_onnx_target_is_not_left_behind(tmp_path, tiny_ckpt, monkeypatch):
    """A graph that fails its check after writing is never published."""
    import liif_cli.tasks.export as export

    def broken(loaded, tmp):
        with open(tmp, "wb") as f:
            f.write(b"\x08\x07truncated")
        return export._check_onnx(tmp, None, None)

    pytest.importorskip("onnx")
    monkeypatch.setattr(export, "_write_onnx", broken)
    r = run("export", tiny_ckpt, "-f", "onnx", "-o", tmp_path / "x.onnx")
    assert r.exit_code == 1 and "does not pass onnx.checker" in r.output
    assert len(r.output.strip().splitlines()) == 2  # the "tracing" note, then the error
    assert listing(tmp_path) == ["tiny.pth"]


# ----------------------------------------------------------------------------------------------
# completion and environment variables

def test_shell_completion_is_on():
    import shutil
    from pathlib import Path

    liif = shutil.which("liif", path=str(Path(sys.executable).parent)) or shutil.which("liif")
    if liif is None:
        pytest.skip("the `liif` command is not installed (pip install -e .)")
    env = {**os.environ, "_LIIF_COMPLETE": "complete_bash", "COMP_WORDS": "liif exp",
           "COMP_CWORD": "1"}
    p = subprocess.run([liif], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.split() == ["export"]
    r = run("--help")
    assert "--install-completion" in r.output


@pytest.mark.parametrize("native", [None, False], ids=["this-cpu", "no-native-bf16"])
def test_common_options_from_environment(tmp_path, photo, tiny_ckpt, native, monkeypatch):
    from liif_cli.runtime import device

    if native is not None:  # as on an AVX2-only CPU: bf16 falls back to fp32, with a note
        monkeypatch.setattr(device, "cpu_bf16_native", lambda: native)
    r = run("upscale", photo, "-s", "2", "-o", tmp_path / "a.png",
            env={"LIIF_MODEL": str(tiny_ckpt), "LIIF_PRECISION": "bf16"})
    assert r.exit_code == 0, r.output
    ran = "bf16" if device.cpu_bf16_native() else "fp32"
    assert "model tiny" in r.output and f"cpu {ran}" in r.output
    assert ("no native bf16" in r.output) is (ran == "fp32")
    r = run("upscale", photo, "-s", "2", "-o", tmp_path / "b.png", "--precision", "fp32",
            env={"LIIF_MODEL": str(tiny_ckpt), "LIIF_PRECISION": "bf16"})
    assert r.exit_code == 0 and "cpu fp32" in r.output  # the command line wins
    r = run("upscale", photo, "-s", "2", "-o", tmp_path / "c.png",
            env={"LIIF_MODEL": str(tiny_ckpt), "LIIF_MAX_MEMORY": "1K"})
    assert r.exit_code == 2 and "--max-memory 1K is too small" in r.output
    r = run("upscale", "--help", env={"COLUMNS": "200"})
    for var in ("LIIF_MODEL", "LIIF_DEVICE", "LIIF_PRECISION", "LIIF_MAX_MEMORY", "LIIF_QUALITY"):
        assert var in r.output
