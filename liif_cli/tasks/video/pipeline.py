"""One segment, streamed: decode → upscale → encode, as FFmpeg's own tools flow.

Three threads, bounded queues of `IN_FLIGHT` frames between them, so memory does not grow with
the video: a decode thread (demux, decode, convert to RGB), the caller's thread running the
model (one `Upscaler`, reused for every frame), and an encode thread (convert to the output's
pixel format, encode, mux). Decoding and encoding overlap with the model. Frames keep their pts
exactly (the encoder works in the input's time base).

A segment must decode to exactly the frames the index holds: a frame the decoder flags as
corrupt, a decoding error, or frames missing at the end fail with the frame's number (counted
from 0 over the whole video), unless `allow_corrupt`.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

from liif_cli.errors import VideoReadError
from liif_cli.io.images import ImageData
from liif_cli.runtime.upscaler import Upscaler
from liif_cli.tasks.video.codecs import EncodeSpec, from_rgb, open_encoder, to_rgb
from liif_cli.tasks.video.probe import VideoInfo, av_error, open_input, require_av, video_stream
from liif_cli.tasks.video.reuse import FrameMemory, render_frame
from liif_cli.tasks.video.segments import SEGMENT_FORMAT, Segment

IN_FLIGHT = 3  # frames queued between each pair of stages (decoded, and upscaled)
_END = object()  # a stage's last item


class _Stop(Exception):
    """Another stage failed: this one stops quietly."""


class _Pipe:
    """A bounded queue that gives up when any stage has failed (no thread waits forever)."""

    def __init__(self, failed: threading.Event):
        self.q: queue.Queue = queue.Queue(IN_FLIGHT)
        self.failed = failed

    def put(self, item) -> None:
        while True:
            if self.failed.is_set():
                raise _Stop
            try:
                return self.q.put(item, timeout=0.1)
            except queue.Full:
                continue

    def get(self):
        while True:
            if self.failed.is_set():
                raise _Stop
            try:
                return self.q.get(timeout=0.1)
            except queue.Empty:
                continue


def _decode(info: VideoInfo, seg: Segment, bit_depth: int, allow_corrupt: bool, out: _Pipe
            ) -> None:
    """Put (pts, RGB array) of the segment's frames, then _END."""
    av = require_av()
    n = 0
    with open_input(info.path) as c:
        vs = video_stream(c, info.path)
        vs.thread_type = "AUTO"
        try:
            for frame in _frames_from(c, vs, seg.start if seg.index else None):
                t = frame.pts if frame.pts is not None else frame.dts
                if t is None or t < seg.start:
                    continue
                if seg.end is not None and t >= seg.end:
                    break
                if frame.is_corrupt and not allow_corrupt:
                    raise VideoReadError(f"{info.path}: frame {seg.first + n} is corrupt "
                                         "(the stream is damaged there)")
                out.put((t, to_rgb(frame, bit_depth)))
                n += 1
        except av.FFmpegError as e:
            raise VideoReadError(f"{info.path}: cannot decode frame {seg.first + n} "
                                 f"({e.strerror or e})") from None
    if n < seg.frames and not allow_corrupt:
        raise VideoReadError(f"{info.path}: frame {seg.first + n} does not decode (the stream "
                             f"is corrupt or truncated there; {n} of the segment's "
                             f"{seg.frames} frames decoded)")
    out.put(_END)


def _frames_from(c, vs, start: int | None):
    """Decoded frames from the keyframe at or before pts `start` (None: from the beginning);
    from the beginning after all when the container's seek lands past `start` (no index) or
    where nothing decodes (MPEG-TS seeks by bytes: past its last keyframe it finds none)."""
    if start is None:
        yield from c.decode(vs)
        return
    c.seek(start, stream=vs, backward=True, any_frame=False)
    first = True
    for frame in c.decode(vs):
        if first and frame.pts is not None and frame.pts > start:
            break
        first = False
        yield frame
    if first:  # the seek gave nothing usable: decode from the start, as a one-segment run
        c.seek(0, stream=vs, backward=True)
        yield from c.decode(vs)


def _encode(path: str, info: VideoInfo, spec: EncodeSpec, out_hw: tuple[int, int],
            inp: _Pipe) -> None:
    """Encode and mux what comes until _END into a segment file at `path`."""
    av = require_av()
    try:
        with av.open(path, "w", format=SEGMENT_FORMAT) as c:
            stream = open_encoder(c, spec, info, out_hw)
            while (item := inp.get()) is not _END:
                pts, rgb = item
                frame = from_rgb(rgb, spec, info)
                frame.pts, frame.time_base = pts, info.time_base
                c.mux(stream.encode(frame))
            c.mux(stream.encode(None))
    except av.FFmpegError as e:
        raise av_error(e, path, writing=True) from None


def render_segment(up: Upscaler, info: VideoInfo, seg: Segment, spec: EncodeSpec,
                   out_hw: tuple[int, int], path: str, *, allow_corrupt: bool = False,
                   memory: FrameMemory | None = None,
                   on_frame: Callable[[], None] | None = None) -> int:
    """Render segment `seg` of the video into the file `path` (the work folder's temporary
    name; the caller renames it). Returns the frames rendered. `memory`: a fresh
    `reuse.FrameMemory` to copy what did not change from the previous frame (None: render
    every frame whole)."""
    failed = threading.Event()
    decoded, upscaled = _Pipe(failed), _Pipe(failed)
    errors: list[BaseException] = []

    def stage(fn, *args) -> threading.Thread:
        def run() -> None:
            try:
                fn(*args)
            except _Stop:
                pass
            except BaseException as e:  # handed to the caller's thread
                errors.append(e)
                failed.set()
        t = threading.Thread(target=run, name=f"video-{fn.__name__}", daemon=True)
        t.start()
        return t

    threads = [stage(_decode, info, seg, spec.bit_depth, allow_corrupt, decoded),
               stage(_encode, path, info, spec, out_hw, upscaled)]
    n = 0
    try:
        while (item := decoded.get()) is not _END:
            pts, rgb = item
            if memory is None:
                pixels = up.upscale_image(ImageData(rgb), out_hw).image.pixels
            else:
                pixels = render_frame(up, rgb, out_hw, memory)
            upscaled.put((pts, pixels))
            n += 1
            if on_frame is not None:
                on_frame()
        upscaled.put(_END)
    except _Stop:
        pass
    except BaseException:
        failed.set()
        raise
    finally:
        for t in threads:
            t.join() if not failed.is_set() else t.join(timeout=5)
    if errors:
        raise errors[0]
    return n
