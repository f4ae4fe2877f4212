"""docs/examples/ray_upscale.py on a local one-node Ray: 16-bit and ICC survive Ray, outputs equal
the library's, bad files fail alone. Skipped without the [ray] extra, except under CI=true, where
that is a failure: CI installs it (.ci/run)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, photo_like
from PIL import Image, ImageCms

from liif_cli.io.images import ImageData, read_image, write_image
from liif_cli.runtime.weights import load_model
from liif_cli.tasks.upscale import upscale_image

try:
    import ray
    import ray.data  # noqa: F401 - the [data] part of the extra
except ImportError as e:
    if os.environ.get("CI") == "true":
        raise ImportError(f"CI must run the Ray example's tests: {e} (pip install -e '.[ray]')"
                          ) from e
    pytest.skip("the [ray] extra is not installed", allow_module_level=True)
sys.path.insert(0, str(REPO / "docs" / "examples"))
import ray_upscale  # noqa: E402


@pytest.fixture(scope="module")
def ray_local():
    """A single-node Ray on this machine (Ray 2.x removed `local_mode=True`)."""
    import ray.cloudpickle

    # the example is no installed module: ship it to the workers by value, not by name
    ray.cloudpickle.register_pickle_by_value(ray_upscale)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # actor + a reader
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_example_keeps_16_bit_and_icc_and_matches_the_library(tmp_path, tiny_ckpt,
                                                                  ray_local):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    deep = photo_like(12, 14, seed=1).astype(np.uint16) * 257 + 3  # all 16 bits in use
    write_image(inp / "deep.png", ImageData(deep, icc_profile=icc))
    rgba = np.dstack([photo_like(10, 9, seed=2), photo_like(10, 9, seed=3)[..., :1]])
    Image.fromarray(rgba, "RGBA").save(inp / "alpha.png")
    Image.fromarray(photo_like(8, 8, seed=4)).save(inp / "old.png")
    (inp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out.mkdir()
    (out / "old.png").write_bytes(b"an earlier output")

    recs = ray_upscale.upscale_folder(inp, out, scale=2, model=str(tiny_ckpt), workers=1,
                                      batch_size=2, device="cpu")
    by = {r.input.rsplit("/", 1)[-1]: r for r in recs}
    assert {n: r.status for n, r in by.items()} == {
        "alpha.png": "done", "broken.png": "failed", "deep.png": "done", "old.png": "skipped"}
    assert "cannot read" in by["broken.png"].reason and not (out / "broken.png").exists()
    assert (out / "old.png").read_bytes() == b"an earlier output"
    assert by["deep.png"].in_size == (14, 12) and by["deep.png"].out_size == (28, 24)

    model = load_model(str(tiny_ckpt))
    got = read_image(out / "deep.png")
    assert got.pixels.dtype == np.uint16 and got.icc_profile == icc
    want = upscale_image(model, read_image(inp / "deep.png"), out_hw=(24, 28), device="cpu")
    np.testing.assert_array_equal(got.pixels, want.image.pixels)
    got = read_image(out / "alpha.png")
    want = upscale_image(model, read_image(inp / "alpha.png"), out_hw=(20, 18), device="cpu")
    assert got.alpha is not None
    np.testing.assert_array_equal(got.pixels, want.image.pixels)
    np.testing.assert_array_equal(got.alpha, want.image.alpha)
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


@pytest.mark.slow
def test_ray_example_command_line_writes_a_report(tmp_path, tiny_ckpt, ray_local, capsys):
    inp, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "r.jsonl"
    inp.mkdir()
    for k in range(3):
        Image.fromarray(photo_like(8, 10, seed=k)).save(inp / f"p{k}.png")
    (inp / "bad.png").write_bytes(b"")
    code = ray_upscale.main([str(inp), str(out), "-s", "2", "-m", str(tiny_ckpt), "--device",
                             "cpu", "--report", str(report)])
    assert code == 1  # bad.png failed, alone
    assert capsys.readouterr().out.strip() == '{"done": 3, "skipped": 0, "failed": 1}'
    lines = [json.loads(ln) for ln in report.read_text().splitlines()]
    assert sorted((Path(r["input"]).name, r["status"]) for r in lines) == [
        ("bad.png", "failed"), ("p0.png", "done"), ("p1.png", "done"), ("p2.png", "done")]
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png", "p2.png"]
    assert ray_upscale.main([str(inp), str(out), "-s", "2", "--size", "4x4"]) == 2


def test_ray_example_refuses_workers_that_leave_no_cpu_to_read(tmp_path, ray_local, capsys,
                                                                monkeypatch):
    """docs/cluster.md's `--workers 4` on a 2-CPU machine waited forever; now one line, exit 2."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(photo_like(8, 10)).save(inp / "p.png")
    assert ray_upscale.main([str(inp), str(tmp_path / "out"), "-s", "2", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Ray has 2 CPUs here" in err and "--workers 1 or fewer" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(Exception, match="too few"):
        ray_upscale.check_room(1, 1, 1)
    ray_upscale.check_room(5, 4, 1)  # four actors and a reader
