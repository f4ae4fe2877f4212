"""Files: one atomic writer, one output check, one image discovery, for every task.

Writing (`atomic_write`): a file is made under a temporary name in its destination folder,
`.{name}.XXXXXXXX.part` (8 characters from [a-z0-9_]; `temp_target` recognises these names),
created with the mode the umask gives any new file, and renamed into place when whole. Any
exception in the write, KeyboardInterrupt included, removes the temporary file; only a kill
between writing and renaming leaves one, and `liif batch` deletes those of its outputs before
it starts. Without `overwrite` an existing file is never replaced, not even one that appeared
while the write ran (a hard link is an atomic create-if-absent).

Checking (`check_output_path`): before any work, an output that exists without `overwrite`
(`OutputExistsError`) or cannot be written where it is named (`OutputPathError`): exit 2 for
every command (errors.py). A write that fails later (disk full) is `OutputWriteError`, exit 1.

Discovery (`find_images`, `scan_images`): files whose names say they are images
(`io.formats.READABLE_SUFFIXES`, any case), in order of relative path compared folder by
folder (`a/z.png` before `a-b/a.png`, as sorted `Path`s are), hidden files and folders (name
starting with '.', our temporaries among them) skipped, symlinked folders not followed.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, TypeVar

from liif_cli.errors import OutputExistsError, OutputPathError, OutputWriteError
from liif_cli.io.formats import is_image_name

T = TypeVar("T")

TEMP_SUFFIX = ".part"
TEMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"  # those of CPython's tempfile names
TEMP_RANDOM = 8  # random characters in a temporary name
TEMP_TRIES = 100  # names tried before giving up (a clash is 1 in 37**8 per try)
_TEMP_RE = re.compile(  # ".{name}.{8 of TEMP_CHARS}.part"
    rf"^\.(?P<name>.+)\.[{TEMP_CHARS}]{{{TEMP_RANDOM}}}{re.escape(TEMP_SUFFIX)}$")
NEW_FILE_MODE = 0o666  # what open() asks for; the umask takes its bits away


# ----------------------------------------------------------------------------------------------
# temporary names

def temp_target(name: str) -> str | None:
    """The output name a temporary file of `atomic_write` belongs to, or None for any other
    name: '.photo.png.k1ll3d_0.part' -> 'photo.png'."""
    m = _TEMP_RE.match(name)
    return m["name"] if m else None


def _create_temp(path: Path) -> Path:
    """A new empty file beside `path`, named by the rule above, mode from the umask."""
    parent = path.parent if str(path.parent) else Path(".")
    for _ in range(TEMP_TRIES):
        rand = "".join(secrets.choice(TEMP_CHARS) for _ in range(TEMP_RANDOM))
        tmp = parent / f".{path.name}.{rand}{TEMP_SUFFIX}"
        try:  # O_EXCL: never an existing file; the umask applies as for any new file
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         NEW_FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


# ----------------------------------------------------------------------------------------------
# checking and writing

def check_output_path(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Fail early (before any compute) on an output that must not or cannot be written.

    OutputExistsError if it exists and not `overwrite`; OutputPathError if it is a folder or
    its folder is missing or not writable. Both are exit 2.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"output is a folder: {path}; give a file name")
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"output folder is not writable: {parent}")
    return path


def check_folder_makeable(folder: str | os.PathLike, what: str, option: str) -> Path:
    """Fail early (before any compute) on a folder that is a file, is missing and cannot be
    made, or cannot be written: OutputPathError (exit 2) naming it as `what` ("the run
    folder") and the argument that gave it as `option` ("--out")."""
    folder = Path(folder)
    here = folder
    while not os.path.lexists(here) and here != here.parent:  # the nearest existing ancestor
        here = here.parent
    if not here.is_dir():
        raise OutputPathError(f"cannot make {what} {folder}: {here} is a file, not a folder"
                              if here != folder else f"{option} {folder} is a file, not a folder")
    if not os.access(here, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {what} {folder}: {here} is not writable")
    return folder


def folds_case(folder: str | os.PathLike) -> bool:
    """Whether file names in `folder` (made or not) ignore case, as on macOS's and Windows'
    own file systems, where `A.png` and `a.png` are one file. Looked up on the nearest part of
    its path whose name has letters (`Out` is `oUT` there); with none, the platform's
    default."""
    path = Path(folder).absolute()
    for p in (path, *path.parents):
        if p.name.swapcase() != p.name and os.path.lexists(p):
            try:
                return os.path.samefile(p, p.with_name(p.name.swapcase()))
            except OSError:  # no such name: case matters there
                return False
    return sys.platform in ("darwin", "win32")


def atomic_write(path: str | os.PathLike, write: Callable[[str], T], *,
                 overwrite: bool = False, durable: bool = False) -> T:
    """Make `path` by `write(tmp)`, which writes the whole file to the path `tmp`; returns what
    `write` returns. `durable`: fsync the file and its folder (checkpoints).

    Raises OutputExistsError (without `overwrite`, if `path` exists when the file is ready),
    OutputWriteError for an OSError on the way (disk full, folder gone), and whatever `write`
    raises otherwise; in every case the temporary file is gone and `path` is untouched.
    """
    path = Path(path)
    tmp = None
    try:
        tmp = _create_temp(path)
        mode = os.stat(tmp).st_mode & 0o777
        result = write(str(tmp))
        os.chmod(tmp, mode)  # a writer that made the file anew made it 0600 or so
        if durable:
            _fsync(tmp)
        _publish(tmp, path, overwrite=overwrite)
        if durable:
            _fsync(tmp.parent, folder=True)
        return result
    except OSError as e:
        raise OutputWriteError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp is not None:
            _remove(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Write `data` to `path` atomically (see `atomic_write`); returns the path."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), overwrite=overwrite)
    return Path(path)


def json_text(obj: Any) -> str:
    """`obj` as strict JSON, indented, newline-ended: a float that is not finite (a PSNR of
    identical images) is null, which every parser reads (JSON has no Infinity)."""
    def finite(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(obj), indent=1, allow_nan=False) + "\n"


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False,
                      encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically, newlines as given (no translation); returns the path."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding=encoding, newline="") as f:
            f.write(text)

    atomic_write(path, write, overwrite=overwrite)
    return Path(path)


def _publish(tmp: Path, path: Path, *, overwrite: bool) -> None:
    """Move the finished temporary file into place; never clobber unless overwrite."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic create-if-absent
    except FileExistsError:
        raise OutputExistsError(path) from None
    except OSError:  # filesystems without hard links (FAT, some network mounts)
        if os.path.lexists(path):
            raise OutputExistsError(path) from None
        os.replace(tmp, path)


def _fsync(path: Path, *, folder: bool = False) -> None:
    try:  # a file read-write: Windows' fsync (_commit) refuses a read-only handle
        fd = os.open(path, os.O_RDONLY if folder else os.O_RDWR | getattr(os, "O_BINARY", 0))
    except OSError:
        if folder:  # folders cannot be opened everywhere (Windows): best effort
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not folder:
            raise
    finally:
        os.close(fd)


def _remove(tmp: Path) -> None:
    try:
        tmp.unlink()
    except FileNotFoundError:  # renamed into place
        pass
    except OSError:  # never hide the real error behind a failed clean-up
        pass


# ----------------------------------------------------------------------------------------------
# image discovery

def matches_pattern(rel: str, pattern: str) -> bool:
    """Case-insensitive glob on the file name, or on the relative path if the pattern has a /."""
    target = rel if "/" in pattern else rel.rsplit("/", 1)[-1]
    return fnmatch.fnmatchcase(target.lower(), pattern.lower())


def path_order(rel: str) -> tuple[str, ...]:
    """Sort key of relative POSIX paths: folder by folder, as sorted `Path`s compare."""
    return PurePosixPath(rel).parts


@dataclass(frozen=True)
class ImageScan:
    folder: Path
    rels: list[str]  # relative POSIX paths of the images, in `path_order`
    ignored: int  # other visible files (not images by name)

    @property
    def paths(self) -> list[Path]:
        return [self.folder / rel for rel in self.rels]


def scan_images(folder: str | os.PathLike, *, recursive: bool = False,
                pattern: str | None = None, exclude: Path | None = None) -> ImageScan:
    """The images in `folder` (see the module doc), and how many other files were ignored.

    `pattern`: keep only names (or relative paths, if it has a /) matching this glob, any case.
    `exclude`: a resolved folder not to descend into (e.g. an output folder inside the input).
    Raises OSError if `folder` itself cannot be listed; unreadable subfolders are skipped.
    """
    folder = Path(folder)
    found: list[str] = []
    ignored = 0
    pending = [(folder, "")]
    while pending:
        base, prefix = pending.pop()
        try:
            with os.scandir(base) as it:
                entries = list(it)
        except OSError:
            if base == folder:
                raise
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            rel = prefix + e.name
            try:
                is_dir = e.is_dir(follow_symlinks=False)
                is_file = not is_dir and e.is_file()  # a link to a file counts; a broken one not
            except OSError:
                continue
            if is_dir:
                if recursive and (exclude is None or Path(e.path).resolve() != exclude):
                    pending.append((Path(e.path), rel + "/"))
            elif not is_file:
                continue
            elif not is_image_name(e.name):
                ignored += 1
            elif pattern is None or matches_pattern(rel, pattern):
                found.append(rel)
    return ImageScan(folder, sorted(found, key=path_order), ignored)


def find_images(folder: str | os.PathLike, *, recursive: bool = False,
                pattern: str | None = None, exclude: Path | None = None) -> list[Path]:
    """The image files in `folder` (recursive: and below), as paths, in `path_order`."""
    return scan_images(folder, recursive=recursive, pattern=pattern, exclude=exclude).paths
