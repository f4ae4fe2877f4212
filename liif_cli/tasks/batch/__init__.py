"""Upscale whole folders: plan, resume, shard, spread over devices, report every file.

One module per job, siblings in the order data flows:
- `shard`: which files this process does (`--shard I/N`, `--shard auto` from Slurm, torchrun
  or a Kubernetes Indexed Job); a file's shard depends on its relative path alone.
- `plan`: every input and output named, what to do with each (upscale, skip, fail); names only.
- `worker`: decode ahead, compute through one `Upscaler`, write behind (atomic writes); a
  file's exception becomes its record's reason through `errors.describe`, as in the CLI.
- `dispatch`: `run_batch`, workers on devices (threads or spawned processes), files handed out
  as each finishes, a record for every planned file whatever happens (bar a SIGKILL).
- `report`: records, results, JSON-lines reports and their merging (`--summary`).

Import from here: `from liif_cli.tasks.batch import plan_batch, run_batch`.
"""

from liif_cli.tasks.batch.dispatch import (
    CRASH_GRACE_S,
    FAIL_FAST_REASON,
    IN_FLIGHT,
    JOIN_TIMEOUT_S,
    parse_devices,
    run_batch,
    worker_names,
)
from liif_cli.tasks.batch.plan import (
    SAME_FORMAT,
    BatchPlan,
    PlanItem,
    discover,
    find_stale_temps,
    listed_files,
    output_ext,
    plan_batch,
    read_file_list,
    remove_stale_temps,
)
from liif_cli.tasks.batch.report import (
    STATUS_RANK,
    STATUSES,
    BatchEvent,
    BatchResult,
    EventFn,
    FileRecord,
    JsonlReport,
    ReportSummary,
    is_jsonl,
    record_line,
    summarize_reports,
    summary_totals,
    write_report,
)
from liif_cli.tasks.batch.shard import (
    SHARD_COUNT_ENV,
    SHARD_ENV_NAMES,
    ShardSource,
    detect_shard,
    parse_shard,
    resolve_shard,
    shard_of,
)
from liif_cli.tasks.batch.worker import DECODE_THREADS, POLL_S, PROGRESS_S

__all__ = [
    "CRASH_GRACE_S", "DECODE_THREADS", "FAIL_FAST_REASON", "IN_FLIGHT",
    "JOIN_TIMEOUT_S", "POLL_S", "PROGRESS_S", "SAME_FORMAT", "SHARD_COUNT_ENV",
    "SHARD_ENV_NAMES", "STATUSES", "STATUS_RANK", "BatchEvent", "BatchPlan", "BatchResult",
    "EventFn", "FileRecord", "JsonlReport", "PlanItem", "ReportSummary", "ShardSource",
    "detect_shard", "discover", "find_stale_temps", "is_jsonl",
    "listed_files", "output_ext", "parse_devices", "parse_shard", "plan_batch", "read_file_list",
    "record_line", "remove_stale_temps", "resolve_shard", "run_batch", "shard_of",
    "summarize_reports", "summary_totals", "worker_names", "write_report",
]
