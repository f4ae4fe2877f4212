"""liif batch: planning, skipping, resume after SIGKILL, Ctrl-C, failures, sharding, workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from conftest import SUBPROCESS_TIMEOUT_S, photo_like, write_images
from typer.testing import CliRunner

from liif_cli.cli import app
from liif_cli.errors import ImageReadError, UsageError
from liif_cli.io import images as imageio
from liif_cli.io.files import temp_target
from liif_cli.io.images import ImageData, read_image
from liif_cli.runtime.sizing import size_request
from liif_cli.runtime.weights import load_model
from liif_cli.tasks.batch import (
    PlanItem,
    find_stale_temps,
    parse_devices,
    parse_shard,
    plan_batch,
    run_batch,
    shard_of,
    worker_names,
)
from liif_cli.tasks.upscale import upscale_image

runner = CliRunner()


def _touch(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")


def _pixels(path: Path) -> np.ndarray:
    return read_image(path).pixels


def _rels(plan) -> list[str]:
    return [item.rel for item in plan.items]


# ----------------------------------------------------------------------------------------------
# planning: names only, no model

def test_plan_mirrors_the_tree_and_ignores_non_images(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _touch(inp, ["a.png", "b.JPG", "notes.txt", ".hidden.png", ".git/x.png", "sub/c.png",
                 "sub/deeper/d.webp", "sub/anim.gif"])
    flat = plan_batch(inp, out)
    assert _rels(flat) == ["a.png", "b.JPG"] and flat.ignored == 1
    deep = plan_batch(inp, out, recursive=True)
    assert _rels(deep) == ["a.png", "b.JPG", "sub/anim.gif", "sub/c.png", "sub/deeper/d.webp"]
    outs = {item.rel: item.output for item in deep.items}
    assert outs["sub/deeper/d.webp"] == out / "sub/deeper/d.webp"
    assert outs["sub/anim.gif"] == out / "sub/anim.png"  # a format we read but do not write
    assert outs["b.JPG"] == out / "b.JPG"
    assert all(item.action == "upscale" for item in deep.items)

    jpg = plan_batch(inp, out, recursive=True, fmt="jpg", suffix="_x2")
    assert jpg.items[3].output == out / "sub/c_x2.jpg"
    assert _rels(plan_batch(inp, out, recursive=True, pattern="*.jpg")) == ["b.JPG"]
    assert _rels(plan_batch(inp, out, recursive=True, pattern="*.PNG")) == ["a.png", "sub/c.png"]
    assert _rels(plan_batch(inp, out, recursive=True, pattern="sub/*.png")) == ["sub/c.png"]


def test_batch_writes_every_format_upscale_writes(tmp_path):
    """One format table (io.formats.WRITTEN): `liif batch --format bmp` was refused while `liif
    upscale` wrote BMP; each spelling names one suffix in both commands."""
    from liif_cli.io.formats import WRITTEN

    inp = tmp_path / "in"
    _touch(inp, ["a.png"])
    for name in ["jpeg", "tif", "TIFF", ".bmp", *WRITTEN]:
        suffix = plan_batch(inp, tmp_path / "out", fmt=name).items[0].output.suffix
        assert suffix == imageio.output_suffix(name) and suffix in imageio.FORMATS, name
    assert plan_batch(inp, tmp_path / "out", fmt="bmp").items[0].output.name == "a.bmp"


def test_plan_in_place_needs_a_suffix_and_skips_its_own_outputs(tmp_path):
    inp = tmp_path / "in"
    _touch(inp, ["a.png", "a_x2.png", "b.jpg", "up/old.png"])
    with pytest.raises(UsageError, match="--suffix"):
        plan_batch(inp, inp)
    plan = plan_batch(inp, inp, suffix="_x2")
    # a_x2.png is a's output (already there): neither an input nor overwritten
    assert _rels(plan) == ["a.png", "b.jpg"]
    assert [i.action for i in plan.items] == ["skip", "upscale"]
    # an output folder inside the input folder is never read as input
    assert "up/old.png" not in _rels(plan_batch(inp, inp / "up", recursive=True))


def test_plan_fails_colliding_outputs_and_bad_options(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    _touch(inp, ["a.gif", "a.png", "b.png"])
    plan = plan_batch(inp, out)
    actions = {i.rel: (i.action, i.reason) for i in plan.items}
    assert actions["a.gif"][0] == "upscale" and actions["b.png"][0] == "upscale"
    assert actions["a.png"][0] == "fail" and "a.gif" in actions["a.png"][1]
    (out).mkdir()
    (out / "b.png").write_bytes(b"x")
    assert {i.rel: i.action for i in plan_batch(inp, out).items}["b.png"] == "skip"
    assert {i.rel: i.action for i in plan_batch(inp, out, overwrite=True).items}["b.png"] == \
        "upscale"
    with pytest.raises(UsageError, match="format"):
        plan_batch(inp, out, fmt="gif")
    with pytest.raises(UsageError, match="suffix"):
        plan_batch(inp, out, suffix="a/b")
    with pytest.raises(ImageReadError, match="not found"):
        plan_batch(tmp_path / "nope", out)
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(UsageError, match="shard"):
            parse_shard(bad)
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) == (1, 1)
    with pytest.raises(UsageError):
        size_request()  # no size at all
    with pytest.raises(UsageError):
        size_request(scale="2", width=10)


def test_colliding_outputs_say_what_tells_them_apart(tmp_path):
    """A --suffix is added to every name, so it never separates two inputs of one stem: the
    reason says what does (--format same where the formats differ, else renaming)."""
    inp, out = tmp_path / "in", tmp_path / "out"
    _touch(inp, ["a.gif", "a.png", "b.jpg", "b.png"])
    same = {i.rel: i.reason for i in plan_batch(inp, out, suffix="_x2").items}
    assert "same output" in same["a.png"] and "--suffix" not in same["a.png"]
    assert "--format same" not in same["a.png"] and "rename" in same["a.png"]
    png = {i.rel: i.reason for i in plan_batch(inp, out, fmt="png").items}
    assert "--format same" in png["b.png"] and "--suffix" not in png["b.png"]


def test_outputs_differing_only_in_case_collide_where_the_folder_ignores_case(tmp_path,
                                                                              monkeypatch):
    """On macOS's or Windows' own file systems `A.png` and `a.png` are one file: the second
    input would overwrite the first's output (inputs from a Linux share, or `--format png` of
    `a.jpg` and `A.png`)."""
    from liif_cli.io import files
    from liif_cli.tasks.batch import plan as plan_module

    inp, out = tmp_path / "in", tmp_path / "Out"
    _touch(inp, ["A.png", "a.png", "b.jpg", "B.png"])
    assert all(i.action == "upscale" for i in plan_batch(inp, out).items)  # case matters here
    monkeypatch.setattr(plan_module, "folds_case", lambda folder: True)
    got = {i.rel: (i.action, i.reason) for i in plan_batch(inp, out, fmt="png").items}
    assert got["A.png"][0] == got["B.png"][0] == "upscale", got
    assert got["a.png"][0] == "fail" and "ignores case" in got["a.png"][1], got
    assert got["b.jpg"][0] == "fail" and "--format same" in got["b.jpg"][1], got
    # the probe: a folder reached by its name in another case is that folder
    monkeypatch.undo()
    out.mkdir()
    assert not files.folds_case(out) and not files.folds_case(out / "new")
    (tmp_path / "oUT").symlink_to(out)  # what a case-ignoring file system answers
    assert files.folds_case(out) and files.folds_case(out / "new" / "123")
    for platform, folds in (("darwin", True), ("win32", True), ("linux", False)):
        monkeypatch.setattr(files.sys, "platform", platform)
        assert files.folds_case("/") is folds


def test_output_folder_that_cannot_be_made_is_a_usage_error(tmp_path, tiny_ckpt):
    """OUTPUT_DIR under a file: one line and exit 2 before any work (as `liif upscale -o` into a
    missing folder), not every file computed and then failed as an internal error; a subfolder
    that cannot be made fails its files alone, with the reason."""
    inp = tmp_path / "in"
    write_images(inp, ["a.png", "sub/b.png"], hw=(8, 10))
    (tmp_path / "file").write_bytes(b"x")
    r = runner.invoke(app, ["batch", str(inp), str(tmp_path / "file/out"), "-s", "2", "-m",
                            str(tiny_ckpt)])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "file" in r.output, r.output
    assert r.output.count("\n") == 1 and "internal error" not in r.output
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_bytes(b"not a folder")
    r = runner.invoke(app, ["batch", str(inp), str(out), "-s", "2", "-r", "-m", str(tiny_ckpt)])
    line = next(ln for ln in r.output.splitlines() if "b.png" in ln)
    assert r.exit_code == 1 and line.startswith("failed:") and "internal error" not in line, line
    assert (out / "a.png").exists()


def test_a_read_only_output_folder_is_a_usage_error_before_any_work(tmp_path, tiny_ckpt,
                                                                     monkeypatch):
    """An existing OUTPUT_DIR that cannot be written: one line, exit 2, before any work (every
    file failed, one by one, after its upscale). Faked: the tests may run as root."""
    from liif_cli.io import files

    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["a.png", "b.png"], hw=(8, 10))
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode, **kw: real_access(p, mode, **kw) and (
        Path(p) != out or not mode & os.W_OK))
    r = runner.invoke(app, ["batch", str(inp), str(out), "-s", "2", "-m", str(tiny_ckpt)])
    assert r.exit_code == 2 and r.output == f"error: cannot write the output folder {out}: " \
        f"{out} is not writable\n", r.output
    assert list(out.iterdir()) == []


def test_report_inside_a_new_output_folder(tmp_path, tiny_ckpt):
    """The README's `liif batch photos/ big/ … --report big/report.json`: on the first run big/
    does not exist yet; it is made, not refused (a report folder elsewhere must exist)."""
    inp, out = tmp_path / "photos", tmp_path / "big"
    write_images(inp, ["a.png"], hw=(8, 10))
    for name in ("report.json", "logs/r.jsonl"):
        r = runner.invoke(app, ["batch", str(inp), str(out), "-s", "2", "-m", str(tiny_ckpt),
                                "--report", str(out / name)])
        assert r.exit_code == 0, r.output
        assert (out / name).exists() and (out / "a.png").exists()
    r = runner.invoke(app, ["batch", str(inp), str(tmp_path / "big2"), "-s", "2", "--dry-run",
                            "-m", str(tiny_ckpt), "--report", str(tmp_path / "big2/r.json")])
    assert r.exit_code == 0 and not (tmp_path / "big2").exists()  # a dry run makes nothing


def test_shards_partition_the_files_stably(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    names = [f"img{i:03d}.png" for i in range(60)] + [f"sub/s{i}.png" for i in range(20)]
    _touch(inp, names)
    plans = [plan_batch(inp, out, recursive=True, shard=(i, 3)) for i in (1, 2, 3)]
    parts = [set(_rels(p)) for p in plans]
    assert set().union(*parts) == set(names) and sum(map(len, parts)) == len(names)
    assert all(len(p) >= 15 for p in parts)  # roughly even
    assert all(p.other_shards == len(names) - len(p.items) for p in plans)
    # a file's shard depends on its own name only: adding files never moves the others
    _touch(inp, [f"new{i}.png" for i in range(30)])
    again = set(_rels(plan_batch(inp, out, recursive=True, shard=(2, 3))))
    assert parts[1] <= again
    # the same on every machine and Python (a salted hash() would fail this)
    assert [shard_of(f"img{i}.png", 4) for i in range(8)] == [1, 3, 2, 3, 1, 4, 1, 1]
    assert shard_of("photo 01.JPG", 4) == 4
    nfd = unicodedata.normalize("NFD", "été/ça.png")  # as macOS spells names
    assert shard_of(nfd, 4) == shard_of("été/ça.png", 4)


def test_devices_and_worker_names():
    assert [str(d) for d in parse_devices("cpu", jobs=3)] == ["cpu"] * 3
    assert worker_names(parse_devices("cpu", jobs=2)) == ["cpu#1", "cpu#2"]
    assert worker_names(parse_devices("cpu")) == ["cpu"]
    with pytest.raises(UsageError):
        parse_devices("cpu,,cpu")


def test_device_all_without_a_gpu_says_where_it_runs(monkeypatch):
    import torch

    from liif_cli.errors import LiifWarning

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(LiifWarning, match="--device all: no CUDA GPU here, so it runs on the cpu"):
        assert [str(d) for d in parse_devices("all")] == ["cpu"]


def test_stale_temp_pattern_is_what_write_image_leaves(tmp_path, monkeypatch):
    """If the writer ever renames its temporaries, cleanup must follow: this test says so."""
    from liif_cli.io import files

    seen = []

    def publish(tmp, path, *, overwrite):
        seen.append(Path(tmp))
        raise KeyboardInterrupt  # as if killed between writing and renaming

    monkeypatch.setattr(files, "_publish", publish)
    out = tmp_path / "photo.v2.png"
    with pytest.raises(KeyboardInterrupt):
        imageio.write_image(out, ImageData(photo_like(4, 4)))
    assert temp_target(seen[0].name) == "photo.v2.png"
    seen[0].write_bytes(b"half")  # what a SIGKILL at that moment leaves
    item = PlanItem("photo.v2.png", tmp_path / "in.png", out, "upscale", "")
    assert find_stale_temps([item]) == [seen[0]]


# ----------------------------------------------------------------------------------------------
# running (in this process, the tiny model)

def test_run_writes_then_skips_then_overwrites(tmp_path, tiny_ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    names = ["a.png", "b.png", "sub/c.png"]
    write_images(inp, names, hw=(20, 24))
    loaded = load_model(str(tiny_ckpt))
    spec = size_request(scale="2")
    events = []
    res = run_batch(plan_batch(inp, out, recursive=True), loaded, size=spec, devices="cpu",
                    on_event=events.append)
    assert [r.status for r in res.records] == ["done"] * 3 and not res.interrupted
    assert events[0].kind == "start" and events[0].total == 3
    files = [e for e in events if e.kind == "file"]
    assert [e.done for e in files] == [1, 2, 3] and {e.record.input for e in files} == {
        str(inp / n) for n in names}
    for name, rec in zip(names, res.records):
        want = upscale_image(loaded, read_image(inp / name), out_hw=(40, 48), device="cpu")
        np.testing.assert_array_equal(_pixels(out / name), want.image.pixels)
        assert rec.out_size == (48, 40) and rec.in_size == (24, 20) and rec.seconds > 0
    mtimes = [(out / n).stat().st_mtime_ns for n in names]

    again = run_batch(plan_batch(inp, out, recursive=True), loaded, size=spec, devices="cpu")
    assert [r.status for r in again.records] == ["skipped"] * 3
    assert [(out / n).stat().st_mtime_ns for n in names] == mtimes

    spec3 = size_request(scale="3")
    redo = run_batch(plan_batch(inp, out, recursive=True, overwrite=True), loaded, size=spec3,
                     devices="cpu")
    assert [r.status for r in redo.records] == ["done"] * 3
    assert _pixels(out / "sub/c.png").shape == (60, 72, 3)


def test_stale_temps_are_removed_but_nothing_else(tmp_path, tiny_ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["a.png", "b.png"], hw=(20, 24))
    out.mkdir()
    stale = out / ".a.png.k1ll3d_0.part"
    keep = [out / ".zzz.png.abcdefgh.part",  # not an output of this batch
            out / ".a.png.part", out / "notes.part", out / ".a.png.ABCDEFGH.part"]
    for p in [stale, *keep]:
        p.write_bytes(b"\x89PNG half")
    plan = plan_batch(inp, out)
    assert plan.stale_temps == [stale]
    r = runner.invoke(app, ["batch", str(inp), str(out), "-s", "2", "-m", str(tiny_ckpt),
                            "--dry-run"])
    assert r.exit_code == 0 and re.search(r"\b1 stale temporary", r.output) and stale.exists()
    assert not (out / "a.png").exists()
    res = run_batch(plan, str(tiny_ckpt), size=size_request(scale=2), devices="cpu")
    assert res.removed_temps == 1 and not stale.exists() and all(p.exists() for p in keep)


def test_bad_files_fail_alone_and_are_reported(tmp_path, tiny_ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["good1.png", "good2.jpg"], hw=(20, 24))
    whole = (inp / "good1.png").read_bytes()
    (inp / "trunc.png").write_bytes(whole[: len(whole) // 2])
    (inp / "text.jpg").write_text("not a picture")
    (inp / "empty.png").write_bytes(b"")
    (inp / "readme.txt").write_text("ignored")
    report = tmp_path / "report.json"
    r = runner.invoke(app, ["batch", str(inp), str(out), "-s", "2", "-m", str(tiny_ckpt),
                            "--device", "cpu", "--report", str(report)])
    assert r.exit_code == 1, r.output
    for name, why in (("trunc.png", "truncated"), ("text.jpg", "not an image"),
                      ("empty.png", "empty")):
        line = next(ln for ln in r.output.splitlines() if name in ln)
        assert line.startswith("failed:") and why in line
    assert "Traceback" not in r.output and re.search(r"\b3 file\(s\) failed", r.output)
    assert sorted(p.name for p in out.iterdir()) == ["good1.png", "good2.jpg"]
    assert _pixels(out / "good2.jpg").shape == (40, 48, 3)
    rep = json.loads(report.read_text())
    by = {Path(f["input"]).name: f for f in rep["files"]}
    assert set(by) == {"good1.png", "good2.jpg", "trunc.png", "text.jpg", "empty.png"}
    assert {n: f["status"] for n, f in by.items()} == {
        "good1.png": "done", "good2.jpg": "done", "trunc.png": "failed", "text.jpg": "failed",
        "empty.png": "failed"}
    assert "truncated" in by["trunc.png"]["reason"] and by["good1.png"]["reason"] == ""
    assert by["good1.png"]["output"] == str(out / "good1.png") and by["good1.png"]["seconds"] > 0
    assert rep["counts"] == {"done": 2, "skipped": 0, "failed": 3, "cancelled": 0}

    # the good ones are skipped on a re-run; with nothing failing the exit code is 0
    r = runner.invoke(app, ["batch", str(inp), str(out), "-s", "2", "-m", str(tiny_ckpt),
                            "--glob", "good*"])
    assert r.exit_code == 0, r.output
    assert re.search(r"skipped\W+2\W", r.output) and re.search(r"done\W+0\W", r.output)


def test_fail_fast_stops_after_the_first_failure(tmp_path, tiny_ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    (inp).mkdir()
    (inp / "a_empty.png").write_bytes(b"")
    write_images(inp, [f"b{i}.png" for i in range(8)], hw=(20, 24))
    report = tmp_path / "r.json"
    r = runner.invoke(app, ["batch", str(inp), str(out), "-s", "2", "-m", str(tiny_ckpt),
                            "--fail-fast", "--report", str(report)])
    assert r.exit_code == 1 and "--fail-fast" in r.output, r.output
    statuses = [f["status"] for f in json.loads(report.read_text())["files"]]
    assert statuses[0] == "failed" and statuses.count("failed") == 1
    # at most IN_FLIGHT files were handed out before the failure came back
    assert statuses.count("cancelled") >= 5


def test_cli_usage_errors_are_one_line(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    write_images(inp, ["a.png"], hw=(20, 24))
    cases = [([], 2, "say how big"), (["-s", "2", "--shard", "0/2"], 2, "shard"),
             (["-s", "2", "--format", "gif"], 2, "format"),
             (["-s", "2", "--precision", "fp16", "--device", "cpu"], 2, "fp16"),
             (["-s", "2", "--report", str(tmp_path / "no/r.json")], 2, "report"),
             (["-s", "2", "--report", str(tmp_path)], 2, "is a folder")]  # not after the work
    for argv, code, words in cases:
        r = runner.invoke(app, ["batch", str(inp), str(tmp_path / "out"), "-m", str(tiny_ckpt),
                                *argv])
        assert r.exit_code == code and words in r.output, (argv, r.output)
        assert "Traceback" not in r.output
    r = runner.invoke(app, ["batch", str(tmp_path / "nope"), str(tmp_path / "out"), "-s", "2"])
    assert r.exit_code == 1 and "input folder not found" in r.output
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, tiny_ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["a.png", "sub/b.png", "c:x:d.png"], hw=(20, 24))
    r = runner.invoke(app, ["batch", str(inp), str(out), "-s", "2", "-r", "--suffix", "_x2",
                            "--format", "webp", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert f"{inp / 'sub/b.png'} → {out / 'sub/b_x2.webp'}" in r.output
    assert "c:x:d.png" in r.output  # as it is named (Rich printed "c❌d.png")
    assert re.search(r"\b3 to upscale", r.output) and not out.exists()


def _two_frame_gif(path: Path) -> None:
    from PIL import Image

    frames = [Image.fromarray(photo_like(12, 16, seed=i)) for i in range(2)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def test_quiet_batch_says_no_note_from_its_decoding_threads(tmp_path, tiny_ckpt):
    """The decoders run in threads, which have no command context: their notes were printed
    under --quiet ("errors only")."""
    inp = tmp_path / "in"
    inp.mkdir()
    _two_frame_gif(inp / "anim.gif")
    for quiet, said in ((["-q"], False), ([], True)):
        r = runner.invoke(app, ["batch", str(inp), str(tmp_path / f"out{len(quiet)}"), "-s",
                                "2", "-m", str(tiny_ckpt), *quiet])
        assert r.exit_code == 0, r.output
        assert ("note: " in r.output and "has 2 frames" in r.output) is said, r.output


# ----------------------------------------------------------------------------------------------
# several workers: spawned processes, one model each

@pytest.mark.slow
def test_a_worker_process_note_is_one_line_and_quiet_under_quiet(tmp_path, tiny_ckpt):
    """A spawned worker's warning was Python's two lines with a source path (even with -q)."""
    inp = tmp_path / "in"
    inp.mkdir()
    _two_frame_gif(inp / "anim.gif")
    for quiet in ([], ["-q"]):
        r = subprocess.run([sys.executable, "-m", "liif_cli", "batch", str(inp),
                            str(tmp_path / f"o{len(quiet)}"), "-s", "2", "-m", str(tiny_ckpt),
                            "--device", "cpu", "--jobs", "2", *quiet], capture_output=True,
                           text=True, timeout=SUBPROCESS_TIMEOUT_S,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        assert r.returncode == 0, r.stderr
        assert "LiifWarning" not in r.stderr and "worker.py" not in r.stderr, r.stderr
        assert r.stderr.count("has 2 frames") == (0 if quiet else 1), r.stderr


@pytest.mark.slow
def test_two_cpu_workers_share_the_work(tmp_path, tiny_ckpt):
    inp = tmp_path / "in"
    names = [f"p{i}.png" for i in range(6)]
    write_images(inp, names, hw=(20, 24))
    spec = size_request(scale="2")
    one = run_batch(plan_batch(inp, tmp_path / "one"), str(tiny_ckpt), size=spec,
                    devices="cpu")
    two = run_batch(plan_batch(inp, tmp_path / "two"), str(tiny_ckpt), size=spec,
                    devices="cpu", jobs=2)
    assert two.workers == ["cpu#1", "cpu#2"]
    assert [r.status for r in two.records] == ["done"] * 6
    # each worker was handed its first files at start: both worked, each file once
    assert {r.worker for r in two.records} == {"cpu#1", "cpu#2"}
    for n in names:
        np.testing.assert_array_equal(_pixels(tmp_path / "two" / n),
                                      _pixels(tmp_path / "one" / n))
    assert one.workers == ["cpu"]


# ----------------------------------------------------------------------------------------------
# killed and interrupted runs (real subprocesses)

def _start(inp: Path, out: Path, ckpt: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "liif_cli", "batch", str(inp), str(out),
                             "-s", "4", "-m", str(ckpt), "--device", "cpu", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_output(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while not (out.is_dir() and any(p.suffix == ".png" for p in out.iterdir())):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no output appeared"
        time.sleep(0.005)


def _whole_outputs(out: Path) -> list[str]:
    """Names of the outputs, after checking each decodes completely."""
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    for n in names:
        assert _pixels(out / n).shape == (192, 192, 3)
    return names


@pytest.fixture
def slow_folder(tmp_path) -> tuple[Path, list[str]]:
    names = [f"p{i:02d}.png" for i in range(8)]
    write_images(tmp_path / "in", names, hw=(48, 48))
    return tmp_path / "in", names


@pytest.mark.slow
def test_sigkill_then_rerun_completes_every_output_whole(tmp_path, tiny_ckpt, slow_folder):
    inp, names = slow_folder
    out = tmp_path / "out"
    proc = _start(inp, out, tiny_ckpt, "--quiet")
    _wait_for_output(proc, out)
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.wait()
    partial = _whole_outputs(out)
    assert len(partial) < len(names), "the run finished before it could be killed"
    # what a kill in the middle of a write leaves behind
    (out / f".{names[-1]}.k1ll3d00.part").write_bytes(b"\x89PNG\r\n\x1a\n half an image")

    proc = _start(inp, out, tiny_ckpt, "--report", str(tmp_path / "r.json"))
    stdout, stderr = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 0, stderr
    assert _whole_outputs(out) == names
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]
    counts = json.loads((tmp_path / "r.json").read_text())["counts"]
    assert counts["skipped"] == len(partial) and counts["done"] == len(names) - len(partial)

    clean = run_batch(plan_batch(inp, tmp_path / "clean"), str(tiny_ckpt),
                      size=size_request(scale="4"), devices="cpu")
    assert clean.count("done") == len(names)
    for n in names:
        np.testing.assert_array_equal(_pixels(out / n), _pixels(tmp_path / "clean" / n))


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_a_summary_and_exit_130(tmp_path, tiny_ckpt, slow_folder):
    inp, names = slow_folder
    out = tmp_path / "out"
    proc = _start(inp, out, tiny_ckpt, "--report", str(tmp_path / "r.json"))
    _wait_for_output(proc, out)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert "cancelled" in stdout and "done" in stdout  # the summary table
    done = _whole_outputs(out)
    assert 0 < len(done) < len(names)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["interrupted"] and rep["counts"]["done"] == len(done)
    assert rep["counts"]["cancelled"] == len(names) - len(done)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_an_error_before_the_first_file_is_one_line_without_a_bar(tmp_path, tiny_ckpt):
    """The progress bar started before the devices were checked: its stop printed a blank line
    above the error."""
    inp = tmp_path / "in"
    write_images(inp, ["a.png"], hw=(8, 10))
    r = runner.invoke(app, ["batch", str(inp), str(tmp_path / "out"), "-s", "2", "-m",
                            str(tiny_ckpt), "--device", "cuda"])
    assert r.exit_code == 1 and r.output.startswith("error: device cuda") and \
        r.output.count("\n") == 1, repr(r.output)
