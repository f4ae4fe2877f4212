"""`liif video --report FILE.jsonl`: one line per run, as `liif batch`'s JSON-lines reports
(`tasks.batch.report.JsonlReport`, the same fields, so `liif batch --summary` merges them):
done with the frames and sizes, or failed with the one-line reason (`errors.describe`)."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from liif_cli.errors import describe
from liif_cli.tasks.batch.report import FileRecord, JsonlReport
from liif_cli.tasks.batch.shard import parse_shard


@contextmanager
def reported(report: str | os.PathLike | None, input: Path, output: Path, *,
             shard: str | None = None, shards: int | None = None) -> Iterator[Callable]:
    """Yield `record(result)`; a line is appended to `report` when the block ends: "done"
    after `record` was called, else "failed" (or "cancelled" for Ctrl-C) with the reason."""
    if report is None:
        yield lambda res: None
        return
    t0 = time.perf_counter()
    part = (1, 1) if shard is None or shard.strip().lower() == "auto" else parse_shard(shard)
    rec = FileRecord(str(input), str(output), "failed")

    def record(res) -> None:
        rec.status = "done"
        rec.in_size = (res.info.width, res.info.height)
        rec.out_size = (res.out_hw[1], res.out_hw[0])
        rec.worker = f"{res.device} {res.precision}"
        rec.reason = (f"{res.frames_rendered} frames rendered, {res.info.frames} in the video"
                      + ("" if res.joined else f"; {len(res.waiting)} segments left"))
        nonlocal part
        part = res.shard.shard

    with JsonlReport(report, shard=part) as out:
        try:
            yield record
        except BaseException as e:
            message, _ = describe(e)
            rec.status = "cancelled" if isinstance(e, KeyboardInterrupt) else "failed"
            rec.reason = message
            raise
        finally:
            rec.seconds = time.perf_counter() - t0
            out.shard = part
            out.write(rec)
