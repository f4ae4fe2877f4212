"""Assembling the output: the segments' picture and the input's other streams, remuxed.

Nothing here decodes or encodes: the segments' video packets follow one another (they are in
presentation order, `codecs`), and the input's audio and subtitle streams are copied packet for
packet, interleaved by time. Kept from the input: each stream's time base, language, title and
other tags, dispositions, the container's tags, chapters, and the display rotation. Data and
attachment streams are left out, with a note. The file is written to a temporary name and
renamed when whole (`io.files.atomic_write`): nothing partial is ever at the output path.

`check_container` makes the output's header in memory before any rendering, so an encoder or
a stream the container cannot hold (H.264 in WebM, SubRip subtitles in MP4), or encoder options
the encoder refuses (`codecs.open_checked`), is a usage error at once, not after hours of work.
"""

from __future__ import annotations

import heapq
import io
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Iterator

from liif_cli.errors import LiifWarning, UsageError, VideoReadError
from liif_cli.io.files import atomic_write
from liif_cli.tasks.video.codecs import EncodeSpec, open_checked, open_encoder
from liif_cli.tasks.video.probe import VideoInfo, av_error, open_input, require_av, video_stream

# output extension -> FFmpeg muxer
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska",
              ".webm": "webm", ".avi": "avi", ".nut": "nut"}
COPIED_TYPES = ("audio", "subtitle")
# no date, random ids or version strings in the container: the same job gives the same bytes
# (a resumed or sharded run's output is identical to an uninterrupted one's)
BITEXACT = {"fflags": "+bitexact"}


def container_format(output: Path) -> str:
    fmt = CONTAINERS.get(output.suffix.lower())
    if fmt is None:
        raise UsageError(f"cannot tell the container from {output.name!r}: name the output "
                         ".mp4, .mkv, .mov, .webm, .avi or .nut")
    return fmt


def _copied(c, vs) -> list:
    """The input's streams that are copied: audio and subtitles (a note for the rest)."""
    keep, dropped = [], []
    for s in c.streams:
        if s.index == vs.index:
            continue
        (keep if s.type in COPIED_TYPES else dropped).append(s)
    if dropped:
        warnings.warn(f"left out {len(dropped)} stream(s) that are neither picture, sound "
                      f"nor subtitles ({', '.join(sorted({s.type for s in dropped}))})",
                      LiifWarning, stacklevel=3)
    return keep


def _add_copies(out, c, vs) -> dict[int, object]:
    """Output streams for the input's copied streams: input index -> output stream."""
    mapping = {}
    for s in _copied(c, vs):
        o = out.add_stream_from_template(s)
        o.time_base = s.time_base
        o.metadata.update(s.metadata)
        o.disposition = s.disposition
        mapping[s.index] = o
    return mapping


def _header_tags(out, c, vs, o) -> None:
    """Container tags, chapters, the picture stream's tags and rotation."""
    out.metadata.update({k: v for k, v in c.metadata.items()
                         if k.lower() not in ("encoder", "duration")})
    o.metadata.update({k: v for k, v in vs.metadata.items()
                       if k.lower() not in ("encoder", "duration")})
    o.disposition = vs.disposition
    try:
        chapters = c.chapters()
    except (AttributeError, NotImplementedError):
        chapters = []
    if chapters:
        out.set_chapters(chapters)


def check_container(info: VideoInfo, output: Path, spec: EncodeSpec,
                    out_hw: tuple[int, int]) -> None:
    """Write the output's header to memory: a usage error now if the container cannot hold
    the encoder's picture or the input's other streams."""
    av = require_av()
    fmt = container_format(output)
    try:
        with open_input(info.path) as c, av.open(io.BytesIO(), "w", format=fmt) as out:
            vs = video_stream(c, info.path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LiifWarning)  # said again when joining
                o = open_encoder(out, spec, info, out_hw)
                _add_copies(out, c, vs)
            open_checked(o, spec, out_hw)  # the encoder's own refusal, named as such
            out.start_encoding()
    except (av.FFmpegError, ValueError) as e:
        raise UsageError(f"{output.suffix} ({fmt}) cannot hold this output ({spec.codec} "
                         f"{spec.pix_fmt} with the input's {info.others} other stream(s)): "
                         f"{getattr(e, 'strerror', None) or e}; try .mkv") from None


def _packets(c, streams, source: str) -> Iterator[tuple[Fraction, int, object]]:
    """(time, order, packet) of `streams` of container `c`, in file order, flush packets out."""
    av = require_av()
    try:
        for pkt in c.demux(*streams):
            if pkt.size == 0 or (pkt.dts is None and pkt.pts is None):
                continue
            t = pkt.dts if pkt.dts is not None else pkt.pts
            yield t * Fraction(pkt.time_base), 0, pkt
    except av.FFmpegError as e:
        raise VideoReadError(f"cannot read {source}: {e.strerror or e}") from None


def _segment_packets(paths: list[Path]) -> Iterator[tuple[Fraction, int, object]]:
    av = require_av()
    for p in paths:
        with av.open(str(p)) as seg:
            yield from ((t, 1, pkt) for t, _, pkt in _packets(seg, seg.streams.video[:1],
                                                                str(p)))


def _picture_stream(out, template, spec: EncodeSpec, info: VideoInfo):
    """The output's picture stream, its parameters copied from the first segment's; where
    PyAV cannot copy them (AV1: it looks for an encoder named after the decoder, libdav1d),
    the stream of an encoder with the segments' settings, which makes the same headers."""
    av = require_av()
    try:
        o = out.add_stream_from_template(template)
    except av.codec.codec.UnknownCodecError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LiifWarning)
            o = open_encoder(out, spec, info, (template.codec_context.height,
                                               template.codec_context.width))
    o.time_base = info.time_base
    return o


def join_segments(info: VideoInfo, segments: list[Path], output: Path, spec: EncodeSpec, *,
                  overwrite: bool) -> Path:
    """Remux `segments` (in order) with the input's audio and subtitles into `output`."""
    av = require_av()
    fmt = container_format(output)
    # a segment none of whose frames decoded (--allow-corrupt) is an empty file: nothing to join
    segments = [p for p in segments if p.stat().st_size]
    if not segments:
        raise VideoReadError(f"{info.path}: not one frame decodes")

    def write(tmp: str) -> None:
        with open_input(info.path) as c, av.open(segments[0].as_posix()) as first, \
                av.open(tmp, "w", format=fmt, options=BITEXACT) as out:
            vs = video_stream(c, info.path)
            o = _picture_stream(out, first.streams.video[0], spec, info)
            if info.rotation:
                o.set_display_rotation(info.rotation)
            mapping = _add_copies(out, c, vs)
            _header_tags(out, c, vs, o)
            # (demux() of no stream would read them all)
            others = _packets(c, [c.streams[i] for i in mapping], str(info.path)) \
                if mapping else iter(())
            merged = heapq.merge(_segment_packets(segments), others, key=lambda x: (x[0], x[1]))
            shown = info.durations()  # the input's, frame by frame: the encoder knew a rate
            for _, src, pkt in merged:
                if src == 1 and pkt.pts is not None:  # (the last one sets MP4's length)
                    tb = Fraction(pkt.time_base)
                    if (d := shown.get(pkt.pts * tb)) is not None:
                        pkt.duration = max(1, round(d / tb))
                pkt.stream = o if src == 1 else mapping[pkt.stream.index]
                out.mux(pkt)

    try:
        return atomic_write(output, write, overwrite=overwrite) or output
    except av.FFmpegError as e:
        raise av_error(e, output, writing=True) from None
