"""Upscale videos: any size, streamed, resumable, shardable, with sound and timing kept.

One module per job, siblings in the order data flows (PyAV, the optional `video` extra, is
imported only inside them):
- `probe`: PyAV or a one-line hint to install it; what the input is; its frame index.
- `codecs`: --codec, --pix-fmt, --crf, --preset; frames to and from RGB, colour kept.
- `segments`: segments of a few seconds (resume, shards) and the work folder holding them.
- `pipeline`: one segment streamed, decode → upscale → encode on three threads.
- `join`: the segments and the input's audio/subtitles remuxed into the output, atomically.
- `reuse`: output windows whose input did not change since the previous frame, copied.
- `run`: `upscale_video`, the whole job.

Import from here: `from liif_cli.tasks.video import upscale_video`.
"""

from liif_cli.tasks.video.run import (
    DEFAULT_VIDEO_MODEL,
    SEGMENT_SECONDS,
    VideoProgressFn,
    VideoResult,
    upscale_video,
)

__all__ = ["DEFAULT_VIDEO_MODEL", "SEGMENT_SECONDS", "VideoProgressFn", "VideoResult",
           "upscale_video"]
