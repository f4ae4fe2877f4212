"""`liif video`: clips made here with PyAV (a few dozen 32×24 frames, sound, subtitles), upscaled
by a tiny random model. What must survive (frames, timestamps, sound and subtitle packets,
tags, colour, rotation), that a frame is `upscale` of the input frame, resume after SIGKILL,
shards, and every bad input as one line with nothing at the output path.

Skipped with the reason when PyAV (the `video` extra) is missing, except under CI=true, where
that is a failure: CI installs it (the `test` extra).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import SUBPROCESS_TIMEOUT_S, photo_like
from typer.testing import CliRunner

from liif_cli.cli import app
from liif_cli.errors import LiifError, OutputWriteError, UsageError, VideoReadError

try:
    import av
except ImportError:
    av = None
    if os.environ.get("CI") == "true":
        pytest.fail("CI must run the video tests: PyAV is missing (pip install '.[video]')",
                    pytrace=False)
    pytest.skip("PyAV is not installed (pip install '.[video]')", allow_module_level=True)

from liif_cli.tasks.video import upscale_video  # noqa: E402
from liif_cli.tasks.video.codecs import to_rgb  # noqa: E402
from liif_cli.tasks.video.probe import av_error, probe, require_av  # noqa: E402
from liif_cli.tasks.video.segments import work_folder  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny frames: threads only add overhead
runner = CliRunner()
SRT = ("1\n00:00:00,100 --> 00:00:00,900\nhello\n\n"
       "2\n00:00:01,000 --> 00:00:01,500\nworld\n")


def make_clip(path: Path, *, frames: int = 24, hw=(24, 32), fps: int = 12, gop: int = 6,
              audio: bool = True, subs: bool = True, pts=None, codec: str = "libx264",
              pix_fmt: str = "yuv420p", colour: dict | None = None, rotation: float = 0,
              picture: bool = True) -> Path:
    """A small clip: a photo-like picture panning one pixel per frame, keyframe every `gop`
    frames, optional AAC sound and SubRip subtitles (in Matroska), tagged streams."""
    h, w = hw
    c = av.open(str(path), "w")
    v = None
    if picture:
        v = c.add_stream(codec, rate=fps, options={"g": str(gop), "crf": "10"} if codec in (
            "libx264", "libx265") else {"g": str(gop)})
        v.width, v.height, v.pix_fmt = w, h, pix_fmt
        if pts:
            v.time_base = v.codec_context.time_base = Fraction(1, 1000)
        v.metadata.update({"language": "eng", "title": "picture"})
        for key, value in (colour or {}).items():
            setattr(v.codec_context, key, value)
        if rotation:
            v.set_display_rotation(rotation)
    a = None
    if audio:
        a = c.add_stream("aac", rate=8000)
        a.layout = "mono"
        a.metadata["language"] = "fra"
    sub_packets = []
    if subs:
        (path.parent / "s.srt").write_text(SRT)
        src = av.open(str(path.parent / "s.srt"))
        o = c.add_stream_from_template(src.streams[0])
        o.metadata["language"] = "deu"
        sub_packets = [p for p in src.demux(src.streams[0]) if p.size]
    base = photo_like(h, w + frames)
    for i in range(frames if picture else 0):
        f = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, i:i + w]), format="rgb24")
        f.pts = pts[i] if pts else i
        if pts:
            f.time_base = Fraction(1, 1000)
        c.mux(v.encode(f.reformat(format=pix_fmt) if pix_fmt != "yuv420p" else f))
    if v is not None:
        c.mux(v.encode(None))
    if a is not None:
        t = 0
        for k in range(int(frames / fps * 8000 / 1024) + 1):
            s = (np.sin(np.arange(1024) * 0.05 + k) * 0.3).astype(np.float32)[None]
            af = av.AudioFrame.from_ndarray(s, format="flt", layout="mono")
            af.sample_rate, af.pts = 8000, t
            t += 1024
            c.mux(a.encode(af))
        c.mux(a.encode(None))
    for p in sub_packets:
        p.stream = o
        c.mux(p)
    if not frames:
        c.start_encoding()  # the header alone: a video stream without a frame
    c.close()
    return path


def packets(path: Path, kind: str) -> list[tuple]:
    """(pts, dts, duration, bytes, keyframe) of every packet of the first `kind` stream."""
    with av.open(str(path)) as c:
        s = getattr(c.streams, kind)[0]
        tb = s.time_base
        return [(p.pts * tb if p.pts is not None else None, p.dts * tb if p.dts is not None
                 else None, p.duration * tb if p.duration else None, bytes(p), p.is_keyframe)
                for p in c.demux(s) if p.size]


def frames(path: Path, fmt: str = "rgb24") -> list[tuple[Fraction, np.ndarray]]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [(f.pts * s.time_base, f.to_ndarray(format=fmt)) for f in c.decode(s)]


@pytest.fixture
def clip(tmp_path) -> Path:
    return make_clip(tmp_path / "in.mkv")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_keeps_sound_subtitles_timing_and_tags(clip, tmp_path, tiny_ckpt):
    out = tmp_path / "out.mkv"
    # 5-frame segments across 6-frame GOPs: most segments start between input keyframes
    res = upscale_video(clip, out, model=tiny_ckpt, scale=2.25, segment_seconds=0.4)
    assert res.joined and res.segments == 5 and res.frames_rendered == 24
    assert not work_folder(out).exists()
    info = probe(out)
    assert (info.width, info.height) == (72, 54) and info.frames == 24
    vin = [p[0] for p in packets(clip, "video")]
    vout = [p[0] for p in packets(out, "video")]
    assert sorted(vin) == vout  # every frame's time, exactly (and in presentation order)
    assert packets(clip, "audio") == packets(out, "audio")  # copied, not re-encoded
    assert packets(clip, "subtitles") == packets(out, "subtitles")
    with av.open(str(clip)) as a, av.open(str(out)) as b:
        assert [s.type for s in a.streams] == [s.type for s in b.streams]
        for sa, sb in zip(a.streams, b.streams):
            assert sa.metadata.get("language") == sb.metadata.get("language")
        assert b.streams.video[0].metadata["title"] == "picture"
        assert b.duration == a.duration


def test_variable_frame_rate_times_kept(tmp_path, tiny_ckpt):
    pts = [0, 40, 80, 200, 230, 500, 510, 520, 900, 1000, 1400, 1433]
    clip = make_clip(tmp_path / "vfr.mkv", frames=len(pts), pts=pts, audio=False, subs=False)
    for ext in ("mkv", "mp4"):
        out = tmp_path / f"vfr_out.{ext}"
        upscale_video(clip, out, model=tiny_ckpt, scale=2, segment_seconds=0.3)
        assert [t for t, _ in frames(out)] == [Fraction(p, 1000) for p in pts]
        # the last frame lasts as long as the input's (it lasted 1/average rate: the length
        # of an MP4 is where its last frame ends)
        assert probe(out).duration_s == probe(clip).duration_s, ext


def test_lossless_frame_is_upscale_of_the_input_frame(clip, tmp_path, tiny_ckpt):
    """ffv1 bgr0 stores the model's RGB exactly: frame k is `upscale` of decoded frame k."""
    from liif_cli.tasks.upscale import upscale

    out = tmp_path / "lossless.mkv"
    upscale_video(clip, out, model=tiny_ckpt, size="50x37", codec="ffv1", pix_fmt="bgr0",
                  segment_seconds=0.4)  # segments starting mid-GOP too
    with av.open(str(clip)) as c:
        src = [to_rgb(f, 8) for f in c.decode(c.streams.video[0])]
    got = frames(out)
    assert len(got) == len(src)
    for k in (0, 5, 7, 10, 23):
        want = upscale(tiny_ckpt, src[k], size=(50, 37), device="cpu")
        diff = np.abs(got[k][1].astype(int) - want.astype(int))
        assert got[k][1].shape == (37, 50, 3) and diff.max() <= 1


def test_static_scene_gives_identical_frames(tmp_path, tiny_ckpt):
    """Temporal stability: the same input frame gives the same output frame (lossless)."""
    c = av.open(str(tmp_path / "static.mkv"), "w")
    v = c.add_stream("ffv1", rate=10)
    v.width, v.height, v.pix_fmt = 32, 24, "bgr0"
    img = photo_like(24, 32)
    for i in range(6):
        f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="bgr0")
        f.pts = i
        c.mux(v.encode(f))
    c.mux(v.encode(None))
    c.close()
    out = tmp_path / "static_out.mkv"
    upscale_video(tmp_path / "static.mkv", out, model=tiny_ckpt, scale=2, codec="ffv1",
                  pix_fmt="bgr0")
    got = [px for _, px in frames(out)]
    assert len(got) == 6 and all(np.array_equal(got[0], g) for g in got[1:])


def test_colour_range_rotation_and_ten_bits_kept(tmp_path, tiny_ckpt):
    clip = make_clip(tmp_path / "deep.mkv", codec="libx265", pix_fmt="yuv420p10le",
                     colour={"color_range": 2, "colorspace": 1, "color_primaries": 1,
                             "color_trc": 1}, rotation=90, audio=False, subs=False)
    out = tmp_path / "deep_out.mkv"
    # (x265 of this PyAV wheel corrupts its heap on 10-bit 48×36 frames; 64×48 is fine)
    res = upscale_video(clip, out, model=tiny_ckpt, scale=2, codec="hevc",
                        segment_seconds=0.5)
    assert res.spec.pix_fmt == "yuv420p10le"  # 10-bit in, 10-bit out by default
    info = probe(out)
    assert info.pix_fmt == "yuv420p10le" and (info.width, info.height) == (64, 48)
    assert info.colour == {"color_range": 2, "colorspace": 1, "color_primaries": 1,
                           "color_trc": 1}
    assert info.rotation == 90


def test_odd_size_rounds_up_to_even_with_a_note(clip, tmp_path, tiny_ckpt):
    r = run("video", clip, "-o", tmp_path / "o.mkv", "--size", "101x77", "-m", tiny_ckpt)
    assert r.exit_code == 0, r.output
    assert "101×77 rounded up to 102×78" in r.output
    assert probe(tmp_path / "o.mkv").width == 102
    r = run("video", clip, "-o", tmp_path / "rgb.mkv", "--size", "101x77", "-m", tiny_ckpt,
            "--codec", "ffv1", "--pix-fmt", "bgr0")
    assert r.exit_code == 0 and "rounded" not in r.output
    assert (probe(tmp_path / "rgb.mkv").width, probe(tmp_path / "rgb.mkv").height) == (101, 77)


def test_cli_summary_and_report(clip, tmp_path, tiny_ckpt):
    out, rep = tmp_path / "o.mkv", tmp_path / "r.jsonl"
    r = run("video", clip, "-o", out, "-s", "2", "-m", tiny_ckpt, "--report", rep)
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "24 frames 32×24 → 64×48" in r.output
    assert "libx264 yuv420p crf 18" in r.output and "cpu fp32" in r.output
    line = json.loads(rep.read_text().splitlines()[-1])
    assert line["status"] == "done" and line["out_size"] == [64, 48]
    r = run("video", clip, "-o", out, "-s", "2", "-m", tiny_ckpt, "--report", rep)
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "output exists" in r.output
    line = json.loads(rep.read_text().splitlines()[-1])
    assert line["status"] == "failed" and "output exists" in line["reason"]


def test_three_shards_render_every_frame_once(clip, tmp_path, tiny_ckpt):
    ref = tmp_path / "ref.mkv"
    upscale_video(clip, ref, model=tiny_ckpt, scale=2, segment_seconds=0.5)
    out = tmp_path / "sharded.mkv"
    results = []
    for i in (1, 3, 2):
        results.append(upscale_video(clip, out, model=tiny_ckpt, scale=2, segment_seconds=0.5,
                                     shard=(i, 3)))
    assert [r.joined for r in results] == [False, False, True]  # the last to finish joins
    assert sum(r.frames_rendered for r in results) == 24  # each frame once
    assert [r.rendered_segments for r in results] == [2, 1, 1]
    assert out.read_bytes() == ref.read_bytes()


def test_mpeg_ts_with_one_keyframe_cuts_into_segments(tmp_path, tiny_ckpt):
    """MPEG-TS (.ts, a camcorder's .mts) seeks by bytes: past its last keyframe the seek found
    no frame, and every segment after the first failed as "frame N does not decode"."""
    ts = make_clip(tmp_path / "cam.ts", gop=1000, audio=False, subs=False)
    outs = {}
    for seconds in (0.5, 100):
        outs[seconds] = tmp_path / f"o{seconds}.mkv"
        upscale_video(ts, outs[seconds], model=tiny_ckpt, scale=2, segment_seconds=seconds,
                      codec="ffv1")
    cut, whole = frames(outs[0.5]), frames(outs[100])
    assert len(cut) == len(whole) == 24
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(cut, whole))


def test_join_waits_for_missing_segments(clip, tmp_path, tiny_ckpt):
    out = tmp_path / "o.mkv"
    kw = dict(model=tiny_ckpt, scale=2, segment_seconds=0.5)
    upscale_video(clip, out, **kw, shard=(1, 2))
    with pytest.raises(UsageError,
                       match=r"2 of 4 segments are not rendered \(1, 3\); run the shards"):
        upscale_video(clip, out, **kw, join=True)
    assert not out.exists()
    res = upscale_video(clip, out, **kw, shard=(2, 2))
    assert res.joined and probe(out).frames == 24


def test_a_join_lock_left_by_a_dead_joiner_is_taken_over(clip, tmp_path, tiny_ckpt):
    """A joiner killed (SIGKILL, a reboot) left join.lock: the same command again said its
    segments were done and wrote nothing, exit 0, for good; its .part stayed beside the output.
    A lock of a live process, or of another machine, is left alone, and the summary says who
    holds it."""
    import socket

    from liif_cli.io.files import temp_target

    out = tmp_path / "o.mkv"
    kw = dict(model=str(tiny_ckpt), scale=2, segment_seconds=0.5)  # the CLI's job, by name
    upscale_video(clip, out, **kw, shard=(1, 2))
    lock = work_folder(out) / "join.lock"
    host = socket.gethostname()
    for holder in (f"{host} {os.getpid()}", "elsewhere.example 12345"):
        lock.write_text(holder + "\n")
        res = upscale_video(clip, out, **kw, shard=(2, 2))
        assert not res.joined and not res.waiting and res.joiner == holder and not out.exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{host} {dead.pid}\n")
    part = out.with_name(f".{out.name}.k1ll3d00.part")
    part.write_bytes(b"a killed join's start")
    assert temp_target(part.name) == out.name
    r = run("video", clip, "-o", out, "-s", "2", "-m", tiny_ckpt, "--segment-seconds", "0.5",
            "--shard", "2/2")
    assert r.exit_code == 0 and "wrote" in r.output, r.output
    assert probe(out).frames == 24 and not part.exists() and not work_folder(out).exists()


def test_a_shard_that_leaves_the_join_reports_partial(clip, tmp_path, tiny_ckpt):
    """A shard's line said "done" though it joined nothing: `liif batch --summary` counted the
    video done (exit 0) with no file, or "done more than once" once the last shard joined."""
    out, rep = tmp_path / "o.mkv", tmp_path / "r.jsonl"
    base = ["video", clip, "-o", out, "-s", "2", "-m", tiny_ckpt, "--segment-seconds", "0.5",
            "--report", rep]
    assert run(*base, "--shard", "1/2").exit_code == 0
    assert json.loads(rep.read_text().splitlines()[-1])["status"] == "partial"
    r = run("batch", "--summary", rep)
    assert r.exit_code == 1 and "partial" in r.output and "not done" in r.output, r.output
    assert run(*base, "--shard", "2/2").exit_code == 0
    assert json.loads(rep.read_text().splitlines()[-1])["status"] == "done"
    r = run("batch", "--summary", rep)
    assert r.exit_code == 0 and "more than once" not in r.output, r.output


@pytest.mark.slow
def test_sigterm_stops_as_ctrl_c_with_143_and_a_cancelled_line(tmp_path, tiny_ckpt):
    """SIGTERM (a cluster's preemption) killed the process by the signal: no report line, and
    a join it cut left its lock."""
    clip = make_clip(tmp_path / "long.mkv", frames=48, hw=(48, 64))
    out, rep = tmp_path / "o.mkv", tmp_path / "r.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen([sys.executable, "-m", "liif_cli", "video", str(clip), "-o", str(out),
                          "-s", "3", "-m", str(tiny_ckpt), "--segment-seconds", "0.5",
                          "--device", "cpu", "--report", str(rep), "-q"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    work = work_folder(out)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while not (work.is_dir() and list(work.glob("seg-*.nut"))):
        assert p.poll() is None and time.monotonic() < deadline, "finished before the signal"
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    output = p.communicate(timeout=SUBPROCESS_TIMEOUT_S)[0].decode()
    assert p.returncode == 143, output
    line = json.loads(rep.read_text().splitlines()[-1])
    assert line["status"] == "cancelled" and line["reason"] == "interrupted"
    assert not out.exists() and not list(tmp_path.glob(".*.part"))
    assert not (work / "join.lock").exists()


def test_other_options_are_another_job(clip, tmp_path, tiny_ckpt):
    out = tmp_path / "o.mkv"
    upscale_video(clip, out, model=tiny_ckpt, scale=2, segment_seconds=0.5, shard=(1, 2))
    with pytest.raises(UsageError, match="segments of another job"):
        upscale_video(clip, out, model=tiny_ckpt, scale=3, segment_seconds=0.5, shard=(2, 2))


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_file(tmp_path, tiny_ckpt):
    clip = make_clip(tmp_path / "long.mkv", frames=48, hw=(48, 64))
    args = ["video", str(clip), "-s", "3", "-m", str(tiny_ckpt), "--segment-seconds", "0.5",
            "--device", "cpu"]
    ref = tmp_path / "ref.mkv"
    assert run(*args, "-o", ref).exit_code == 0
    out = tmp_path / "killed.mkv"
    work = work_folder(out)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen([sys.executable, "-m", "liif_cli", *args, "-o", str(out)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while not (work.is_dir() and len(list(work.glob("seg-*.nut"))) >= 2):
        assert p.poll() is None and time.monotonic() < deadline, "finished before the kill"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = len(list(work.glob("seg-*.nut")))
    assert not out.exists() and done < 8
    res = upscale_video(clip, out, model=tiny_ckpt, scale=3, segment_seconds=0.5,
                        device="cpu", model_name=str(tiny_ckpt))
    assert res.reused_segments == done and res.rendered_segments == 8 - done
    assert not list(work.parent.glob(".*.part")) and not work.exists()
    assert out.read_bytes() == ref.read_bytes()


# ----------------------------------------------------------------------------------------------
# bad inputs: one line, the usual exit code, nothing at the output path

def _fails(tmp_path, inp, code, text, *more):
    out = tmp_path / "bad_out.mkv"
    r = run("video", inp, "-o", out, "-s", "2", *more)
    assert r.exit_code == code, r.output
    assert r.output.count("\n") == 1 and text in r.output, r.output
    assert not out.exists() and not work_folder(out).exists()
    return r.output


def test_not_a_video(tmp_path):
    (tmp_path / "notes.mkv").write_text("not a video at all\n" * 50)
    _fails(tmp_path, tmp_path / "notes.mkv", 1, "is not a video FFmpeg can read")
    _fails(tmp_path, tmp_path / "missing.mkv", 1, "no such file")


def test_a_still_image_is_refused_but_an_animation_is_a_video(tmp_path, tiny_ckpt):
    from PIL import Image

    frames = [Image.fromarray(photo_like(18, 24, seed=s)) for s in (1, 2)]
    for name in ("photo.jpg", "photo.png", "photo.webp", "photo.tif", "one.gif"):
        frames[0].save(tmp_path / name)
        _fails(tmp_path, tmp_path / name, 1, "is a still image, not a video: `liif upscale`")
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    out = tmp_path / "anim.mkv"
    r = run("video", tmp_path / "anim.gif", "-o", out, "-s", "2", "-m", tiny_ckpt)
    assert r.exit_code == 0 and out.is_file(), r.output


def test_audio_only_and_no_frames(tmp_path):
    make_clip(tmp_path / "sound.mka", picture=False, subs=False)
    _fails(tmp_path, tmp_path / "sound.mka", 1, "has no video stream (it has audio)")
    make_clip(tmp_path / "empty.mkv", frames=0, subs=False)  # a picture stream, no frame
    _fails(tmp_path, tmp_path / "empty.mkv", 1, "holds no frames")


def test_truncated_and_corrupt_say_which_frame(tmp_path, tiny_ckpt):
    data = make_clip(tmp_path / "in.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[:len(data) * 6 // 10])
    _fails(tmp_path, tmp_path / "cut.mkv", 1, "truncated: its video stops at frame")
    bad = bytearray(data)
    for i in range(len(bad) // 3, len(bad) // 3 + 3000, 7):
        bad[i] ^= 0x5A
    (tmp_path / "damaged.mkv").write_bytes(bytes(bad))
    text = _fails(tmp_path, tmp_path / "damaged.mkv", 1, "frame ", "-m", tiny_ckpt,
                  "--segment-seconds", "0.5")
    assert "corrupt" in text or "cannot decode" in text or "does not decode" in text


def test_cut_after_its_first_frame_is_truncated(clip, tmp_path):
    """A file cut after its first frame is truncated too (it went through as a video of one
    frame); a video of one frame is still one."""
    with av.open(str(clip)) as c:
        second = [p.pos for p in c.demux(c.streams.video[0]) if p.size][1]
    (tmp_path / "cut.mkv").write_bytes(clip.read_bytes()[:second])
    _fails(tmp_path, tmp_path / "cut.mkv", 1, "truncated: its video stops at frame 1 ")
    for name in ("one.mkv", "one.mp4"):
        assert probe(make_clip(tmp_path / name, frames=1, subs=False)).frames == 1


def test_allow_corrupt_joins_past_a_segment_with_no_frame_left(tmp_path, tiny_ckpt,
                                                               monkeypatch):
    """--allow-corrupt past a damaged stretch that takes a whole segment's frames: that
    segment's empty file is left out of the join (it failed the join, "cannot write OUT", on
    every rerun)."""
    from liif_cli.tasks.video import run as video_run

    bad = bytearray(make_clip(tmp_path / "in.mkv").read_bytes())
    for i in range(len(bad) // 3, len(bad) // 3 + 3000, 7):
        bad[i] ^= 0x5A
    (tmp_path / "damaged.mkv").write_bytes(bytes(bad))
    sizes = []
    join = video_run.join_segments
    monkeypatch.setattr(video_run, "join_segments", lambda info, segs, *a, **kw: (
        sizes.extend(p.stat().st_size for p in segs), join(info, segs, *a, **kw))[1])
    out = tmp_path / "o.mkv"
    res = upscale_video(tmp_path / "damaged.mkv", out, model=tiny_ckpt, scale=2,
                        segment_seconds=0.5, allow_corrupt=True)
    assert 0 in sizes and res.joined and 0 < len(frames(out)) < res.info.frames


def test_bad_options(clip, tmp_path):
    _fails(tmp_path, clip, 2, "unknown --codec 'nope'", "--codec", "nope")
    _fails(tmp_path, clip, 2, "cannot encode --pix-fmt bgr0", "--pix-fmt", "bgr0")
    _fails(tmp_path, clip, 2, "--crf has no meaning for ffv1", "--codec", "ffv1", "--crf", "3")
    for bad in ("0", "-1", "nan"):
        _fails(tmp_path, clip, 2, "--segment-seconds must be positive", "--segment-seconds", bad)
    r = run("video", clip, "-o", tmp_path / "o.mp4", "-s", "2")  # SubRip cannot go in MP4
    assert r.exit_code == 2 and "try .mkv" in r.output and not (tmp_path / "o.mp4").exists()
    r = run("video", clip, "-o", tmp_path / "o.xyz", "-s", "2")
    assert r.exit_code == 2 and "cannot tell the container" in r.output


def test_a_failed_start_leaves_no_folder_to_refuse_the_fixed_command(clip, tmp_path, tiny_ckpt):
    """A model that does not load, or a --join before any segment, leaves no work folder
    behind (its job.json refused the corrected command as "segments of another job")."""
    _fails(tmp_path, clip, 1, "model file not found", "-m", tmp_path / "nosuch.pth")
    _fails(tmp_path, clip, 2, "cannot join bad_out.mkv yet: 1 of 1 segments", "-m", tiny_ckpt,
           "--join")
    r = run("video", clip, "-o", tmp_path / "bad_out.mkv", "-s", "2", "-m", tiny_ckpt)
    assert r.exit_code == 0 and "wrote" in r.output, r.output


def test_encoder_options_it_refuses_are_one_line_naming_them(clip, tmp_path, capfd):
    """A --crf or --preset the encoder refuses: exit 2 naming it with the encoder's reason (it
    was blamed on the container, "try .mkv", under x264's or x265's own line on stderr)."""
    text = _fails(tmp_path, clip, 2, "libx264 cannot encode 64×48 yuv420p with --preset bogus: "
                  "invalid preset 'bogus'", "--preset", "bogus")
    _fails(tmp_path, clip, 2, "libx265 cannot encode 64×48 yuv420p with --preset bogus: ",
           "--codec", "hevc", "--preset", "bogus")
    _fails(tmp_path, clip, 2, "libsvtav1 cannot encode 64×48 yuv420p with --preset 14: ",
           "--codec", "av1", "--preset", "14")
    assert "try .mkv" not in text and "x26" not in capfd.readouterr().err


@pytest.mark.parametrize("codec, crf, message", [
    ("libx264", "99", "--crf 99 is outside libx264's range, 0 to 51"),  # x264 clamped it
    ("hevc", "52", "--crf 52 is outside libx265's range, 0 to 51"),
    ("vp9", "-1", "--crf -1 is outside libvpx-vp9's range, 0 to 63"),  # VP9 read it as unset
    ("av1", "64", "--crf 64 is outside libsvtav1's range, 0 to 63"),
    ("libx264rgb", "99", "--crf 99 is outside libx264rgb's range, 0 to 51"),  # was clamped too
    ("mpeg4", "0", "--crf has no meaning for mpeg4 here; it is for libx264"),  # was ignored
])
def test_crf_out_of_the_encoders_range_is_refused(clip, tmp_path, codec, crf, message):
    _fails(tmp_path, clip, 2, message, "--codec", codec, "--crf", crf)


def test_preset_for_an_encoder_without_presets_is_refused(clip, tmp_path):
    for codec in ("vp9", "ffv1"):  # both ignored it without a word
        _fails(tmp_path, clip, 2, f"--preset has no meaning for {codec.replace('vp9', 'libvpx-vp9')}",
               "--codec", codec, "--preset", "fast")


def test_missing_pyav_is_one_line_naming_the_extra(clip, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(LiifError, match=r"pip install '\.\[video\]'"):
        require_av()
    _fails(tmp_path, clip, 1, "pip install '.[video]'")


def test_full_disk_is_a_write_error():
    e = av.error.OSError(errno.ENOSPC, "No space left on device")
    err = av_error(e, "out.mkv")
    assert isinstance(err, OutputWriteError) and "no space left" in str(err)
    assert isinstance(av_error(av.error.InvalidDataError(1, "x"), "in.mkv"), VideoReadError)


def test_shard_auto_from_a_slurm_array(clip, tmp_path, tiny_ckpt, monkeypatch):
    out = tmp_path / "o.mkv"
    for var in ("SLURM_JOB_ID", "SLURM_PROCID", "RANK", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    lines = []
    for task in ("5", "4"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        r = run("video", clip, "-o", out, "-s", "2", "-m", tiny_ckpt, "--shard", "auto",
                "--segment-seconds", "0.5")
        assert r.exit_code == 0, r.output
        lines.append(r.output)
    assert lines[0].startswith("shard 2/2 from Slurm array task 5 of ids 4-5")
    assert "2 of 4 left to other shards" in lines[0] and "wrote" not in lines[0]
    assert lines[1].startswith("shard 1/2 from Slurm array task 4") and "wrote" in lines[1]
    assert "2 rendered" in lines[1] and probe(out).frames == 24


def test_static_windows_are_reused_and_match_a_whole_render(tmp_path, tiny_ckpt, monkeypatch):
    """A still picture with a small box moving in one corner: the far windows are copied from
    the previous frame, and every frame is what rendering it whole gives (within one level)."""
    from liif_cli.tasks.video import reuse

    monkeypatch.setattr(reuse, "REUSE_WINDOW", 16)
    c = av.open(str(tmp_path / "screen.mkv"), "w")
    v = c.add_stream("ffv1", rate=10)
    v.width, v.height, v.pix_fmt = 96, 64, "bgr0"
    for i in range(6):
        img = photo_like(64, 96)
        img[2:8, 2 + i:8 + i] = 255  # the moving box
        f = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="bgr0")
        f.pts = i
        c.mux(v.encode(f))
    c.mux(v.encode(None))
    c.close()
    kw = dict(model=tiny_ckpt, scale=2, codec="ffv1", pix_fmt="bgr0")
    res = upscale_video(tmp_path / "screen.mkv", tmp_path / "reused.mkv", **kw)
    upscale_video(tmp_path / "screen.mkv", tmp_path / "whole.mkv", reuse_static=False, **kw)
    assert res.reused_share > 0.5
    for (_, a), (_, b) in zip(frames(tmp_path / "reused.mkv"), frames(tmp_path / "whole.mkv")):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_a_frame_goes_by_windows_only_where_their_count_pays(tiny_model, monkeypatch):
    """A changed strip (4 columns): its windows are rendered alone, the rest copied, equal to
    the frame rendered whole. A kept corner (a few static windows): the changed windows' work alone would
    come to more than the whole frame's, so it is rendered whole, nothing copied."""
    import torch

    from liif_cli.io.images import ImageData
    from liif_cli.runtime.upscaler import Upscaler
    from liif_cli.tasks.video import reuse

    monkeypatch.setattr(reuse, "REUSE_WINDOW", 16)
    up = Upscaler(tiny_model, device="cpu", precision="fp32")
    first = photo_like(96, 128)
    memory = reuse.FrameMemory()
    reuse.render_frame(up, first, (192, 256), memory)
    for kept, windows in (((slice(None), slice(4, None)), True),  # a strip changed
                          ((slice(64, None), slice(88, None)), False)):  # a corner kept
        nxt = 255 - first
        nxt[kept] = first[kept]
        m = reuse.FrameMemory(rgb=first, out=memory.out)
        got = reuse.render_frame(up, nxt, (192, 256), m)
        whole, each = reuse._work(up, (96, 128), (192, 256), reuse._spans(96, 192, 16),
                                  reuse._spans(128, 256, 16), torch.float32, m)
        assert (m.reused > 0) is windows and len(each) * len(each[0]) == 48
        assert sum(map(sum, each)) > whole  # windows alone repeat their halos
        expect = up.upscale_image(ImageData(nxt), (192, 256)).image.pixels
        assert np.array_equal(got, expect)


@pytest.mark.parametrize("codec", ["av1", "vp9", "hevc"])
def test_other_codecs_join(clip, tmp_path, tiny_ckpt, codec):
    """Each codec's segments remux into one file (AV1's stream cannot be copied by PyAV from
    a libdav1d-decoded template: `join._picture_stream` falls back to the encoder's)."""
    out = tmp_path / f"{codec}.mkv"
    res = upscale_video(clip, out, model=tiny_ckpt, scale=3, codec=codec, segment_seconds=0.5)
    assert res.joined and res.segments == 4
    assert [t for t, _ in frames(out)] == [t for t, _ in frames(clip)]


@pytest.mark.slow
def test_av1_prints_no_banner(clip, tmp_path, tiny_ckpt):
    """SVT-AV1's 20-line banner, printed each time an encoder opens (every segment), is kept
    off the terminal. A process of its own: SVT-AV1 reads its log level once per process."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("SVT_LOG", None)
    out = tmp_path / "av1.mkv"
    p = subprocess.run([sys.executable, "-m", "liif_cli", "video", str(clip), "-o", str(out),
                        "-s", "2", "-m", str(tiny_ckpt), "--codec", "av1", "-q",
                        "--segment-seconds", "1"], env=env, capture_output=True, text=True,
                       timeout=SUBPROCESS_TIMEOUT_S)
    assert p.returncode == 0 and p.stdout == "" and p.stderr == "", p.stderr[-2000:]
    assert probe(out).frames == 24


@pytest.mark.slow
def test_denoise_picks_the_default_real_pair_as_upscale_does(tmp_path):
    """`--denoise` blends default and real (not the video default `fast`), and wins over a
    LIIF_MODEL with no denoise partner with one note; `-m fast --denoise` is a usage error."""
    src = make_clip(tmp_path / "in.mkv", frames=3, hw=(12, 16), audio=False, subs=False)
    args = ["video", str(src), "-s", "1", "--denoise", "0.5", "--codec", "ffv1",
            "--pix-fmt", "bgr0"]
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "a.mkv")], env={"LIIF_MODEL": "fast"})
    assert r.exit_code == 0, r.output
    assert "note: --denoise picks the default/real pair: LIIF_MODEL=fast not used" in r.stderr
    assert "real@0.5" in r.stderr
    want = upscale_video(src, tmp_path / "b.mkv", denoise=0.5, scale=1, codec="ffv1",
                         pix_fmt="bgr0", device="cpu")
    assert want.model == "real@0.5" and len(frames(tmp_path / "b.mkv")) == 3
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(frames(tmp_path / "a.mkv"),
                                                         frames(tmp_path / "b.mkv")))
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "c.mkv"), "-m", "fast"])
    assert r.exit_code == 2 and "'fast' has none" in r.stderr
    assert not (tmp_path / "c.mkv").exists()
