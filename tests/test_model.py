"""The model is the official function: golden outputs, switches, fast query == oracle."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import random_model, tiny_config
from PIL import Image

from liif_cli.model import LIIF, LiifConfig, make_cell, make_coord
from liif_cli.model.encoders import EDSR, RDN

GOLDEN_TOL = 1e-4  # max |Δ| on raw outputs that float reordering may need (golden README)


def golden_cases(golden_dir):
    for f in sorted((golden_dir / "edsr-baseline-liif").glob("*_to_*.raw.npy")):
        name, h, w = re.match(r"(.+)_to_(\d+)x(\d+)\.raw\.npy", f.name).groups()
        yield name, (int(h), int(w)), f


def load_input(golden_dir, name) -> torch.Tensor:
    img = np.array(Image.open(golden_dir / "inputs" / f"{name}.png").convert("RGB"))
    return torch.from_numpy(img).permute(2, 0, 1).float() / 255  # (3, h, w)


def test_coords_are_pixel_centres():
    c = make_coord((2, 4), flatten=False)
    assert torch.allclose(c[:, 0, 0], torch.tensor([-0.5, 0.5]))
    assert torch.allclose(c[0, :, 1], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    cell = make_cell((2, 4), 8)
    assert cell.shape == (8, 2) and torch.allclose(cell[0], torch.tensor([1.0, 0.5]))


def test_encoder_matches_golden_features(golden_dir, golden_model):
    for name in ("synth_48x40", "synth_31x57"):
        x = (load_input(golden_dir, name) - 0.5) / 0.5
        with torch.no_grad():
            feat = golden_model.encode(x[None])
        ref = np.load(golden_dir / "edsr-baseline-liif" / f"{name}.feat.npy")
        assert feat.shape == ref.shape
        assert np.abs(feat.numpy() - ref).max() < GOLDEN_TOL


@pytest.mark.slow
def test_every_golden_case_reproduces_through_the_oracle_and_fast_query(golden_dir, golden_model):
    cases = list(golden_cases(golden_dir))
    sizes = {hw for _, hw, _ in cases}
    # ×1, a downscale, a non-integer and an anisotropic case must be among them
    assert {(48, 40), (16, 28), (173, 131), (40, 300)} <= sizes
    for name, hw, raw_path in cases:
        x = (load_input(golden_dir, name) - 0.5) / 0.5
        coord = make_coord(hw)[None]
        cell = make_cell(hw, coord.shape[1])[None]
        ref = np.load(raw_path)
        with torch.no_grad():
            feat = golden_model.encode(x[None])
            for query in (golden_model.query, golden_model.query_fast):
                raw = (query(feat, coord, cell) * 0.5 + 0.5).view(*hw, 3).numpy()
                assert np.abs(raw - ref).max() < GOLDEN_TOL, (name, hw, query.__name__)


def test_golden_spec_builds_the_paper_architecture(golden_manifest):
    spec = golden_manifest["models"]["edsr-baseline-liif"]["spec"]
    model = LIIF(LiifConfig.from_spec(spec))
    assert sum(p.numel() for p in model.state_dict().values()) == \
        golden_manifest["models"]["edsr-baseline-liif"]["n_params"]
    keys = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert keys == [(e[0], e[1]) for e in
                    golden_manifest["models"]["edsr-baseline-liif"]["state_dict_keys"]]


@pytest.mark.parametrize("switches", [
    {}, {"local_ensemble": False}, {"feat_unfold": False}, {"cell_decode": False},
    {"local_ensemble": False, "feat_unfold": False, "cell_decode": False},
])
def test_fast_query_equals_oracle_for_random_points_and_gradients(switches):
    model = random_model(tiny_config(**switches)).train()
    torch.manual_seed(1)
    img = torch.rand(2, 3, 11, 14) * 2 - 1
    coord = torch.rand(2, 300, 2) * 2 - 1
    cell = torch.rand(2, 300, 2) * 0.2
    feat = model.encode(img)
    a = model.query(feat, coord, cell)
    b = model.query_fast(feat, coord, cell)
    assert torch.allclose(a, b, atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    ga = torch.autograd.grad(a.sum(), params, allow_unused=True, retain_graph=True)
    gb = torch.autograd.grad(b.sum(), params, allow_unused=True)
    for x, y in zip(ga, gb):
        if x is not None:
            assert torch.allclose(x, y, atol=1e-4, rtol=1e-4)


def test_switches_change_the_function():
    """Switches are wired: the ensemble blends neighbours; cells change outputs only when decoded."""
    img = torch.rand(1, 3, 9, 9) * 2 - 1
    coord = make_coord((23, 23))[None]
    cell = make_cell((23, 23), coord.shape[1])[None]
    base = random_model(tiny_config())
    single = random_model(tiny_config(local_ensemble=False))
    single.load_state_dict(base.state_dict())
    with torch.no_grad():
        assert (single(img, coord, cell) - base(img, coord, cell)).abs().max() > 1e-3
        assert (base(img, coord, cell * 3) - base(img, coord, cell)).abs().max() > 1e-3
        blind = random_model(tiny_config(cell_decode=False))
        assert torch.equal(blind(img, coord, cell * 3), blind(img, coord, cell))
    c = base.feat_dim
    assert base.imnet.linears[0].in_features == 9 * c + 4
    assert random_model(tiny_config(feat_unfold=False)).imnet.linears[0].in_features == c + 4


def test_encoders_have_the_paper_sizes_and_radius():
    eb = LIIF(LiifConfig()).encoder
    assert isinstance(eb, EDSR) and len(eb.body) == 17 and eb.out_dim == 64
    assert eb.receptive_radius == 34
    edsr = LIIF(LiifConfig(encoder="edsr", encoder_args={"no_upsampling": True})).encoder
    assert len(edsr.body) == 33 and edsr.out_dim == 256 and edsr.body[0].res_scale == 0.1
    rdn = RDN()
    assert rdn.D == 16 and len(rdn.RDBs[0].convs) == 8 and rdn.out_dim == 64


def test_receptive_radius_is_true():
    """A pixel change moves latents up to receptive_radius away and none beyond."""
    torch.manual_seed(0)
    enc = LIIF(tiny_config()).encoder.eval()
    r = enc.receptive_radius
    x = torch.rand(1, 3, 2 * r + 9, 2 * r + 9)
    y = x.clone()
    c = r + 4
    y[0, :, c, c] += 1
    with torch.no_grad():
        d = (enc(x) - enc(y)).abs().amax(dim=(0, 1))
    assert d[c, c + r] > 0 and d[c, c + r + 1] == 0 and d[c + r + 1, c] == 0


@pytest.mark.slow
def test_every_golden_case_reproduces_through_liif_upscale(golden_dir, golden_ckpt, tmp_path):
    """End to end: the PNG equals round(clamp(raw, 0, 1) * 255) within 1 level, ≥ 99.9 %."""
    from typer.testing import CliRunner

    from liif_cli.cli import app

    ckpt = golden_ckpt
    for name, (h, w), raw_path in golden_cases(golden_dir):
        out = tmp_path / f"{name}_{h}x{w}.png"
        res = CliRunner().invoke(app, ["upscale", str(golden_dir / "inputs" / f"{name}.png"),
                                       "--size", f"{w}x{h}", "--model", str(ckpt), "-o", str(out),
                                       "--device", "cpu", "--quiet"])
        assert res.exit_code == 0, res.output
        got = np.asarray(Image.open(out)).astype(int)
        want = np.round(np.clip(np.load(raw_path), 0, 1) * 255).astype(int)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1
        assert (got == want).mean() >= 0.999, (name, h, w)


def test_rdn_fusion_by_parts_equals_the_concatenated_fusion():
    """RDN sums per-block slices of its 1×1 fusion conv: the same as fusing the concatenation."""
    torch.manual_seed(0)
    rdn = RDN(G0=16, RDNconfig="A").eval()
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        f1 = rdn.SFENet1(x)
        h = rdn.SFENet2(f1)
        outs = []
        for block in rdn.RDBs:
            h = block(h)
            outs.append(h)
        ref = rdn.GFF(torch.cat(outs, 1)) + f1
        assert torch.allclose(rdn(x), ref, atol=1e-5)
