"""`liif batch`: every image in a folder, resumable, sharded (`tasks.batch`); and `--summary`,
the merged table of many runs' reports. The exit code is the result's (`BatchResult.exit_code`,
`ReportSummary.exit_code`)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer

from liif_cli.cli import displays
from liif_cli.cli.options import (
    DEFAULT_MAX_INPUT_PIXELS,
    DEFAULT_MAX_MEMORY,
    DEFAULT_MAX_OUTPUT_PIXELS,
    DEFAULT_QUALITY,
    DenoiseOpt,
    DevicesOpt,
    FitOpt,
    HeightOpt,
    MaxInOpt,
    MaxMemoryOpt,
    MaxOutOpt,
    ModelOpt,
    OverwriteOpt,
    PrecisionOpt,
    QualityOpt,
    QuietOpt,
    ScaleOpt,
    SizeOpt,
    WidthOpt,
    check_options,
    model_for_denoise,
    own_the_process,
    parse_bytes,
)
from liif_cli.errors import EXIT_FAILURE, UsageError

CONTEXT = {"allow_extra_args": True}  # --summary r1.jsonl r2.jsonl r3…
DirArg = Annotated[Optional[Path], typer.Argument(
    help="Folder of images.", show_default=False, metavar="INPUT_DIR")]
OutDirArg = Annotated[Optional[Path], typer.Argument(
    help="Folder for the results (created if missing); mirrors the input tree.",
    show_default=False, metavar="OUTPUT_DIR")]
RecursiveOpt = Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.")]
GlobOpt = Annotated[Optional[str], typer.Option(
    help="Only names matching this pattern, e.g. '*.jpg' (case-insensitive; with a / it matches "
    "the path under INPUT_DIR).")]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="png, jpg, webp, tiff, bmp, or "
                                        "same as each input (png for formats we cannot write).")]
SuffixOpt = Annotated[str, typer.Option(help="Added to output names, e.g. _x4. Needed when "
                                        "OUTPUT_DIR is INPUT_DIR.")]
JobsOpt = Annotated[int, typer.Option("--jobs", "-j", min=1, help="Workers per device; on the "
                                      "CPU, processes sharing its cores.")]
ShardOpt = Annotated[Optional[str], typer.Option(
    help="Do only part I of N (1/4 … 4/4), e.g. one per machine; parts never overlap. auto: "
    "from the job engine (Slurm array, srun, torchrun, Kubernetes Indexed Job).")]
ShardsOpt = Annotated[Optional[int], typer.Option(
    help="With --shard auto in a Kubernetes Indexed Job: its completions (or set "
    "LIIF_SHARD_COUNT).")]
FilesFromOpt = Annotated[Optional[str], typer.Option(
    help="Do the paths listed in this file (- for stdin), relative to INPUT_DIR, one per line "
    "(or NUL-separated), instead of walking INPUT_DIR.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the plan; change nothing.")]
FailFastOpt = Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failure.")]
ReportOpt = Annotated[Optional[Path], typer.Option(
    help="Record each file (input, output, status, reason, seconds …): FILE.jsonl gets a line as "
    "each file ends (appended); FILE.json one document at the end.")]
SummaryOpt = Annotated[bool, typer.Option(
    "--summary", help="Print the merged table of the reports given instead of folders: "
    "liif batch --summary r*.jsonl.")]


def batch(
    ctx: typer.Context, input_dir: DirArg = None, output_dir: OutDirArg = None,
    scale: ScaleOpt = None, size: SizeOpt = None, width: WidthOpt = None,
    height: HeightOpt = None, fit: FitOpt = None, recursive: RecursiveOpt = False,
    glob: GlobOpt = None, fmt: FormatOpt = "same", suffix: SuffixOpt = "",
    overwrite: OverwriteOpt = False, model: ModelOpt = None, device: DevicesOpt = "auto",
    jobs: JobsOpt = 1, precision: PrecisionOpt = "auto",
    max_memory: MaxMemoryOpt = DEFAULT_MAX_MEMORY, shard: ShardOpt = None,
    shards: ShardsOpt = None, files_from: FilesFromOpt = None, dry_run: DryRunOpt = False,
    fail_fast: FailFastOpt = False, report: ReportOpt = None, summary: SummaryOpt = False,
    quiet: QuietOpt = False, quality: QualityOpt = DEFAULT_QUALITY,
    max_output_pixels: MaxOutOpt = DEFAULT_MAX_OUTPUT_PIXELS,
    max_input_pixels: MaxInOpt = DEFAULT_MAX_INPUT_PIXELS, denoise: DenoiseOpt = None,
):
    """Upscale every image in a folder; run it again to resume. Exit 1 if any file failed.

    Example: liif batch photos/ big/ --scale 4 --recursive --report big.json
    """
    paths = [p for p in (input_dir, output_dir, *map(Path, ctx.args)) if p is not None]
    if summary:
        return _summary(paths)
    if len(paths) != 2:
        raise UsageError("liif batch takes INPUT_DIR and OUTPUT_DIR" + (
            f" (got {len(paths)} paths; --summary reads reports)" if len(paths) > 2 else ""))
    sizes = dict(scale=scale, size=size, width=width, height=height, fit=fit)
    check_options(precision=precision, device=device, denoise=denoise, sizes=sizes)
    budget = parse_bytes(max_memory)
    own_the_process()
    from liif_cli.runtime.sizing import size_request
    from liif_cli.tasks.batch import plan_batch, read_file_list, resolve_shard

    part = resolve_shard(shard, count=shards)
    if part.auto:  # the run's first line (even with --quiet: it belongs in a task's log)
        displays.console.print(f"shard {part.index}/{part.count} from {part.found}",
                               markup=False, soft_wrap=True)
    spec = size_request(**sizes)
    if denoise is not None:  # the task blends the pair; a LIIF_MODEL may give way to it
        model = model_for_denoise(model)
    if report is not None and report.is_dir():
        raise UsageError(f"--report {report} is a folder; give a file name, e.g. "
                         f"{report / 'report.jsonl'}")
    if report is not None and not report.parent.is_dir() and not _inside(report.parent,
                                                                         paths[1]):
        raise UsageError(f"--report folder does not exist: {report.parent}")
    listed = None if files_from is None else read_file_list(files_from)
    plan = plan_batch(paths[0], paths[1], recursive=recursive, pattern=glob, fmt=fmt,
                      suffix=suffix, overwrite=overwrite, shard=part.shard, files=listed)
    if dry_run:
        return displays.batch_plan(plan)
    if report is not None:  # e.g. big/report.json, in an OUTPUT_DIR this run makes
        try:
            report.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot make the --report folder {report.parent}: "
                             f"{e.strerror or e}") from None
    _run(plan, model, report=report, quiet=quiet, recursive=recursive, fail_fast=fail_fast,
         size=spec, max_output_pixels=max_output_pixels, devices=device, jobs=jobs,
         precision=precision, max_memory=budget, quality=quality,
         max_input_pixels=max_input_pixels, denoise=denoise)


def _inside(folder: Path, output_dir: Path) -> bool:
    """Whether `folder` is OUTPUT_DIR or under it (made by the run if missing)."""
    folder, output_dir = folder.resolve(), output_dir.resolve()
    return folder == output_dir or output_dir in folder.parents


def _run(plan, model, *, report: Path | None, quiet: bool, recursive: bool, **options) -> None:
    """Carry out the plan with a display and a report; exit with the result's code."""
    from liif_cli.tasks.batch import JsonlReport, is_jsonl, run_batch, write_report

    if not plan.items and not quiet:
        hint = "" if recursive else " (add --recursive for subfolders)"
        displays.console.print(f"no images to do in {plan.input_dir}{hint}", style="yellow",
                               markup=False)
    for item in plan.items:  # failures the plan found from names alone (even when quiet)
        if item.action == "fail":
            displays.failure_line(str(item.input), item.reason)
    stream = JsonlReport(report, shard=plan.shard) if report and is_jsonl(report) else None
    with _stop_on_signals() as stop, displays.batch_display(quiet) as on_event, \
            _closing(stream):
        res = run_batch(plan, model, stop=stop, on_event=on_event,
                        on_record=stream.write if stream else None, **options)
    if stream is not None and stream.error:
        displays.error_line(f"{stream.error} ({stream.lost} record(s) not written)")
    elif report is not None and stream is None:
        write_report(res, report)
    if not quiet:
        displays.batch_summary(res)
    if res.interrupted:
        displays.console.print(f"[yellow]interrupted:[/] {res.count('cancelled')} file(s) not "
                               "done; run the same command again to resume")
    lost_records = EXIT_FAILURE if stream is not None and stream.error else 0
    raise typer.Exit(res.exit_code or lost_records)


def _summary(paths: list[Path]) -> None:
    """`liif batch --summary r*.jsonl`: reports of many tasks as one table; exit 1 while a file
    is still failed or cancelled (it failed, or no run has finished it)."""
    import glob as globbing

    from liif_cli.tasks.batch import summarize_reports

    files: list[str] = []
    for p in paths:  # patterns the shell left alone (quoted, or matching nothing) are ours
        matches = sorted(globbing.glob(str(p))) if not p.exists() and globbing.has_magic(
            str(p)) else [str(p)]
        if not matches:
            raise UsageError(f"--summary: no report matches {p}")
        files.extend(matches)
    res = summarize_reports(files)
    displays.reports_summary(res)
    raise typer.Exit(res.exit_code)


class SignalStop(threading.Event):
    """Set by the first Ctrl-C or SIGTERM; `signum` says which (the result's exit code)."""

    signum: int | None = None


@contextmanager
def _stop_on_signals() -> Iterator[SignalStop]:
    """The first Ctrl-C (or SIGTERM) sets the event to stop cleanly; a second one stops now."""
    stop = SignalStop()

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.signum = signum
        stop.set()

    from liif_cli.runtime.process import on_stop_signals

    with on_stop_signals(handler):  # the main thread's (a thread's run has none)
        yield stop


@contextmanager
def _closing(thing) -> Iterator:
    try:
        yield thing
    finally:
        if thing is not None:
            thing.close()
