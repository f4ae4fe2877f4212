"""Real-world degradations: determinism, ranges, specs; eval --degrade; train --degrade; --denoise."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import photo_like, random_model
from PIL import Image
from typer.testing import CliRunner

from liif_cli.cli import app
from liif_cli.data import degrade as dg
from liif_cli.errors import UsageError

runner = CliRunner()


# ----------------------------------------------------------------------------------------------
# the pipeline

def test_random_degrade_is_a_pure_function_of_its_seed():
    img = photo_like(48, 48)
    r = dg.RealRanges()
    a = [dg.random_degrade(img, np.random.default_rng([0, 3, i, 1]), r) for i in range(30)]
    b = [dg.random_degrade(img, np.random.default_rng([0, 3, i, 1]), r) for i in range(30)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # different seeds give different degradations, and some samples stay exactly clean
    assert len({x.tobytes() for x in a}) > 20
    assert any(np.array_equal(x, img) for x in a)
    assert all(x.shape == img.shape and x.dtype == np.uint8 for x in a)


def test_clean_and_light_shares_follow_their_probabilities():
    img = photo_like(48, 48)
    r = dg.RealRanges(clean_prob=0.3, light_prob=0.0)
    n = 400
    clean = sum(np.array_equal(dg.random_degrade(img, np.random.default_rng(i), r), img)
                for i in range(n))
    assert abs(clean / n - 0.3) < 0.07  # binomial sd ~0.023
    never = dg.RealRanges(clean_prob=1.0, light_prob=0.0)
    assert all(np.array_equal(dg.random_degrade(img, np.random.default_rng(i), never), img)
               for i in range(20))


def test_degradations_hurt_as_much_as_their_strength_says():
    img = photo_like(64, 64, seed=1)

    def err(x):
        return float(np.abs(x.astype(float) - img).mean())

    rng = np.random.default_rng(0)
    n5, n15 = (dg.add_gaussian_noise(img, s, np.random.default_rng(0)) for s in (5, 15))
    assert 2.5 < err(n5) < 5 and err(n15) > 2.5 * err(n5)  # mean |N(0, σ)| = 0.8σ
    diff = dg.add_gaussian_noise(img, 10, rng, gray=True).astype(int) - img
    assert np.array_equal(diff[..., 0], diff[..., 1]) or np.mean(diff[..., 0] == diff[..., 1]) > .9
    assert err(dg.jpeg(img, 30)) > err(dg.jpeg(img, 95)) > 0
    assert err(dg.blur(img, dg.gaussian_kernel(2.0))) > err(dg.blur(img, dg.gaussian_kernel(0.5)))
    dim, bright = np.full((32, 32, 3), 40, np.uint8), np.full((32, 32, 3), 200, np.uint8)
    sd = [dg.add_poisson_noise(x, 200, np.random.default_rng(0)).std() for x in (dim, bright)]
    assert sd[1] > 1.8 * sd[0]  # shot noise grows with the signal: sqrt(200/40) = 2.2


def test_kernels_sum_to_one_and_rotate():
    k = dg.gaussian_kernel(1.5, 0.5, 0.0)
    assert math.isclose(float(k.sum()), 1.0, rel_tol=1e-5)
    assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert k[k.shape[0] // 2].sum() > k[:, k.shape[1] // 2].sum()  # wide along x
    kr = dg.gaussian_kernel(1.5, 0.5, math.pi / 2)
    np.testing.assert_allclose(kr, k.T, atol=1e-6)


@pytest.mark.parametrize("bad", [{"clean_prob": 1.5}, {"jpeg_quality": (50, 120)},
                                 {"noise_sigma": (9, 3)}, {"blur_sigma": (0, 1)},
                                 {"clean_prob": 0.7, "light_prob": 0.5}])
def test_bad_ranges_are_refused(bad):
    with pytest.raises(UsageError):
        dg.real_ranges(bad)


def test_unknown_range_is_named():
    with pytest.raises(UsageError, match="jpeg_qualty"):
        dg.real_ranges({"jpeg_qualty": [10, 20]})


# ----------------------------------------------------------------------------------------------
# specs

def test_spec_parsing_keeps_order_and_canonical_text():
    steps = dg.parse_spec(" noise=5, JPEG=80 ")
    assert steps == (dg.Step("noise", 5.0), dg.Step("jpeg", 80))
    assert dg.spec_text(steps) == "noise=5,jpeg=80"
    assert dg.parse_spec("none") == () and dg.spec_text(()) == "none"
    assert [s.kind for s in dg.parse_spec("jpeg=70,blur=1.5,gray=3,poisson=300")] == [
        "jpeg", "blur", "gray", "poisson"]


@pytest.mark.parametrize("bad, words", [("jpeg=101", "1-100"), ("jpeg=70.5", "whole"),
                                        ("sharpen=2", "KEY=VALUE"), ("noise", "KEY=VALUE"),
                                        ("blur=-1", "positive"), ("noise=abc", "not a number"),
                                        ("", "empty"), ("noise=nan", "finite")])
def test_bad_specs_say_what_is_wrong(bad, words):
    with pytest.raises(UsageError, match=words):
        dg.parse_spec(bad)


def test_degrade_image_is_deterministic_and_order_matters():
    img = photo_like(40, 40)
    a = dg.degrade_image(img, "noise=5,jpeg=80", name="x.png", scale=2)
    assert np.array_equal(a, dg.degrade_image(img, "noise=5,jpeg=80", name="x.png", scale=2))
    assert not np.array_equal(a, dg.degrade_image(img, "noise=5,jpeg=80", name="y.png", scale=2))
    assert not np.array_equal(a, dg.degrade_image(img, "jpeg=80,noise=5", name="x.png", scale=2))
    assert np.array_equal(dg.degrade_image(img, "none"), img)


# ----------------------------------------------------------------------------------------------
# liif eval --degrade

@pytest.fixture
def hr_folder(tmp_path):
    folder = tmp_path / "Mini" / "HR"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(photo_like(48, 40, seed=i)).save(folder / f"im{i}.png")
    return folder


def test_eval_degrade_changes_the_lr_and_says_so(hr_folder, tiny_ckpt, tmp_path):
    from liif_cli.tasks.evaluate import evaluate

    clean = evaluate(str(tiny_ckpt), hr_folder, scales="2", protocol="rgb")
    hurt = evaluate(str(tiny_ckpt), hr_folder, scales="2", protocol="rgb", degrade="noise=12")
    again = evaluate(str(tiny_ckpt), hr_folder, scales="2", protocol="rgb", degrade="noise=12")
    bic = {r.degrade: r.psnr for res in (clean, hurt) for r in res.records
           if r.method == "bicubic"}
    assert bic["none"] > bic["noise=12"] + 1  # the bicubic of a noisy LR is worse
    assert [r.psnr for r in hurt.records] == [r.psnr for r in again.records]  # seeded
    assert hurt.degrade == "noise=12" and all(r.degrade == "noise=12" for r in hurt.records)

    out = tmp_path / "r.json"
    res = runner.invoke(app, ["eval", "--data", str(hr_folder), "--model", str(tiny_ckpt),
                              "--scales", "2", "--protocol", "rgb", "--degrade", "jpeg=60",
                              "--json", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "LR degraded: jpeg=60" in " ".join(res.output.split())
    rows = json.loads(out.read_text())
    assert {r["degrade"] for r in rows} == {"jpeg=60"}


def test_eval_bad_degrade_is_one_line_exit_2_before_any_work(hr_folder, tiny_ckpt, tmp_path):
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["eval", "--data", str(hr_folder), "--model", str(tiny_ckpt),
                              "--scales", "2", "--degrade", "jpeg=0", "--json", str(out)])
    assert res.exit_code == 2
    assert "jpeg quality" in res.output and "Traceback" not in res.output
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# training data

def test_training_samples_with_degrade_keep_crops_and_queries(tmp_path):
    from liif_cli.data.samples import ImageCache, RandomScaleSamples

    path = tmp_path / "a.png"
    Image.fromarray(photo_like(200, 200)).save(path)
    cache = ImageCache([path])
    clean = RandomScaleSamples(cache, repeat=4, sample_q=64, seed=3)
    real = RandomScaleSamples(cache, repeat=4, sample_q=64, seed=3, degrade=dg.RealRanges())
    differ = 0
    for i in range(8):
        a, b, c = clean[i], real[i], real[i]
        for k in ("coord", "cell", "gt"):  # the degradation draws from its own stream
            assert torch.equal(a[k], b[k])
        assert torch.equal(b["inp"], c["inp"])  # and is seeded per sample
        differ += not torch.equal(a["inp"], b["inp"])
    assert differ >= 4


def test_train_config_checks_degrade(tmp_path):
    from liif_cli.tasks.train import config_from

    cfg = config_from(None, {"data": "d", "degrade": "real", "val_degrade": "jpeg=75",
                             "degrade_ranges": {"jpeg_quality": [50, 90]}})
    assert cfg.degrade_ranges_obj().jpeg_quality == (50, 90)
    with pytest.raises(UsageError, match="unknown --degrade"):
        config_from(None, {"data": "d", "degrade": "bsrgan"})
    with pytest.raises(UsageError, match="without degrade"):
        config_from(None, {"data": "d", "degrade_ranges": {"jpeg_quality": [50, 90]}})
    with pytest.raises(UsageError, match="1-100"):
        config_from(None, {"data": "d", "val_degrade": "jpeg=300"})
    toml = tmp_path / "c.toml"
    toml.write_text('data = "d"\ndegrade = "real"\n[degrade_ranges]\nnoise_sigma = [1, 4]\n')
    assert config_from(str(toml), {}).degrade_ranges_obj().noise_sigma == (1, 4)


def test_validation_reports_degraded_scores_too():
    from liif_cli.tasks.train import validate

    imgs = {f"{i}.png": photo_like(40, 40, seed=i) for i in range(2)}
    res = validate(random_model(), imgs, (2.0,), degrade="noise=8")
    assert set(res) == {"x2", "x2 noise=8"}
    assert res["x2"] != res["x2 noise=8"]


def test_eval_and_validation_degrade_an_image_alike(tmp_path, monkeypatch):
    """`liif eval --degrade` and `liif train --val-degrade` score the same degraded pixels: both
    seed by the file name (`degrade.degrade_image`), not by the image's place in a list."""
    from liif_cli.data import samples
    from liif_cli.tasks import evaluate as ev
    from liif_cli.tasks.train import validation as train

    seen: dict[str, list] = {"eval": [], "val": []}
    real, key = samples.degrade_image, ["eval"]  # both degrade in samples.predict_from_lr

    def degrade_image(lr, spec, **kw):
        out = real(lr, spec, **kw)
        seen[key[0]].append((kw["name"], out))
        return out
    monkeypatch.setattr(samples, "degrade_image", degrade_image)
    folder = tmp_path / "hr"
    folder.mkdir()
    imgs = {name: photo_like(48, 40, seed=k) for k, name in enumerate(["b.png", "a.png"])}
    for name, img in imgs.items():
        Image.fromarray(img).save(folder / name)
    model = random_model()
    ev.evaluate(model, folder, scales=[3.0], protocol="div2k", bicubic=False, device="cpu",
                degrade="noise=6,jpeg=70")
    key[0] = "val"
    train.validate(model, {"sub/" + n: im for n, im in imgs.items()}, (3.0,),
                   degrade="noise=6,jpeg=70")
    by_eval, by_val = dict(seen["eval"]), dict(seen["val"])
    assert sorted(by_eval) == sorted(by_val) == ["a.png", "b.png"]
    for name in by_eval:
        assert np.array_equal(by_eval[name], by_val[name]), name
    # validation lists b.png first, eval a.png: an index seed would have swapped their noise
    from liif_cli.data.samples import make_lr

    for name, img in imgs.items():
        clean = make_lr(img, 3.0)[1]
        assert not np.array_equal(by_val[name], clean)
        assert np.array_equal(by_val[name], dg.degrade_image(clean, "noise=6,jpeg=70",
                                                             name=name, scale=3.0))


# ----------------------------------------------------------------------------------------------
# --denoise: weight blending between a model and its partner

@pytest.fixture
def pair(tmp_path, monkeypatch):
    """A bundled pair like default/real made of two tiny random models."""
    from liif_cli.runtime import weights as w

    for name, seed in (("default", 0), ("real", 1)):
        w.save_checkpoint(random_model(seed=seed), tmp_path / f"{name}.pth")
    bundled = {
        "default": w.BundledWeights("default", "default.pth",
                                    w.sha256_file(tmp_path / "default.pth"), "d"),
        "real": w.BundledWeights("real", "real.pth", w.sha256_file(tmp_path / "real.pth"),
                                 "r", denoise_partner="default"),
    }
    monkeypatch.setattr(w, "PACKAGE_WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(w, "BUNDLED", bundled)
    return w


@pytest.mark.slow
def test_denoise_ends_are_exactly_the_two_models(pair):
    sd0 = pair.load_model("default").state_dict()
    sd1 = pair.load_model("real").state_dict()
    for model in (None, "default", "real"):
        a = pair.load_model(model, denoise=0).state_dict()
        b = pair.load_model(model, denoise=1).state_dict()
        assert all(torch.equal(a[k], sd0[k]) and torch.equal(b[k], sd1[k]) for k in sd0)
    mid = pair.load_model("real", denoise=0.25)
    k = next(iter(sd0))
    torch.testing.assert_close(mid.state_dict()[k], 0.75 * sd0[k] + 0.25 * sd1[k])
    assert mid.card.name == "real@0.25"


def test_denoise_zero_gives_the_default_models_pixels(pair, tmp_path):
    img = tmp_path / "in.png"
    Image.fromarray(photo_like(20, 24)).save(img)
    outs = {}
    for tag, extra in (("plain", ["--model", "default"]), ("zero", ["--denoise", "0"]),
                       ("half", ["--denoise", "0.5"])):
        outs[tag] = tmp_path / f"{tag}.png"
        res = runner.invoke(app, ["upscale", str(img), "--scale", "2", "-o", str(outs[tag]),
                                  *extra])
        assert res.exit_code == 0, res.output
    px = {k: np.asarray(Image.open(v)) for k, v in outs.items()}
    assert np.array_equal(px["plain"], px["zero"])
    assert not np.array_equal(px["plain"], px["half"])


@pytest.mark.parametrize("args, words", [(["--denoise", "1.5"], "between 0 and 1"),
                                         (["--denoise", "-0.1"], "between 0 and 1"),
                                         (["--denoise", "0.5", "--model", "X"], "no")])
def test_denoise_errors_are_one_line_exit_2(pair, tmp_path, args, words, tiny_ckpt):
    img = tmp_path / "in.png"
    Image.fromarray(photo_like(20, 24)).save(img)
    args = [str(tiny_ckpt) if a == "X" else a for a in args]
    out = tmp_path / "o.png"
    for cmd in (["upscale", str(img), "--scale", "2", "-o", str(out)],
                ["batch", str(tmp_path), str(tmp_path / "big"), "--scale", "2"]):
        res = runner.invoke(app, cmd + args)
        assert res.exit_code == 2, res.output
        assert words in res.output and "Traceback" not in res.output
        assert len(res.output.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "big").exists()


def test_batch_runs_the_blend(pair, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(photo_like(20, 24)).save(src / "a.png")
    res = runner.invoke(app, ["batch", str(src), str(tmp_path / "b"), "--scale", "2",
                              "--denoise", "0.5", "--quiet"])
    assert res.exit_code == 0, res.output
    one = tmp_path / "one.png"
    assert runner.invoke(app, ["upscale", str(src / "a.png"), "--scale", "2", "-o", str(one),
                               "--denoise", "0.5", "--quiet"]).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(one)),
                          np.asarray(Image.open(tmp_path / "b" / "a.png")))



# ----------------------------------------------------------------------------------------------
# the bundled real-world model and its card

REAL_RERUN = ("Set5", (2, 4), "noise=5,jpeg=75")  # a re-run the suite can afford (~10 s)


def _real():
    from liif_cli.runtime.weights import BUNDLED

    if "real" not in BUNDLED:
        pytest.fail("the real-world model is not bundled (liif_cli/bundled/bundled.json)")
    return BUNDLED["real"]


def test_real_is_bundled_with_default_as_its_partner_and_loads_in_the_official_layout():
    import torch as _torch

    from liif_cli.runtime.weights import PACKAGE_WEIGHTS_DIR, load_model

    w = _real()
    assert w.denoise_partner == "default" and 0 <= w.denoise_default <= 1
    a, b = load_model("default"), load_model("real")
    assert a.config == b.config  # same architecture: the blend is meaningful
    raw = _torch.load(PACKAGE_WEIGHTS_DIR / w.file, map_location="cpu", weights_only=True)
    assert raw["model"]["name"] == "liif" and set(raw["model"]["sd"]) == set(
        a.state_dict())
    assert w.steps == b.card.meta["steps"] > load_model("default").card.meta["steps"]


def test_real_model_card_shows_the_bundled_results():
    from conftest import README

    from liif_cli.data.cards import degraded_rows

    w = _real()
    assert w.degraded_metrics and "none" in w.degraded_metrics
    readme = README.read_text()
    for row in degraded_rows(w.degraded_metrics):
        assert row in readme, f"README's real-world model card lacks: {row}"


@pytest.mark.slow
def test_real_model_card_numbers_are_what_liif_eval_prints_now():
    from conftest import DATA

    from liif_cli.tasks.evaluate import evaluate

    name, scales, spec = REAL_RERUN
    hr, lr = DATA / "val" / name / "HR", DATA / "val" / name / "LR_bicubic"
    if not hr.is_dir():
        pytest.skip(f"{hr} not found (../shared is absent outside CI)")
    card = _real().degraded_metrics[spec][name]
    res = evaluate("real", hr, scales=scales, protocol="benchmark", lr_dir=lr,
                   precision="fp32", degrade=spec)  # as the card was made (README)
    for r in res.records:
        want = card[f"x{r.scale:g}"]["bicubic" if r.method == "bicubic" else "model"]
        assert abs(r.psnr - want) <= 0.01, (r, want)


def test_the_tasks_take_denoise_themselves(pair, tmp_path):
    """`upscale_file` and `run_batch` blend the pair (the CLI passes --denoise on, it loads
    nothing itself); a model already loaded cannot be blended: one clear usage error."""
    from liif_cli.tasks.batch import plan_batch, run_batch
    from liif_cli.tasks.upscale import upscale_file

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(photo_like(20, 24)).save(src / "a.png")
    lib = upscale_file(src / "a.png", tmp_path / "lib.png", scale=2, denoise=0.5, device="cpu")
    assert lib.model == "real@0.5"
    cli = tmp_path / "cli.png"
    assert runner.invoke(app, ["upscale", str(src / "a.png"), "--scale", "2", "-o", str(cli),
                               "--denoise", "0.5", "--quiet"]).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(cli)), np.asarray(Image.open(lib.output)))
    plan = plan_batch(src, tmp_path / "b")
    from liif_cli.runtime.sizing import size_request

    res = run_batch(plan, None, size=size_request(scale=2), devices="cpu", denoise=0.5)
    assert res.model == "real@0.5" and res.exit_code == 0
    with pytest.raises(UsageError, match="by name"):
        upscale_file(src / "a.png", tmp_path / "x.png", scale=2, denoise=0.5,
                     model=random_model())
    assert not (tmp_path / "x.png").exists()


def test_eval_scores_the_denoise_blend(pair, tmp_path):
    """`liif eval --denoise S` scores the pair's blend (named "real@S" in the records), the
    same PSNR as evaluating the blended network itself; S = 0 scores `default` exactly. A
    model without a partner, or one already loaded, is one usage error before any reading."""
    from liif_cli.tasks.evaluate import evaluate

    hr = tmp_path / "hr"
    hr.mkdir()
    for i in range(2):
        Image.fromarray(photo_like(24, 28, seed=i)).save(hr / f"im{i}.png")
    kw = dict(scales=(2,), protocol="benchmark", bicubic=False, device="cpu")
    half = evaluate("real", hr, denoise=0.5, **kw)
    assert half.model == "real@0.5" and [r.method for r in half.records] == ["real@0.5"]
    direct = evaluate(pair.load_model("real", denoise=0.5), hr, **kw)
    assert half.records[0].psnr == pytest.approx(direct.records[0].psnr, abs=1e-9)
    zero = evaluate(None, hr, denoise=0, **kw)
    assert zero.records[0].psnr == pytest.approx(evaluate("default", hr, **kw).records[0].psnr,
                                                 abs=1e-9)
    assert half.records[0].psnr != zero.records[0].psnr
    out = tmp_path / "half.json"
    res = runner.invoke(app, ["eval", "--data", str(hr), "--scales", "2", "--denoise", "0.5",
                              "--json", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    rows = {r["method"]: r["psnr"] for r in json.loads(out.read_text())}
    assert rows["real@0.5"] == pytest.approx(half.records[0].psnr, abs=1e-9)
    with pytest.raises(UsageError, match="by name"):
        evaluate(random_model(), hr, denoise=0.5, **kw)
    res = runner.invoke(app, ["eval", "--data", str(hr), "--scales", "2", "--model",
                              str(tmp_path / "default.pth"), "--denoise", "0.5"])
    assert res.exit_code == 2 and "denoise partner" in res.output
    assert "Traceback" not in res.output


def test_load_model_and_upscaler_default_to_the_same_device():
    import inspect

    from liif_cli import Upscaler, load_model

    default = {f: inspect.signature(f).parameters["device"].default for f in (load_model, Upscaler)}
    assert set(default.values()) == {"auto"}, default
