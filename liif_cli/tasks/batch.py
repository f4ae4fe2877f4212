"""Upscale whole folders: plan, resume, shard, spread over devices, report every file.

Conventions:
- A *plan* maps each image under INPUT_DIR (hidden files and folders ignored; `recursive`
  descends) to OUTPUT_DIR/<same relative folder>/<stem><suffix><ext>, in order of relative POSIX
  path. Each item's action is "upscale", "skip" (output exists and no overwrite) or "fail"
  (e.g. two inputs would write one output). Files are only *named* here, never decoded.
- Sharding: a file belongs to shard 1 + (sha256 of its NFC relative path mod N). That depends on
  the file's own name only, so N machines agree with no coordination, on any OS and Python, and
  adding files to the folder never moves the others to another shard. `--shard auto` reads
  I and N from the job engine (`detect_shard`: Slurm array × srun/torchrun ranks, or a
  Kubernetes Indexed Job). `files` (`--files-from`) replaces the walk with a list of relative
  paths; a list and a walk of the same files are sharded alike.
- Workers: `jobs` per device. A single worker runs inside this process (threads); more run as
  spawned processes, each loading the model once; each worker renders through one `Upscaler`
  (its decoder built once, not per file). The dispatcher gives each worker at most
  IN_FLIGHT files and the next as each one finishes, so faster devices take more. Inside a
  worker, DECODE_THREADS decode ahead of the model and one writer thread encodes behind it.
- Files: outputs are written by `imageio.write_image` through `files.atomic_write` (temporary
  `.{name}.XXXXXXXX.part` in the target folder, then link/rename), so any kill leaves only
  whole outputs, plus temporary files that the next run over the same outputs deletes before
  it starts (`find_stale_temps`: names `files.temp_target` recognises).
- Records: every planned file ends with one `FileRecord`, status done / skipped / failed /
  cancelled (not started or abandoned because of Ctrl-C or --fail-fast). A bad file fails alone.
  `on_record` sees each as soon as it is final; `JsonlReport` appends it as one JSON line, so
  a SIGKILL loses no finished file's record. `summarize_reports` merges many tasks' reports.
- Stopping: when `stop` is set (the CLI sets it on Ctrl-C) workers abandon the file being
  computed at its next chunk, finish writing what is already computed, and return.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import unicodedata
import warnings
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Mapping

import torch

from liif_cli import __version__
from liif_cli.errors import (
    EXIT_FAILURE,
    ImageReadError,
    ImageWriteError,
    LiifError,
    UsageError,
    describe,
    signal_exit_code,
)
from liif_cli.io.files import (
    atomic_write_text,
    matches_pattern,
    path_order,
    scan_images,
    temp_target,
)
from liif_cli.io.images import (
    DEFAULT_MAX_INPUT_PIXELS,
    FORMATS,
    is_image_name,
    read_image,
    write_image,
)
from liif_cli.model import LIIF, SRModel
from liif_cli.runtime.device import (
    PrecisionWarning,
    precision_name,
    resolve_device,
    resolve_precision,
)
from liif_cli.runtime.malloc import keep_freed_memory
from liif_cli.runtime.sizing import DEFAULT_MAX_OUTPUT_PIXELS, SizeRequest, target_size
from liif_cli.runtime.upscaler import Upscaler
from liif_cli.runtime.weights import ModelCard, card_of, load_model

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
        raise UsageError(f"bad --shard {text!r}: use I/N, e.g. 1/4 … 4/4, or auto") from None
    if n < 1 or not 1 <= i <= n:
        raise UsageError(f"bad --shard {text!r}: need 1 <= I <= N (shards count from 1)")
    return i, n


# What `--shard auto` reads, outer (one task of a job array) times inner (ranks of one launch).
SHARD_COUNT_ENV = "LIIF_SHARD_COUNT"  # the count for a Kubernetes Indexed Job (its completions)
SHARD_ENV_NAMES = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX", "RANK/WORLD_SIZE",
                   "SLURM_PROCID/SLURM_NTASKS")


@dataclass(frozen=True)
class ShardSource:
    """Which shard this process does, and what said so (for the run's first line)."""

    index: int  # I, counted from 1
    count: int  # N
    found: str  # e.g. "Slurm array task 5 of ids 4-6"
    auto: bool = False  # found by --shard auto (the CLI says so in its first line)

    @property
    def shard(self) -> tuple[int, int]:
        return self.index, self.count


def _env_int(env: Mapping[str, str], name: str, *, needed_for: str) -> int:
    text = env.get(name)
    if text is None or not text.strip():
        raise UsageError(f"--shard auto: {needed_for} is set but {name} is not; give --shard I/N")
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--shard auto: {name}={text!r} is not a whole number") from None


def _array_task(env: Mapping[str, str]) -> tuple[int, int, str]:
    """(0-based index, count, text) of a Slurm array task; ids may start anywhere and step."""
    why = "SLURM_ARRAY_TASK_ID"
    tid = _env_int(env, "SLURM_ARRAY_TASK_ID", needed_for=why)
    lo = _env_int(env, "SLURM_ARRAY_TASK_MIN", needed_for=why)
    count = _env_int(env, "SLURM_ARRAY_TASK_COUNT", needed_for=why)
    step = _env_int(env, "SLURM_ARRAY_TASK_STEP", needed_for=why) \
        if env.get("SLURM_ARRAY_TASK_STEP") else 1
    hi = _env_int(env, "SLURM_ARRAY_TASK_MAX", needed_for=why) \
        if env.get("SLURM_ARRAY_TASK_MAX") else lo + step * (count - 1)
    # a list (--array=1,5,9) or a range with holes cannot be numbered from these alone
    if count < 1 or step < 1 or hi != lo + step * (count - 1):
        raise UsageError(f"--shard auto: Slurm array ids {lo}-{hi} (step {step}) are not "
                         f"{count} evenly spaced ids; submit a range such as --array=0-"
                         f"{count - 1} (a %N limit is fine), or give --shard I/N")
    if (tid - lo) % step or not lo <= tid <= hi:
        raise UsageError(f"--shard auto: Slurm array task id {tid} is not one of "
                         f"{lo}-{hi}:{step}")
    ids = f"{lo}-{hi}" + (f":{step}" if step > 1 else "")
    return (tid - lo) // step, count, f"Slurm array task {tid} of ids {ids}"


def _ranks(env: Mapping[str, str]) -> tuple[int, int, str] | None:
    """(rank, ranks, text) of a multi-process launch: torchrun's RANK/WORLD_SIZE, else srun's.

    A Slurm batch script (SLURM_JOB_ID but no SLURM_STEP_ID) has SLURM_PROCID=0 and the job's
    SLURM_NTASKS without being one of those tasks: there it is one process, rank 0 of 1.
    """
    if env.get("SLURM_JOB_ID") and not env.get("SLURM_STEP_ID") \
            and not env.get("RANK") and env.get("SLURM_PROCID") is not None:
        return 0, 1, f"the batch script of Slurm job {env['SLURM_JOB_ID']} (no array, no srun)"
    for rank, size, who in (("RANK", "WORLD_SIZE", "torchrun"),
                            ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "srun"),
                            ("SLURM_PROCID", "SLURM_NTASKS", "srun")):
        if env.get(rank) is not None and env.get(size) is not None:
            r, n = _env_int(env, rank, needed_for=size), _env_int(env, size, needed_for=rank)
            if n < 1 or not 0 <= r < n:
                raise UsageError(f"--shard auto: {rank}={r} is not a rank of {size}={n}")
            return r, n, f"{who} rank {r} of {n}"
    return None


def detect_shard(env: Mapping[str, str] | None = None, *, count: int | None = None
                 ) -> ShardSource:
    """The shard of this process from what its job engine set, for `--shard auto`.

    Outer: a Slurm array task (SLURM_ARRAY_TASK_ID - MIN, of SLURM_ARRAY_TASK_COUNT) or a
    Kubernetes Indexed Job pod (JOB_COMPLETION_INDEX, of `count` or LIIF_SHARD_COUNT). Inner:
    ranks of one launch (torchrun's RANK/WORLD_SIZE, else srun's SLURM_PROCID of
    SLURM_STEP_NUM_TASKS or SLURM_NTASKS). Both present: each array task's share is split
    among its ranks. `count`, when given, must agree with the total found.
    """
    env = os.environ if env is None else env
    if count is not None and count < 1:
        raise UsageError(f"--shards must be at least 1, got {count}")
    outer: tuple[int, int, str] | None = None
    if env.get("SLURM_ARRAY_TASK_ID"):
        outer = _array_task(env)
    elif env.get("JOB_COMPLETION_INDEX"):
        idx = _env_int(env, "JOB_COMPLETION_INDEX", needed_for="JOB_COMPLETION_INDEX")
        n = count
        if n is None and env.get(SHARD_COUNT_ENV):
            n = _env_int(env, SHARD_COUNT_ENV, needed_for="JOB_COMPLETION_INDEX")
        if n is None:
            raise UsageError("--shard auto: JOB_COMPLETION_INDEX is set (a Kubernetes Indexed "
                             "Job) but not how many pods share the work; give --shards N (the "
                             f"Job's completions) or set {SHARD_COUNT_ENV}")
        if not 0 <= idx < n:
            raise UsageError(f"--shard auto: JOB_COMPLETION_INDEX={idx} is not an index of "
                             f"{n} completions (0 to {n - 1})")
        outer = idx, n, f"Kubernetes Indexed Job index {idx} of {n}"
    inner = _ranks(env)
    if inner is not None and inner[1] == 1 and outer is not None:
        inner = None  # one rank per array task: nothing more to split
    if outer is None and inner is None:
        raise UsageError("--shard auto found no job array or ranks in the environment ("
                         + ", ".join(SHARD_ENV_NAMES) + "); give --shard I/N")
    (o, on, otext), (r, rn, rtext) = outer or (0, 1, ""), inner or (0, 1, "")
    index, total = o * rn + r + 1, on * rn
    if count is not None and count != total:
        raise UsageError(f"--shards {count} does not match the {total} shard(s) found "
                         f"({' × '.join(t for t in (otext, rtext) if t)})")
    return ShardSource(index, total, " × ".join(t for t in (otext, rtext) if t), auto=True)


def resolve_shard(text: str | None, *, count: int | None = None,
                  env: Mapping[str, str] | None = None) -> ShardSource:
    """`--shard` as given: None (all files), 'I/N', or 'auto' (from the environment)."""
    if text is not None and text.strip().lower() == "auto":
        return detect_shard(env, count=count)
    if count is not None:
        raise UsageError("--shards N goes with --shard auto (a Kubernetes Indexed Job's "
                         "completions); with --shard I/N the count is N")
    i, n = parse_shard(text)
    return ShardSource(i, n, "--shard" if text is not None else "")


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


def discover(input_dir: Path, *, recursive: bool = False, pattern: str | None = None,
             exclude: Path | None = None) -> tuple[list[str], int]:
    """Relative paths of the images (`files.scan_images`), and how many other files were
    ignored. `exclude`: a resolved folder not to look in (the output folder inside the input)."""
    try:
        scan = scan_images(input_dir, recursive=recursive, pattern=pattern, exclude=exclude)
    except OSError as e:
        raise ImageReadError(f"cannot list the input folder {input_dir}: {e.strerror}") from None
    return scan.rels, scan.ignored


def read_file_list(source: str | os.PathLike, *, stdin=None) -> list[str]:
    """The paths of a `--files-from` list: one per line, or NUL-separated (`find -print0`);
    '-' reads standard input. Blank lines are skipped; names are otherwise taken as they are."""
    if str(source) == "-":
        text = (stdin or sys.stdin).read()
    else:
        try:
            text = Path(source).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as e:
            raise ImageReadError(f"cannot read --files-from {source}: {e.strerror}") from None
    entries = text.split("\0") if "\0" in text else text.splitlines()
    return [e for e in entries if e.strip()]


def listed_files(input_dir: Path, entries: Iterable[str], *, pattern: str | None = None
                 ) -> list[str]:
    """Sorted, unique relative POSIX paths of a `--files-from` list, each under `input_dir`.

    Entries are relative to INPUT_DIR (a leading ./ is fine) or absolute paths inside it.
    """
    root = input_dir.resolve()
    rels = set()
    for entry in entries:
        p = Path(entry)
        if p.is_absolute():
            for base in (input_dir.absolute(), root):
                try:
                    p = p.relative_to(base)
                    break
                except ValueError:
                    pass
            else:
                raise UsageError(f"--files-from: {entry} is not inside {input_dir}; list paths "
                                 "relative to INPUT_DIR")
        if ".." in p.parts:
            raise UsageError(f"--files-from: {entry} goes outside INPUT_DIR (..); list paths "
                             "relative to INPUT_DIR")
        rel = p.as_posix()
        if rel in ("", "."):
            continue
        if pattern is None or matches_pattern(rel, pattern):
            rels.add(rel)
    return sorted(rels, key=path_order)


def plan_batch(input_dir: str | os.PathLike, output_dir: str | os.PathLike, *,
               recursive: bool = False, pattern: str | None = None, fmt: str = "same",
               suffix: str = "", overwrite: bool = False, shard: tuple[int, int] = (1, 1),
               files: Iterable[str] | None = None) -> BatchPlan:
    """Name every output, decide what to do with each file; reads names only, writes nothing.

    `files`: relative paths to do (a `--files-from` list) instead of walking `input_dir`; a
    listed file that is missing or not an image by name fails, alone.
    """
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
    if files is None:
        rels, ignored = discover(input_dir, recursive=recursive, pattern=pattern,
                                 exclude=exclude)
    else:
        rels, ignored = listed_files(input_dir, files, pattern=pattern), 0

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
        if n > 1 and shard_of(rel, n) != i:  # before any stat: other shards' files cost nothing
            other += 1
            continue
        src, dst = input_dir / rel, output_dir / o
        victim = inputs.get(out_res / o)
        if first != rel:
            action, reason = "fail", (f"same output {dst} as {input_dir / first}; use --format "
                                      "same or a --suffix to tell them apart")
        elif files is not None and not is_image_name(rel):
            action, reason = "fail", (f"{src} is not an image by its name (listed in "
                                      "--files-from)")
        elif files is not None and not src.is_file():
            action, reason = "fail", f"input not found: {src} (listed in --files-from)"
        elif victim is not None:
            action, reason = "fail", (f"output {dst} would replace the input {input_dir / victim}"
                                      "; choose another output folder or a --suffix")
        elif not overwrite and dst.exists():
            action, reason = "skip", "output exists"
        else:
            action, reason = "upscale", ""
        items.append(PlanItem(rel, src, dst, action, reason))
    return BatchPlan(input_dir, output_dir, items, overwrite, (i, n), other, ignored,
                     find_stale_temps(items))


def find_stale_temps(items: list[PlanItem]) -> list[Path]:
    """Temporaries of `atomic_write` for these outputs (left by killed runs), nothing else."""
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
            if temp_target(e.name) in names and e.is_file(follow_symlinks=False):
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
            "counts": {s: self.count(s) for s in STATUSES},
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

STATUS_RANK = {"done": 3, "skipped": 2, "failed": 1, "cancelled": 0}  # which line of a file wins


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
        """1 while any file is failed or cancelled (no run has finished it), else 0."""
        return EXIT_FAILURE if self.count("failed") + self.count("cancelled") else 0


def _megapixels(size) -> float:
    return size[0] * size[1] / 1e6 if size else 0.0


def summarize_reports(paths: Iterable[str | os.PathLike]) -> ReportSummary:
    """Merge `--report` files (JSON lines, or the one-document .json): for each input the best
    status of its lines wins (done > skipped > failed > cancelled), so a file that failed or was
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


# ----------------------------------------------------------------------------------------------
# the worker: decode ahead, compute, write behind

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


class _Cancelled(Exception):
    """Raised from the progress callback to abandon the file being computed."""


Task = tuple[int, str, str]  # (plan index, input path, output path)


def _describe(e: BaseException) -> str:
    """A failed file's reason: the line the CLI would print for the same error."""
    return describe(e)[0]


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
        # one per worker: the model on its device, the decoder built once for all its files
        up = Upscaler(self.model, device=cfg.device, precision=cfg.precision,
                      max_memory=cfg.max_memory)
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
    # run_batch has already told the user (in the parent) about a precision fallback
    warnings.simplefilter("ignore", PrecisionWarning)
    keep_freed_memory()  # the process is the batch's own (see runtime/malloc.py)
    try:
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        model = model_ref if isinstance(model_ref, SRModel) else load_model(model_ref)
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


def run_batch(plan: BatchPlan, model: SRModel | str | os.PathLike | None = None, *,
              size: SizeRequest, max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
              devices: str = "auto", jobs: int = 1, precision: str = "auto",
              max_memory: int | None = None, quality: int = 95,
              max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS, fail_fast: bool = False,
              stop: threading.Event | None = None, on_event: EventFn | None = None,
              on_record: Callable[[FileRecord], None] | None = None) -> BatchResult:
    """Carry out a plan: every item ends with a record, whatever happens (bar a SIGKILL).

    `devices` as for `parse_devices`; `jobs` workers per device. Returns early, with the
    unstarted files cancelled, when `stop` is set (a `signum` attribute on it, as the CLI's
    has, names the signal that set it: the result's exit code) or (fail_fast) a file fails. A
    KeyboardInterrupt here (e.g. a second Ctrl-C) kills the workers at once and still returns.
    `on_record` gets each item's record once, in this thread, as soon as it is final (planned
    skips and failures first, cancellations last), e.g. `JsonlReport.write`.
    """
    t_start = time.perf_counter()
    emit = on_event or (lambda e: None)
    record = on_record or (lambda r: None)
    stop = stop or threading.Event()
    devs, loaded, precisions = _check_devices_and_load(devices, jobs, precision, model)
    names = worker_names(devs)
    records, todo = _planned_records(plan, record)
    result = BatchResult(plan, [], 0.0, _card(loaded).name, names)
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
                            model: SRModel | str | os.PathLike | None
                            ) -> tuple[list[torch.device], SRModel, dict[torch.device, str]]:
    """One device per worker, the model loaded, and the precision each device computes in
    (resolved once: a usage error or a fallback note comes here, not from every worker)."""
    devs = parse_devices(devices, jobs=jobs)
    # fp16 on a CPU etc.: a usage error before any work; a bf16 fallback noted once, here
    names = {d: precision_name(resolve_precision(precision, d)) for d in set(devs)}
    return devs, model if isinstance(model, SRModel) else load_model(model), names


def _card(model: SRModel) -> ModelCard:
    """The model's card; a network built in code is named by its class."""
    return card_of(model) or ModelCard(type(model).__name__.lower(), None)


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
        model_ref: str | SRModel = (str(_card(loaded).path) if _card(loaded).path is not None
                                    else loaded)
        for name, dev in zip(self.result.workers, devs):
            self.task_qs[name] = queue.Queue() if threaded else ctx.Queue()
            cfg = _WorkerConfig(name, str(dev), size, max_output_pixels, precisions[dev],
                                max_memory,
                                quality, self.plan.overwrite, max_input_pixels,
                                None if threaded else max(1, _cpu_count() // len(devs)))
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
