"""Encoding: `--codec`, `--pix-fmt`, `--crf`, `--preset`, and frames to and from RGB.

Codec names are FFmpeg's encoder names, plus three short ones (`CODEC_ALIASES`); each has a
default CRF and preset that suit upscaled footage (`CODEC_DEFAULTS`). The pixel format
defaults to yuv420p, or yuv420p10le for a deeper input when the codec can (10-bit stays
10-bit). Formats with subsampled chroma need sizes divisible by it (even, for 4:2:0): the
output size is rounded *up* to the next such size, with one note (never a refusal; the model
renders any size, so nothing is stretched, one row or column more is rendered).

Colour: frames are decoded to RGB with the input's matrix and range (`to_rgb`), and encoded
back with the same (`from_rgb`); primaries, transfer, matrix and range are tagged on the output
as the input had them. `bgr0` (with ffv1) stores the model's RGB exactly.

Before any work the encoder is opened once (`open_checked`): a --crf or --preset it refuses is
a usage error with its own reason, which x264, x265 and SVT-AV1 print on stderr (kept off the
terminal: the user reads one line).

Segments are concatenated by remuxing (`join`), so their packets must be in presentation
order: encoders that reorder frames (x264's and x265's B-frames) run without B-frames.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from liif_cli.errors import LiifWarning, UsageError
from liif_cli.tasks.video.probe import VideoInfo, require_av

CODEC_ALIASES = {"h264": "libx264", "avc": "libx264", "hevc": "libx265", "h265": "libx265",
                 "av1": "libsvtav1", "vp9": "libvpx-vp9"}
DEFAULT_CODEC = "libx264"
DEFAULT_PIX_FMT = "yuv420p"
DEEP_PIX_FMT = "yuv420p10le"  # for inputs over 8 bits, where the codec has it
# (crf, preset) per encoder: visually transparent for upscaled footage, a moderate speed
CODEC_DEFAULTS: dict[str, tuple[int | None, str | None]] = {
    "libx264": (18, "medium"), "libx265": (20, "medium"), "libvpx-vp9": (30, None),
    "libsvtav1": (30, "8"), "ffv1": (None, None),
}
# --crf each encoder takes (x264 clamps and VP9 reads -1 as "unset" without a word: checked here)
# (the others, mpeg4 or a hardware encoder, would ignore a crf: refused, not reported as used)
CRF_RANGES: dict[str, tuple[int, int]] = {
    "libx264": (0, 51), "libx264rgb": (0, 51), "libx265": (0, 51), "libvpx-vp9": (0, 63),
    "libsvtav1": (0, 63),
}
# encoders with a speed preset; the others (VP9, ffv1) would ignore one
PRESET_CODECS = ("libx264", "libx264rgb", "libx265", "libsvtav1")
# RGB formats take no colour matrix: the model's pixels as they are
RGB_FORMATS = ("bgr0", "rgb24", "bgr24", "gbrp", "gbrp10le", "gbrp12le", "rgb48le", "bgra")


@dataclass(frozen=True)
class EncodeSpec:
    """How the output's picture is encoded."""

    codec: str  # FFmpeg encoder name, aliases resolved
    pix_fmt: str
    crf: int | None
    preset: str | None
    bit_depth: int  # of the RGB the model writes: 8 (uint8) or 16 (uint16, deep formats)

    def options(self) -> dict[str, str]:
        """The encoder's private options."""
        opts: dict[str, str] = {}
        if self.crf is not None:
            opts["crf"] = str(self.crf)
        if self.preset is not None:
            opts["preset"] = str(self.preset)
        if self.codec == "libvpx-vp9":
            opts["b"] = "0"  # constant quality: CRF alone, no bitrate cap
        if self.codec == "libx265":
            opts["x265-params"] = "bframes=0:log-level=error"
        if self.codec == "libsvtav1":
            opts["svtav1-params"] = "enable-stat-report=0"
        return opts

    def describe(self) -> str:
        return f"{self.codec} {self.pix_fmt}" + ("" if self.crf is None else f" crf {self.crf}")


def encode_spec(*, codec: str | None = None, pix_fmt: str | None = None, crf: int | None = None,
                preset: str | None = None, input_depth: int = 8) -> EncodeSpec:
    """Check the encoding options against what this PyAV build has (usage errors only)."""
    av = require_av()
    name = (codec or DEFAULT_CODEC).strip().lower()
    name = CODEC_ALIASES.get(name, name)
    try:
        enc = av.Codec(name, "w")
    except (ValueError, av.FFmpegError):
        raise UsageError(f"unknown --codec {codec!r}: use libx264 (h264), libx265 (hevc), "
                         "libvpx-vp9, libsvtav1 (av1) or ffv1 (lossless)") from None
    if enc.type != "video":
        raise UsageError(f"--codec {codec} is not a video encoder")
    formats = [f.name for f in (enc.video_formats or [])]
    if pix_fmt is None:
        pix_fmt = DEEP_PIX_FMT if input_depth > 8 and DEEP_PIX_FMT in formats else \
            DEFAULT_PIX_FMT
        if pix_fmt not in formats and formats:
            pix_fmt = formats[0]
    if formats and pix_fmt not in formats:
        raise UsageError(f"--codec {name} cannot encode --pix-fmt {pix_fmt}; it takes "
                         + ", ".join(formats))
    try:
        fmt = av.VideoFormat(pix_fmt)
    except (ValueError, av.FFmpegError):
        raise UsageError(f"unknown --pix-fmt {pix_fmt!r}") from None
    default_crf, default_preset = CODEC_DEFAULTS.get(name, (None, None))
    if crf is not None and name == "ffv1":
        raise UsageError("--crf has no meaning for ffv1, which is lossless")
    if crf is not None and name not in CRF_RANGES:
        raise UsageError(f"--crf has no meaning for {name} here; it is for "
                         f"{', '.join(CRF_RANGES)}")
    lo, hi = CRF_RANGES.get(name, (None, None))
    if crf is not None and not lo <= crf <= hi:
        raise UsageError(f"--crf {crf} is outside {name}'s range, {lo} to {hi} (lower is better)")
    if preset is not None and name not in PRESET_CODECS:
        raise UsageError(f"--preset has no meaning for {name}; presets are for "
                         f"{', '.join(PRESET_CODECS)}")
    depth = max((c.bits for c in fmt.components), default=8)
    return EncodeSpec(name, pix_fmt, default_crf if crf is None else crf,
                      default_preset if preset is None else preset, 16 if depth > 8 else 8)


def chroma_steps(pix_fmt: str) -> tuple[int, int]:
    """(vertical, horizontal) size steps a pixel format needs: (2, 2) for 4:2:0, (1, 1) RGB."""
    av = require_av()
    fmt = av.VideoFormat(pix_fmt, 64, 64)
    comps = fmt.components
    if len(comps) < 2 or pix_fmt in RGB_FORMATS or not fmt.name.startswith(("yuv", "nv")):
        return 1, 1
    return max(1, 64 // comps[1].height), max(1, 64 // comps[1].width)


def fit_chroma(out_hw: tuple[int, int], pix_fmt: str) -> tuple[int, int]:
    """`out_hw` rounded up to what `pix_fmt`'s chroma needs, with one note when it changes."""
    sy, sx = chroma_steps(pix_fmt)
    H, W = out_hw
    H2, W2 = -(-H // sy) * sy, -(-W // sx) * sx
    if (H2, W2) != (H, W):
        warnings.warn(f"{W}×{H} rounded up to {W2}×{H2}: {pix_fmt} needs sizes divisible by "
                      f"{sx}×{sy}", LiifWarning, stacklevel=2)
    return H2, W2


def to_rgb(frame, bit_depth: int) -> np.ndarray:
    """A decoded frame as (H, W, 3) RGB, uint8 (8-bit input) or uint16 (deeper), converted
    with the frame's own matrix and range."""
    fmt = "rgb48le" if bit_depth > 8 else "rgb24"
    return frame.to_ndarray(format=fmt, src_colorspace=frame.colorspace or None,
                            src_color_range=frame.color_range or None)


def from_rgb(rgb: np.ndarray, spec: EncodeSpec, info: VideoInfo):
    """(H, W, 3) uint8/uint16 RGB as a frame in `spec.pix_fmt`, in the input's matrix and
    range, tagged with its primaries and transfer."""
    av = require_av()
    src = av.VideoFrame.from_ndarray(rgb, format="rgb48le" if rgb.dtype == np.uint16 else
                                     "rgb24")
    if spec.pix_fmt in RGB_FORMATS:
        return src.reformat(format=spec.pix_fmt)
    c = info.colour
    return src.reformat(format=spec.pix_fmt, dst_colorspace=c.get("colorspace") or None,
                        dst_color_range=c.get("color_range") or None,
                        dst_color_trc=c.get("color_trc") or None,
                        dst_color_primaries=c.get("color_primaries") or None)


def open_encoder(container, spec: EncodeSpec, info: VideoInfo, out_hw: tuple[int, int]):
    """A video stream on output `container` that encodes `spec` at `out_hw` in the input's
    time base (so every frame keeps its exact pts), colour-tagged as the input."""
    H, W = out_hw
    if spec.codec == "libsvtav1":
        # SVT-AV1 prints a banner of 20 lines each time it opens (every segment): errors only,
        # unless the user set it (read once, at its first use in the process)
        os.environ.setdefault("SVT_LOG", "1")
    stream = container.add_stream(spec.codec, options=spec.options())
    stream.width, stream.height, stream.pix_fmt = W, H, spec.pix_fmt
    stream.time_base = info.time_base
    cc = stream.codec_context
    cc.time_base = info.time_base
    if info.rate:
        cc.framerate = info.rate
    cc.max_b_frames = 0  # packets in presentation order: segments concatenate by remuxing
    if spec.pix_fmt not in RGB_FORMATS:
        for key, value in info.colour.items():
            if value:
                setattr(cc, key, value)
    return stream


def open_checked(stream, spec: EncodeSpec, out_hw: tuple[int, int]) -> None:
    """Open `stream`'s encoder now: what it refuses (a --crf or --preset out of its range, a
    size too small for it) is a `UsageError` naming the encoder's reason."""
    av = require_av()
    said: list[str] = []
    try:
        with _stderr_into(said):
            stream.codec_context.open()
    except (av.FFmpegError, ValueError) as e:
        default_crf, default_preset = CODEC_DEFAULTS.get(spec.codec, (None, None))
        given = [f"--{k} {v}" for k, v, d in (("crf", spec.crf, default_crf),
                                                ("preset", spec.preset, default_preset))
                 if v is not None and v != d]
        errors = [line.split("]: ", 1)[-1].strip() for line in said if "error" in line.lower()]
        reason = errors[-1] if errors else getattr(e, "strerror", None) or str(e)
        H, W = out_hw
        raise UsageError(f"{spec.codec} cannot encode {W}×{H} {spec.pix_fmt}"
                         + (f" with {' '.join(given)}" if given else "") + f": {reason}"
                         ) from None


@contextmanager
def _stderr_into(lines: list[str]) -> Iterator[None]:
    """What the C libraries print on stderr (file descriptor 2) while the block runs, into
    `lines` instead of the terminal."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            lines.extend(f.read().decode(errors="replace").splitlines())
