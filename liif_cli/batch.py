"""Upscale whole folders: plan, resume, shard, spread over devices, report every file.

Conventions:
- A *plan* maps each image under INPUT_DIR (hidden files and folders ignored; `recursive`
  descends) to OUTPUT_DIR/<same relative folder>/<stem><suffix><ext>, in order of relative POSIX
  path. Each item's action is "upscale", "skip" (output exists and no overwrite) or "fail"
  (e.g. two inputs would write one output). Files are only *named* here, never decoded.
- Sharding: a file belongs to shard 1 + (sha256 of its NFC relative path mod N). That depends on
  the file's own name only, so N machines agree with no coordination, on any OS and Python, and
  adding files to the folder never moves the others to another shard.
- Workers: `jobs` per device. A single worker runs inside this process (threads); more run as
  spawned processes, each loading the model once. The dispatcher gives each worker at most
  IN_FLIGHT files and the next as each one finishes, so faster devices take more. Inside a
  worker, DECODE_THREADS decode ahead of the model and one writer thread encodes behind it.
- Files: outputs are written by `imageio.write_image` (temporary `.{name}.XXXXXXXX.part` in the
  target folder, then link/rename), so any kill leaves only whole outputs, plus temporary files
  that the next run over the same outputs deletes before it starts.
- Records: every planned file ends with one `FileRecord`, status done / skipped / failed /
  cancelled (not started or abandoned because of Ctrl-C or --fail-fast). A bad file fails alone.
- Stopping: when `stop` is set (the CLI sets it on Ctrl-C) workers abandon the file being
  computed at its next chunk, finish writing what is already computed, and return.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import multiprocessing as mp
import os
import queue
import re
import signal
import tempfile
import threading
import time
import unicodedata
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import torch

from . import __version__, engine
from .errors import ImageReadError, ImageWriteError, LiifError, UsageError
from .imageio import DEFAULT_MAX_INPUT_PIXELS, FORMATS, is_image_name, read_image, write_image
from .model import LIIF, SRModel
from .upscale import (DEFAULT_MAX_OUTPUT_PIXELS, SizeRequest, precision_name, resolve_device,
                      resolve_precision, target_size, upscale_image)
from .weights import LoadedModel, load_model

OUTPUT_FORMATS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tiff",
                  "tif": ".tiff", "same": None}
FALLBACK_EXT = ".png"  # `--format same` for inputs we can read but not write (gif, ppm, ...)
DECODE_THREADS = 2  # images decoded in parallel ahead of the model, per worker
IN_FLIGHT = 4  # files handed to a worker at once: decoding, decoded, computing, writing
POLL_S = 0.1  # s between checks of the stop flag and of worker health while waiting
PROGRESS_S = 0.5  # s between a worker's reports of progress within a file
JOIN_TIMEOUT_S = 30.0  # s to wait for a stopping worker process before killing it
CRASH_GRACE_S = 2.0  # s a dead worker process gets for its last messages to arrive
FAIL_FAST_REASON = "stopped after the first failure (--fail-fast)"
# `imageio.write_image` temporaries: tempfile.mkstemp(prefix=f".{name}.", suffix=".part") adds
# 8 characters from [a-z0-9_] (CPython's tempfile._RandomNameSequence).
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.part$")
STATUSES = ("done", "skipped", "failed", "cancelled")


# ----------------------------------------------------------------------------------------------
# options

def parse_shard(text: str | None) -> tuple[int, int]:
    """'2/4' -> (2, 4): the second of four shards, counted from 1. None -> (1, 1)."""
    if text is None:
        return 1, 1
    try:
        i, n = (int(p) for p in str(text).split("/"))
    except ValueError:
        raise UsageError(f"bad --shard {text!r}: use I/N, e.g. 1/4 … 4/4") from None
    if n < 1 or not 1 <= i <= n:
        raise UsageError(f"bad --shard {text!r}: need 1 <= I <= N (shards count from 1)")
    return i, n


def shard_of(rel: str, n: int) -> int:
    """The shard (1..n) of a file, from its relative path alone; stable everywhere, forever."""
    key = unicodedata.normalize("NFC", rel).encode("utf-8")
    return 1 + int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % n


def parse_devices(text: str | None, *, jobs: int = 1) -> list[torch.device]:
    """'auto' | 'cpu' | 'cuda:1' | 'cuda:0,cuda:1' | 'all' -> one device per worker (× jobs).

    'all' means every CUDA GPU, or the 'auto' device where there is none.
    """
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, got {jobs}")
    name = (text or "auto").strip().lower()
    if name == "all":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = [torch.device(f"cuda:{i}") for i in range(n)] or [resolve_device("auto")]
    else:
        parts = [p.strip() for p in name.split(",")]
        if not all(parts):
            raise UsageError(f"bad --device {text!r}: use e.g. cuda:0,cuda:1 (no empty entries)")
        devices = [resolve_device(p) for p in parts]
    return [d for d in devices for _ in range(jobs)]


def worker_names(devices: list[torch.device]) -> list[str]:
    """['cpu', 'cpu', 'cuda:0'] -> ['cpu#1', 'cpu#2', 'cuda:0']: unique names for summaries."""
    counts = Counter(str(d) for d in devices)
    seen: Counter = Counter()
    names = []
    for d in devices:
        seen[str(d)] += 1
        names.append(str(d) if counts[str(d)] == 1 else f"{d}#{seen[str(d)]}")
    return names


# ----------------------------------------------------------------------------------------------
# planning

@dataclass(frozen=True)
class PlanItem:
    rel: str  # input path relative to the input folder, POSIX separators
    input: Path
    output: Path
    action: str  # "upscale" | "skip" | "fail"
    reason: str = ""


@dataclass
class BatchPlan:
    input_dir: Path
    output_dir: Path
    items: list[PlanItem]  # this shard's images, in relative-path order
    overwrite: bool
    shard: tuple[int, int]  # (I, N), I counted from 1
    other_shards: int  # images left to the other shards
    ignored: int  # files that are not images by name
    stale_temps: list[Path]  # temporaries of killed runs, for this plan's outputs

    def count(self, action: str) -> int:
        return sum(item.action == action for item in self.items)


def output_ext(rel: str, fmt: str) -> str:
    if fmt not in OUTPUT_FORMATS:
        raise UsageError(f"unknown --format {fmt!r}: use png, jpg, webp, tiff or same")
    ext = OUTPUT_FORMATS[fmt]
    if ext is None:
        suffix = PurePosixPath(rel).suffix
        ext = suffix if suffix.lower() in FORMATS else FALLBACK_EXT
    return ext


def _matches(rel: str, pattern: str) -> bool:
    """Case-insensitive glob on the file name, or on the relative path if the pattern has a /."""
    target = rel if "/" in pattern else rel.rsplit("/", 1)[-1]
    return fnmatch.fnmatchcase(target.lower(), pattern.lower())


def discover(input_dir: Path, *, recursive: bool = False, pattern: str | None = None,
             exclude: Path | None = None) -> tuple[list[str], int]:
    """Sorted relative paths of image-named files, and how many other files were ignored.

    Hidden files and folders (name starting with '.') are not looked at; nor is `exclude`
    (a resolved folder, e.g. the output folder inside the input folder).
    """
    found, ignored = [], 0

    def fail(err: OSError) -> None:
        if Path(err.filename or "") == input_dir:
            raise ImageReadError(f"cannot list the input folder {input_dir}: {err.strerror}")

    for root, dirs, files in os.walk(input_dir, onerror=fail):
        base = Path(root)
        if recursive:
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                             and (exclude is None or (base / d).resolve() != exclude))
        else:
            dirs[:] = []
        prefix = base.relative_to(input_dir).as_posix()
        for name in files:
            if name.startswith("."):
                continue
            rel = name if prefix == "." else f"{prefix}/{name}"
            if not is_image_name(name):
                ignored += 1
            elif pattern is None or _matches(rel, pattern):
                found.append(rel)
    return sorted(found), ignored


def plan_batch(input_dir: str | os.PathLike, output_dir: str | os.PathLike, *,
               recursive: bool = False, pattern: str | None = None, fmt: str = "same",
               suffix: str = "", overwrite: bool = False, shard: tuple[int, int] = (1, 1)
               ) -> BatchPlan:
    """Name every output, decide what to do with each file; reads names only, writes nothing."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.exists():
        raise ImageReadError(f"input folder not found: {input_dir}")
    if not input_dir.is_dir():
        raise UsageError(f"{input_dir} is a file, not a folder; use `liif upscale` for one image")
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"output {output_dir} is a file; give a folder (created if missing)")
    if "/" in suffix or os.sep in suffix or suffix in (".", ".."):
        raise UsageError(f"bad --suffix {suffix!r}: it is added to file names, no separators")
    output_ext("x.png", fmt)  # validates fmt
    i, n = shard
    if not 1 <= i <= n:
        raise UsageError(f"bad shard {i}/{n}: need 1 <= I <= N")
    in_res, out_res = input_dir.resolve(), output_dir.resolve()
    in_place = in_res == out_res
    if in_place and not suffix:
        raise UsageError("the output folder is the input folder: give a --suffix (e.g. _x4) so "
                         "outputs never replace the originals, or choose another output folder")
    exclude = out_res if in_res in out_res.parents else None
    rels, ignored = discover(input_dir, recursive=recursive, pattern=pattern, exclude=exclude)

    def out_rel(rel: str) -> str:
        p = PurePosixPath(rel)
        return str(p.with_name(p.stem + suffix + output_ext(rel, fmt)))

    outs = {rel: out_rel(rel) for rel in rels}
    if in_place:  # earlier outputs of this very command are not inputs
        produced = set(outs.values())
        rels = [r for r in rels if r not in produced]
    inputs = {in_res / r: r for r in rels}
    writer_of: dict[str, str] = {}  # output rel -> first input rel writing it
    items, other = [], 0
    for rel in rels:
        o = outs[rel]
        first = writer_of.setdefault(o, rel)
        src, dst = input_dir / rel, output_dir / o
        victim = inputs.get(out_res / o)
        if first != rel:
            action, reason = "fail", (f"same output {dst} as {input_dir / first}; use --format "
                                      "same or a --suffix to tell them apart")
        elif victim is not None:
            action, reason = "fail", (f"output {dst} would replace the input {input_dir / victim}"
                                      "; choose another output folder or a --suffix")
        elif not overwrite and dst.exists():
            action, reason = "skip", "output exists"
        else:
            action, reason = "upscale", ""
        if n > 1 and shard_of(rel, n) != i:
            other += 1
            continue
        items.append(PlanItem(rel, src, dst, action, reason))
    return BatchPlan(input_dir, output_dir, items, overwrite, (i, n), other, ignored,
                     find_stale_temps(items))


def find_stale_temps(items: list[PlanItem]) -> list[Path]:
    """Temporaries of `write_image` for these outputs (left by killed runs), and nothing else."""
    names_by_dir: dict[Path, set[str]] = {}
    for item in items:
        names_by_dir.setdefault(item.output.parent, set()).add(item.output.name)
    stale = []
    for folder, names in sorted(names_by_dir.items()):
        try:
            entries = list(os.scandir(folder))
        except OSError:  # not created yet
            continue
        for e in entries:
            m = TEMP_RE.match(e.name)
            if m and m["name"] in names and e.is_file(follow_symlinks=False):
                stale.append(Path(e.path))
    return sorted(stale)


# ----------------------------------------------------------------------------------------------
# records and results

@dataclass
class FileRecord:
    input: str
    output: str
    status: str  # done | skipped | failed | cancelled
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
            "counts": {s: self.count(s) for s in STATUSES},
            "megapixels_out": round(self.megapixels(), 3),
            "files": [{**asdict(r), "seconds": round(r.seconds, 3)} for r in self.records],
        }


def write_report(result: BatchResult, path: str | os.PathLike) -> Path:
    """The result as JSON (one record per file), written atomically."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ImageWriteError(f"report folder does not exist: {path.parent}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(result.to_dict(), f, indent=1, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ImageWriteError(f"cannot write report {path}: {e}") from None
        raise
    return path


# ----------------------------------------------------------------------------------------------
# the worker: decode ahead, compute, write behind

@dataclass(frozen=True)
class _WorkerConfig:
    """Everything a worker needs; picklable for spawned processes."""

    name: str
    device: str
    size: SizeRequest  # checked size options (upscale.size_request)
    max_output_pixels: int
    precision: str
    max_memory: int
    quality: int
    overwrite: bool
    max_input_pixels: int
    torch_threads: int | None  # set in spawned processes so workers share the cores


class _Cancelled(Exception):
    """Raised from the progress callback to abandon the file being computed."""


Task = tuple[int, str, str]  # (plan index, input path, output path)


def _describe(e: BaseException) -> str:
    if isinstance(e, LiifError):
        return str(e)
    if isinstance(e, torch.cuda.OutOfMemoryError) or isinstance(e, MemoryError):
        return "out of memory; lower --max-memory or the output size"
    return f"internal error: {type(e).__name__}: {e}"


class _Worker:
    """Runs tasks from `tasks` (a queue; None ends) and puts messages on `results`.

    Messages: ("ready", name, description), ("progress", name, pixels done, pixels),
    ("record", index, FileRecord), ("fatal", name, reason), ("exit", name).
    """

    def __init__(self, cfg: _WorkerConfig, model: LIIF, tasks, results, stop,
                 parent_pid: int | None = None):
        self.cfg, self.model, self.tasks, self.results, self.stop = cfg, model, tasks, results, stop
        self.parent_pid = parent_pid
        self.last_progress = 0.0  # time.monotonic() of the last progress message

    def aborted(self) -> bool:
        orphaned = self.parent_pid is not None and os.getppid() != self.parent_pid
        return self.stop.is_set() or orphaned

    def _check(self, done: int, total: int) -> None:  # engine progress callback
        if self.aborted():
            raise _Cancelled
        now = time.monotonic()
        if now - self.last_progress >= PROGRESS_S:
            self.last_progress = now
            self.results.put(("progress", self.cfg.name, done, total))

    def _record(self, task: Task, status: str, reason: str = "", **kw) -> None:
        idx, src, dst = task
        self.results.put(("record", idx, FileRecord(src, dst, status, reason,
                                                   worker=self.cfg.name, **kw)))

    def _feed(self, decode: ThreadPoolExecutor, ahead: queue.Queue) -> None:
        """Move tasks into the decoder as they arrive; None (or an abort) ends the stream."""
        while True:
            try:
                task = self.tasks.get(timeout=POLL_S)
            except queue.Empty:
                if self.parent_pid is not None and self.aborted():
                    break
                continue
            if task is None:
                break
            ahead.put((task, decode.submit(self._decode, task)))
        ahead.put(None)

    def _decode(self, task: Task):
        t0 = time.perf_counter()
        image = read_image(task[1], max_pixels=self.cfg.max_input_pixels)
        out_hw = target_size((image.height, image.width), request=self.cfg.size,
                             max_pixels=self.cfg.max_output_pixels)
        return image, out_hw, time.perf_counter() - t0

    def _write(self, task: Task, res, spent: float) -> None:
        t0 = time.perf_counter()
        sizes = {"in_size": (res.in_hw[1], res.in_hw[0]),
                 "out_size": (res.out_hw[1], res.out_hw[0])}
        dst = Path(task[2])
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_image(dst, res.image, quality=self.cfg.quality, overwrite=self.cfg.overwrite)
        except Exception as e:
            seconds = spent + time.perf_counter() - t0
            if not self.cfg.overwrite and dst.exists():  # written meanwhile by another run
                self._record(task, "skipped", "output appeared while running (another run?)",
                             seconds=seconds, **sizes)
            else:
                self._record(task, "failed", _describe(e), seconds=seconds, **sizes)
            return
        self._record(task, "done", seconds=spent + time.perf_counter() - t0, **sizes)

    def run(self) -> None:
        cfg = self.cfg
        dtype = resolve_precision(cfg.precision, torch.device(cfg.device))
        self.results.put(("ready", cfg.name, f"{cfg.device} {precision_name(dtype)}"))
        decode = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix=f"liif-decode-{cfg.name}")
        writer = ThreadPoolExecutor(1, thread_name_prefix=f"liif-write-{cfg.name}")
        ahead: queue.Queue = queue.Queue()  # (task, Future) in arrival order, then None
        feeder = threading.Thread(target=self._feed, args=(decode, ahead), daemon=True,
                                  name=f"liif-feed-{cfg.name}")
        feeder.start()
        pending: Future | None = None  # the previous output, still being written
        try:
            while (item := ahead.get()) is not None:
                task, fut = item
                if self.aborted():
                    fut.cancel()
                    self._record(task, "cancelled", "interrupted")
                    continue
                try:
                    image, out_hw, spent = fut.result()
                    t0 = time.perf_counter()
                    res = upscale_image(self.model, image, out_hw=out_hw, device=cfg.device,
                                        precision=cfg.precision, max_memory=cfg.max_memory,
                                        on_progress=self._check)
                    spent += time.perf_counter() - t0
                    del image
                except _Cancelled:
                    self._record(task, "cancelled", "interrupted")
                    continue
                except Exception as e:  # one bad file never stops the batch
                    self._record(task, "failed", _describe(e))
                    continue
                if pending is not None:
                    pending.result()  # at most one finished output waits in memory
                pending = writer.submit(self._write, task, res, spent)
                del res
        finally:
            writer.shutdown(wait=True)  # finished outputs are always written
            decode.shutdown(wait=True, cancel_futures=True)


def _process_main(cfg: _WorkerConfig, model_ref: str | LIIF, tasks, results, stop,
                  parent_pid: int) -> None:
    """Entry point of a spawned worker process: load the model once, then run tasks."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # sent to the whole group: the parent decides
        signal.signal(sig, signal.SIG_IGN)
    try:
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        model = model_ref if isinstance(model_ref, SRModel) else load_model(model_ref).model
        _Worker(cfg, model, tasks, results, stop, parent_pid).run()
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which carries on
        results.put(("fatal", cfg.name, _describe(e)))
    finally:
        results.put(("exit", cfg.name))


def _thread_main(worker: _Worker) -> None:
    try:
        worker.run()
    except BaseException as e:  # noqa: BLE001
        worker.results.put(("fatal", worker.cfg.name, _describe(e)))
    finally:
        worker.results.put(("exit", worker.cfg.name))


# ----------------------------------------------------------------------------------------------
# the dispatcher

def remove_stale_temps(plan: BatchPlan) -> int:
    removed = 0
    for p in plan.stale_temps:
        try:
            p.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_batch(plan: BatchPlan, model: LoadedModel | str | os.PathLike | None = None, *,
              size: SizeRequest, max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
              devices: str = "auto", jobs: int = 1, precision: str = "auto",
              max_memory: int = engine.DEFAULT_MAX_MEMORY, quality: int = 95,
              max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS, fail_fast: bool = False,
              stop: threading.Event | None = None, on_event: EventFn | None = None
              ) -> BatchResult:
    """Carry out a plan: every item ends with a record, whatever happens (bar a SIGKILL).

    `devices` as for `parse_devices`; `jobs` workers per device. Returns early, with the
    unstarted files cancelled, when `stop` is set or (fail_fast) a file fails. A
    KeyboardInterrupt here (e.g. a second Ctrl-C) kills the workers at once and still returns.
    """
    t_start = time.perf_counter()
    emit = on_event or (lambda e: None)
    stop = stop or threading.Event()
    devs = parse_devices(devices, jobs=jobs)
    for d in set(devs):
        resolve_precision(precision, d)  # fp16 on a CPU etc.: a usage error before any work
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    names = worker_names(devs)

    records: list[FileRecord | None] = [None] * len(plan.items)
    todo: deque[int] = deque()
    for k, item in enumerate(plan.items):
        if item.action == "upscale":
            todo.append(k)
        else:
            status = "skipped" if item.action == "skip" else "failed"
            records[k] = FileRecord(str(item.input), str(item.output), status, item.reason)
    result = BatchResult(plan, [], 0.0, loaded.name, names)
    total, done = len(todo), 0
    result.removed_temps = remove_stale_temps(plan)
    emit(BatchEvent("start", 0, total, message=", ".join(names)))
    if fail_fast and plan.count("fail"):
        result.stopped_early = True
        return _finish(result, records, t_start, FAIL_FAST_REASON)
    if not todo:
        return _finish(result, records, t_start, "")

    threaded = len(devs) == 1  # one worker: threads in this process, no start-up cost
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    results = queue.Queue() if threaded else ctx.Queue()  # messages from all workers
    halt = threading.Event() if threaded else ctx.Event()  # tells workers to stop
    model_ref: str | LIIF = str(loaded.path) if loaded.path is not None else loaded.model
    task_qs: dict[str, Any] = {}
    procs: dict[str, Any] = {}
    live, closed = set(names), set()
    in_flight: dict[str, set[int]] = {n: set() for n in names}
    fatal: dict[str, str] = {}
    exited_at: dict[str, float] = {}  # when a process was first seen dead without saying so
    partial: dict[str, tuple[int, int]] = {}  # worker -> (output pixels done, total) of its file
    stopping, todo_reason = False, ""

    def feed(name: str) -> None:
        """Top the worker up to IN_FLIGHT files; close its queue when nothing is left."""
        if name in closed or name not in live:
            return
        while todo and not stopping and len(in_flight[name]) < IN_FLIGHT:
            k = todo.popleft()
            item = plan.items[k]
            task_qs[name].put((k, str(item.input), str(item.output)))
            in_flight[name].add(k)
        if not todo or stopping:
            task_qs[name].put(None)
            closed.add(name)

    def event(kind: str, **kw) -> None:
        emit(BatchEvent(kind, done, total, partial=sum(d / t for d, t in partial.values()),
                        partial_megapixels=sum(d for d, _ in partial.values()) / 1e6, **kw))

    def finish(k: int, rec: FileRecord) -> None:
        nonlocal done
        if records[k] is None:
            records[k] = rec
            done += 1
            partial.pop(rec.worker, None)
            event("file", record=rec)

    def begin_stop(reason: str) -> None:
        nonlocal stopping, todo_reason
        if not stopping:
            stopping, todo_reason = True, reason
            halt.set()
            for name in sorted(live):
                feed(name)  # closes it
            event("stopping", message=reason)

    def worker_gone(name: str, crashed: bool) -> None:
        live.discard(name)
        partial.pop(name, None)
        lost, in_flight[name] = sorted(in_flight[name]), set()
        if not crashed:  # it failed to start and never ran them: the others take them over
            todo.extendleft(reversed(lost))
            for other in sorted(live):
                feed(other)
            return
        for k in lost:
            item = plan.items[k]
            finish(k, FileRecord(str(item.input), str(item.output), "failed",
                                 f"worker {name} died (exit code {procs[name].exitcode}) "
                                 "while this file was in progress", worker=name))

    try:
        for name, dev in zip(names, devs):
            task_qs[name] = queue.Queue() if threaded else ctx.Queue()
            cfg = _WorkerConfig(name, str(dev), size, max_output_pixels, precision, max_memory,
                                quality, plan.overwrite, max_input_pixels,
                                None if threaded else max(1, _cpu_count() // len(devs)))
            if threaded:
                w = _Worker(cfg, loaded.model, task_qs[name], results, halt)
                threading.Thread(target=_thread_main, args=(w,), daemon=True,
                                 name=f"liif-worker-{name}").start()
            else:
                procs[name] = ctx.Process(target=_process_main, name=f"liif-worker-{name}",
                                          args=(cfg, model_ref, task_qs[name], results, halt,
                                                os.getpid()), daemon=True)
                procs[name].start()
            feed(name)
        while live:
            if stop.is_set():
                begin_stop("interrupted")
            try:
                msg = results.get(timeout=POLL_S)
            except queue.Empty:
                now = time.monotonic()
                for name in sorted(live):
                    if name in procs and procs[name].exitcode is not None:
                        # a clean exit's last messages may still be in the pipe: wait a little
                        if now - exited_at.setdefault(name, now) > CRASH_GRACE_S:
                            worker_gone(name, crashed=True)
                continue
            kind = msg[0]
            if kind == "record":
                k, rec = msg[1], msg[2]
                in_flight[rec.worker].discard(k)
                finish(k, rec)
                if rec.status == "failed" and fail_fast:
                    result.stopped_early = True
                    begin_stop(FAIL_FAST_REASON)
                feed(rec.worker)
            elif kind == "progress":
                if not stopping:
                    partial[msg[1]] = (msg[2], max(1, msg[3]))
                    event("progress")
            elif kind == "ready":
                event("worker", message=f"{msg[1]}: {msg[2]}")
            elif kind == "fatal":
                fatal[msg[1]] = msg[2]
                event("worker", message=f"{msg[1]} failed: {msg[2]}")
            elif kind == "exit" and msg[1] in live:
                worker_gone(msg[1], crashed=False)
    except KeyboardInterrupt:  # asked twice: stop now, losing only unwritten work
        stopping, todo_reason = True, "interrupted"
        halt.set()
        for p in procs.values():
            p.kill()
        for q in task_qs.values():
            q.put(None)
    finally:
        for p in procs.values():
            p.join(JOIN_TIMEOUT_S)
            if p.is_alive():
                p.kill()
        if not threaded:  # never block our exit on data for a worker that is gone
            for q in [*task_qs.values(), results]:
                q.cancel_join_thread()
    result.interrupted = stop.is_set() or todo_reason == "interrupted"
    if todo and not stopping and fatal:  # no worker left to run them
        why = "; ".join(f"{n}: {m}" for n, m in sorted(fatal.items()))
        if not any(r is not None and r.status == "done" for r in records) and done == 0:
            raise LiifError(f"no worker could start ({why})")
        for k in todo:
            item = plan.items[k]
            finish(k, FileRecord(str(item.input), str(item.output), "failed",
                                 f"not processed: workers failed ({why})"))
    return _finish(result, records, t_start, todo_reason)


def _finish(result: BatchResult, records: list[FileRecord | None], t_start: float,
            reason: str) -> BatchResult:
    """Unfinished items become 'cancelled' with `reason`; fill in the result."""
    items = result.plan.items
    result.records = [r if r is not None else
                      FileRecord(str(items[k].input), str(items[k].output), "cancelled", reason)
                      for k, r in enumerate(records)]
    result.seconds = time.perf_counter() - t_start
    return result
