"""What a batch reports: a record per file, the run's result, JSON-lines reports written as
files finish, and many tasks' reports merged (`liif batch --summary r*.jsonl`).

Every planned file ends with one `FileRecord`, status done / skipped / failed / cancelled (not
started or abandoned because of Ctrl-C or --fail-fast). `JsonlReport` appends each as one JSON
line as soon as it is final, so a SIGKILL loses no finished file's record. `summarize_reports`
merges many tasks' reports: per input, its best outcome. Torch-free.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from liif_cli.errors import (
    EXIT_FAILURE,
    ImageReadError,
    ImageWriteError,
    UsageError,
    signal_exit_code,
)
from liif_cli.io.files import atomic_write_text
from liif_cli.tasks.batch.plan import BatchPlan
from liif_cli.version import __version__

STATUSES = ("done", "skipped", "partial", "failed", "cancelled")



@dataclass
class FileRecord:
    input: str
    output: str
    status: str  # done | skipped | partial (a video shard's segments) | failed | cancelled
    reason: str = ""
    seconds: float = 0.0  # decode + compute + encode time spent on this file
    in_size: tuple[int, int] | None = None  # (W, H)
    out_size: tuple[int, int] | None = None  # (W, H)
    worker: str = ""

    @property
    def in_megapixels(self) -> float:
        return self.in_size[0] * self.in_size[1] / 1e6 if self.in_size else 0.0

    @property
    def out_megapixels(self) -> float:
        return self.out_size[0] * self.out_size[1] / 1e6 if self.out_size else 0.0


@dataclass(frozen=True)
class BatchEvent:
    """What `run_batch` tells its caller, in the caller's thread."""

    kind: str  # "start" | "worker" | "file" | "progress" | "stopping"
    done: int  # files of this run finished so far (any status)
    total: int  # files this run upscales
    record: FileRecord | None = None  # for "file"
    message: str = ""  # for "start", "worker", "stopping"
    partial: float = 0.0  # files' worth of work done on the files being computed now
    partial_megapixels: float = 0.0  # output megapixels computed of the files in progress


EventFn = Callable[[BatchEvent], None]


@dataclass
class BatchResult:
    plan: BatchPlan
    records: list[FileRecord]  # one per plan item, in plan order
    seconds: float  # wall time of the run
    model: str
    workers: list[str]
    interrupted: bool = False  # stopped by the caller (Ctrl-C)
    stopped_early: bool = False  # stopped by --fail-fast
    removed_temps: int = 0
    started: float = field(default_factory=time.time)  # Unix time
    signal: int | None = None  # the signal that stopped it (the `stop` event's `signum`)

    @property
    def exit_code(self) -> int:
        """130 or 143 when interrupted (by the signal), 1 when any file failed, else 0."""
        if self.interrupted:
            return signal_exit_code(self.signal)
        return EXIT_FAILURE if self.failed else 0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.records)

    def megapixels(self, status: str = "done", *, side: str = "out") -> float:
        return sum(getattr(r, f"{side}_megapixels") for r in self.records if r.status == status)

    @property
    def failed(self) -> list[FileRecord]:
        return [r for r in self.records if r.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "liif_cli": __version__,
            "input_dir": str(self.plan.input_dir), "output_dir": str(self.plan.output_dir),
            "shard": "/".join(map(str, self.plan.shard)), "model": self.model,
            "workers": self.workers,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "seconds": round(self.seconds, 3), "interrupted": self.interrupted,
            "stopped_early": self.stopped_early,
            "counts": {s: self.count(s) for s in STATUSES if s != "partial"},  # (video's)
            "megapixels_out": round(self.megapixels(), 3),
            "files": [{**asdict(r), "seconds": round(r.seconds, 3)} for r in self.records],
        }


def write_report(result: BatchResult, path: str | os.PathLike) -> Path:
    """The result as JSON (one record per file), written atomically."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ImageWriteError(f"report folder does not exist: {path.parent}")
    # replaced on each run: a rerun (resume) reports the whole folder again
    return atomic_write_text(path, json.dumps(result.to_dict(), indent=1, ensure_ascii=False),
                             overwrite=True)


def is_jsonl(path: str | os.PathLike) -> bool:
    """Reports named *.jsonl (or *.ndjson) are streamed line by line; others are one document."""
    return Path(path).suffix.lower() in (".jsonl", ".ndjson")


def record_line(rec: FileRecord, *, shard: tuple[int, int] = (1, 1), host: str = "") -> str:
    """One finished file as one line of JSON (with its newline), as `JsonlReport` writes it."""
    d = {**asdict(rec), "seconds": round(rec.seconds, 3), "shard": "/".join(map(str, shard)),
         "host": host, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return json.dumps(d, ensure_ascii=False) + "\n"


class JsonlReport:
    """Appends one JSON line per finished file, handed to the OS at once (`run_batch`'s
    `on_record`): a task killed even with SIGKILL leaves every file it finished recorded.

    Each line is one `write` on a file opened for appending, so a report is never cut inside a
    line by a kill, and lines of reports joined with `cat` are the same lines. A requeued task
    given the same report adds to it. Write errors never stop the batch: the first is kept in
    `error`, for the caller to report at the end.
    """

    def __init__(self, path: str | os.PathLike, *, shard: tuple[int, int] = (1, 1),
                 host: str | None = None):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ImageWriteError(f"report folder does not exist: {self.path.parent}")
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError as e:
            raise ImageWriteError(f"cannot open report {self.path}: {e.strerror}") from None
        self.shard, self.host = shard, host if host is not None else _hostname()
        self.lines, self.lost, self.error = 0, 0, ""

    def write(self, rec: FileRecord) -> None:
        data = record_line(rec, shard=self.shard, host=self.host).encode("utf-8")
        try:
            while data:  # a regular file takes it whole; the loop is for the odd short write
                data = data[os.write(self.fd, data):]
            self.lines += 1
        except OSError as e:
            self.lost += 1
            self.error = self.error or f"cannot write report {self.path}: {e.strerror}"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "JsonlReport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _hostname() -> str:
    import socket

    return socket.gethostname()


# ----------------------------------------------------------------------------------------------
# merged reports: `liif batch --summary r*.jsonl`

# which line of a file wins: done, then skipped (an earlier run did it), then partial (a video
# shard rendered its segments; another joins the file)
STATUS_RANK = {"done": 4, "skipped": 3, "partial": 2, "failed": 1, "cancelled": 0}


@dataclass
class ReportSummary:
    """Reports of many tasks (or runs) merged: one record per input, its best outcome."""

    files: list[dict[str, Any]]  # per input, in input order: the line that wins
    lines: int  # records read
    reports: int  # files read
    done_twice: list[str]  # inputs done by more than one line (overlapping shards, --overwrite)
    bad_lines: int  # lines that were not records (e.g. a file cut by a full disk)
    shards: list[str]  # shards seen ("2/3"), sorted
    hosts: list[str]

    def count(self, status: str) -> int:
        return sum(f["status"] == status for f in self.files)

    def rows(self, status: str) -> list[dict[str, Any]]:
        return [f for f in self.files if f["status"] == status]

    @property
    def exit_code(self) -> int:
        """1 while any file is failed, cancelled or partial (no run has finished it), else 0."""
        return EXIT_FAILURE if self.count("failed") + self.count("cancelled") + self.count(
            "partial") else 0


def _megapixels(size) -> float:
    return size[0] * size[1] / 1e6 if size else 0.0


def summarize_reports(paths: Iterable[str | os.PathLike]) -> ReportSummary:
    """Merge `--report` files (JSON lines, or the one-document .json): for each input the best
    status of its lines wins (done > skipped > partial > failed > cancelled), so a file that failed or was
    cancelled and was done by a later run counts as done, once."""
    best: dict[str, dict[str, Any]] = {}
    done: Counter = Counter()
    lines = bad = reports = 0
    shards, hosts = set(), set()
    for path in paths:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ImageReadError(f"cannot read report {path}: {e.strerror}") from None
        reports += 1
        if is_jsonl(path):
            recs = []
            for line in text.splitlines():
                if not line.strip():
                    continue
                try:
                    recs.append(json.loads(line))
                except json.JSONDecodeError:
                    bad += 1
        else:
            try:
                doc = json.loads(text)
                recs = doc["files"]
                shards.add(doc.get("shard", ""))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ImageReadError(f"{path} is not a liif batch report (a .jsonl of records "
                                     "or a .json with \"files\")") from None
        for rec in recs:
            if not isinstance(rec, dict) or rec.get("status") not in STATUS_RANK \
                    or "input" not in rec:
                bad += 1
                continue
            lines += 1
            shards.add(rec.get("shard", ""))
            hosts.add(rec.get("host", ""))
            key = rec["input"]
            done[key] += rec["status"] == "done"
            old = best.get(key)
            if old is None or STATUS_RANK[rec["status"]] >= STATUS_RANK[old["status"]]:
                best[key] = rec
    if not reports:
        raise UsageError("--summary needs report files, e.g. liif batch --summary r*.jsonl")
    files = [best[k] for k in sorted(best)]
    return ReportSummary(files, lines, reports, sorted(k for k, c in done.items() if c > 1),
                         bad, sorted(s for s in shards if s), sorted(h for h in hosts if h))


def summary_totals(files: list[dict[str, Any]]) -> dict[str, float]:
    """Input and output megapixels and seconds of some merged records."""
    return {"in_mp": sum(_megapixels(f.get("in_size")) for f in files),
            "out_mp": sum(_megapixels(f.get("out_size")) for f in files),
            "seconds": sum(float(f.get("seconds") or 0.0) for f in files)}
