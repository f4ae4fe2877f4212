"""liif eval: official protocols against the golden official numbers, metrics, pairing, errors."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import photo_like
from PIL import Image
from typer.testing import CliRunner

from liif_cli.cli import app
from liif_cli.data import metrics, samples
from liif_cli.errors import DataError, UsageError
from liif_cli.io.files import find_images
from liif_cli.tasks import evaluate as ev

GOLDEN_SCALES = (2, 3, 4, 6)
GOLDEN_TOL_DB = 0.01  # the agreement target with the official test.py
runner = CliRunner()


def _official(manifest: dict) -> dict[tuple[str, int], float]:
    """(protocol, scale) -> official PSNR; eval_type None is our 'rgb' protocol."""
    out = {}
    for e in manifest["models"]["edsr-baseline-liif"]["eval"]:
        proto = "rgb" if e["eval_type"] is None else e["eval_type"].split("-")[0]
        out[(proto, e["scale"])] = e["psnr"]
    return out


def _save(path, arr) -> None:
    Image.fromarray(arr).save(path)


@pytest.fixture
def hr_dir(tmp_path):
    """Two small photo-like HR images with sizes that are not multiples of 2 or 3."""
    d = tmp_path / "Tiny" / "HR"
    d.mkdir(parents=True)
    _save(d / "a.png", photo_like(41, 37, seed=1))
    _save(d / "b.png", photo_like(34, 45, seed=2))
    return d


def _lr_dir(hr_dir, root, scales, *, transform=None):
    """An LR_bicubic-style folder (X{s}/{stem}x{s}.png) made exactly as make_lr makes LR."""
    for s in scales:
        (root / f"X{s}").mkdir(parents=True)
        for p in find_images(hr_dir):
            _, lr = samples.make_lr(ev.load_rgb(p), s)
            _save(root / f"X{s}" / f"{p.stem}x{s}.png", transform(lr) if transform else lr)
    return root


# ----------------------------------------------------------------------------------------------
# golden: the official code's LR images and PSNRs

@pytest.mark.parametrize("scale", GOLDEN_SCALES)
def test_made_lr_equals_official(golden_dir, scale):
    hr = ev.load_rgb(golden_dir / "inputs" / "synth_100x84_hr.png")
    crop, lr = samples.make_lr(hr, scale)
    eval_dir = golden_dir / "edsr-baseline-liif" / "eval"
    official_lr = np.load(eval_dir / f"synth_100x84_x{scale}_lr.npy")
    official_gt = np.load(eval_dir / f"synth_100x84_x{scale}_gt.npy")  # (H, W, 3) float
    assert lr.dtype == np.uint8 and np.array_equal(lr, official_lr)
    assert np.array_equal(lr, np.asarray(Image.open(eval_dir / f"synth_100x84_x{scale}_lr.png")))
    assert crop.shape == official_gt.shape
    assert np.abs(crop / 255 - official_gt).max() < 1e-6


@pytest.mark.parametrize("protocol", ["div2k", "benchmark", "rgb"])
def test_metric_on_official_prediction(golden_dir, golden_manifest, protocol):
    """Our PSNR of the official raw prediction equals the official number (metric alone)."""
    official = _official(golden_manifest)
    eval_dir = golden_dir / "edsr-baseline-liif" / "eval"
    for s in GOLDEN_SCALES:
        pred = np.clip(np.load(eval_dir / f"synth_100x84_x{s}_pred_raw.npy"), 0, 1)
        gt = np.load(eval_dir / f"synth_100x84_x{s}_gt.npy")
        assert metrics.psnr(pred, gt, protocol=protocol, scale=s) == pytest.approx(
            official[(protocol, s)], abs=1e-4)


@pytest.mark.slow
def test_cli_reproduces_official_psnr(golden_dir, golden_manifest, golden_ckpt, tmp_path):
    """`liif eval` on a folder holding the golden image gives the official PSNRs: div2k at
    every golden scale, benchmark at two (CLI), no-shave at one (library). The metric alone
    is checked at every scale and protocol above; this is the whole path, kept short."""
    official = _official(golden_manifest)
    data = tmp_path / "synth"
    data.mkdir()
    shutil.copy(golden_dir / "inputs" / "synth_100x84_hr.png", data)
    for protocol, scales in (("div2k", GOLDEN_SCALES), ("benchmark", (3, 6))):
        report = tmp_path / f"{protocol}.json"
        r = runner.invoke(app, ["eval", "--data", str(data), "--model", str(golden_ckpt),
                                "--scales", ",".join(map(str, scales)), "--protocol", protocol,
                                "--no-bicubic", "--json", str(report), "--quiet",
                                "--device", "cpu"])
        assert r.exit_code == 0, r.output
        rows = json.loads(report.read_text())
        assert [row["scale"] for row in rows] == list(scales)
        for row in rows:
            assert row["images"] == 1 and row["protocol"] == protocol and row["lr"] == "made"
            assert abs(row["psnr"] - official[(protocol, row["scale"])]) < GOLDEN_TOL_DB
    res = ev.evaluate(golden_ckpt, data, scales=[4], protocol="rgb", bicubic=False,
                      device="cpu")
    assert abs(res.records[0].psnr - official[("rgb", 4)]) < GOLDEN_TOL_DB


# ----------------------------------------------------------------------------------------------
# metrics

def test_psnr_shave_and_luma():
    rng = np.random.default_rng(0)
    gt = rng.random((40, 40, 3))
    pred = np.clip(gt + rng.normal(0, 0.05, gt.shape), 0, 1)
    base = metrics.psnr(pred, gt, protocol="div2k", scale=2)  # shave 8
    ruined = pred.copy()
    ruined[:8] = 1 - gt[:8]
    ruined[:, -8:] = 0
    assert metrics.psnr(ruined, gt, protocol="div2k", scale=2) == base  # only shaved px changed
    assert metrics.psnr(ruined, gt, protocol="div2k", scale=1) < base - 3  # shave 7 keeps a row
    assert metrics.psnr(ruined, gt, protocol="rgb", scale=2) < base - 3
    # a difference with zero luma: invisible to 'benchmark', not to 'div2k'
    w = np.asarray(metrics.Y_WEIGHTS)
    chroma = np.cross(w, [1.0, 0, 0]) * 0.05  # ⟂ to the luma weights
    shifted = gt + chroma
    assert metrics.psnr(shifted, gt, protocol="benchmark", scale=2) > 100
    assert metrics.psnr(shifted, gt, protocol="div2k", scale=2) < 40
    # by definition: uniform error e -> -20 log10(e)
    assert metrics.psnr(gt + 0.01, gt, protocol="div2k", scale=3) == pytest.approx(40, abs=1e-9)
    assert metrics.psnr(gt + 0.01, gt, protocol="benchmark", scale=3) == pytest.approx(
        -20 * math.log10(0.01 * sum(metrics.Y_WEIGHTS)), abs=1e-9)


def test_psnr_uint8_ground_truth_is_divided_by_255():
    gt = photo_like(30, 30)
    pred = gt.astype(np.float32) / 255 + 0.02
    assert metrics.psnr(pred, gt, protocol="rgb", scale=2) == pytest.approx(
        -20 * math.log10(0.02), abs=1e-3)


def test_ssim_properties():
    rng = np.random.default_rng(1)
    img = photo_like(48, 40).astype(np.float64) / 255
    assert metrics.ssim(img, img, protocol="div2k", scale=2) == pytest.approx(1.0, abs=1e-12)
    noisy = [np.clip(img + rng.normal(0, s, img.shape), 0, 1) for s in (0.02, 0.05, 0.1, 0.2)]
    values = [metrics.ssim(n, img, protocol="benchmark", scale=2) for n in noisy]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert 0 < values[-1] < values[0] < 1
    assert metrics.ssim(noisy[1], img, protocol="div2k", scale=2) == pytest.approx(
        metrics.ssim(img, noisy[1], protocol="div2k", scale=2), abs=1e-12)


def test_ssim_hand_value_constant_planes():
    """Constant planes a, b: every window gives (2ab + C1) / (a² + b² + C1) (σ terms = C2/C2)."""
    a, b = 0.5, 0.25
    c1 = (metrics.SSIM_K1 * 1.0) ** 2
    want = (2 * a * b + c1) / (a * a + b * b + c1)  # = 0.2501 / 0.3126 = 0.800064…
    got = metrics.ssim_plane(np.full((20, 24), a), np.full((20, 24), b))
    assert got == pytest.approx(want, abs=1e-12)
    assert got == pytest.approx(0.2501 / 0.3126, abs=1e-12)


def test_ssim_benchmark_luma_has_black_level():
    """Luma is MATLAB's rgb2ycbcr Y (16/255 black level), which SSIM's luminance term sees."""
    v = 0.2
    black, grey = np.zeros((30, 30, 3)), np.full((30, 30, 3), v)
    a, b = metrics.Y_OFFSET, metrics.Y_OFFSET + v * sum(metrics.Y_WEIGHTS)
    c1 = metrics.SSIM_K1 ** 2
    assert metrics.ssim(black, grey, protocol="benchmark", scale=2) == pytest.approx(
        (2 * a * b + c1) / (a * a + b * b + c1), abs=1e-12)


def test_ssim_plane_matches_direct_definition():
    """Against a per-window loop straight from Wang et al. (Gaussian-weighted statistics)."""
    rng = np.random.default_rng(2)
    x = rng.random((15, 17))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    g = metrics.gaussian_window()
    w = np.outer(g, g)
    assert w.shape == (11, 11) and w.sum() == pytest.approx(1)
    c1, c2 = (0.01) ** 2, (0.03) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cxy + c2)
                        / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    assert metrics.ssim_plane(x, y) == pytest.approx(np.mean(vals), abs=1e-10)


def test_bicubic_is_pil_bicubic_unquantised():
    lr = photo_like(12, 10, seed=3)
    up = samples.bicubic_upsample(lr, (36, 30))
    assert up.shape == (36, 30, 3) and up.dtype == np.float32
    assert up.min() >= 0 and up.max() <= 1
    pil = np.asarray(Image.fromarray(lr).resize((30, 36), Image.BICUBIC)).astype(np.float64)
    err = np.abs(up * 255 - pil)
    # PIL's uint8 path rounds after each of its two 1-D passes (≤ ~0.5 + 0.5·Σ|kernel|):
    # the same kernel and values, ours without the two roundings (mean |error| 1/4 LSB)
    assert err.max() <= 1.25
    assert 0.15 < err.mean() < 0.35
    flat = np.full((5, 6, 3), 77, np.uint8)
    assert np.allclose(samples.bicubic_upsample(flat, (15, 18)), 77 / 255, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# datasets, pairing, the whole run

def test_dataset_name_and_hr_subfolder(hr_dir, tmp_path):
    assert ev.find_dataset(hr_dir).name == "Tiny"
    ds = ev.find_dataset(hr_dir.parent)  # a folder holding HR/
    assert ds.name == "Tiny" and ds.folder == hr_dir and [p.name for p in ds.images] == [
        "a.png", "b.png"]
    assert metrics.get_protocol("auto", "DIV2K_valid_HR").name == "div2k"
    assert metrics.get_protocol("auto", "Set14").name == "benchmark"


def test_paired_equals_made_when_lr_files_are_the_same(hr_dir, tmp_path, tiny_model):
    """Pairing and HR cropping: LR files that equal the made LR give the same numbers."""
    lr_root = _lr_dir(hr_dir, tmp_path / "LR_bicubic", (2, 3))
    made = ev.evaluate(tiny_model, hr_dir, scales="2,3,5", device="cpu", with_ssim=True)
    paired = ev.evaluate(tiny_model, hr_dir, scales="2,3,5", lr_dir=lr_root, device="cpu",
                         with_ssim=True)
    assert [r.lr for r in paired.records] == ["paired"] * 4 + ["made"] * 2
    assert [r.lr for r in made.records] == ["made"] * 6
    for a, b in zip(made.records, paired.records):
        assert (a.scale, a.method) == (b.scale, b.method)
        assert a.psnr == pytest.approx(b.psnr, abs=1e-9)
        assert a.ssim == pytest.approx(b.ssim, abs=1e-9)
    # aggregation is the mean of per-image values, bicubic first, then the model
    assert [r.method for r in made.records[:2]] == ["bicubic", "liif"]
    per = [s.psnr for s in made.per_image if s.scale == 3 and s.method == "liif"]
    assert len(per) == 2 and made.records[3].psnr == pytest.approx(np.mean(per))


def test_paired_lr_is_used_not_remade(hr_dir, tmp_path, tiny_model):
    """A different paired LR changes the numbers: the files are really read."""
    lr_root = _lr_dir(hr_dir, tmp_path / "LR", (2,), transform=lambda a: 255 - a)
    made = ev.evaluate(tiny_model, hr_dir, scales=[2], device="cpu")
    paired = ev.evaluate(tiny_model, hr_dir, scales=[2], lr_dir=lr_root, device="cpu")
    assert paired.records[0].psnr < made.records[0].psnr - 3  # bicubic of an inverted LR


def test_greyscale_hr_scores_like_its_rgb_copy(tmp_path, tiny_model):
    grey = photo_like(30, 33, seed=4, channels=1)[..., 0]
    (tmp_path / "g").mkdir()
    (tmp_path / "c").mkdir()
    Image.fromarray(grey, mode="L").save(tmp_path / "g" / "x.png")
    _save(tmp_path / "c" / "x.png", np.repeat(grey[..., None], 3, axis=2))
    a = ev.evaluate(tiny_model, tmp_path / "g", scales=[2, 3], device="cpu")
    b = ev.evaluate(tiny_model, tmp_path / "c", scales=[2, 3], device="cpu")
    assert [r.psnr for r in a.records] == [r.psnr for r in b.records]


def test_prediction_is_clamped_before_scoring(hr_dir, tiny_model):
    """A model answering 3.0 everywhere (raw, [0, 1] units) scores exactly as a white image."""
    last = tiny_model.imnet.linears[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(5.0)  # normalised 5 -> raw 5 * 0.5 + 0.5 = 3
    res = ev.evaluate(tiny_model, hr_dir, scales=[2], bicubic=False, device="cpu")
    white = [metrics.psnr(np.ones((H, W, 3)), ev.load_rgb(p)[:H, :W], protocol="benchmark",
                          scale=2)
             for p, (H, W) in zip(find_images(hr_dir), [(40, 36), (34, 44)])]
    assert res.records[0].psnr == pytest.approx(np.mean(white), abs=1e-5)  # gt in float32


def test_progress_reaches_total(hr_dir, tiny_model):
    calls = []
    ev.evaluate(tiny_model, hr_dir, scales=[2, 3], bicubic=False, device="cpu",
                on_progress=lambda d, t: calls.append((d, t)))
    total = (40 * 36 + 34 * 44) + (39 * 36 + 33 * 45)  # HR crops: multiples of the scale
    assert calls[-1] == (total, total)
    assert all(b[0] >= a[0] for a, b in zip(calls, calls[1:]))


def test_evaluate_is_the_packages_as_the_readme_calls_it(hr_dir, tiny_model):
    import liif_cli

    assert "evaluate" in liif_cli.__all__ and liif_cli.evaluate is ev.evaluate
    result = liif_cli.evaluate(tiny_model, hr_dir, scales=[2], device="cpu")
    assert [r.method for r in result.records][0] == "bicubic"
    assert result.rows()[1]["psnr"] == result.records[1].psnr


def test_cli_table_reports_and_examples(hr_dir, tiny_ckpt, tmp_path):
    js, cs, exd = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "ex"
    r = runner.invoke(app, ["eval", "--data", str(hr_dir), "--model", str(tiny_ckpt),
                            "--scales", "2,4", "--ssim", "--per-image", "--json", str(js),
                            "--csv", str(cs), "--save-examples", str(exd), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "Tiny" in r.output and "benchmark" in r.output and "×4" in r.output
    assert "a.png" in r.output and "gain" in r.output
    rows = json.loads(js.read_text())
    agg = [x for x in rows if "image" not in x]
    assert len(agg) == 4 and len(rows) == 4 + 8
    for x in agg:
        assert set(x) >= {"dataset", "scale", "method", "psnr", "ssim", "images"}
        assert x["dataset"] == "Tiny" and x["images"] == 2 and 0 < x["ssim"] <= 1
    assert {x["method"] for x in agg} == {"bicubic", "tiny"}
    lines = cs.read_text().splitlines()
    assert lines[0].startswith("dataset,scale,method,psnr,ssim,images") and len(lines) == 13
    shots = sorted(p.name for p in exd.iterdir())
    assert shots == ["Tiny_a_x2.png", "Tiny_a_x4.png", "Tiny_b_x2.png", "Tiny_b_x4.png"]
    panel = np.asarray(Image.open(exd / "Tiny_a_x4.png"))
    h, w = 40, 36  # a.png's HR crop at ×4 (smaller than the crop side: taken whole)
    assert panel.shape == (ev.EXAMPLE_LABEL_H + h, 3 * w + 2 * ev.EXAMPLE_GAP, 3)
    truth = np.asarray(Image.open(hr_dir / "a.png"))[:h, :w]
    assert np.array_equal(panel[ev.EXAMPLE_LABEL_H:, -w:], truth)  # the right panel is GT
    # a second run refuses to replace the reports, before doing any work
    r = runner.invoke(app, ["eval", "--data", str(hr_dir), "--model", str(tiny_ckpt),
                            "--json", str(js)])
    assert r.exit_code == 2 and "exists" in r.output and "--overwrite" in r.output


@pytest.mark.parametrize("overwrite", [False, True])
def test_cli_json_and_csv_onto_one_file_is_refused_before_any_work(hr_dir, tiny_ckpt, tmp_path,
                                                                    overwrite):
    """Once the JSON was written and then the CSV refused (exit 2 after the work), or with
    --overwrite the CSV replaced the JSON: now one usage line, and nothing is written."""
    report = tmp_path / "report.txt"
    if overwrite:
        report.write_text("kept\n")
    r = runner.invoke(app, ["eval", "--data", str(hr_dir), "--model", str(tiny_ckpt),
                            "--scales", "2", "--device", "cpu", "--json", str(report),
                            "--csv", str(tmp_path / "." / "report.txt")]
                      + (["--overwrite"] if overwrite else []))
    assert r.exit_code == 2, r.output
    assert "--json and --csv name the same file" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert (report.read_text() == "kept\n") if overwrite else not report.exists()


@pytest.mark.parametrize("case, args, code, message", [
    ("missing", ["--data", "{tmp}/nope"], 1, "dataset folder not found"),
    ("empty", ["--data", "{tmp}/empty"], 1, "no images in"),
    ("scale1", ["--data", "{hr}", "--scales", "1,2"], 2, "greater than 1"),
    ("badscale", ["--data", "{hr}", "--scales", "2,x3y"], 2, "bad --scales"),
    ("fraction", ["--data", "{hr}", "--scales", "2.5"], 2, "not whole"),
    ("protocol", ["--data", "{hr}", "--protocol", "psnr"], 2, "unknown protocol"),
    ("nolrdir", ["--data", "{hr}", "--lr-dir", "{tmp}/nolr"], 1, "LR folder not found"),
    ("noX", ["--data", "{hr}", "--lr-dir", "{tmp}/empty"], 1, "no X2/"),
    ("lrmissing", ["--data", "{hr}", "--lr-dir", "{tmp}/lr_missing", "--scales", "2"], 1,
     "has no LR image for b.png"),
    ("lrsize", ["--data", "{hr}", "--lr-dir", "{tmp}/lr_size", "--scales", "2"], 1,
     "does not match"),
    ("toosmall", ["--data", "{hr}", "--scales", "30", "--protocol", "div2k"], 1, "too small"),
])
def test_cli_errors(case, args, code, message, hr_dir, tiny_ckpt, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    if case == "lrmissing":
        _lr_dir(hr_dir, tmp_path / "lr_missing", (2,))
        (tmp_path / "lr_missing" / "X2" / "bx2.png").unlink()
    if case == "lrsize":
        _lr_dir(hr_dir, tmp_path / "lr_size", (2,))
        _save(tmp_path / "lr_size" / "X2" / "ax2.png", photo_like(10, 10))
    argv = [a.format(tmp=tmp_path, hr=hr_dir) for a in args]
    r = runner.invoke(app, ["eval", *argv, "--model", str(tiny_ckpt), "--device", "cpu"])
    assert r.exit_code == code, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_library_errors_are_typed(tmp_path):
    with pytest.raises(UsageError):
        ev.parse_scales([2, 0.5])
    with pytest.raises(DataError):
        ev.find_dataset(tmp_path / "missing")
    assert ev.parse_scales("2, 3,x4,2,2.5") == [2, 3, 4, 2.5]
    assert ev.parse_scales("×2,3x,x4") == [2, 3, 4]
    assert isinstance(ev.parse_scales("2.0")[0], int)
    assert ev.parse_scales(4) == [4]  # one number, as `scales=4`
    with pytest.raises(UsageError, match="bad --scales '2x3'"):
        ev.parse_scales("2x3")  # not ×23


def test_examples_are_written_only_when_everything_is_scored_under_unique_names(tmp_path,
                                                                                tiny_model):
    """`a.png` and `a.jpg` wrote one example name: the second was refused ("output exists") after
    all the scoring, or with --overwrite replaced the first. A run that failed left the
    examples made so far (and its folders), so the rerun was refused."""
    hr = tmp_path / "set"
    hr.mkdir()
    Image.fromarray(photo_like(16, 20, seed=1)).save(hr / "a.png")
    Image.fromarray(photo_like(16, 20, seed=2)).save(hr / "a.jpg", quality=95)
    Image.fromarray(photo_like(16, 20, seed=3)).save(hr / "b.png")
    ex = tmp_path / "new" / "ex"
    res = ev.evaluate(tiny_model, hr, scales=[2], examples_dir=ex, device="cpu")
    assert sorted(p.name for p in res.examples) == sorted(p.name for p in ex.iterdir()) == [
        "set_a_jpg_x2.png", "set_a_png_x2.png", "set_b_x2.png"]
    # a failure part way (b.png cut short): no example and no folder left behind
    shutil.rmtree(tmp_path / "new")
    (hr / "b.png").write_bytes((hr / "b.png").read_bytes()[:60])
    with pytest.raises(Exception, match="b.png"):
        ev.evaluate(tiny_model, hr, scales=[2], examples_dir=ex, device="cpu")
    assert not (tmp_path / "new").exists()


def test_examples_folder_and_data_that_cannot_be_are_usage_errors(hr_dir, tiny_ckpt, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    for args, message in (
            (["--save-examples", str(afile / "sub")], f"cannot make the examples folder "
                                                      f"{afile / 'sub'}: {afile} is a file"),
            (["--save-examples", ""], "--save-examples is empty"),
            (["--data", ""], "--data is empty")):
        r = runner.invoke(app, ["eval", "--data", str(hr_dir), "--scales", "2", "--model",
                                str(tiny_ckpt), "--device", "cpu", *args])
        assert r.exit_code == 2 and r.output.startswith(f"error: {message}"), r.output
        assert r.output.count("\n") == 1


def test_json_reports_are_strict_json_when_a_score_is_infinite(tmp_path, tiny_model):
    """A flat image is predicted exactly: its PSNR is inf, which json.dumps wrote as Infinity
    (not JSON: JavaScript's JSON.parse and jq refuse it). It is null."""
    hr = tmp_path / "flat"
    hr.mkdir()
    Image.fromarray(np.full((24, 32, 3), 255, np.uint8)).save(hr / "white.png")
    res = ev.evaluate(tiny_model, hr, scales=[2], device="cpu")
    assert any(math.isinf(r.psnr) for r in res.records)  # bicubic's, at least
    out = ev.write_json(tmp_path / "r.json", res.rows())
    text = out.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert any(row["psnr"] is None for row in json.loads(text))
