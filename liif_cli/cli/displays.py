"""What the commands show: the two consoles, progress bars, and the tables and summaries.

All output goes through `console` (stderr: progress, notes, summaries, errors) or `out` (stdout:
results people may pipe, such as tables and listings). Nothing here decides an exit code.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

# emoji=False: a file named "a:x:b.png" is printed as it is, not with ❌ in it
console = Console(stderr=True, highlight=False, emoji=False)
out = Console(highlight=False, emoji=False)  # results people may pipe: tables, listings
BATCH_COLUMNS = ("status", "files", "input MP", "output MP", "seconds")


def error_line(message: str) -> None:
    """The one red line every error ends in (message printed as is, never as markup)."""
    console.print("[red]error:[/] " + escape(message), soft_wrap=True)


def note_line(message: str) -> None:
    console.print("note: " + escape(message), soft_wrap=True)


def failure_line(input_path: str, reason: str, printer: Console | None = None) -> None:
    """`failed: PATH: REASON` for one file of a batch (the path once, if the reason has it)."""
    text = reason if input_path in reason else f"{input_path}: {reason}"
    (printer or console).print("[red]failed:[/] " + escape(text), soft_wrap=True,
                               highlight=False)


def stage_line(text: str) -> None:
    """A dim line saying what runs now (tracing, a benchmark's stage)."""
    console.print(text, style="dim", markup=False)


@contextmanager
def progress_bar(description: str, *, quiet: bool, unit_scale: float = 1.0) -> Iterator:
    """Yield an `on_progress(done, total)` callback drawing a Rich bar (or None: no bar).

    No bar when stderr is not a terminal (logs, pipes): it would only print blank lines there.
    """
    if quiet or not console.is_terminal:
        yield None
        return
    with _bar_on_first_call(
            (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
             TimeElapsedColumn(), TimeRemainingColumn()), description) as update:
        yield lambda done, total: update(completed=done * unit_scale, total=total * unit_scale)


@contextmanager
def _bar_on_first_call(columns: tuple, description: str, **fields) -> Iterator:
    """Yield `update(**kwargs)` of a transient Rich bar that is drawn from its first call: a
    command refused before any work (stdin or stdout a terminal, a missing file) shows its
    error line alone, not a bar flashed before it."""
    bar, task = None, None

    def update(**kwargs) -> None:
        nonlocal bar, task
        if bar is None:
            bar = Progress(*columns, console=console, transient=True)
            bar.start()
            task = bar.add_task(description, total=None, **fields)
        bar.update(task, **kwargs)

    try:
        yield update
    finally:
        if bar is not None:
            bar.stop()


# ----------------------------------------------------------------------------------------------
# upscale, export, models

def upscale_summary(res) -> None:
    (h, w), (oh, ow) = res.in_hw, res.out_hw
    where = "stdout" if str(res.output) == "-" else res.output
    console.print(f"wrote {where}  {w}×{h} → {ow}×{oh} {res.kind}  model {res.model}  "
                  f"{res.device} {res.precision}  {res.seconds:.1f}s", markup=False,
                  soft_wrap=True)


def export_summary(res) -> None:
    console.print(f"wrote {res.path}  {res.format}  {res.bytes / 2**20:.1f} MiB  model "
                  f"{res.model}  {res.check}  {res.seconds:.1f}s", markup=False, soft_wrap=True)


MODEL_FIELDS = ("name", "source", "arch", "encoder", "params", "trained", "bytes", "path")


def models_table(rows: list[dict], folder) -> None:
    """A table in a terminal; piped, a header line (the field names), then one tab-separated
    row per model. A user file that a bundled name hides gets a note on stderr either way."""
    for r in rows:
        if r["source"] == "user" and r["description"]:
            note_line(f"{r['path']}: {r['description']}")
    if not out.is_terminal:  # scripts: plain rows, easy to cut and grep
        print("\t".join(MODEL_FIELDS))
        for r in rows:
            print("\t".join(str(r[k]) for k in MODEL_FIELDS))
        return
    table = Table(title="LIIF models")
    for col in ("name", "source", "arch", "encoder", "params", "trained", "size", "path"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["source"], r["arch"], r["encoder"], f"{r['params'] / 1e6:.2f}M",
                      r["trained"], f"{r['bytes'] / 2**20:.1f} MiB", str(r["path"]))
    out.print(table)
    out.print(f"User models folder: {folder} (drop official-layout .pth or .safetensors files "
              "here)")


# ----------------------------------------------------------------------------------------------
# train

@contextmanager
def train_display(quiet: bool) -> Iterator:
    """Rich display of training: a bar per epoch with loss, lr, it/s; lines for validations."""
    if quiet:
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                  console=console) as bar:
        task = bar.add_task("starting", total=None, info="")

        def on_event(ev) -> None:
            if ev.kind == "load":  # decoding the training images into memory
                bar.update(task, description="decoding images", completed=ev.iteration,
                           total=ev.iterations, info=f"{ev.iteration}/{ev.iterations}")
            elif ev.kind == "start":
                console.print(ev.message)
            elif ev.kind == "step":
                bar.update(task, description=f"epoch {ev.epoch + 1}", completed=ev.iteration,
                           total=ev.iterations, info=f"loss {ev.loss:.4f} lr {ev.lr:.2e} "
                           f"{ev.its:.2f} it/s")
            elif ev.kind == "val":
                console.print(f"epoch {ev.epoch + 1} validation PSNR: " + "  ".join(
                    f"{k} {v:.2f} dB" for k, v in ev.psnr.items()))

        yield on_event


# ----------------------------------------------------------------------------------------------
# eval

def _cell(psnr: float, ssim: float | None) -> str:
    return f"{psnr:.2f}" + ("" if ssim is None else f" / {ssim:.4f}")


def eval_tables(res, *, bicubic: str | None, ssim: bool, per_image: bool) -> None:
    """The scale × method table (with the gain over `bicubic`, the method's name, if run), and
    with `per_image` one row per image and scale."""
    methods = ([bicubic] if bicubic else []) + [res.model]
    by = {(r.scale, r.method): r for r in res.records}
    degraded = f" · LR degraded: {res.degrade}" if res.degrade != "none" else ""
    table = Table(title=escape(f"{res.dataset} · {res.protocol} · PSNR dB"
                               f"{' / SSIM' if ssim else ''}{degraded}"),
                  caption=f"{res.images} image{'s' if res.images != 1 else ''} · "
                          f"{res.seconds:.1f}s · {res.device} {res.precision}")
    for col in ("scale", "LR", *methods, *(["gain"] if bicubic else [])):
        table.add_column(escape(col), justify="left" if col in ("scale", "LR") else "right")
    for scale in dict.fromkeys(r.scale for r in res.records):
        mine = by[(scale, res.model)]
        row = [f"×{scale:g}", mine.lr] + [_cell(by[(scale, m)].psnr, by[(scale, m)].ssim)
                                          for m in methods]
        if bicubic:
            row.append(f"{mine.psnr - by[(scale, bicubic)].psnr:+.2f}")
        table.add_row(*row)
    out.print(table)
    if not per_image:
        return
    pt = Table(title=escape(f"{res.dataset}: per image"))
    for col in ("image", "scale", *methods):
        pt.add_column(escape(col), justify="left" if col in ("image", "scale") else "right")
    scores = {(s.image, s.scale, s.method): s for s in res.per_image}
    for img, scale in dict.fromkeys((s.image, s.scale) for s in res.per_image):
        pt.add_row(escape(img), f"×{scale:g}", *(_cell(scores[(img, scale, m)].psnr,
                                               scores[(img, scale, m)].ssim) for m in methods))
    out.print(pt)


# ----------------------------------------------------------------------------------------------
# batch

@contextmanager
def batch_display(quiet: bool) -> Iterator:
    """Rich bar over files with MP/s and ETA; failures as lines above it (even when quiet)."""
    def failure(ev, printer) -> None:
        if ev.kind == "file" and ev.record.status == "failed":
            failure_line(ev.record.input, ev.record.reason, printer)

    if quiet:
        yield lambda ev: failure(ev, console)
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=console, transient=True)
    task = bar.add_task("batch", total=None, rate="")
    t0, megapixels = time.perf_counter(), 0.0
    try:
        def on_event(ev) -> None:
            nonlocal t0, megapixels
            if not bar.live.is_started:  # from the first event: an error before it (a
                bar.start()  # device, the model) is its one line, no blank line of a bar
            if ev.kind == "start":
                t0 = time.perf_counter()
                bar.update(task, total=ev.total, description=f"batch on {ev.message}")
            elif ev.kind in ("file", "progress"):
                if ev.kind == "file" and ev.record.status == "done":
                    megapixels += ev.record.out_megapixels
                mp = megapixels + ev.partial_megapixels
                rate = mp / max(time.perf_counter() - t0, 1e-6)
                bar.update(task, completed=ev.done + ev.partial, rate=f"{rate:.2f} MP/s")
                failure(ev, bar.console)
            elif ev.kind == "worker" and " failed: " in ev.message:
                bar.console.print(f"[yellow]worker {ev.message}[/]", soft_wrap=True)
            elif ev.kind == "stopping":
                bar.console.print(f"[yellow]stopping ({ev.message}): finishing outputs being "
                                  "written; Ctrl-C again quits at once[/]")

        yield on_event
    finally:
        if bar.live.is_started:
            bar.stop()


def batch_plan(plan) -> None:
    """`--dry-run`: what would happen to each file, then the counts."""
    for item in plan.items:
        why = f"  ({item.reason})" if item.reason else ""
        out.print(f"{item.action:8} {item.input} → {item.output}{why}", markup=False,
                  soft_wrap=True)
    parts = [f"{plan.count('upscale')} to upscale", f"{plan.count('skip')} skipped (output "
             f"exists)", f"{plan.count('fail')} failing"]
    if plan.shard[1] > 1:
        parts.append(f"{plan.other_shards} in other shards")
    if plan.stale_temps:
        parts.append(f"{len(plan.stale_temps)} stale temporary file(s) to remove")
    if plan.ignored:
        parts.append(f"{plan.ignored} non-image file(s) ignored")
    out.print("dry run: " + ", ".join(parts) + "; nothing written", soft_wrap=True)


def _status_table(title: str, caption: str, totals: dict[str, tuple[int, float, float, float]]
                  ) -> Table:
    """status | files | input MP | output MP | seconds; partial and cancelled only when there
    are any."""
    table = Table(title=escape(title), caption=escape(caption))
    for col in BATCH_COLUMNS:
        table.add_column(col, justify="left" if col == "status" else "right")
    for status, (files, in_mp, out_mp, seconds) in totals.items():
        if files or status not in ("partial", "cancelled"):
            table.add_row(status, str(files), f"{in_mp:.2f}", f"{out_mp:.2f}", f"{seconds:.1f}")
    return table


def batch_summary(res) -> None:
    from liif_cli.tasks.batch import STATUSES

    done_mp = res.megapixels("done")
    caption = (f"{res.seconds:.1f}s · {done_mp / max(res.seconds, 1e-6):.2f} output MP/s · "
               f"model {res.model} on {', '.join(res.workers)}")
    if res.plan.shard[1] > 1:
        caption += f" · shard {res.plan.shard[0]}/{res.plan.shard[1]}"
    if res.removed_temps:
        caption += f" · removed {res.removed_temps} stale temporary file(s)"
    if res.plan.ignored:
        caption += f" · {res.plan.ignored} non-image file(s) ignored"
    totals = {}
    for status in STATUSES:
        rows = [r for r in res.records if r.status == status]
        totals[status] = (len(rows), sum(r.in_megapixels for r in rows),
                          sum(r.out_megapixels for r in rows), sum(r.seconds for r in rows))
    out.print(_status_table(f"liif batch {res.plan.input_dir} → {res.plan.output_dir}",
                            caption, totals))
    if res.stopped_early:
        console.print("[yellow]stopped at the first failure (--fail-fast)[/]")
    if res.failed:
        console.print(f"[red]{len(res.failed)} file(s) failed[/] (named above)")


def reports_summary(res) -> None:
    """`liif batch --summary`: the merged reports as one table, failures named above it."""
    from liif_cli.tasks.batch import STATUSES, summary_totals

    caption = [f"{res.reports} report(s)", f"{res.lines} record(s)", f"{len(res.files)} file(s)"]
    if res.shards:
        caption.append("shards " + ", ".join(res.shards))
    if res.hosts:
        caption.append(f"{len(res.hosts)} host(s)")
    if res.bad_lines:
        caption.append(f"{res.bad_lines} unreadable line(s) skipped")
    totals = {}
    for status in STATUSES:
        rows = res.rows(status)
        t = summary_totals(rows)
        totals[status] = (len(rows), t["in_mp"], t["out_mp"], t["seconds"])
    for rec in res.rows("failed"):
        failure_line(rec["input"], rec.get("reason") or "")
    out.print(_status_table("liif batch reports", " · ".join(caption), totals))
    if res.done_twice:
        console.print(f"[yellow]{len(res.done_twice)} file(s) done more than once[/] "
                      f"(overlapping shards, or reruns with --overwrite), e.g. "
                      f"{escape(res.done_twice[0])}", soft_wrap=True)
    left = res.count("failed") + res.count("cancelled") + res.count("partial")
    if left:
        console.print(f"[red]{left} file(s) not done[/] (failed, cancelled, or a video's "
                      "segments not yet joined); rerun the tasks to resume", soft_wrap=True)


# ----------------------------------------------------------------------------------------------
# bench

def bench_table(report, name: str) -> None:
    from liif_cli.tasks.bench import TABLE_COLUMNS, iter_table

    (h, w), (oh, ow) = report.in_hw, report.out_hw
    yes_no = {True: "yes", False: "no"}
    table = Table(title=escape(f"liif bench: {name}, {w}×{h} → {ow}×{oh}"), box=None,
                  padding=(0, 1), pad_edge=False,
                  caption=f"{report.threads} CPU threads · native CPU bf16: "
                  f"{yes_no[report.cpu_bf16_native]} · fused oneDNN linear: "
                  f"{yes_no[report.fused_linear]} · MiB: peak (CPU: process RSS) +growth")
    for col in TABLE_COLUMNS:
        table.add_column(col, justify="left" if col in ("device", "path", "prec") else "right",
                         header_style="bold", no_wrap=True)
    for row in iter_table(report):
        table.add_row(*row)
    out.print(table)


# ----------------------------------------------------------------------------------------------
# video

@contextmanager
def video_bar(description: str, *, quiet: bool) -> Iterator:
    """Yield an `on_progress(frames done, frames to do)` drawing frames, fps and ETA (or None:
    no bar under --quiet or off a terminal)."""
    if quiet or not console.is_terminal:
        yield None
        return
    with _bar_on_first_call(
            (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
             TextColumn("frames {task.fields[rate]}"), TimeElapsedColumn(),
             TimeRemainingColumn()), description, rate="") as update:
        t0 = time.perf_counter()

        def on_progress(done: int, total: int) -> None:
            rate = done / max(time.perf_counter() - t0, 1e-6)
            update(completed=done, total=total, rate=f"{rate:.2f} fps")

        yield on_progress


def video_summary(res) -> None:
    """One line: what was written (or what is left to other shards), and how fast."""
    info, (oh, ow) = res.info, res.out_hw
    what = (f"wrote {res.output}" if res.joined else
            f"rendered {res.rendered_segments} segment(s) of {res.output.name}; "
            f"{len(res.waiting)} of {res.segments} left to other shards (then liif video "
            "--join)" if res.waiting else f"segments of {res.output.name} done; {res.joiner} "
            "is joining them (if it is not running, rerun with --join)")
    console.print(f"{what}  {info.frames} frames {info.width}×{info.height} → {ow}×{oh}  "
                  f"{res.spec.describe()}  model {res.model}  {res.device} {res.precision}  "
                  f"{res.frames_rendered} rendered in {res.seconds:.1f}s ({res.fps:.2f} fps)"
                  + (f", {res.reused_segments} segment(s) reused" if res.reused_segments
                     else "")
                  + (f", {res.reused_share:.0%} of the picture copied from the frame before"
                     if res.reused_share else ""), markup=False, soft_wrap=True)
