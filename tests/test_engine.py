"""The engine is the official forward pass: against the oracle (`LIIF.query`), the official
golden outputs, itself tiled and untiled, and in its memory plan."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import TINY_ENCODER, random_lmf, random_model, tiny_config

from liif_cli.model import LIIF, LiifConfig
from liif_cli.model.coords import make_cell, make_coord
from liif_cli.runtime import engine

ORACLE_TOL = 1e-4  # max |Δ| on raw [0, 1] outputs: float reordering only (golden README)
TILED_TOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors


def oracle(model, img: torch.Tensor, out_hw: tuple[int, int]) -> np.ndarray:
    """The plain official forward: encode, then query every output pixel at once."""
    H, W = out_hw
    with torch.no_grad():
        feat = model.encode(((img - 0.5) / 0.5)[None])
        coord = make_coord((H, W))[None]
        cell = make_cell((H, W), H * W)[None]
        pred = model.query(feat, coord, cell)[0] * 0.5 + 0.5  # (H*W, 3)
    return pred.view(H, W, 3).numpy()


def render(model, img, out_hw, out=None, **kw) -> np.ndarray:
    with torch.inference_mode():
        return engine.render(model, img, out_hw, out, **kw)


# (in h, in w, out H, out W, tile, chunk): up, down, anisotropic, non-integer, ×1, 1-pixel
# outputs; tiles of 1-5 latents are far below the tiny encoder's receptive radius (6)
CASES = [
    (12, 10, 48, 40, 4, 100),  # ×4
    (9, 13, 31, 47, 3, 37),  # ×3.44 / ×3.6
    (16, 14, 7, 5, 5, 11),  # downscale
    (10, 9, 10, 9, 2, 7),  # ×1
    (7, 11, 50, 12, 1, 300),  # anisotropic: up vertically, ~×1 across
    (8, 8, 1, 1, 3, 5),  # one pixel
    (5, 13, 9, 30, 6, 1),  # chunks of one query
]


@pytest.mark.parametrize("flags", list(itertools.product([True, False], repeat=3)),
                         ids=lambda f: "le{:d}-fu{:d}-cd{:d}".format(*f))
def test_engine_equals_oracle_every_architecture_switch(flags):
    le, fu, cd = flags
    model = random_model(tiny_config(local_ensemble=le, feat_unfold=fu, cell_decode=cd))
    g = torch.Generator().manual_seed(1)
    for h, w, H, W, tile, chunk in CASES:
        img = torch.rand(3, h, w, generator=g)
        got = render(model, img, (H, W), tile=tile, chunk=chunk)
        np.testing.assert_allclose(got, oracle(model, img, (H, W)), rtol=0, atol=ORACLE_TOL,
                                   err_msg=f"{h}x{w} -> {H}x{W}, tile {tile}, chunk {chunk}")


def test_engine_equals_oracle_random_sizes_scales_tiles_chunks():
    model = random_model(seed=2)
    rng = np.random.default_rng(7)
    for _ in range(12):
        h, w = (int(v) for v in rng.integers(2, 28, 2))
        sy, sx = (float(v) for v in rng.uniform(0.3, 6.0, 2))
        H, W = max(1, round(h * sy)), max(1, round(w * sx))
        tile, chunk = int(rng.integers(1, 20)), int(rng.integers(1, 2000))
        img = torch.rand(3, h, w, generator=torch.Generator().manual_seed(int(h * w)))
        got = render(model, img, (H, W), tile=tile, chunk=chunk)
        np.testing.assert_allclose(got, oracle(model, img, (H, W)), rtol=0, atol=ORACLE_TOL,
                                   err_msg=f"{h}x{w} -> {H}x{W}, tile {tile}, chunk {chunk}")


def test_tiled_equals_untiled():
    model = random_model(seed=3)
    img = torch.rand(3, 23, 19, generator=torch.Generator().manual_seed(3))
    whole = render(model, img, (57, 50), tile=1000)
    for tile in (1, 4, 9, 22):  # receptive radius 6 + margin 3: most are smaller
        np.testing.assert_allclose(render(model, img, (57, 50), tile=tile), whole, rtol=0,
                                   atol=TILED_TOL, err_msg=f"tile {tile}")


def test_chunked_equals_unchunked():
    model = random_model(seed=4)
    img = torch.rand(3, 8, 9, generator=torch.Generator().manual_seed(4))
    whole = render(model, img, (20, 25), chunk=10**6)
    for chunk in (1, 7, 25, 26, 49, 300):  # splitting columns, rows, and both
        np.testing.assert_allclose(render(model, img, (20, 25), chunk=chunk), whole, rtol=0,
                                   atol=TILED_TOL, err_msg=f"chunk {chunk}")


def _windows(H: int, W: int) -> list[tuple[int, int, int, int]]:
    """(y0, x0, h, w) windows: a corner, the middle, the right and bottom borders, 1×1, all."""
    return [(0, 0, 5, 7), (H // 3, W // 4, H // 2, W // 3), (H - 6, W - 9, 6, 9),
            (H - 1, W - 1, 1, 1), (0, W - 4, H, 4), (0, 0, H, W)]


@pytest.mark.parametrize("lmf", [False, True])
def test_window_equals_that_window_of_the_whole_render(lmf):
    from conftest import random_lmf

    model = random_lmf(seed=6) if lmf else random_model(seed=6)
    img = torch.rand(3, 13, 17, generator=torch.Generator().manual_seed(6))
    for sy, sx in ((2, 2), (3, 3), (7.5, 7.5), (2.5, 3), (0.7, 1.3)):
        H, W = round(13 * sy), round(17 * sx)
        whole = render(model, img, (H, W), tile=5)
        for win in _windows(H, W):
            y0, x0, h, w = win
            got = render(model, img, (H, W), tile=5, window=win)
            assert got.shape == (h, w, 3)
            np.testing.assert_allclose(got, whole[y0:y0 + h, x0:x0 + w], rtol=0, atol=TILED_TOL,
                                       err_msg=f"x{sy}x{sx} window {win}")
        # quantised: the same 8-bit values
        q = np.empty((6, 9, 3), np.uint8)
        render(model, img, (H, W), q, tile=5, window=(H - 6, W - 9, 6, 9))
        ref = np.clip(np.round(whole[H - 6:, W - 9:] * 255), 0, 255)
        assert np.abs(q.astype(int) - ref).max() <= 1


def test_window_outside_the_output_is_refused():
    model = random_model(seed=6)
    img = torch.rand(3, 4, 4)
    for win in ((0, 0, 0, 3), (-1, 0, 2, 2), (7, 0, 2, 2), (0, 6, 2, 3)):
        with pytest.raises(ValueError, match="window"):
            render(model, img, (8, 8), window=win)
    with pytest.raises(ValueError, match="out has shape"):
        render(model, img, (8, 8), np.empty((8, 8, 3), np.float32), window=(0, 0, 2, 2))


# down, ×1, ×2, anisotropic and non-integer (×1.29 by ×5.26): the small golden cases
GOLDEN_CASES = ["synth_31x57_to_16x28", "synth_31x57_to_31x57", "synth_48x40_to_96x80",
                "synth_31x57_to_40x300"]


@pytest.mark.slow
def test_matches_official_golden_outputs(golden_dir, golden_manifest, golden_model):
    from PIL import Image

    for case in GOLDEN_CASES:
        raw_path = golden_dir / "edsr-baseline-liif" / f"{case}.raw.npy"
        name, size = case.split("_to_")
        H, W = (int(v) for v in size.split("x"))
        lr = np.asarray(Image.open(golden_dir / "inputs" / f"{name}.png").convert("RGB"))
        img = torch.from_numpy(lr.copy()).permute(2, 0, 1).float() / 255
        got = render(golden_model, img, (H, W), tile=16, chunk=999)
        np.testing.assert_allclose(got, np.load(raw_path), rtol=0, atol=ORACLE_TOL,
                                   err_msg=raw_path.name)
    # the outputs come from the seed-0 checkpoint we load, with the MLP's Kaiming init
    assert (golden_manifest["seed"], golden_manifest["init"]) == (0, "kaiming-mlp")


def test_quantised_outputs_are_rounded_clamped_raw():
    model = random_model(seed=5)
    img = torch.rand(3, 9, 10, generator=torch.Generator().manual_seed(5))
    raw = render(model, img, (27, 31))
    assert raw.min() < 0 or raw.max() > 1  # the random model overshoots: clamping matters
    for dtype, top in ((np.uint8, 255), (np.uint16, 65535)):
        out = render(model, img, (27, 31), np.empty((27, 31, 3), dtype), tile=4, chunk=50)
        expected = np.round(np.clip(raw, 0, 1) * top)
        assert out.dtype == dtype
        # float reordering may move a value across a rounding boundary: at most one level
        assert np.abs(out.astype(np.int64) - expected).max() <= 1
        assert np.mean(out == expected) > 0.99


def test_grey_output_is_channel_mean_before_quantising():
    model = random_model(seed=6)
    img = torch.rand(1, 8, 9, generator=torch.Generator().manual_seed(6)).expand(3, -1, -1)
    raw = render(model, img, (20, 21))
    grey = render(model, img, (20, 21), np.empty((20, 21, 1), np.uint8))
    expected = np.round(np.clip(raw.mean(axis=2, keepdims=True), 0, 1) * 255)
    assert np.abs(grey.astype(int) - expected).max() <= 1
    with pytest.raises(ValueError, match="expected"):
        render(model, img, (20, 21), np.empty((20, 21, 2), np.uint8))


def test_fp32_enters_no_autocast_region(monkeypatch):
    """torch 2.3-2.5 refuse `torch.autocast("mps", enabled=False)`: fp32 builds none at all."""
    def refuse(*args, **kw):
        raise AssertionError("torch.autocast constructed in fp32")

    monkeypatch.setattr(torch, "autocast", refuse)
    img = torch.rand(3, 9, 8, generator=torch.Generator().manual_seed(3))
    for model in (random_model(), random_lmf()):
        assert np.isfinite(render(model, img, (20, 17), tile=4)).all()


def test_quantised_chunks_come_to_the_host_as_integers(monkeypatch):
    """uint8/uint16 outputs are quantised on the device and copied as integers (16-bit levels
    as int32: MPS has no uint16 before torch 2.9); float32 stays."""
    copied: list[torch.dtype] = []
    real = torch.Tensor.cpu

    def spy(self, *args, **kw):
        copied.append(self.dtype)
        return real(self, *args, **kw)

    monkeypatch.setattr(torch.Tensor, "cpu", spy)
    model = random_model(seed=5)
    img = torch.rand(3, 9, 10, generator=torch.Generator().manual_seed(5))
    for dtype, want in ((np.uint8, torch.uint8), (np.uint16, torch.int32),
                        (np.float32, torch.float32)):
        copied.clear()
        out = render(model, img, (27, 31), np.empty((27, 31, 3), dtype), tile=4, chunk=50)
        assert out.dtype == dtype and copied and set(copied) == {want}, (dtype, copied)


def test_progress_reports_every_pixel_once():
    model = random_model()
    calls = []
    render(model, torch.rand(3, 10, 10), (33, 29), tile=4, chunk=60,
           on_progress=lambda d, t: calls.append((d, t)))
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == 33 * 29 and {t for _, t in calls} == {33 * 29}


def test_bf16_is_close_to_fp32():
    model = random_model(seed=8)
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(8))
    fp32 = render(model, img, (64, 64), np.empty((64, 64, 3), np.uint8))
    bf16 = render(model, img, (64, 64), np.empty((64, 64, 3), np.uint8), dtype=torch.bfloat16,
                  encoder_dtype=torch.bfloat16)
    mse = np.mean((fp32.astype(float) - bf16) ** 2)
    assert 10 * np.log10(255**2 / max(mse, 1e-12)) > 40


def test_fused_linear_is_exact_or_not_used():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(300, 32, generator=g), torch.randn(20, 32, generator=g), torch.randn(20)
    fn = engine.linear_relu_fn(torch.device("cpu"), torch.float32)
    np.testing.assert_allclose(fn(x, w, b), torch.relu(x @ w.t() + b), rtol=0, atol=1e-5)


def test_plan_follows_the_budget_not_the_output():
    model = random_model()
    small = engine.make_plan(model, (100, 100), max_memory=16 * 2**20)
    large = engine.make_plan(model, (100, 100), max_memory=2**30)
    assert small.tile <= large.tile and small.chunk <= large.chunk
    tiny = engine.make_plan(model, (5000, 5000), max_memory=2**20)
    assert tiny.chunk == engine.MIN_CHUNK
    # the receptive field overflows this budget: tiles bound the recomputation instead
    halo = model.encoder.receptive_radius + engine.TILE_MARGIN
    assert tiny.tile == max(engine.MIN_TILE, engine.HALO_BOUND_TILES * halo)
    rdn = LIIF(LiifConfig(encoder="rdn", encoder_args={"no_upsampling": True}))  # radius 131
    assert engine.make_plan(rdn, (200, 200)).tile == 200  # one tile, not 169 of 16 pixels
    assert engine.make_plan(rdn, (900, 900)).tile == engine.HALO_BOUND_TILES * (131 + 3)
    assert engine.make_plan(model, (40, 30)).tile == 40  # never bigger than the image
    # on the CPU a wide MLP gets shorter chunks than a narrow one (cache-sized buffers)
    wide = random_model(LiifConfig(encoder="edsr-baseline", encoder_args=TINY_ENCODER, hidden=(256, 256)))
    assert engine.make_plan(wide, (100, 100)).chunk < engine.make_plan(model, (100, 100)).chunk


@pytest.mark.slow
def test_working_memory_does_not_grow_with_output():
    """The largest tensor allocated while rendering is a chunk, not anything output-sized."""
    from torch.profiler import ProfilerActivity, profile

    model = random_model()
    img = torch.rand(3, 12, 12)

    def largest_allocation(out_hw):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            render(model, img, out_hw, np.empty((*out_hw, 3), np.uint8), tile=6, chunk=256)
        return max(e.cpu_memory_usage for e in prof.events())

    small, big = largest_allocation((48, 48)), largest_allocation((256, 256))
    chunk_bytes = 4 * 256 * 32 * 4  # members × chunk × hidden × float32
    assert big <= max(small, chunk_bytes), (small, big)
    assert big < 256 * 256 * 3 * 4 / 1.5  # below one float32 copy of the output


@pytest.mark.cuda
def test_cuda_fp32_equals_cpu():
    model = random_model(seed=9)
    img = torch.rand(3, 14, 13, generator=torch.Generator().manual_seed(9))
    cpu = render(model, img, (50, 41), tile=5)
    gpu = render(model.cuda(), img.cuda(), (50, 41), tile=5)
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=ORACLE_TOL)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_half_precisions_are_close(dtype):
    model = random_model(seed=10).cuda()
    img = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(10)).cuda()
    fp32 = render(model, img, (64, 64), np.empty((64, 64, 3), np.uint8))
    half = render(model, img, (64, 64), np.empty((64, 64, 3), np.uint8), dtype=dtype,
                  encoder_dtype=dtype)
    mse = np.mean((fp32.astype(float) - half) ** 2)
    assert 10 * np.log10(255**2 / max(mse, 1e-12)) > 35


def test_bench_reports_engine_against_oracle(tiny_ckpt):
    from typer.testing import CliRunner

    from liif_cli.cli import app
    from liif_cli.tasks.bench import oracle_forward, run_bench

    model = random_model()
    img = torch.rand(3, 9, 7, generator=torch.Generator().manual_seed(11))
    # the same sums in other batches: equal but for the last bit (GEMM blocking differs by CPU)
    np.testing.assert_allclose(oracle_forward(model, img, (20, 15), batch=37),
                               oracle(model, img, (20, 15)), rtol=0, atol=1e-6)
    report = run_bench(model, size=12, scale=2.5, devices="cpu", precisions="fp32,bf16")
    rows = {(r.path, r.precision): r for r in report.rows}
    assert report.out_hw == (30, 30) and set(rows) == {("oracle", "fp32"), ("engine", "fp32"),
                                                       ("engine", "bf16")}
    assert rows["engine", "fp32"].max_abs_diff < ORACLE_TOL
    assert rows["engine", "fp32"].max_level_diff <= 1 and rows["engine", "bf16"].psnr_vs_fp32 > 40
    assert all(r.seconds > 0 and r.peak_memory > 0 for r in report.rows)
    r = CliRunner().invoke(app, ["bench", "--model", str(tiny_ckpt), "--size", "10", "--scale",
                                 "2", "--skip-oracle", "--precision", "fp32", "-q"])
    assert r.exit_code == 0 and "engine" in r.stdout and "oracle" not in r.stdout
    r = CliRunner().invoke(app, ["bench", "--size", "10"])
    assert r.exit_code == 2 and "--random-arch" in r.stderr


def test_bench_refuses_what_would_time_nothing_or_too_much(tmp_path):
    """An empty --device or --precision list printed an empty table (exit 0); a scale of 1e300
    was an internal error and 1e7 "out of memory"; fp16 in a list failed on the CPU that
    `--device auto` always includes; an infinite PSNR was written as JSON's non-value
    Infinity."""
    import json
    import math
    import re

    from typer.testing import CliRunner

    from liif_cli.cli import app
    from liif_cli.errors import LiifWarning
    from liif_cli.io.files import json_text
    from liif_cli.tasks.bench import run_bench

    base = ["bench", "--random-arch", "edsr-baseline-small", "--size", "8", "--skip-oracle"]
    for args, message in ((["--device", ","], "names no device"),
                          (["--precision", ""], "names no precision"),
                          (["--scale", "1e300"], r"output 8\.0e\+300×8\.0e\+300 is over"),
                          (["--scale", "1e5"], "over the 1,000.0 MP limit"),
                          (["--size", "20000"], "over 200.0 MP")):
        r = CliRunner().invoke(app, base + args)
        assert r.exit_code == 2 and re.match(f"error: .*{message}", r.output), (args, r.output)
    with pytest.warns(LiifWarning, match="fp16 is for GPUs: not measured on the CPU"):
        report = run_bench(random_model(), size=8, scale=2, devices="cpu",
                           precisions="fp32,fp16", skip_oracle=True)
    assert [r.precision for r in report.rows] == ["fp32"]
    out = tmp_path / "b.json"
    r = CliRunner().invoke(app, base + ["--precision", "fp32", "--json", str(out), "-q"])
    assert r.exit_code == 0 and json.loads(out.read_text())["rows"][0]["precision"] == "fp32"
    # what bench and eval write their JSON with: identical images' PSNR is null, not Infinity
    assert json.loads(json_text({"rows": [{"psnr_vs_fp32": math.inf, "d": [-math.inf, 1.5],
                                           "n": math.nan}]})) == {
        "rows": [{"psnr_vs_fp32": None, "d": [None, 1.5], "n": None}]}


@pytest.mark.parametrize("model_kind", ["liif", "lmf"])
@pytest.mark.parametrize("window", [None, (7, 11, 40, 50)])
def test_render_work_counts_what_render_encodes_and_decodes(model_kind, window):
    """`render_work` counts, without rendering, the input pixels `render` encodes (tile halos
    included), the latents its P is computed on and the output pixels it decodes; several
    tiles here (a small budget), for the whole output and for a window of it."""
    model = (random_model() if model_kind == "liif" else random_lmf()).eval()
    dec = engine.make_decoder(model, torch.float32, torch.device("cpu"))
    seen = {"calls": 0, "encoded": 0, "latents": 0}
    encode, pmap = model.encode, dec.pmap

    def counted_encode(x):
        seen["calls"] += 1
        seen["encoded"] += x.shape[-2] * x.shape[-1]
        return encode(x)

    def counted_pmap(feat, cell):
        seen["latents"] += feat.shape[-2] * feat.shape[-1]
        return pmap(feat, cell)

    model.encode, dec.pmap = counted_encode, counted_pmap
    in_hw, out_hw, budget = (45, 61), (100, 130), 2**20  # tiles of 18 latents
    img = torch.rand(3, *in_hw)
    with torch.inference_mode():
        out = engine.render(model, img, out_hw, max_memory=budget, decoder=dec, window=window)
    work = engine.render_work(model, dec, in_hw, out_hw, max_memory=budget, window=window)
    assert seen["calls"] > 1  # the budget cut it into tiles
    assert (work.encoded, work.latents, work.queries) == (
        seen["encoded"], seen["latents"], out.shape[0] * out.shape[1])
    per_latent, per_query = dec.work()
    assert work.macs == (engine.encoder_macs_per_pixel(model) * work.encoded
                         + per_latent * work.latents + per_query * work.queries)
    assert per_latent > 0 and per_query > 0
