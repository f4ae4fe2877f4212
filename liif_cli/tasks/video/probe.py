"""Reading a video: PyAV (the optional `video` extra), what the input is, and its frame index.

`require_av()` imports PyAV or says, in one line, how to install it. `probe(path)` opens the
input and reads every video packet's header once (no decoding): the frames' presentation
timestamps (pts, in the stream's time base) and which packets are keyframes. That index is
what segments are cut from (`segments.plan_segments`) and what each decoded segment is checked
against, so a stream that decodes to fewer frames than it holds fails and names the frame.

FFmpeg's own errors (`av.FFmpegError`) become one line through `av_error`: an unreadable input
is `VideoReadError`; a write that failed (disk full) is `OutputWriteError`.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import ModuleType

from liif_cli.errors import LiifError, OutputWriteError, VideoReadError

INSTALL_HINT = ("liif video needs PyAV, the `video` extra: pip install '.[video]' in the "
                "liif-cli checkout (or pip install 'av>=14')")
# A stream that ends this much before the duration its container declares is truncated: more
# than two frames and half a second (containers round durations, some to the millisecond).
TRUNCATED_SLACK_S = 0.5


def require_av() -> ModuleType:
    """PyAV, imported; a missing install is one `LiifError` line naming the extra."""
    try:
        import av
    except ImportError:
        raise LiifError(INSTALL_HINT) from None
    return av


def av_error(exc: BaseException, path: str | os.PathLike, *, writing: bool = False) -> LiifError:
    """An FFmpeg error as the one line a user reads: a full disk or other write failure
    (`writing`) is `OutputWriteError`, anything else reading `path` is `VideoReadError`."""
    code = getattr(exc, "errno", None)
    text = getattr(exc, "strerror", None) or str(exc)
    if writing or code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):
        if code == errno.ENOSPC:
            text = "no space left on the device"
        return OutputWriteError(f"cannot write {path}: {text}")
    return VideoReadError(f"cannot read {path}: {text}")


@dataclass
class VideoInfo:
    """The input's picture stream, as probed: everything a plan and an encoder need."""

    path: Path
    format: str  # container, e.g. "matroska,webm"
    width: int
    height: int
    codec: str  # decoder name, e.g. "h264"
    pix_fmt: str  # e.g. "yuv420p", "yuvj420p", "yuv420p10le"
    bit_depth: int  # 8, or 10/12/16 for deep formats
    time_base: Fraction
    rate: Fraction | None  # average frame rate (None: unknown)
    pts: list[int]  # every frame's presentation time, sorted, in `time_base` units
    keyframes: list[int]  # pts of the keyframes, sorted
    duration_s: float  # the picture's span: last frame end minus first frame start
    colour: dict[str, int] = field(default_factory=dict)  # color_range, colorspace, ...
    rotation: float = 0.0  # display rotation, degrees counter-clockwise
    others: int = 0  # audio, subtitle and other streams, copied as they are
    end: int | None = None  # where the last frame ends, in `time_base` units (None: unknown)

    @property
    def frames(self) -> int:
        return len(self.pts)

    @property
    def fps(self) -> float:
        return float(self.rate) if self.rate else self.frames / max(self.duration_s, 1e-9)

    def durations(self) -> dict[Fraction, Fraction]:
        """Each frame's time on screen, by its start (seconds): until the next frame, the last
        until the picture's end (left out where that is unknown)."""
        tb = self.time_base
        ends = self.pts[1:] + ([self.end] if self.end is not None else [])
        return {a * tb: (b - a) * tb for a, b in zip(self.pts, ends) if b > a}


def bit_depth_of(pix_fmt: str) -> int:
    """8 for yuv420p and friends; 10 for yuv420p10le, 12, 16 for rgb48le and so on."""
    av = require_av()
    try:
        fmt = av.VideoFormat(pix_fmt)
    except (ValueError, av.FFmpegError):
        raise VideoReadError(f"unknown pixel format {pix_fmt!r}") from None
    return max((c.bits for c in fmt.components), default=8)


def open_input(path: str | os.PathLike):
    """`av.open(path)`, with every failure as one `VideoReadError` line."""
    av = require_av()
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"no such file: {path}" if not path.exists() else
                             f"not a file: {path}")
    try:
        return av.open(str(path), "r")
    except av.FFmpegError as e:
        raise VideoReadError(f"{path} is not a video FFmpeg can read ({e.strerror or e})"
                             ) from None


def video_stream(container, path: Path):
    """The input's first picture stream (cover art, a still image attached to an audio file,
    is not one)."""
    for s in container.streams.video:
        if not s.disposition & 0x400:  # AV_DISPOSITION_ATTACHED_PIC
            return s
    kinds = sorted({s.type for s in container.streams}) or ["no streams"]
    raise VideoReadError(f"{path} has no video stream (it has {', '.join(kinds)})")


def probe(path: str | os.PathLike) -> VideoInfo:
    """Open `path`, check it is a video we can decode, and index its frames (no decoding)."""
    av = require_av()
    path = Path(path)
    with open_input(path) as c:
        vs = video_stream(c, path)
        cc = vs.codec_context
        if cc.codec is None or not cc.is_decoder:
            raise VideoReadError(f"{path}: no decoder for its video codec {cc.name!r}")
        pts, keys, ends = [], [], 0
        try:
            for pkt in c.demux(vs):
                t = pkt.pts if pkt.pts is not None else pkt.dts
                if t is None or pkt.size == 0:
                    continue  # the demuxer's flush packet
                pts.append(t)
                if pkt.is_keyframe:
                    keys.append(t)
                ends = max(ends, t + (pkt.duration or 0))
        except av.FFmpegError as e:
            raise VideoReadError(f"{path}: the file is corrupt or truncated after frame "
                                 f"{len(pts)} ({e.strerror or e})") from None
        if not pts:
            raise VideoReadError(f"{path}: its video stream holds no frames")
        if is_still_image(c.format.name, len(pts)):
            raise VideoReadError(f"{path} is a still image, not a video: `liif upscale` "
                                 "enlarges images")
        pts.sort()
        keys = sorted(set(keys)) or [pts[0]]
        if keys[0] > pts[0]:
            keys.insert(0, pts[0])  # frames before the first keyframe: their own segment
        tb = Fraction(vs.time_base)
        span = float((ends - pts[0]) * tb)
        _check_complete(c, vs, path, span, len(pts))
        pix_fmt = cc.pix_fmt or (cc.format.name if cc.format else None)
        if not pix_fmt:
            raise VideoReadError(f"{path}: unknown pixel format of its {cc.name} stream")
        colour = {k: int(getattr(cc, k) or 0) for k in
                  ("color_range", "colorspace", "color_primaries", "color_trc")}
        return VideoInfo(path, c.format.name, cc.width, cc.height, cc.name, pix_fmt,
                         bit_depth_of(pix_fmt), tb, vs.average_rate, pts, keys, span,
                         colour, _rotation(c, vs), len(c.streams) - 1,
                         ends if ends > pts[-1] else None)


def is_still_image(demuxer: str, frames: int) -> bool:
    """FFmpeg reads a photo as a one-frame video (demuxers such as jpeg_pipe, png_pipe,
    image2; a GIF or APNG of one frame): a video of it is not what anyone asked for."""
    return (demuxer.endswith("_pipe") or demuxer in ("image2", "image2pipe")
            or (frames == 1 and demuxer in ("gif", "apng")))


def _check_complete(container, vs, path: Path, span: float, frames: int) -> None:
    """A stream that stops well before the duration its container declares is truncated."""
    declared = None  # the picture stream's own (not the container's: sound may run longer)
    if vs.duration is not None:
        declared = float(vs.duration * vs.time_base)
    else:  # Matroska keeps it as a tag, "00:00:03.666000000"
        text = next((v for k, v in vs.metadata.items() if k.upper() == "DURATION"), "")
        try:
            h, m, s = text.split(":")
            declared = int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            pass
    if declared is None:
        return
    # one frame's length: a stream cut after its first frame is truncated too
    frame_s = span / frames if span > 0 else 1 / float(vs.average_rate or vs.guessed_rate or 1)
    if span + max(TRUNCATED_SLACK_S, 2 * frame_s) < declared:
        raise VideoReadError(f"{path} is truncated: its video stops at frame {frames} "
                             f"({span:.2f} s) of the {declared:.2f} s its container declares")


def _rotation(container, vs) -> float:
    """The display rotation (degrees counter-clockwise) of the first frame, 0 if none."""
    av = require_av()
    try:
        container.seek(0)
        for frame in container.decode(vs):
            return float(frame.rotation or 0)
    except av.FFmpegError:
        return 0.0
    return 0.0
