"""A batch worker: decode ahead, compute, write behind; one per device (× --jobs).

A single worker runs inside the batch's process (threads); more run as spawned processes, each
loading the model once. Each renders through one `Upscaler` (its decoder built once, not per
file). DECODE_THREADS decode ahead of the model and one writer thread encodes behind it; outputs
go through `imageio.write_image` (temporary name, then rename), so any kill leaves only whole
outputs. When `stop` is set, the file being computed is abandoned at its next chunk and what is
already computed is still written. A bad file fails alone: its exception becomes the record's
reason through `errors.describe`, the line the CLI would print for the same error.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from liif_cli.errors import OutputWriteError, describe
from liif_cli.io.images import read_image, write_image
from liif_cli.model import LIIF, SRModel
from liif_cli.runtime.device import PrecisionWarning, memory_budget, resolve_device
from liif_cli.runtime.malloc import keep_freed_memory
from liif_cli.runtime.process import ignore_stop_signals
from liif_cli.runtime.sizing import SizeRequest, target_size
from liif_cli.runtime.upscaler import Upscaler
from liif_cli.runtime.weights import load_model
from liif_cli.tasks.batch.report import FileRecord

DECODE_THREADS = 2  # images decoded in parallel ahead of the model, per worker

POLL_S = 0.1  # s between checks of the stop flag and of worker health while waiting
PROGRESS_S = 0.5  # s between a worker's reports of progress within a file



@dataclass(frozen=True)
class _WorkerConfig:
    """Everything a worker needs; picklable for spawned processes."""

    name: str
    device: str
    size: SizeRequest  # checked size options (sizing.size_request)
    max_output_pixels: int
    precision: str  # as resolved for this device by run_batch ("fp32", "bf16", "fp16")
    max_memory: int
    quality: int
    overwrite: bool
    max_input_pixels: int
    torch_threads: int | None  # set in spawned processes so workers share the cores
    sharers: int = 1  # workers on this device: a GPU's memory budget is split between them


class _Cancelled(Exception):
    """Raised from the progress callback to abandon the file being computed."""


Task = tuple[int, str, str]  # (plan index, input path, output path)


class _Worker:
    """Runs tasks from `tasks` (a queue; None ends) and puts messages on `results`.

    Messages: ("ready", name, description), ("progress", name, pixels done, pixels),
    ("record", index, FileRecord), ("fatal", name, reason), ("exit", name), and from a worker
    process ("note", text): its warnings, for the parent to say.
    """

    def __init__(self, cfg: _WorkerConfig, model: LIIF, tasks, results, stop,
                 parent_pid: int | None = None):
        self.cfg, self.model, self.tasks, self.results, self.stop = cfg, model, tasks, results, stop
        self.parent_pid = parent_pid
        self.last_progress = 0.0  # time.monotonic() of the last progress message

    def aborted(self) -> bool:
        # a parent gone: re-parented (POSIX), or seen dead (Windows' getppid never changes)
        orphaned = self.parent_pid is not None and (
            os.getppid() != self.parent_pid or not _parent_alive())
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
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # a file in the way, no permission: this file's reason
                raise OutputWriteError(f"cannot make the folder {dst.parent}: "
                                       f"{e.strerror or e}") from None
            write_image(dst, res.image, quality=self.cfg.quality, overwrite=self.cfg.overwrite)
        except Exception as e:
            seconds = spent + time.perf_counter() - t0
            if not self.cfg.overwrite and dst.exists():  # written meanwhile by another run
                self._record(task, "skipped", "output appeared while running (another run?)",
                             seconds=seconds, **sizes)
            else:
                self._record(task, "failed", describe(e)[0], seconds=seconds, **sizes)
            return
        self._record(task, "done", seconds=spent + time.perf_counter() - t0, **sizes)

    def run(self) -> None:
        cfg = self.cfg
        # one per worker: the model on its device, the decoder built once for all its files
        # --jobs N on one GPU: N budgets that add up to what one would get (`memory_budget`)
        dev = resolve_device(cfg.device)
        up = Upscaler(self.model, device=dev, precision=cfg.precision,
                      max_memory=memory_budget(dev, cfg.max_memory, sharers=cfg.sharers))
        self.results.put(("ready", cfg.name, f"{cfg.device} {up.precision}"))
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
                    res = up.upscale_image(image, out_hw, on_progress=self._check)
                    spent += time.perf_counter() - t0
                    del image
                except _Cancelled:
                    self._record(task, "cancelled", "interrupted")
                    continue
                except Exception as e:  # one bad file never stops the batch
                    self._record(task, "failed", describe(e)[0])
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
    ignore_stop_signals()  # sent to the whole group: the parent decides
    # run_batch has already told the user (in the parent) about a precision fallback
    warnings.simplefilter("ignore", PrecisionWarning)

    def forward(message, category, *args, **kwargs) -> None:  # to the parent, said there
        results.put(("note", str(message)))
    warnings.showwarning = forward
    keep_freed_memory()  # the process is the batch's own (see runtime/malloc.py)
    try:
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        model = (model_ref if isinstance(model_ref, SRModel)
                 else load_model(model_ref, device="cpu"))
        _Worker(cfg, model, tasks, results, stop, parent_pid).run()
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which carries on
        results.put(("fatal", cfg.name, describe(e)[0]))
    finally:
        results.put(("exit", cfg.name))


def _thread_main(worker: _Worker) -> None:
    try:
        worker.run()
    except BaseException as e:  # noqa: BLE001
        worker.results.put(("fatal", worker.cfg.name, describe(e)[0]))
    finally:
        worker.results.put(("exit", worker.cfg.name))


def _parent_alive() -> bool:
    """Whether the process that spawned this one still runs (True where it cannot be known)."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    return parent is None or parent.is_alive()
