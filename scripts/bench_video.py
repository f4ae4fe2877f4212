"""`liif video`'s speed, memory and temporal stability, on clips made here from a photo.

1. Speed: a slow pan (1 px per frame) over a photo, 854×480 at 30 fps with AAC sound
   (`--seconds`, 10 by default), to 1920×1080 (×2.25) with each model of `--models`, in fp32
   (and bf16 where the CPU has it natively, `--precision`): frames per second of the whole
   `upscale_video` call (probe, model load, decode, render, encode, join), and the share of its
   wall time the model was not rendering (decode, colour conversion and encode run in threads
   beside it; what is left outside is the part they did not hide, plus start and join).
2. Memory: peak RSS of a child process upscaling the same kind of clip at two lengths
   (`--memory-frames`, N and 4N frames, 160×90 → ×2): bounded streaming means equal peaks.
3. Static-window reuse (`tasks.video.reuse`), on and off: frames per second on a
   screen-recording-like clip (a still photo, a small box moving) and on the natural pan,
   320×180 → ×2 (`--reuse-frames`, 30, after one untimed run); and one 640×480 frame to
   1920×1080 with each model of `--models` whose left 30 / 50 / 70 % did not change since the
   previous frame: seconds by windows against seconds whole, the windows copied, and the
   output pixels a level off the whole render's (float rounding of other tile sizes).
4. Temporal stability, lossless (ffv1 bgr0) in and out, 160×90 ×2: a static scene must give
   bit-identical frames; on the slow pan, the mean frame-to-frame difference of the output
   next to bicubic's, raw and motion-compensated (a 1-px input pan is a 2-px output shift).

    python scripts/bench_video.py [--models fast,default] [--seconds 10] [--precision fp32]
                                  [--memory-frames 25] [--reuse-frames 30]
                                  [--parts stability,memory,reuse,speed]
                                  [--json out.json]

On the shared 2-core CPU the default (10 s, both models) takes hours; `--seconds 1` is the
quick figure (the rate does not depend on the length: the work is per frame).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from liif_cli.io.images import ImageData
from liif_cli.runtime.upscaler import Upscaler
from liif_cli.tasks.video import upscale_video
from liif_cli.tasks.video.reuse import FrameMemory, render_frame

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "train" / "SunHays80" / "HR"
FPS = 30


def photo(height: int) -> np.ndarray:
    """An RGB photo from ../shared/data (a synthetic one without it), `height` rows high."""
    files = sorted(PHOTOS.glob("*.jpg")) if PHOTOS.is_dir() else []
    if files:
        img = cv2.cvtColor(cv2.imread(str(files[0])), cv2.COLOR_BGR2RGB)
    else:
        y, x = np.mgrid[0:600, 0:1200].astype(np.float32)
        img = (np.stack([np.sin(x / 9), np.cos(y / 7), np.sin((x + y) / 13)], -1) * 120 + 128
               ).astype(np.uint8)
    w = round(img.shape[1] * height / img.shape[0])
    return cv2.resize(img, (w, height), interpolation=cv2.INTER_AREA)


def make_clip(path: Path, *, frames: int, hw: tuple[int, int], pan: int = 1,
              codec: str = "libx264", pix_fmt: str = "yuv420p", audio: bool = True) -> Path:
    """A pan of `pan` px per frame (0: a static scene) over a photo, with a sine for sound."""
    h, w = hw
    src = photo(h)
    if src.shape[1] < w + pan * frames:  # mirror it wider for long pans
        src = np.concatenate([src, src[:, ::-1]] * (1 + (w + pan * frames) // src.shape[1]), 1)
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=FPS, options={"crf": "18"} if codec == "libx264" else {})
        v.width, v.height, v.pix_fmt = w, h, pix_fmt
        a = c.add_stream("aac", rate=48000) if audio else None  # every stream before muxing
        if a is not None:
            a.layout = "stereo"
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(src[:, i * pan:i * pan + w]),
                                           format="rgb24").reformat(format=pix_fmt)
            f.pts = i
            c.mux(v.encode(f))
        c.mux(v.encode(None))
        if a is not None:
            for k in range(frames * 48000 // FPS // 1024 + 1):
                t = (np.arange(1024) + k * 1024) / 48000
                s = np.tile((0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), (2, 1))
                af = av.AudioFrame.from_ndarray(s, format="fltp", layout="stereo")
                af.sample_rate, af.pts = 48000, k * 1024
                c.mux(a.encode(af))
            c.mux(a.encode(None))
    return path


def timed_run(clip: Path, out: Path, **kw) -> dict:
    """`upscale_video` with the model's own time measured (Upscaler.upscale_image wrapped)."""
    spent = [0.0]
    real = Upscaler.upscale_image

    def measured(self, *a, **k):
        t = time.perf_counter()
        try:
            return real(self, *a, **k)
        finally:
            spent[0] += time.perf_counter() - t

    Upscaler.upscale_image = measured
    try:
        t0 = time.perf_counter()
        res = upscale_video(clip, out, overwrite=True, **kw)
        wall = time.perf_counter() - t0
    finally:
        Upscaler.upscale_image = real
    return {"frames": res.frames_rendered, "wall_s": round(wall, 2), "fps": round(
        res.frames_rendered / wall, 4), "model_s": round(spent[0], 2), "outside_model": round(
        1 - spent[0] / wall, 4), "precision": res.precision, "device": res.device}


def speed(args, tmp: Path) -> dict:
    clip = make_clip(tmp / "pan480.mp4", frames=round(args.seconds * FPS), hw=(480, 854))
    out = {}
    for model in args.models.split(","):
        for precision in args.precision.split(","):
            r = timed_run(clip, tmp / "out1080.mp4", model=model, size="1920x1080",
                          precision=precision, device=args.device)
            out[f"{model} {precision}"] = r
            print(f"speed {model} {precision}: {r}", flush=True)
    return out


def memory(args, tmp: Path) -> dict:
    """Peak RSS of a child process at N and 4N frames."""
    out = {}
    for n in (args.memory_frames, 4 * args.memory_frames):
        clip = make_clip(tmp / f"mem{n}.mkv", frames=n, hw=(90, 160))
        code = ("import resource,sys; from liif_cli.tasks.video import upscale_video; "
                f"upscale_video({str(clip)!r}, {str(tmp / f'mem{n}_out.mkv')!r}, scale=2, "
                "overwrite=True, device='cpu'); "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        rss = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                 text=True).stdout.split()[-1])
        out[f"{n} frames"] = f"{rss / 1024:.0f} MiB"
        print(f"memory {n} frames: peak RSS {rss / 1024:.0f} MiB", flush=True)
    return out


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def stability(args, tmp: Path) -> dict:
    hw, frames = (90, 160), 12
    static = make_clip(tmp / "static.mkv", frames=frames, hw=hw, pan=0, codec="ffv1",
                       pix_fmt="bgr0", audio=False)
    upscale_video(static, tmp / "static_out.mkv", scale=2, codec="ffv1", pix_fmt="bgr0",
                  overwrite=True, device=args.device)
    outs = decoded(tmp / "static_out.mkv")
    identical = all(np.array_equal(outs[0], o) for o in outs[1:])
    pan = make_clip(tmp / "pan.mkv", frames=frames, hw=hw, pan=1, codec="ffv1",
                    pix_fmt="bgr0", audio=False)
    upscale_video(pan, tmp / "pan_out.mkv", scale=2, codec="ffv1", pix_fmt="bgr0",
                  overwrite=True, device=args.device)
    liif = [o.astype(np.float32) for o in decoded(tmp / "pan_out.mkv")]
    bic = [cv2.resize(i, (hw[1] * 2, hw[0] * 2), interpolation=cv2.INTER_CUBIC
                      ).astype(np.float32) for i in decoded(pan)]

    def diffs(seq):  # raw, and after undoing the 2-px output shift (8-px border left out)
        raw = np.mean([np.abs(b - a).mean() for a, b in zip(seq, seq[1:])])
        comp = np.mean([np.abs(b[8:-8, 8:-10] - a[8:-8, 10:-8]).mean()
                        for a, b in zip(seq, seq[1:])])
        return round(float(raw), 3), round(float(comp), 3)

    r = {"static_bit_identical": identical, "pan_diff_liif": diffs(liif),
         "pan_diff_bicubic": diffs(bic)}
    print(f"stability: {r} (mean |frame k+1 - frame k| in levels: raw, motion-compensated)")
    return r


def make_screen(path: Path, *, frames: int, hw: tuple[int, int]) -> Path:
    """A screen-recording-like clip: a still photo with a small box moving in one corner."""
    h, w = hw
    src = photo(h)[:, :w].copy()
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=FPS, options={"crf": "18"})
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            img = src.copy()
            img[8:40, 8 + 4 * i:40 + 4 * i] = 255
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            c.mux(v.encode(f))
        c.mux(v.encode(None))
    return path


def reuse(args, tmp: Path) -> dict:
    """Static-window reuse on and off: a screen-like clip and a natural pan, 320×180 → ×2."""
    out = {}
    clips = {"screen": make_screen(tmp / "screen.mkv", frames=args.reuse_frames, hw=(180, 320)),
             "pan": make_clip(tmp / "pan180.mkv", frames=args.reuse_frames, hw=(180, 320),
                              audio=False)}
    upscale_video(clips["screen"], tmp / "reuse_out.mkv", scale=2, overwrite=True,
                  device=args.device)  # untimed: the first run in a process warms up
    for name, clip in clips.items():
        for on in (True, False):
            t0 = time.perf_counter()
            res = upscale_video(clip, tmp / "reuse_out.mkv", scale=2, overwrite=True,
                                reuse_static=on, device=args.device)
            wall = time.perf_counter() - t0
            key = f"{name} reuse {'on' if on else 'off'}"
            out[key] = {"fps": round(res.frames_rendered / wall, 3),
                        "reused": round(res.reused_share, 3)}
            print(f"{key}: {out[key]}", flush=True)
    frame = photo(480)[:, :640].copy()
    for model in args.models.split(","):
        up = Upscaler(model, device=args.device, precision=args.precision.split(",")[0])
        first = FrameMemory()
        render_frame(up, frame, (1080, 1920), first)  # the previous frame (and a warm-up)
        for share in (0.3, 0.5, 0.7):
            moved = frame.copy()  # the right part changes by one level
            moved[:, int(640 * share):] = np.minimum(moved[:, int(640 * share):], 254) + 1
            memory = FrameMemory(rgb=frame, out=first.out)
            t0 = time.perf_counter()
            by_windows = render_frame(up, moved, (1080, 1920), memory)
            t1 = time.perf_counter()
            whole = up.upscale_image(ImageData(moved), (1080, 1920)).image.pixels
            t2 = time.perf_counter()
            diff = np.abs(by_windows.astype(np.int32) - whole.astype(np.int32))
            if diff.max() > 1:  # tiles of other sizes may round a level apart, no more
                raise SystemExit(f"{model}: the frame rendered by windows differs from whole "
                                 f"by {diff.max()} levels")
            key = f"{model} frame {round(share * 100)}% static"
            out[key] = {"windows_s": round(t1 - t0, 2), "whole_s": round(t2 - t1, 2),
                        "speedup": round((t2 - t1) / (t1 - t0), 2),
                        "copied": f"{memory.reused}/{memory.windows}",
                        "pixels_a_level_off": int((diff > 0).sum())}
            print(f"{key}: {out[key]}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="fast,default")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--precision", default="fp32", help="comma-separated: fp32,bf16")
    p.add_argument("--device", default="auto")
    p.add_argument("--memory-frames", type=int, default=25)
    p.add_argument("--reuse-frames", type=int, default=30)
    p.add_argument("--parts", default="stability,memory,reuse,speed", help="which of them")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="liif-bench-video-") as d:
        tmp = Path(d)
        report = {part: globals()[part](args, tmp) for part in args.parts.split(",")}
    report["cpu_max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
