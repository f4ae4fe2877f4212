"""The ONNX graph gives `liif upscale`'s pixels (within one 8-bit level) at odd and even integer,
fractional and anisotropic scales, at sizes whose border pixels sit exactly on latent centres
(where the graph once divided 0 by 0), for LIIF and LM-LIIF; and the export refuses a graph
that does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import onnx_upscale, photo_like, random_lmf, random_model

from liif_cli.errors import ExportError
from liif_cli.model import ensemble
from liif_cli.model.coords import coord_seq
from liif_cli.runtime.weights import save_checkpoint
from liif_cli.tasks.export import export_model
from liif_cli.tasks.upscale import upscale

pytestmark = pytest.mark.usefixtures("one_thread")

# (in h, in w), (out H, out W)
CASES = [
    ((12, 10), (36, 30)),  # ×3, small
    ((19, 23), (57, 69)),  # ×3: both borders' pixels exactly on latent centres
    ((40, 32), (120, 96)),  # ×3, the size the NaN was reported at
    ((5, 15), (35, 105)),  # ×7, border pixels on latent centres
    ((12, 10), (24, 20)),  # ×2
    ((12, 10), (48, 40)),  # ×4
    ((12, 10), (12, 10)),  # ×1: every pixel on a latent centre, every shift on an edge
    ((10, 12), (25, 30)),  # ×2.5
    ((11, 9), (33, 20)),  # anisotropic: ×3 × ×2.2
    ((16, 14), (7, 5)),  # downscale
]


@pytest.fixture(scope="module")
def ort():
    return pytest.importorskip("onnxruntime", reason="needs the [onnx] extra")


def exported(tmp_path_factory, model, name: str):
    import onnxruntime

    folder = tmp_path_factory.mktemp(name)
    save_checkpoint(model, folder / f"{name}.pth")
    result = export_model(folder / f"{name}.pth", folder / f"{name}.onnx", fmt="onnx")
    assert "onnxruntime matches torch" in result.check
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    return folder / f"{name}.pth", session


@pytest.fixture(scope="module")
def liif_graph(ort, tmp_path_factory):
    return exported(tmp_path_factory, random_model(), "tiny")


@pytest.fixture(scope="module")
def lmf_graph(ort, tmp_path_factory):
    return exported(tmp_path_factory, random_lmf(), "lmf")


def assert_parity(graph, cases) -> None:
    ckpt, session = graph
    for k, (in_hw, (H, W)) in enumerate(cases):
        image = photo_like(*in_hw, seed=k)
        ref = upscale(ckpt, image, size=(W, H), device="cpu", precision="fp32").astype(int)
        got = onnx_upscale(session, image, (H, W))
        diff = np.abs(got - ref)
        assert diff.max() <= 1, (in_hw, (H, W), diff.max())
        assert (diff == 0).mean() > 0.99, (in_hw, (H, W))


def test_border_pixels_on_latent_centres_are_among_the_cases():
    """The cases reach the degenerate point: a border pixel on the last latent's centre, where
    both members of an axis clamp to one latent at offset 0 (all four areas 0 but for eps)."""
    for (h, w), (H, W) in [CASES[1], CASES[3]]:
        s = H // h
        assert coord_seq(H)[H - 1 - s // 2] == coord_seq(h)[h - 1]
        assert coord_seq(W)[s // 2] == coord_seq(w)[0]


@pytest.mark.slow
def test_liif_graph_matches_liif_upscale_at_every_kind_of_scale(liif_graph):
    assert_parity(liif_graph, CASES)


@pytest.mark.slow
def test_lmf_graph_matches_liif_upscale(lmf_graph):
    assert_parity(lmf_graph, [CASES[1], CASES[4], CASES[7], CASES[8], ((6, 5), (36, 30))])


@pytest.mark.slow
def test_export_refuses_a_graph_that_loses_the_area_epsilon(ort, tmp_path, monkeypatch):
    """The old area, `|ry·rx| + 1e-9` with a Python number: the exporter's optimiser deletes
    the add, the graph gives NaN at ×3's border pixels, and the self-check (which tries ×3)
    refuses to write it."""
    monkeypatch.setattr(ensemble, "area", lambda ry, rx: torch.abs(ry * rx) + ensemble.AREA_EPS)
    save_checkpoint(random_model(), tmp_path / "tiny.pth")
    with pytest.raises(ExportError, match="by nan"):
        export_model(tmp_path / "tiny.pth", tmp_path / "tiny.onnx", fmt="onnx")
    assert not (tmp_path / "tiny.onnx").exists()


@pytest.mark.slow
def test_bundled_default_graph_has_no_nan_at_x3(ort, tmp_path):
    """The report: `liif export default --format onnx`, a 40×32 input at ×3."""
    import onnxruntime

    result = export_model("default", tmp_path / "default.onnx", fmt="onnx")
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    image = photo_like(32, 40, seed=4)  # (h, w): 40 wide, 32 tall
    ref = upscale("default", image, size=(120, 96), device="cpu", precision="fp32").astype(int)
    assert np.abs(onnx_upscale(session, image, (96, 120)) - ref).max() <= 1


def test_a_missing_model_is_said_before_any_tracing_line(tmp_path):
    """`liif export missing.pth -f onnx`: the error is the only line (no "tracing …" first)."""
    from typer.testing import CliRunner

    from liif_cli.cli import app

    r = CliRunner().invoke(app, ["export", str(tmp_path / "missing.pth"), "-f", "onnx",
                                 "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code != 0 and "not found" in r.output
    assert "tracing" not in r.output
