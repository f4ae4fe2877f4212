"""`upscale_video`: plan, render this shard's unfinished segments, assemble when all are done.

Everything that can be checked is checked before any rendering, cheapest first: the options,
the output path, the input (probed: a video with frames, complete), the encoding against the
container. Then the segments (`segments`) this process owns and has not finished are rendered
one after another through one `Upscaler` (`pipeline.render_segment`), each renamed into the work
folder when whole. The process that finds every segment done assembles the output
(`join.join_segments`) and removes the work folder; another shard still working, or an
explicit `join=True` later, does it otherwise.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from liif_cli.errors import UsageError
from liif_cli.io.files import atomic_write, check_output_path, temp_target
from liif_cli.runtime.device import precision_name, resolve_device, resolve_precision
from liif_cli.runtime.sizing import DEFAULT_MAX_OUTPUT_PIXELS, size_request, target_size
from liif_cli.runtime.upscaler import ModelRef, Upscaler
from liif_cli.runtime.weights import check_denoise_model, load_model
from liif_cli.tasks.video.codecs import EncodeSpec, encode_spec, fit_chroma
from liif_cli.tasks.video.join import check_container, container_format, join_segments
from liif_cli.tasks.video.pipeline import render_segment
from liif_cli.tasks.video.probe import VideoInfo, probe
from liif_cli.tasks.video.reuse import FrameMemory
from liif_cli.tasks.video.segments import (
    SEGMENT_FORMAT,
    SEGMENT_SECONDS,
    WorkFolder,
    job_key,
    plan_segments,
    shard_segments,
)

DEFAULT_VIDEO_MODEL = "fast"  # 4.5–8.1× default's frames per second (README's Video section)
JOIN_LISTED = 8  # the missing segments a --join refusal names

VideoProgressFn = Callable[[int, int], None]  # (frames done, frames this process renders)


@dataclass
class VideoResult:
    """What `upscale_video` did, for the summary line and the report."""

    input: Path
    output: Path
    info: VideoInfo
    out_hw: tuple[int, int]
    spec: EncodeSpec
    model: str
    device: str
    precision: str
    shard: tuple[int, int]  # (I, N): this process did every N-th segment from the I-th
    segments: int  # in the whole video
    rendered_segments: int  # by this process
    reused_segments: int  # found done in the work folder (resumed, or other shards')
    frames_rendered: int  # by this process
    seconds: float  # everything, this process
    joined: bool  # the output was assembled by this process
    waiting: list[int] = field(default_factory=list)  # segments not done yet (other shards)
    reused_share: float = 0.0  # of the output windows, copied from the previous frame
    joiner: str = ""  # every segment done, joined by another: its "host pid" (the lock's)

    @property
    def fps(self) -> float:
        return self.frames_rendered / self.seconds if self.seconds > 0 else 0.0


def upscale_video(input: str | os.PathLike, output: str | os.PathLike, *,
                  model: ModelRef | Upscaler | None = None,
                  scale: str | float | tuple[float, float] | None = None,
                  size: str | tuple[int, int] | None = None, width: int | None = None,
                  height: int | None = None, fit: str | None = None,
                  codec: str | None = None, pix_fmt: str | None = None, crf: int | None = None,
                  preset: str | None = None, device: str | torch.device | None = "auto",
                  precision: str = "auto", max_memory: int | None = None,
                  overwrite: bool = False, shard: tuple[int, int] = (1, 1),
                  join: bool = False,
                  segment_seconds: float = SEGMENT_SECONDS, allow_corrupt: bool = False,
                  reuse_static: bool = True,
                  max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
                  model_name: str | None = None, denoise: float | None = None,
                  on_progress: VideoProgressFn | None = None) -> VideoResult:
    """Upscale the video `input` into `output` (.mp4, .mkv, .mov, .webm, .avi, .nut) with the
    size options of `upscale`, keeping its sound, subtitles, timing and tags.

    Resumable: rerun the same call after any interruption and only unfinished segments are
    rendered. `shard` (I, N), from 1: render only every N-th segment from the I-th (the CLI
    reads `--shard I/N|auto` as `liif batch` does); whoever finds all segments done assembles
    the output. `join`: render nothing, assemble
    from the work folder (an error while segments are missing).
    `model`: None is `DEFAULT_VIDEO_MODEL` (`fast`), or with `denoise` the default/real pair
    blended at that strength (`weights.load_model`; a `model` given by name must have a
    denoise partner).
    """
    t0 = time.perf_counter()
    request = size_request(scale=scale, size=size, width=width, height=height, fit=fit)
    i, n = shard
    if n < 1 or not 1 <= i <= n:
        raise UsageError(f"bad shard {i}/{n}: need 1 <= I <= N")
    model, up, dev, dtype = _check_model(model, denoise, device, precision)
    dst = Path(output)
    container_format(dst)
    check_output_path(dst, overwrite=overwrite)
    info = probe(input)
    spec = encode_spec(codec=codec, pix_fmt=pix_fmt, crf=crf, preset=preset,
                       input_depth=info.bit_depth)
    out_hw = target_size((info.height, info.width), request=request,
                         max_pixels=max_output_pixels)
    out_hw = fit_chroma(out_hw, spec.pix_fmt)
    check_container(info, dst, spec, out_hw)
    segments = plan_segments(info, segment_seconds)
    name = model_name or (up.name if up else None) or _model_label(model, denoise)
    # the precision that renders too: bf16 and fp32 segments would differ where they meet
    key = job_key(info, out_hw=out_hw, spec=spec, model=str(name),
                  segment_seconds=segment_seconds,
                  precision=up.precision if up is not None else precision_name(dtype))
    work = WorkFolder(dst, key)
    mine = [] if join else shard_segments(segments, (i, n))
    todo = [s for s in mine if not work.done(s)]
    work.remove_stale_temps(mine)
    total = sum(s.frames for s in todo)
    done_frames = 0

    def one_frame() -> None:
        nonlocal done_frames
        done_frames += 1
        if on_progress is not None:
            on_progress(done_frames, total)

    windows = reused = 0
    try:
        if todo and up is None:  # in here: a model that does not load leaves no folder behind
            up = Upscaler(model if denoise is None else
                          load_model(model, device=dev, denoise=denoise),
                          device=dev, precision=dtype, max_memory=max_memory)
        if on_progress is not None:
            on_progress(0, total)
        for seg in todo:
            memory = FrameMemory() if reuse_static else None  # per segment: resumes agree
            atomic_write(work.segment_path(seg), lambda tmp, seg=seg, memory=memory:
                         render_segment(up, info, seg, spec, out_hw, tmp, memory=memory,
                                        allow_corrupt=allow_corrupt, on_frame=one_frame),
                         overwrite=True)
            if memory is not None:
                windows, reused = windows + memory.windows, reused + memory.reused
        waiting = [s.index for s in segments if not work.done(s)]
        if waiting and join:
            raise _not_yet(dst, waiting, len(segments))
    except BaseException:
        # a first run that failed (a model that does not load, a --join with nothing rendered)
        # leaves nothing behind: its folder would refuse the corrected command as another job
        work.remove_if_unused()
        raise
    joined = not waiting and _join(work, info, segments, dst, spec, overwrite=overwrite,
                                   force=join)
    joiner = "" if joined or waiting else work.join_holder() or "another process"
    return VideoResult(Path(input), dst, info, out_hw, spec, str(name),
                       str(up.device) if up else "-", up.precision if up else "-", (i, n),
                       len(segments), len(todo), len(mine) - len(todo), done_frames,
                       time.perf_counter() - t0, joined, waiting, reused / max(windows, 1),
                       joiner)


def _not_yet(dst: Path, waiting: list[int], count: int) -> UsageError:
    """--join while segments are missing: which (the first `JOIN_LISTED`)."""
    shown = ", ".join(map(str, waiting[:JOIN_LISTED])) + (
        ", …" if len(waiting) > JOIN_LISTED else "")
    return UsageError(f"cannot join {dst.name} yet: {len(waiting)} of {count} segments are "
                      f"not rendered ({shown}); run the shards that own them")


def _join(work: WorkFolder, info, segments: list, dst: Path, spec, *, overwrite: bool,
          force: bool) -> bool:
    """Assemble the output when this process claims the join (one shard does); True if it
    did, the work folder then removed."""
    if not work.claim_join(force=force):
        return False
    try:
        for p in dst.parent.iterdir():  # a killed join's temporary output
            if temp_target(p.name) == dst.name and p.is_file():
                p.unlink(missing_ok=True)
        join_segments(info, [work.segment_path(s) for s in segments], dst, spec,
                      overwrite=overwrite)
    finally:
        work.release_join()
    work.remove()
    return True


def _check_model(model: ModelRef | Upscaler | None, denoise: float | None,
                 device: str | torch.device | None, precision: str):
    """(model, its Upscaler if the caller gave one, device, dtype), checked before any work:
    None is `DEFAULT_VIDEO_MODEL`, or with `denoise` the bundled default/real pair."""
    up = model if isinstance(model, Upscaler) else None
    check_denoise_model(model, denoise)
    if denoise is None and model is None:
        model = DEFAULT_VIDEO_MODEL
    if up is not None:
        return model, up, None, None
    dev = resolve_device(device)
    return model, None, dev, resolve_precision(precision, dev)


def _model_label(model: ModelRef | None, denoise: float | None) -> str:
    """The model's name in the job key and the summary, before it is loaded."""
    if denoise is not None:
        return f"{model or 'real'}@{denoise:g}"
    return model if isinstance(model, str) else "model"


__all__ = ["DEFAULT_VIDEO_MODEL", "SEGMENT_FORMAT", "SEGMENT_SECONDS", "VideoProgressFn",
           "VideoResult", "upscale_video"]
