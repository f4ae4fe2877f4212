"""The plan of a batch: each input named, its output named, what to do with it; names only.

A plan maps each image under INPUT_DIR (hidden files and folders ignored; `recursive` descends)
to OUTPUT_DIR/<same relative folder>/<stem><suffix><ext>, in order of relative POSIX path. Each
item's action is "upscale", "skip" (output exists and no overwrite) or "fail" (e.g. two inputs
would write one output). Files are only *named* here, never decoded. `files` (`--files-from`)
replaces the walk with a list of relative paths; a list and a walk of the same files are sharded
alike. Temporaries of killed runs (`files.temp_target` recognises their names) are found here
and deleted before a run starts.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

from liif_cli.errors import ImageReadError, UsageError
from liif_cli.io.files import (
    check_folder_makeable,
    folds_case,
    matches_pattern,
    path_order,
    scan_images,
    temp_target,
)
from liif_cli.io.formats import FORMAT_NAMES, format_suffix, is_image_name, same_format_suffix
from liif_cli.tasks.batch.shard import shard_of

SAME_FORMAT = "same"  # --format same: each input's own format (`formats.same_format_suffix`)


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
    """The output suffix of input `rel` for --format `fmt`: any format `liif upscale` writes
    (`formats.format_suffix`), or "same"."""
    if fmt == SAME_FORMAT:
        return same_format_suffix(rel)
    ext = format_suffix(fmt)
    if ext is None:
        raise UsageError(f"unknown --format {fmt!r}: use {FORMAT_NAMES} or {SAME_FORMAT}")
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
    check_folder_makeable(output_dir, "the output folder", "OUTPUT_DIR")
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
    # output rel (casefolded where the output folder ignores case) -> first input writing it
    fold = folds_case(output_dir)
    writer_of: dict[str, str] = {}
    items, other = [], 0
    for rel in rels:
        o = outs[rel]
        first = writer_of.setdefault(o.casefold() if fold else o, rel)
        if n > 1 and shard_of(rel, n) != i:  # before any stat: other shards' files cost nothing
            other += 1
            continue
        src, dst = input_dir / rel, output_dir / o
        victim = inputs.get(out_res / o)
        if first != rel:  # a --suffix goes on both names: only the formats can differ
            apart = (fmt != SAME_FORMAT
                     and output_ext(rel, SAME_FORMAT) != output_ext(first, SAME_FORMAT))
            case = "" if outs[first] == o else f" (as {outs[first]}: this folder ignores case)"
            action, reason = "fail", (f"same output {dst} as {input_dir / first}{case}; " + (
                "use --format same to keep each input's format, or rename one" if apart else
                "rename one, or leave one out with --glob"))
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


def remove_stale_temps(plan: BatchPlan) -> int:
    removed = 0
    for p in plan.stale_temps:
        try:
            p.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed
