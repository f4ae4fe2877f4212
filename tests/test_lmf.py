"""LM-LIIF (`lmf.py`) is the official function: official golden outputs, official key names and
shapes loading strictly, and the engine equal to the plain reference forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REPO, photo_like, random_lmf
from PIL import Image
from typer.testing import CliRunner

from liif_cli.cli import app
from liif_cli.errors import CheckpointError, UsageError
from liif_cli.model import LMLIIF, LmfConfig, config_from_spec, make_cell, make_coord
from liif_cli.runtime import engine
from liif_cli.runtime.decoders import lmf as lmf_decoder
from liif_cli.runtime.weights import (
    checkpoint_dict,
    load_checkpoint,
    model_from_spec,
    save_checkpoint,
)

GOLDEN = REPO / "tests" / "data" / "lmf_golden"  # made by scripts/make_lmf_golden.py
ENGINE_TOL = 1e-4  # max |Δ| on raw [0, 1] outputs: float reordering only
TILED_TOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors

# The official EDSR-baseline LM-LIIF (configs/train-lmf/train_edsr-baseline-lmliif.yaml),
# written out as its file holds it, and its decoder's parameter names and shapes.
OFFICIAL_SPEC = {
    "name": "lmliif",
    "args": {
        "encoder_spec": {"name": "edsr-baseline", "args": {"no_upsampling": True}},
        "imnet_spec": {"name": "lmmlp", "args": {"out_dim": 3, "hidden_dim": 16,
                                                 "hidden_depth": 6, "mod_scale": True,
                                                 "mod_shift": True}},
        "hypernet_spec": {"name": "mlp", "args": {"out_dim": 208, "hidden_list": [208]}},
        "local_ensemble": True, "feat_unfold": True, "cell_decode": True, "mod_input": True,
    },
}
OFFICIAL_DECODER_SHAPES = {
    "hypernet.layers.0.weight": (208, 64 * 9 + 2), "hypernet.layers.0.bias": (208,),
    "hypernet.layers.2.weight": (208, 208), "hypernet.layers.2.bias": (208,),
    "imnet.layers.0.weight": (16, 16 + 2 + 2), "imnet.layers.0.bias": (16,),
    **{f"imnet.layers.{i}.{p}": (16, 16) if p == "weight" else (16,)
       for i in (2, 4, 6, 8, 10) for p in ("weight", "bias")},
    "imnet.layers.12.weight": (3, 16), "imnet.layers.12.bias": (3,),
}


def reference(model, img: torch.Tensor, out_hw: tuple[int, int]) -> np.ndarray:
    """The plain reference forward on every output pixel at once, raw [0, 1] units."""
    H, W = out_hw
    with torch.no_grad():
        feat = model.encode(((img - 0.5) / 0.5)[None])
        coord = make_coord((H, W))[None]
        pred = model.query(feat, coord, make_cell((H, W), H * W)[None])[0] * 0.5 + 0.5
    return pred.view(H, W, 3).numpy()


def test_official_spec_and_key_names_load_strictly_both_ways():
    cfg = config_from_spec(OFFICIAL_SPEC)
    assert cfg == LmfConfig()  # our defaults are the official EDSR-baseline LM-LIIF
    assert cfg.latent_out == 208 and cfg.mod_dim == 192
    model = LMLIIF(cfg)
    sd = model.state_dict()
    decoder = {k: tuple(v.shape) for k, v in sd.items() if not k.startswith("encoder.")}
    assert decoder == OFFICIAL_DECODER_SHAPES
    # a state dict built from the official names and shapes alone (encoder: LIIF's EDSR keys)
    torch.manual_seed(1)
    official_sd = {k: torch.randn(v.shape) for k, v in sd.items()}
    loaded = model_from_spec({**OFFICIAL_SPEC, "sd": official_sd}, source="official.pth")
    assert all(torch.equal(loaded.state_dict()[k], official_sd[k]) for k in official_sd)
    # ours in the official layout: the same spec the official code builds from, same keys
    ours = checkpoint_dict(loaded)["model"]
    assert {k: v for k, v in ours.items() if k != "sd"} == OFFICIAL_SPEC
    assert list(ours["sd"]) == list(official_sd)


def test_official_checkpoint_with_cmsr_spec_and_wrong_shapes(tmp_path):
    spec = {**OFFICIAL_SPEC, "args": {**OFFICIAL_SPEC["args"], "cmsr_spec": None}}
    assert config_from_spec(spec) == LmfConfig()  # demo.py adds cmsr_spec: a test-time option
    sd = LMLIIF().state_dict()
    sd["imnet.layers.0.weight"] = torch.zeros(16, 22)
    with pytest.raises(CheckpointError, match=r"wrong shape for imnet\.layers\.0\.weight"):
        model_from_spec({**OFFICIAL_SPEC, "sd": sd})
    del sd["hypernet.layers.2.bias"]
    with pytest.raises(CheckpointError, match="does not match a edsr-baseline-LM-LIIF: 1 missing"):
        model_from_spec({**OFFICIAL_SPEC, "sd": sd})
    bad = {**OFFICIAL_SPEC, "args": {**OFFICIAL_SPEC["args"], "hypernet_spec": None}}
    with pytest.raises(CheckpointError, match="no latent MLP"):
        config_from_spec(bad)


def test_reference_forward_is_the_official_one():
    """tests/data/lmf_golden: the official code's own file and outputs (eval and train mode)."""
    model = load_checkpoint(GOLDEN / "model.pth")
    assert isinstance(model, LMLIIF)
    g = np.load(GOLDEN / "golden.npz")
    cases = [k for k in g.files if k.startswith("eval_")]
    assert len(cases) == 5
    for key in cases:
        _, name, hw = key.split("_")
        H, W = map(int, hw.split("x"))
        x = (torch.from_numpy(g[f"inp_{name}"]) - 0.5) / 0.5
        coord, cell = make_coord((H, W))[None], make_cell((H, W), H * W)[None]
        with torch.no_grad():
            ref = model.query(model.encode(x[None]), coord, cell)[0].numpy()
            fwd = model(x[None], coord, cell)[0].numpy()
            fast = engine.render(model, torch.from_numpy(g[f"inp_{name}"]), (H, W))
        assert g[key].std() > 0.5  # far from flat
        # 1e-5: fp32 kernels differ with the CPU (3.3e-6 measured on an AVX-512 Ice Lake)
        assert np.abs(ref - g[key]).max() <= 1e-5, key
        assert np.abs(fwd - g[key]).max() <= 2 * ENGINE_TOL, key  # normalised units
        assert np.abs(fast - (g[key].reshape(H, W, 3) * 0.5 + 0.5)).max() <= ENGINE_TOL, key
    for name in ("a", "b"):  # train mode, random queries
        x = (torch.from_numpy(g[f"inp_{name}"]) - 0.5) / 0.5
        with torch.no_grad():
            pred = model.train()(x[None], torch.from_numpy(g[f"coord_{name}"])[None],
                                 torch.from_numpy(g[f"cell_{name}"])[None])[0].numpy()
        assert np.abs(pred - g[f"train_{name}"]).max() <= 2 * ENGINE_TOL


def test_conv_modulations_equal_the_plain_latent_mlp():
    model = random_lmf()
    feat = torch.randn(2, 16, 7, 9)
    cell = torch.rand(2, 5, 2)
    with torch.no_grad():
        a, b = model.modulations(feat, cell), model.modulations_reference(feat, cell)
    assert a.shape == (2, 208, 7, 9)
    assert (a - b).abs().max() <= 1e-5 and a.abs().max() > 1


SIZES = [(26, 22), (45, 31), (13, 11), (6, 5), (13, 40), (52, 44)]  # ×2, ×3.5ish, ×1, down,
#                                                                      anisotropic, ×4


@pytest.mark.parametrize("kw", [{}, {"mod_input": False}, {"mod_shift": False},
                                {"mod_scale": False}, {"local_ensemble": False},
                                {"cell_decode": False}, {"feat_unfold": False}])
def test_engine_equals_reference_tiled_and_chunked(kw):
    model = random_lmf(**kw)
    img = torch.from_numpy(photo_like(13, 11)).permute(2, 0, 1).float() / 255
    for H, W in SIZES:
        ref = reference(model, img, (H, W))
        with torch.inference_mode():
            whole = engine.render(model, img, (H, W), tile=100, chunk=1 << 20)
            tiled = engine.render(model, img, (H, W), tile=4, chunk=7)
        assert ref.std() > 0.05, (kw, H, W)
        assert np.abs(whole - ref).max() <= ENGINE_TOL, (kw, H, W)
        assert np.abs(tiled - whole).max() <= TILED_TOL, (kw, H, W)


def test_engine_reduced_precision_and_memory_plan():
    model = random_lmf()
    img = torch.from_numpy(photo_like(20, 16)).permute(2, 0, 1).float() / 255
    ref = reference(model, img, (60, 48))
    with torch.inference_mode():
        bf16 = engine.render(model, img, (60, 48), dtype=torch.bfloat16)
    assert np.abs(bf16 - ref).max() < 0.1 and np.abs(bf16 - ref).mean() < 0.01
    small = engine.make_plan(model, (4000, 4000), max_memory=16 * 2**20)
    large = engine.make_plan(model, (4000, 4000), max_memory=2**30)
    assert small.tile < large.tile and small.chunk <= large.chunk


def test_engine_working_memory_does_not_grow_with_output():
    """The largest tensor an LM-LIIF render allocates is a chunk's, not output-sized, and
    the rows of a run share their gathered latents (×4: a quarter of the copies)."""
    from torch.profiler import ProfilerActivity, profile

    model = random_lmf()
    img = torch.rand(3, 12, 12)

    def largest_allocation(out_hw):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, \
                torch.inference_mode():
            engine.render(model, img, out_hw, np.empty((*out_hw, 3), np.uint8), tile=6,
                          chunk=256)
        return max(e.cpu_memory_usage for e in prof.events())

    small, big = largest_allocation((48, 48)), largest_allocation((256, 256))
    ch = lmf_decoder.LmfDecoder.channels_of(model.config)
    # a chunk: its gathered P (members × queries × channels) and ≤ 4× hidden activations
    chunk_bytes = 4 * 256 * (ch + 4 * lmf_decoder.LMF_QUERY_LIVE_HIDDEN * 16) * 4
    assert big <= max(small, chunk_bytes), (small, big)
    assert big < 256 * 256 * 3 * 4 / 1.5  # below one float32 copy of the output


def test_engine_runs_split_and_pad_rows_exactly():
    """Output rows that read one latent row form runs of at most k rows; longer runs
    (clamped borders) are split and short ones padded, and every row finds its own slot."""
    model = random_lmf()
    dec = lmf_decoder.LmfDecoder(model, torch.float32, torch.device("cpu"))
    iy = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2])  # a 5-row run at the border: 3 + 2
    ry = torch.linspace(-1, 1, 9)
    lat, slot, ry_slot = dec._runs([(iy, ry), (iy + 1, -ry)], 3)
    assert lat.tolist() == [0, 0, 1, 2, 1, 1, 2, 3]
    assert slot.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 12, 13, 14, 15, 16, 18, 19, 20, 21]
    assert torch.equal(ry_slot[slot], torch.cat([ry, -ry]))
    assert ry_slot.numel() == 8 * 3 and set(range(24)) - set(slot.tolist()) == {5, 10, 11,
                                                                                17, 22, 23}


def test_one_decoder_renders_two_images_at_once_as_each_alone(monkeypatch):
    """One decoder (an Upscaler's) serves renders on several threads (`liif view`'s tiles):
    another image at another scale rendered in the middle of a decode, where a thread switch
    may put it, changes neither image's pixels (each render's runs are its own)."""
    model = random_lmf()
    dec = engine.make_decoder(model, torch.float32, torch.device("cpu"))
    a, b = torch.rand(3, 12, 12), torch.rand(3, 9, 7)

    def render(img, out_hw):
        return engine.render(model, img, out_hw, tile=6, chunk=256, decoder=dec)

    want_a, want_b = render(a, (48, 48)), render(b, (9, 10))  # runs of 4 rows; of 1 row
    got_b = []
    real = lmf_decoder.LmfDecoder._runs

    def runs_after_another_render(*args, **kw):
        if not got_b:  # the first chunk of `a` is being decoded: `b` runs meanwhile
            got_b.append(None)
            got_b[0] = render(b, (9, 10))
        return real(*args, **kw)

    monkeypatch.setattr(lmf_decoder.LmfDecoder, "_runs", staticmethod(runs_after_another_render))
    got_a = render(a, (48, 48))
    assert np.array_equal(got_b[0], want_b) and np.array_equal(got_a, want_a)


def test_lmf_checkpoint_through_load_and_the_cli(tmp_path):
    model = random_lmf()
    path = tmp_path / "fast.pth"
    save_checkpoint(model, path)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, LMLIIF) and loaded.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                 model.state_dict().values()))
    Image.fromarray(photo_like(10, 12)).save(tmp_path / "in.png")
    r = CliRunner().invoke(app, ["upscale", str(tmp_path / "in.png"), "--scale", "2",
                                 "--model", str(path), "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    got = np.asarray(Image.open(tmp_path / "in_x2.png"))
    img = torch.from_numpy(photo_like(10, 12)).permute(2, 0, 1).float() / 255
    want = np.round(np.clip(reference(model, img, (20, 24)), 0, 1) * 255)
    assert got.shape == (20, 24, 3) and np.abs(got.astype(int) - want).max() <= 1
    r = CliRunner().invoke(app, ["models"], env={"LIIF_MODELS_DIR": str(tmp_path)})
    assert r.exit_code == 0 and "fast" in r.output and "LM-LIIF" in r.output, r.output
    assert "hidden by the bundled 'fast'" in " ".join(r.output.split()), r.output  # a bundled name


def test_train_lmf_on_a_liif_encoder_resume_and_cli(tmp_path):
    """A smoke run (a few steps, tiny images): `--decoder lmf --init LIIF` copies the encoder,
    the run stores its decoder, resume keeps it, and the CLI takes --decoder."""
    from liif_cli.tasks.train import TrainConfig, train

    data = tmp_path / "hr"
    data.mkdir()
    for i in range(3):
        Image.fromarray(photo_like(40, 44, seed=i)).save(data / f"{i}.png")
    tiny = dict(encoder_args={"n_resblocks": 1, "n_feats": 8}, patch_size=12, scale_max=2.0,
                sample_q=50, batch_size=2, repeat=2, workers=0, epochs=1, val_images=2,
                val_scales=(2.0,), precision="fp32", device="cpu")
    liif_run, lmf_run = tmp_path / "liif", tmp_path / "lmf"
    train(TrainConfig(data=str(data), out=str(liif_run), hidden=(16, 16), **tiny))
    src = torch.load(liif_run / "last.pth", weights_only=True)
    assert src["model"]["name"] == "liif"
    # a negligible lr: the encoder is where --init put it; the decoder is a fresh LM-LIIF one
    cfg = TrainConfig(data=str(data), val_data=str(data), out=str(lmf_run), decoder="lmf",
                      init=str(liif_run / "last.pth"), lr=1e-12,
                      **{**tiny, "encoder_args": {}})  # the encoder comes from --init
    events = []
    train(cfg, on_event=events.append)
    ck = torch.load(lmf_run / "last.pth", weights_only=True)
    assert ck["model"]["name"] == "lmliif" and ck["liif_cli"]["config"]["decoder"] == "lmf"
    assert ck["model"]["args"]["encoder_spec"]["args"]["n_feats"] == 8
    enc = {k: v for k, v in src["model"]["sd"].items() if k.startswith("encoder.")}
    assert enc and all(torch.allclose(ck["model"]["sd"][k], v, atol=1e-6) for k, v in enc.items())
    assert ck["model"]["sd"]["hypernet.layers.0.weight"].shape == (208, 8 * 9 + 2)
    assert ck["liif_cli"]["steps"] == 3  # the decoder's own steps only
    val = [e for e in events if e.kind == "val"]
    assert len(val) == 1 and np.isfinite(val[0].psnr["x2"])
    # resume with a real lr, no --decoder: still LM-LIIF, and the weights move (the run's
    # config, with the encoder's sizes --init gave it, as `liif train --resume` merges it)
    from dataclasses import replace

    from liif_cli.tasks.train import config_from

    resumed = config_from(None, {"out": str(lmf_run)}, resume=True)
    assert resumed.decoder == "lmf" and resumed.encoder_args == {"n_resblocks": 1, "n_feats": 8}
    train(replace(resumed, epochs=2, lr=1e-3, decoder=None, val_data=None), resume=True)
    ck2 = torch.load(lmf_run / "last.pth", weights_only=True)
    assert ck2["model"]["name"] == "lmliif" and ck2["epoch"] == 2
    assert ck2["liif_cli"]["config"]["decoder"] == "lmf"
    moved = ck2["model"]["sd"]["imnet.layers.12.weight"] - ck["model"]["sd"]["imnet.layers.12.weight"]
    assert moved.abs().max() > 1e-5
    assert isinstance(load_checkpoint(lmf_run / "last.pth"), LMLIIF)
    # the CLI: --decoder is an option, an unknown one one clear line and exit code 2
    r = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "x"),
                                 "--decoder", "mlp"])
    assert r.exit_code == 2 and "unknown decoder 'mlp': use liif, lmf" in r.output, r.output


def test_freeze_encoder_trains_the_decoder_only_and_is_part_of_the_recipe(tmp_path):
    """`--freeze-encoder`: the encoder stays bit for bit what --init gave, the decoder moves,
    Adam holds state for the decoder only; it needs --init, and a resume may not change it."""
    from liif_cli.tasks.train import TrainConfig, config_from, train

    data = tmp_path / "hr"
    data.mkdir()
    for i in range(3):
        Image.fromarray(photo_like(40, 44, seed=i)).save(data / f"{i}.png")
    tiny = dict(encoder_args={"n_resblocks": 1, "n_feats": 8}, patch_size=12, scale_max=2.0,
                sample_q=50, batch_size=2, repeat=2, workers=0, epochs=1,
                precision="fp32", device="cpu")
    train(TrainConfig(data=str(data), out=str(tmp_path / "liif"), hidden=(16, 16), **tiny))
    src = torch.load(tmp_path / "liif" / "last.pth", weights_only=True)["model"]["sd"]
    out = tmp_path / "lmf"
    r = CliRunner().invoke(app, [
        "train", "-q", "--data", str(data), "--out", str(out), "--decoder", "lmf",
        "--init", str(tmp_path / "liif" / "last.pth"), "--freeze-encoder", "--lr", "1e-2",
        "--epochs", "1", "--batch-size", "2", "--patch-size", "12", "--scale-max", "2",
        "--sample-q", "50", "--repeat", "2", "--workers", "0"])
    assert r.exit_code == 0, r.output
    ck = torch.load(out / "last.pth", weights_only=True)
    sd = ck["model"]["sd"]
    enc = [k for k in src if k.startswith("encoder.")]
    assert enc and all(torch.equal(sd[k], src[k]) for k in enc)
    fresh = LMLIIF(LmfConfig(encoder_args={"n_resblocks": 1, "n_feats": 8,
                                           "no_upsampling": True}))
    n_dec = sum(1 for n, _ in fresh.named_parameters() if not n.startswith("encoder."))
    assert len(ck["optimizer"]["sd"]["state"]) == n_dec  # no Adam state for the encoder
    assert ck["liif_cli"]["config"]["freeze_encoder"] is True
    # a resume keeps it and may not turn it off; without --init it means nothing: refused
    assert config_from(None, {"out": str(out)}, resume=True).freeze_encoder is True
    with pytest.raises(UsageError, match="cannot change freeze_encoder"):
        config_from(None, {"out": str(out), "freeze_encoder": False}, resume=True)
    r = CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "x"),
                                 "--freeze-encoder"])
    assert r.exit_code == 2 and "--freeze-encoder keeps --init's encoder" in r.output, r.output


def test_revive_dead_units_makes_them_fire_and_keeps_the_function():
    """Units killed by hand (a large negative shift bias) are found, fire again on about half
    the queries, and the output is the same (they never fired, so zeroing their outgoing
    weights changes nothing); live units are left alone; no shift modulations: refused."""
    from liif_cli.tasks.train.surgery import revive_dead_units

    model = random_lmf(3)
    cfg, hd = model.config, model.config.render_hidden
    shift_at = hd * cfg.render_depth
    killed = {0: [2, 5], 3: [7], 5: [0, 15]}
    with torch.no_grad():
        for layer, units in killed.items():
            for j in units:
                model.hypernet.linears[-1].bias[shift_at + layer * hd + j] = -1e4
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        inp = torch.rand(2, 3, 12, 12, generator=g) * 2 - 1
        coord = torch.rand(2, 200, 2, generator=g) * 2 - 1
        batches.append((inp, coord, torch.full((2, 200, 2), 2 / 30)))
    with torch.no_grad():
        before = [model(*b) for b in batches]
        lin_before = [m.weight.clone() for m in model.imnet.linears]
    revived = revive_dead_units(model, batches)
    for layer, units in killed.items():
        assert set(units) <= set(revived[layer]), revived
    with torch.no_grad():
        after = [model(*b) for b in batches]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(before, after))
    # the revived units fire again (their pre-activations, through the revived model)
    seen = []
    hook = model.imnet.register_forward_pre_hook(lambda _m, args: seen.append(args))
    with torch.no_grad():
        model(*batches[0])
    hook.remove()
    x, mod = seen[0]
    parts = mod.split(hd, -1)
    for i in range(6):
        x = model.imnet.linears[i](x) * (parts[i] + 1) + parts[6 + i]
        if i in killed:
            frac = (x[..., killed[i]] > 0).float().mean().item()
            assert 0.2 < frac < 0.8, (i, frac)
        x = torch.relu(x)
    for i, units in enumerate(revived):  # only the revived units' outgoing weights moved
        w = model.imnet.linears[i + 1].weight
        keep = [j for j in range(hd) if j not in units]
        assert torch.equal(w[:, keep], lin_before[i + 1][:, keep])
        assert not w[:, units].any()
    with pytest.raises(ValueError, match="shift modulation: the model has none"):
        revive_dead_units(random_lmf(0, mod_shift=False), batches)


def test_bench_knows_lmf_and_its_oracle_agrees():
    from liif_cli.tasks.bench import RANDOM_ARCHS, random_model, run_bench

    assert RANDOM_ARCHS["lmf"] == LmfConfig()
    report = run_bench(random_model("lmf"), size=12, scale=2.5, devices="cpu",
                       precisions="fp32", model_name="random lmf")
    paths = {r.path: r for r in report.rows}
    assert set(paths) == {"oracle", "engine"} and report.out_hw == (30, 30)
    assert paths["engine"].max_abs_diff <= ENGINE_TOL and paths["engine"].max_level_diff <= 1


def test_engine_decodes_pieces_side_by_side_with_the_same_pixels():
    """With several CPU threads the pieces of a tile are decoded in parallel, one thread
    each: the same pixels as one thread, progress in order up to the total, threads restored."""
    model = random_lmf(seed=3)
    img = torch.from_numpy(photo_like(23, 19)).permute(2, 0, 1).float() / 255
    ref = reference(model, img, (70, 61))
    with torch.inference_mode():
        serial = engine.render(model, img, (70, 61), tile=9, chunk=256)
        torch.set_num_threads(3)
        seen = []
        try:
            side = engine.render(model, img, (70, 61), tile=9, chunk=256,
                                 on_progress=lambda d, t: seen.append((d, t)))
            assert torch.get_num_threads() == 3
        finally:
            torch.set_num_threads(1)
    assert np.abs(side - ref).max() < 2e-5
    np.testing.assert_allclose(side, serial, rtol=0, atol=1e-6)
    assert len(seen) > 4 and seen == sorted(seen) and seen[-1] == (70 * 61, 70 * 61)


def test_cell_is_clipped_at_the_training_scale_as_the_official_lmf_demo(monkeypatch):
    """Official LMF demo/test: cell × max(s / 4, 1). At ×6 the model sees ×4's cell (per axis
    here: ×6 rows, ×2 columns clips the rows only), in the reference and the engine alike;
    up to ×4 nothing changes (the golden above)."""
    from liif_cli.model import lmf

    model = random_lmf()
    img = torch.from_numpy(photo_like(13, 11)).permute(2, 0, 1).float() / 255
    H, W = 13 * 6, 11 * 2
    with torch.no_grad():
        feat = model.encode(((img - 0.5) / 0.5)[None])
        coord, cell = make_coord((H, W))[None], make_cell((H, W), H * W)[None]
        ours = model.query(feat, coord, cell)
        official = model.query(feat, coord, cell * torch.tensor([6 / 4, 1.0]))
        monkeypatch.setattr(lmf, "clip_rel_cell", lambda rel: rel)
        unclipped = model.query(feat, coord, cell)
        monkeypatch.undo()
    assert (ours - official).abs().max() <= 1e-5
    assert (ours - unclipped).abs().max() > 1e-3  # the clip matters at ×6
    ref = (ours[0] * 0.5 + 0.5).view(H, W, 3).numpy()
    with torch.inference_mode():
        got = engine.render(model, img, (H, W), tile=5, chunk=300)
    assert np.abs(got - ref).max() <= ENGINE_TOL
