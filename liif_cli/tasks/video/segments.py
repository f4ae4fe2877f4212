"""Segments: the unit of resume and of sharding, and the work folder that holds them.

A video is cut into segments of `SEGMENT_SECONDS` (the last may be shorter): segment k holds
exactly the frames whose pts lie in [start_k, start_k+1), so every frame belongs to one segment
and is rendered once. Each segment's file starts with a keyframe of its own (a fresh encoder),
so segments concatenate by remuxing. The cuts fall on any frame, not only on the input's
keyframes: cameras write a keyframe every 8 s or more (a 30 fps camera clip here: every 250
frames), and a segment's decoding starts at the input keyframe before it and drops the frames
ahead of its start, which costs milliseconds a frame against the model's seconds. Segment k
belongs to shard 1 + k mod N (`--shard I/N` or `--shard auto`, as `liif batch`'s shards;
neighbours go to different machines, so each gets a share of every part of the video).

The work folder sits beside the output, `.{output name}.liif-video/`: `job.json` says which job
it belongs to (input file, output size, encoding, model), and each finished segment is
`seg-00042.nut`, written to a temporary name and renamed when whole (`io.files.atomic_write`),
so a run killed at any moment leaves whole segments only; the next run with the same command
skips them. The folder goes once the output is assembled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from liif_cli.errors import UsageError
from liif_cli.io.files import atomic_write_text, temp_target
from liif_cli.tasks.video.probe import VideoInfo

SEGMENT_SECONDS = 4.0  # a killed run loses at most one segment's work (a few seconds of video)
WORK_SUFFIX = ".liif-video"
SEGMENT_FORMAT = "nut"  # keeps any time base exactly, takes any codec
JOIN_LOCK = "join.lock"


@dataclass(frozen=True)
class Segment:
    index: int
    start: int  # pts of its first frame, in the stream's time base
    end: int | None  # pts where the next segment starts; None: to the end
    first: int  # index of its first frame in the whole video
    frames: int

    @property
    def name(self) -> str:
        return f"seg-{self.index:05d}.{SEGMENT_FORMAT}"


def plan_segments(info: VideoInfo, seconds: float = SEGMENT_SECONDS) -> list[Segment]:
    """Cut `info`'s frames into segments of `seconds` each (at frame boundaries)."""
    if not seconds > 0:  # nan too (inf is one segment: the whole video)
        raise UsageError(f"--segment-seconds must be positive, got {seconds:g}")
    firsts = [0]
    for i, t in enumerate(info.pts):
        if float((t - info.pts[firsts[-1]]) * info.time_base) >= seconds:
            firsts.append(i)
    ends = firsts[1:] + [len(info.pts)]
    return [Segment(k, info.pts[a], info.pts[b] if b < len(info.pts) else None, a, b - a)
            for k, (a, b) in enumerate(zip(firsts, ends))]


def shard_segments(segments: list[Segment], shard: tuple[int, int]) -> list[Segment]:
    """The segments of shard (I, N): every N-th, starting at the (I-1)-th."""
    i, n = shard
    return [s for s in segments if s.index % n == i - 1]


def work_folder(output: Path) -> Path:
    return output.with_name(f".{output.name}{WORK_SUFFIX}")


def job_key(info: VideoInfo, **settings) -> dict:
    """What makes segments reusable: the same input file (path, size, mtime) and the same
    settings (output size, encoding, model, precision)."""
    st = os.stat(info.path)
    key = {"input": str(info.path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
           **{k: v for k, v in settings.items()}}
    key["id"] = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()
                               ).hexdigest()[:16]
    return key


class WorkFolder:
    """The segments of one job: which are done, where the next goes, and cleaning up."""

    def __init__(self, output: Path, key: dict):
        self.path = work_folder(output)
        self.output = output
        job = self.path / "job.json"
        try:
            self.path.mkdir(exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot make the work folder {self.path}: {e.strerror}") from None
        if job.exists():
            try:
                old = json.loads(job.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = {}
            if old.get("id") != key["id"]:
                raise UsageError(f"{self.path} holds segments of another job (other input or "
                                 "options); delete it, or rerun with that job's command")
        else:
            atomic_write_text(job, json.dumps(key, indent=1, default=str) + "\n",
                              overwrite=True)

    def segment_path(self, seg: Segment) -> Path:
        return self.path / seg.name

    def done(self, seg: Segment) -> bool:
        return self.segment_path(seg).is_file()

    def remove_stale_temps(self, segments: list[Segment]) -> int:
        """Delete the temporaries a killed run left of `segments` (this shard's only: other
        shards may be writing theirs now)."""
        mine = {s.name for s in segments}
        n = 0
        for p in self.path.iterdir():
            if temp_target(p.name) in mine:
                p.unlink(missing_ok=True)
                n += 1
        return n

    def claim_join(self, *, force: bool) -> bool:
        """True for the one process that assembles the output (the first to ask; `force`:
        an explicit --join, which also takes over any lock). A lock left by a joiner of this
        machine that no longer runs (killed, SIGTERM, a reboot) is taken over too: it names
        its host and process."""
        lock = self.path / JOIN_LOCK
        if force or _abandoned(lock):
            lock.unlink(missing_ok=True)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}\n")
        return True

    def join_holder(self) -> str:
        """Who holds the join lock, as it says ("host pid"), or "" if none does."""
        try:
            return (self.path / JOIN_LOCK).read_text().strip()
        except OSError:
            return ""

    def release_join(self) -> None:
        (self.path / JOIN_LOCK).unlink(missing_ok=True)

    def remove_if_unused(self) -> None:
        """Remove the folder if it holds no segment, finished or in progress (any shard's)."""
        if all(p.name == "job.json" for p in self.path.iterdir()):
            self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _abandoned(lock: Path) -> bool:
    """A join lock whose process, on this machine, no longer runs (one of another machine, or
    without its "host pid" line, is left alone)."""
    if os.name == "nt":  # os.kill there terminates the process: no asking
        return False
    try:
        host, pid = lock.read_text().split()
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)  # signal 0: is it there?
    except ProcessLookupError:
        return True
    except (OSError, ValueError, OverflowError):  # none, unreadable, another's process
        return False
    return False
