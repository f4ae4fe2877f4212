"""Carry out a batch plan: workers on devices, files handed out as they finish, a record each.

Workers: `jobs` per device (`parse_devices`). The dispatcher gives each worker at most
IN_FLIGHT files and the next as each one finishes, so faster devices take more. Every planned
file ends with one record, whatever happens (bar a SIGKILL); `on_record` sees each as soon as it
is final. Stopping: when `stop` is set (the CLI sets it on Ctrl-C) workers abandon the file being
computed at its next chunk, finish writing what is already computed, and return.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
import warnings
from collections import Counter, deque
from typing import Any, Callable

import torch

from liif_cli.errors import LiifError, LiifWarning, UsageError
from liif_cli.io.images import DEFAULT_MAX_INPUT_PIXELS, check_quality
from liif_cli.model import SRModel
from liif_cli.runtime.device import precision_name, resolve_device, resolve_precision
from liif_cli.runtime.sizing import DEFAULT_MAX_OUTPUT_PIXELS, SizeRequest
from liif_cli.runtime.weights import card_or_class, check_denoise_model, load_model
from liif_cli.tasks.batch.plan import BatchPlan, remove_stale_temps
from liif_cli.tasks.batch.report import BatchEvent, BatchResult, EventFn, FileRecord
from liif_cli.tasks.batch.worker import POLL_S, _process_main, _thread_main, _Worker, _WorkerConfig

IN_FLIGHT = 4  # files handed to a worker at once: decoding, decoded, computing, writing

JOIN_TIMEOUT_S = 30.0  # s to wait for a stopping worker process before killing it
CRASH_GRACE_S = 2.0  # s a dead worker process gets for its last messages to arrive
FAIL_FAST_REASON = "stopped after the first failure (--fail-fast)"



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
        if not n:
            warnings.warn(f"--device all: no CUDA GPU here, so it runs on the {devices[0]}",
                          LiifWarning, stacklevel=2)
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


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_batch(plan: BatchPlan, model: SRModel | str | os.PathLike | None = None, *,
              size: SizeRequest, max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
              devices: str = "auto", jobs: int = 1, precision: str = "auto",
              max_memory: int | None = None, quality: int = 95,
              max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS, fail_fast: bool = False,
              stop: threading.Event | None = None, on_event: EventFn | None = None,
              on_record: Callable[[FileRecord], None] | None = None,
              denoise: float | None = None) -> BatchResult:
    """Carry out a plan: every item ends with a record, whatever happens (bar a SIGKILL).

    `devices` as for `parse_devices`; `jobs` workers per device. Returns early, with the
    unstarted files cancelled, when `stop` is set or (fail_fast) a file fails. A
    KeyboardInterrupt here (e.g. a second Ctrl-C) kills the workers at once and still returns.
    `on_record` gets each item's record once, in this thread, as soon as it is final (planned
    skips and failures first, cancellations last), e.g. `JsonlReport.write`. `denoise`: a
    bundled pair's weights blended at that strength (`weights.load_model`), once, here.
    """
    t_start = time.perf_counter()
    if not isinstance(size, SizeRequest):  # else every file failed as an internal error
        raise UsageError(f"size is a {type(size).__name__}: give a SizeRequest, e.g. "
                         "liif_cli.runtime.sizing.size_request(scale=2)")
    check_quality(quality)
    emit = on_event or (lambda e: None)
    record = on_record or (lambda r: None)
    stop = stop or threading.Event()
    devs, loaded, precisions = _check_devices_and_load(devices, jobs, precision, model, denoise)
    names = worker_names(devs)
    records, todo = _planned_records(plan, record)
    result = BatchResult(plan, [], 0.0, card_or_class(loaded).name, names)
    result.removed_temps = remove_stale_temps(plan)
    emit(BatchEvent("start", 0, len(todo), message=", ".join(names)))
    if fail_fast and plan.count("fail"):
        result.stopped_early = True
        return _finish(result, records, t_start, FAIL_FAST_REASON, record)
    if not todo:
        return _finish(result, records, t_start, "", record)

    run = _Dispatch(plan, result, records, todo, names, threaded=len(devs) == 1,
                    fail_fast=fail_fast, emit=emit, record=record)
    try:
        run.start_workers(devs, loaded, size=size, max_output_pixels=max_output_pixels,
                          precisions=precisions, max_memory=max_memory, quality=quality,
                          max_input_pixels=max_input_pixels)
        run.collect(stop)
    except KeyboardInterrupt:  # asked twice: stop now, losing only unwritten work
        run.kill()
    finally:
        run.join()
    result.interrupted = stop.is_set() or run.todo_reason == "interrupted"
    result.signal = getattr(stop, "signum", None)
    run.fail_unrun()
    return _finish(result, records, t_start, run.todo_reason, record)


def _check_devices_and_load(devices: str, jobs: int, precision: str,
                            model: SRModel | str | os.PathLike | None, denoise: float | None
                            ) -> tuple[list[torch.device], SRModel, dict[torch.device, str]]:
    """One device per worker, the model loaded, and the precision each device computes in
    (resolved once: a usage error or a fallback note comes here, not from every worker)."""
    devs = parse_devices(devices, jobs=jobs)
    # fp16 on a CPU etc.: a usage error before any work; a bf16 fallback noted once, here
    names = {d: precision_name(resolve_precision(precision, d)) for d in set(devs)}
    if isinstance(model, SRModel):
        check_denoise_model(model, denoise)
        return devs, model, names
    # on the CPU: the workers take it from here, each to its own device
    return devs, load_model(model, device="cpu", denoise=denoise), names



def _planned_records(plan: BatchPlan, record: Callable[[FileRecord], None]
                     ) -> tuple[list[FileRecord | None], deque[int]]:
    """(a record slot per item, the plan's skips and failures filled in; items to upscale)."""
    records: list[FileRecord | None] = [None] * len(plan.items)
    todo: deque[int] = deque()
    for k, item in enumerate(plan.items):
        if item.action == "upscale":
            todo.append(k)
        else:
            status = "skipped" if item.action == "skip" else "failed"
            records[k] = FileRecord(str(item.input), str(item.output), status, item.reason)
            record(records[k])
    return records, todo


class _Dispatch:
    """The dispatcher's side of a run: workers, what each holds, and every file's record.

    All of it runs in `run_batch`'s thread: workers talk to it only through `results`.
    """

    def __init__(self, plan: BatchPlan, result: BatchResult, records: list[FileRecord | None],
                 todo: deque[int], names: list[str], *, threaded: bool, fail_fast: bool,
                 emit: EventFn, record: Callable[[FileRecord], None]):
        self.plan, self.result, self.records, self.todo = plan, result, records, todo
        self.fail_fast, self.emit, self.record = fail_fast, emit, record
        self.threaded = threaded  # one worker: threads in this process, no start-up cost
        self.ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
        # messages from all workers
        self.results = queue.Queue() if threaded else self.ctx.Queue()
        self.halt = threading.Event() if threaded else self.ctx.Event()  # tells workers to stop
        self.total, self.done = len(todo), 0
        self.task_qs: dict[str, Any] = {}
        self.procs: dict[str, Any] = {}
        self.live, self.closed = set(names), set()
        self.in_flight: dict[str, set[int]] = {n: set() for n in names}
        self.fatal: dict[str, str] = {}
        self.exited_at: dict[str, float] = {}  # when a process was first seen dead, silent
        # worker -> (output pixels done, total) of its file
        self.partial: dict[str, tuple[int, int]] = {}
        self.stopping, self.todo_reason = False, ""

    # -- start and feed

    def start_workers(self, devs: list[torch.device], loaded: SRModel, *,
                      size: SizeRequest, max_output_pixels: int,
                      precisions: dict[torch.device, str],
                      max_memory: int, quality: int, max_input_pixels: int) -> None:
        """A worker per device (a thread, or spawned processes), each given its first files."""
        threaded, ctx = self.threaded, self.ctx
        path = card_or_class(loaded).path
        model_ref: str | SRModel = str(path) if path is not None else loaded
        for name, dev in zip(self.result.workers, devs):
            self.task_qs[name] = queue.Queue() if threaded else ctx.Queue()
            cfg = _WorkerConfig(name, str(dev), size, max_output_pixels, precisions[dev],
                                max_memory,
                                quality, self.plan.overwrite, max_input_pixels,
                                None if threaded else max(1, _cpu_count() // len(devs)),
                                sharers=devs.count(dev))
            if threaded:
                w = _Worker(cfg, loaded, self.task_qs[name], self.results, self.halt)
                threading.Thread(target=_thread_main, args=(w,), daemon=True,
                                 name=f"liif-worker-{name}").start()
            else:
                self.procs[name] = ctx.Process(
                    target=_process_main, name=f"liif-worker-{name}",
                    args=(cfg, model_ref, self.task_qs[name], self.results, self.halt,
                          os.getpid()), daemon=True)
                self.procs[name].start()
            self.feed(name)

    def feed(self, name: str) -> None:
        """Top the worker up to IN_FLIGHT files; close its queue when nothing is left."""
        if name in self.closed or name not in self.live:
            return
        while self.todo and not self.stopping and len(self.in_flight[name]) < IN_FLIGHT:
            k = self.todo.popleft()
            item = self.plan.items[k]
            self.task_qs[name].put((k, str(item.input), str(item.output)))
            self.in_flight[name].add(k)
        if not self.todo or self.stopping:
            self.task_qs[name].put(None)
            self.closed.add(name)

    # -- collect

    def collect(self, stop: threading.Event) -> None:
        """Take the workers' messages until none is left; `stop` set: begin stopping."""
        while self.live:
            if stop.is_set():
                self.begin_stop("interrupted")
            try:
                msg = self.results.get(timeout=POLL_S)
            except queue.Empty:
                self.check_processes()
                continue
            self.handle(msg)

    def handle(self, msg: tuple) -> None:
        """One message of a worker (see `_Worker`)."""
        kind = msg[0]
        if kind == "record":
            k, rec = msg[1], msg[2]
            self.in_flight[rec.worker].discard(k)
            self.finish(k, rec)
            if rec.status == "failed" and self.fail_fast:
                self.result.stopped_early = True
                self.begin_stop(FAIL_FAST_REASON)
            self.feed(rec.worker)
        elif kind == "progress":
            if not self.stopping:
                self.partial[msg[1]] = (msg[2], max(1, msg[3]))
                self.event("progress")
        elif kind == "ready":
            self.event("worker", message=f"{msg[1]}: {msg[2]}")
        elif kind == "fatal":
            self.fatal[msg[1]] = msg[2]
            self.event("worker", message=f"{msg[1]} failed: {msg[2]}")
        elif kind == "exit" and msg[1] in self.live:
            self.worker_gone(msg[1], crashed=False)
        elif kind == "note":  # a worker process's warning, said here as the others are
            warnings.warn(msg[1], LiifWarning, stacklevel=2)

    def check_processes(self) -> None:
        """A worker process that died without saying so has crashed."""
        now = time.monotonic()
        for name in sorted(self.live):
            if name in self.procs and self.procs[name].exitcode is not None:
                # a clean exit's last messages may still be in the pipe: wait a little
                if now - self.exited_at.setdefault(name, now) > CRASH_GRACE_S:
                    self.worker_gone(name, crashed=True)

    def event(self, kind: str, **kw) -> None:
        partial = self.partial.values()
        self.emit(BatchEvent(kind, self.done, self.total, partial=sum(d / t for d, t in partial),
                             partial_megapixels=sum(d for d, _ in partial) / 1e6, **kw))

    def finish(self, k: int, rec: FileRecord) -> None:
        if self.records[k] is None:
            self.records[k] = rec
            self.record(rec)
            self.done += 1
            self.partial.pop(rec.worker, None)
            self.event("file", record=rec)

    def begin_stop(self, reason: str) -> None:
        if not self.stopping:
            self.stopping, self.todo_reason = True, reason
            self.halt.set()
            for name in sorted(self.live):
                self.feed(name)  # closes it
            self.event("stopping", message=reason)

    def worker_gone(self, name: str, crashed: bool) -> None:
        self.live.discard(name)
        self.partial.pop(name, None)
        lost, self.in_flight[name] = sorted(self.in_flight[name]), set()
        if not crashed:  # it failed to start and never ran them: the others take them over
            self.todo.extendleft(reversed(lost))
            for other in sorted(self.live):
                self.feed(other)
            return
        for k in lost:
            item = self.plan.items[k]
            self.finish(k, FileRecord(str(item.input), str(item.output), "failed",
                                      f"worker {name} died (exit code "
                                      f"{self.procs[name].exitcode}) while this file was in "
                                      "progress", worker=name))

    # -- finish

    def kill(self) -> None:
        """Stop now: kill the worker processes, close every queue."""
        self.stopping, self.todo_reason = True, "interrupted"
        self.halt.set()
        for p in self.procs.values():
            p.kill()
        for q in self.task_qs.values():
            q.put(None)

    def join(self) -> None:
        for p in self.procs.values():
            p.join(JOIN_TIMEOUT_S)
            if p.is_alive():
                p.kill()
        if not self.threaded:  # never block our exit on data for a worker that is gone
            for q in [*self.task_qs.values(), self.results]:
                q.cancel_join_thread()

    def fail_unrun(self) -> None:
        """Files left with no worker to run them fail, saying why (all workers failed)."""
        if not (self.todo and not self.stopping and self.fatal):
            return
        why = "; ".join(f"{n}: {m}" for n, m in sorted(self.fatal.items()))
        if not any(r is not None and r.status == "done" for r in self.records) \
                and self.done == 0:
            raise LiifError(f"no worker could start ({why})")
        for k in self.todo:
            item = self.plan.items[k]
            self.finish(k, FileRecord(str(item.input), str(item.output), "failed",
                                      f"not processed: workers failed ({why})"))


def _finish(result: BatchResult, records: list[FileRecord | None], t_start: float,
            reason: str, on_record: Callable[[FileRecord], None]) -> BatchResult:
    """Unfinished items become 'cancelled' with `reason`; fill in the result."""
    items = result.plan.items
    for k, r in enumerate(records):
        if r is None:
            records[k] = FileRecord(str(items[k].input), str(items[k].output), "cancelled",
                                    reason)
            on_record(records[k])
    result.records = list(records)
    result.seconds = time.perf_counter() - t_start
    return result
