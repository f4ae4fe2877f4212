"""`liif video`: a video to any scale or size, resumable and shardable, its sound and timing
kept (`tasks.video.upscale_video`; PyAV, the `video` extra, is imported inside the command)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Callable, Iterator, Optional

import typer

from liif_cli.cli import displays
from liif_cli.cli import options as opt
from liif_cli.cli.commands.batch import ShardOpt, ShardsOpt
from liif_cli.errors import Interrupted, UsageError

InputArg = Annotated[Path, typer.Argument(help="Video to upscale (any FFmpeg reads).", metavar="INPUT",
                                          show_default=False)]
OutputOpt = Annotated[Optional[Path], typer.Option(
    "--output", "-o", help="Output video: .mp4, .mkv, .mov, .webm, .avi or .nut.",
    show_default=False)]
VideoModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Bundled or user model name, or a checkpoint path. Default: fast "
    "(4.5–8× default's frames per second on the CPUs measured).", envvar="LIIF_MODEL", show_envvar=True,
    show_default=False, callback=opt.from_env)]
CodecOpt = Annotated[Optional[str], typer.Option(
    help="FFmpeg encoder: libx264 (h264, the default), libx265 (hevc), libvpx-vp9, libsvtav1 "
    "(av1), ffv1 (lossless).", show_default=False)]
CrfOpt = Annotated[Optional[int], typer.Option(
    help="Constant quality, lower is better: 0-51 x264/x265 (default 18, 20), 0-63 "
    "vp9/av1 (default 30).",
    show_default=False)]
PresetOpt = Annotated[Optional[str], typer.Option(
    help="Encoder speed preset (x264/x265: medium; svt-av1: 8; vp9 and ffv1 have none).",
    show_default=False)]
PixFmtOpt = Annotated[Optional[str], typer.Option(
    help="FFmpeg pixel format: yuv420p (default; yuv420p10le for a 10-bit input where the "
    "codec has it), "
    "yuv420p10le, bgr0 (exact RGB, with ffv1).", show_default=False)]
JoinOpt = Annotated[bool, typer.Option(
    "--join", help="Render nothing: assemble the output from the shards' finished segments.")]
SegmentOpt = Annotated[float, typer.Option(
    help="Seconds of video per segment: the unit of resume and of --shard.")]
ReportOpt = Annotated[Optional[Path], typer.Option(
    help="Append one JSON line for this run (input, output, status, reason, seconds …), as "
    "liif batch's FILE.jsonl reports.")]
ReuseOpt = Annotated[bool, typer.Option(
    help="Copy the parts of a frame whose input did not change since the previous frame "
    "instead of rendering them again, where that saves work (screen recordings, still "
    "shots).")]
AllowCorruptOpt = Annotated[bool, typer.Option(
    "--allow-corrupt", help="Keep going past frames the decoder reports damaged.")]


def video(
    input: InputArg, output: OutputOpt = None, scale: opt.ScaleOpt = None,
    size: opt.SizeOpt = None, width: opt.WidthOpt = None, height: opt.HeightOpt = None,
    fit: opt.FitOpt = None, model: VideoModelOpt = None, denoise: opt.DenoiseOpt = None,
    codec: CodecOpt = None, crf: CrfOpt = None, preset: PresetOpt = None,
    pix_fmt: PixFmtOpt = None, device: opt.DeviceOpt = "auto",
    precision: opt.PrecisionOpt = "auto", max_memory: opt.MaxMemoryOpt = opt.DEFAULT_MAX_MEMORY,
    overwrite: opt.OverwriteOpt = False, shard: ShardOpt = None, shards: ShardsOpt = None,
    join: JoinOpt = False, segment_seconds: SegmentOpt = 4.0, report: ReportOpt = None,
    allow_corrupt: AllowCorruptOpt = False, reuse_static: ReuseOpt = True,
    max_output_pixels: opt.MaxOutOpt = opt.DEFAULT_MAX_OUTPUT_PIXELS,
    quiet: opt.QuietOpt = False,
):
    """Upscale a video to any scale or size, keeping its sound, subtitles and timing. Run it
    again after any interruption to resume.

    Examples: liif video clip.mp4 -o clip_1080p.mp4 --size 1920x1080 --fit contain ·
    liif video talk.mkv -o big.mkv --scale 2.25 --codec hevc
    """
    if output is None:
        raise UsageError("say where the video goes: -o OUTPUT (.mp4, .mkv, …)")
    sizes = dict(scale=scale, size=size, width=width, height=height, fit=fit)
    opt.check_options(precision=precision, device=device, denoise=denoise, sizes=sizes)
    budget = opt.parse_bytes(max_memory)
    if report is not None and not report.parent.is_dir():
        raise UsageError(f"--report folder does not exist: {report.parent}")
    from liif_cli.tasks.batch import resolve_shard

    part = resolve_shard(shard, count=shards)
    if part.auto:  # the run's first line, as batch's (even with --quiet: it belongs in a log)
        displays.console.print(f"shard {part.index}/{part.count} from {part.found}",
                               markup=False, soft_wrap=True)
    opt.own_the_process()
    from liif_cli.tasks.video import upscale_video

    if denoise is not None:  # as upscale's: --denoise wins over a LIIF_MODEL with no partner
        model = opt.model_for_denoise(model)
    from liif_cli.runtime.process import on_stop_signals

    def on_signal(signum, frame):  # SIGTERM (preemption) stops as Ctrl-C does: exit 143
        raise Interrupted(signum)

    with on_stop_signals(on_signal), _reported(report, input, output, part.shard) as record, \
            displays.video_bar(f"upscaling {input.name}", quiet=quiet) as on_progress:
        res = upscale_video(input, output, model=model, denoise=denoise, **sizes, codec=codec,
                            crf=crf, preset=preset, pix_fmt=pix_fmt, device=device,
                            precision=precision, max_memory=budget, overwrite=overwrite,
                            shard=part.shard, join=join,
                            segment_seconds=segment_seconds, allow_corrupt=allow_corrupt,
                            reuse_static=reuse_static,
                            max_output_pixels=max_output_pixels, on_progress=on_progress)
        record(res)
    if not quiet:
        displays.video_summary(res)


@contextmanager
def _reported(report: Path | None, input: Path, output: Path, shard: tuple[int, int]
              ) -> Iterator[Callable]:
    """`--report FILE.jsonl`: yield `record(result)`; one line is appended when the block ends,
    as `liif batch`'s (`JsonlReport`, the same fields, so `liif batch --summary` merges them):
    done with the frames and sizes, or failed (cancelled for Ctrl-C) with the one-line reason
    (`errors.describe`)."""
    if report is None:
        yield lambda res: None
        return
    from liif_cli.errors import describe
    from liif_cli.tasks.batch import FileRecord, JsonlReport

    t0 = time.perf_counter()
    rec = FileRecord(str(input), str(output), "failed")

    def record(res) -> None:
        rec.status = "done" if res.joined else "partial"  # its segments: another joins the file
        rec.in_size = (res.info.width, res.info.height)
        rec.out_size = (res.out_hw[1], res.out_hw[0])
        rec.worker = f"{res.device} {res.precision}"
        rec.reason = (f"{res.frames_rendered} frames rendered, {res.info.frames} in the video"
                      + ("" if res.joined else f"; {len(res.waiting)} segments left"))

    with JsonlReport(report, shard=shard) as out:
        try:
            yield record
        except BaseException as e:
            rec.status = "cancelled" if isinstance(e, KeyboardInterrupt) else "failed"
            rec.reason = describe(e)[0]
            raise
        finally:
            rec.seconds = time.perf_counter() - t0
            out.write(rec)
