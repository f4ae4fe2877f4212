"""Which files this process does: `--shard I/N` or `--shard auto` (Slurm array × srun/torchrun
ranks, or a Kubernetes Indexed Job), and the shard of each file.

A file belongs to shard 1 + (sha256 of its NFC relative path mod N). That depends on the file's
own name only, so N machines agree with no coordination, on any OS and Python, and adding files
to the folder never moves the others to another shard. Torch-free.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from dataclasses import dataclass
from typing import Mapping

from liif_cli.errors import UsageError
from liif_cli.runtime.process import RANK_VARS


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
    for rank, size, who in RANK_VARS:
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
