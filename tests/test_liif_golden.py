"""tests/data/liif_golden: the official LIIF code's own files and outputs, committed, so a clone
without ../shared still proves LIIF exact — the paper's model (every switch on) and the shape of
the bundled `fast` (no local ensemble), through our loader, reference and fast queries, the
training forward and the engine, tiled and untiled."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import REPO

from liif_cli.model import LIIF, LiifConfig, make_cell, make_coord
from liif_cli.runtime import engine
from liif_cli.runtime.weights import checkpoint_dict, load_model, read_checkpoint

GOLDEN = REPO / "tests" / "data" / "liif_golden"  # made by scripts/make_liif_golden.py
SCRIPT = REPO / "scripts" / "make_liif_golden.py"
MODELS = ("liif", "fast")
REFERENCE_TOL = 1e-6  # normalised units: LIIF.query is the official sequence of operations
ENGINE_TOL = 1e-4  # max |Δ| on raw [0, 1] outputs: float reordering only
TILED_TOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN / "golden.npz") as g:
        return dict(g)


def eval_cases(golden, model_name: str) -> list[tuple[str, str, tuple[int, int]]]:
    """(key, image, (H, W)) of one model's eval-mode outputs."""
    cases = []
    for key in sorted(golden):
        if key.startswith(f"eval_{model_name}_"):
            _, _, image, hw = key.split("_")
            cases.append((key, image, tuple(int(v) for v in hw.split("x"))))
    return cases


def test_checkpoints_hold_the_scripts_specs_and_load_strictly():
    """The files say what the script built; ours read them strictly and write the same spec
    and keys back; `fast` has the bundled fast model's switches and depth."""
    spec_of = importlib.util.spec_from_file_location("make_liif_golden", SCRIPT)
    script = importlib.util.module_from_spec(spec_of)
    spec_of.loader.exec_module(script)  # by path: scripts/ is not put on sys.path
    assert set(script.SPECS) == set(MODELS)
    for name in MODELS:
        saved = read_checkpoint(GOLDEN / f"{name}.pth")["model"]
        assert {k: v for k, v in saved.items() if k != "sd"} == script.SPECS[name]
        model = load_model(GOLDEN / f"{name}.pth")
        assert isinstance(model, LIIF) and not model.training
        assert model.config == LiifConfig.from_spec(script.SPECS[name])
        ours = checkpoint_dict(model)["model"]
        assert {k: v for k, v in ours.items() if k != "sd"} == script.SPECS[name]
        assert list(ours["sd"]) == list(saved["sd"])
        assert all(torch.equal(ours["sd"][k], saved["sd"][k]) for k in saved["sd"])
    bundled = LiifConfig.from_spec(read_checkpoint(
        REPO / "liif_cli" / "bundled" / "fast.pth")["model"])
    fast = LiifConfig.from_spec(script.SPECS["fast"])
    switches = ("local_ensemble", "feat_unfold", "cell_decode")
    assert [getattr(fast, s) for s in switches] == [getattr(bundled, s) for s in switches]
    assert len(fast.hidden) == len(bundled.hidden) and not fast.local_ensemble


def test_golden_covers_the_scales_that_matter(golden):
    """×1, odd ×3 and ×7 (pixels on latent centres and border latents), ×0.5 (on latent edges),
    ×2, ×2.5 and anisotropic sizes, for both models; outputs far from flat."""
    for name in MODELS:
        cases = eval_cases(golden, name)
        scales = set()
        for key, image, (H, W) in cases:
            h, w = golden[f"inp_{image}"].shape[1:]
            scales.add((H / h, W / w))
            assert golden[key].shape == (H * W, 3) and golden[key].std() > 0.25, key
        assert {(1, 1), (2, 2), (3, 3), (2.5, 2.5), (0.5, 0.5), (7, 7), (3, 2.5)} <= scales
        assert any(sy > 1 > sx for sy, sx in scales)
        assert golden[f"train_{name}_a"].std() > 0.25


@pytest.mark.parametrize("name", MODELS)
def test_reference_and_fast_queries_are_the_official_ones(golden, name):
    """Eval mode: `query` (the reference) equals the official `query_rgb` to 1e-6, `query_fast`
    and `forward` within float reordering."""
    model = load_model(GOLDEN / f"{name}.pth")
    for key, image, (H, W) in eval_cases(golden, name):
        x = (torch.from_numpy(golden[f"inp_{image}"]) - 0.5) / 0.5
        coord, cell = make_coord((H, W))[None], make_cell((H, W), H * W)[None]
        with torch.no_grad():
            feat = model.encode(x[None])
            ref = model.query(feat, coord, cell)[0].numpy()
            fast = model.query_fast(feat, coord, cell)[0].numpy()
            fwd = model(x[None], coord, cell)[0].numpy()
        assert np.abs(ref - golden[key]).max() <= REFERENCE_TOL, key
        assert np.abs(fast - golden[key]).max() <= 2 * ENGINE_TOL, key  # normalised units
        assert np.abs(fwd - golden[key]).max() <= 2 * ENGINE_TOL, key


@pytest.mark.parametrize("name", MODELS)
def test_training_forward_is_the_official_one(golden, name):
    """Train mode, random queries (corners and the centre among them), one cell per image."""
    model = load_model(GOLDEN / f"{name}.pth").train()
    for image in ("a", "b"):
        x = (torch.from_numpy(golden[f"inp_{image}"]) - 0.5) / 0.5
        coord = torch.from_numpy(golden[f"coord_{image}"])[None]
        cell = torch.from_numpy(golden[f"cell_{image}"])[None]
        with torch.no_grad():
            pred = model(x[None], coord, cell)[0].numpy()
            ref = model.query(model.encode(x[None]), coord, cell)[0].numpy()
        want = golden[f"train_{name}_{image}"]
        assert np.abs(pred - want).max() <= 2 * ENGINE_TOL, image
        assert np.abs(ref - want).max() <= REFERENCE_TOL, image


@pytest.mark.parametrize("name", MODELS)
def test_engine_is_the_official_function_tiled_and_untiled(golden, name):
    model = load_model(GOLDEN / f"{name}.pth")
    for key, image, (H, W) in eval_cases(golden, name):
        img = torch.from_numpy(golden[f"inp_{image}"])
        want = golden[key].reshape(H, W, 3) * 0.5 + 0.5  # raw [0, 1] units
        with torch.inference_mode():
            whole = engine.render(model, img, (H, W), tile=100, chunk=1 << 20)
            tiled = engine.render(model, img, (H, W), tile=3, chunk=7)
        assert np.abs(whole - want).max() <= ENGINE_TOL, key
        assert np.abs(tiled - want).max() <= ENGINE_TOL, key
        assert np.abs(tiled - whole).max() <= TILED_TOL, key
