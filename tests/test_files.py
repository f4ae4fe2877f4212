"""liif_cli.io.files: the one atomic writer, the one output check, the one image discovery,
and that every task uses them (same temporaries, same suffixes, same exit code)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from conftest import photo_like
from PIL import Image
from typer.testing import CliRunner

from liif_cli.cli import app
from liif_cli.errors import (
    EXIT_FAILURE,
    EXIT_USAGE,
    OutputExistsError,
    OutputPathError,
    OutputWriteError,
)
from liif_cli.io import files
from liif_cli.io.files import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    check_output_path,
    find_images,
    scan_images,
    temp_target,
)
from liif_cli.io.formats import READABLE_SUFFIXES
from liif_cli.io.images import ImageData
from liif_cli.tasks.batch import PlanItem, find_stale_temps

runner = CliRunner()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ----------------------------------------------------------------------------------------------
# the writer

def test_writes_whole_files_and_returns_what_write_returns(tmp_path):
    path = tmp_path / "a.bin"
    seen = []

    def write(tmp: str) -> str:
        seen.append(tmp)
        Path(tmp).write_bytes(b"whole")
        return "checked"

    assert atomic_write(path, write) == "checked"
    assert path.read_bytes() == b"whole" and listing(tmp_path) == ["a.bin"]
    assert Path(seen[0]).parent == tmp_path and temp_target(Path(seen[0]).name) == "a.bin"
    assert atomic_write_text(tmp_path / "t.csv", "a\r\nb\n") == tmp_path / "t.csv"
    assert (tmp_path / "t.csv").read_bytes() == b"a\r\nb\n"  # newlines as given
    atomic_write_bytes(tmp_path / "a.bin", b"again", overwrite=True)
    assert (tmp_path / "a.bin").read_bytes() == b"again"
    atomic_write(tmp_path / "d.bin", lambda tmp: Path(tmp).write_bytes(b"d"), durable=True)
    assert (tmp_path / "d.bin").read_bytes() == b"d"


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   ValueError("bad data"), KeyboardInterrupt()])
@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_or_interrupted_write_leaves_nothing(tmp_path, error, existing):
    path = tmp_path / "out.png"
    if existing:
        path.write_bytes(b"precious")

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(b"half a file")
        raise error

    expected = OutputWriteError if isinstance(error, OSError) else type(error)
    with pytest.raises(expected) as info:
        atomic_write(path, write, overwrite=True)
    if isinstance(error, OSError):  # one line naming the output, not the temporary
        assert str(info.value) == f"cannot write {path}: No space left on device"
        assert info.value.exit_code == EXIT_FAILURE
    assert listing(tmp_path) == (["out.png"] if existing else [])
    if existing:
        assert path.read_bytes() == b"precious"


def test_an_output_appearing_during_the_write_is_never_clobbered(tmp_path):
    path = tmp_path / "out.txt"

    def racing(tmp: str) -> None:
        Path(tmp).write_text("ours")
        path.write_text("someone else's")  # another process wins the race

    with pytest.raises(OutputExistsError) as info:
        atomic_write(path, racing)
    assert info.value.exit_code == EXIT_USAGE
    assert path.read_text() == "someone else's" and listing(tmp_path) == ["out.txt"]
    atomic_write(path, lambda tmp: Path(tmp).write_text("ours"), overwrite=True)
    assert path.read_text() == "ours" and listing(tmp_path) == ["out.txt"]


def test_without_hard_links_it_still_never_clobbers(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(files.os, "link", no_links)
    path = tmp_path / "out.txt"
    atomic_write_text(path, "first")
    assert path.read_text() == "first" and listing(tmp_path) == ["out.txt"]
    with pytest.raises(OutputExistsError):
        atomic_write_text(path, "second")
    assert path.read_text() == "first" and listing(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_permissions_follow_the_umask(tmp_path, mask, mode):
    def remade(tmp: str) -> None:  # a writer that deletes and recreates its file, as 0600
        os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)

    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write(tmp_path / "b.bin", remade)
    finally:
        os.umask(old)
    for name in ("a.txt", "b.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def _write_image(d: Path) -> Path:
    from liif_cli.io.images import write_image

    return write_image(d / "photo.v2.png", ImageData(photo_like(4, 4)))


def _write_eval_json(d: Path) -> Path:
    from liif_cli.tasks.evaluate import write_json

    return write_json(d / "report.json", [{"psnr": 30.0}])


def _write_eval_csv(d: Path) -> Path:
    from liif_cli.tasks.evaluate import write_csv

    return write_csv(d / "report.csv", [{"psnr": 30.0}])


def _torch_save(d: Path) -> Path:
    from liif_cli.runtime.weights import atomic_torch_save

    atomic_torch_save({"x": 1}, d / "last.pth")
    return d / "last.pth"


def _export(d: Path) -> Path:
    from conftest import random_model

    from liif_cli.runtime.weights import save_checkpoint
    from liif_cli.tasks.export import export_model

    ckpt = d.parent / "tiny.pth"
    if not ckpt.exists():  # made once, before the write under test
        save_checkpoint(random_model(), ckpt)
    return export_model(str(ckpt), d / "tiny.safetensors").path


def _plot(d: Path) -> Path:
    from liif_cli.io.plot import plot_run

    (d / "metrics.jsonl").write_text(json.dumps(
        {"kind": "step", "epoch": 1, "iteration": 1, "loss": 0.1}) + "\n")
    return plot_run(d)


WRITERS = {"write_image": _write_image, "eval write_json": _write_eval_json,
           "eval write_csv": _write_eval_csv, "atomic_torch_save": _torch_save,
           "export": _export, "plot_run": _plot}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_writer_uses_the_temporaries_batch_cleans_up(tmp_path, monkeypatch, umask_022,
                                                           writer):
    """Each task's writer goes through atomic_write: its temporary, left by a kill between
    writing and renaming, is what `liif batch`'s stale-temp cleanup finds."""
    d = tmp_path / "out"
    d.mkdir()
    made = WRITERS[writer](d)  # a normal write first: whole, umask mode, no temporary left
    assert made.stat().st_mode & 0o777 == 0o644
    assert not [n for n in listing(d) if n.startswith(".")]
    made.unlink()
    seen = []

    def killed(tmp, path, *, overwrite):
        seen.append((Path(tmp), Path(path)))
        raise KeyboardInterrupt  # as if killed between writing and renaming

    monkeypatch.setattr(files, "_publish", killed)
    with pytest.raises(KeyboardInterrupt):
        WRITERS[writer](d)
    (tmp, path), = seen
    assert tmp.parent == d and temp_target(tmp.name) == path.name == made.name
    assert not tmp.exists()  # an exception removes it; only a real kill leaves it
    tmp.write_bytes(b"half")
    item = PlanItem(path.name, tmp_path / "in.png", path, "upscale")
    assert find_stale_temps([item]) == [tmp]


def test_temp_names():
    assert temp_target(".photo.png.k1ll3d_0.part") == "photo.png"
    assert temp_target(".a.b.png.abcdefgh.part") == "a.b.png"
    for name in (".a.png.part", "a.png.abcdefgh.part", ".a.png.ABCDEFGH.part",
                 ".a.png.abcdefg.part", ".a.png.abcdefgh.tmp", "photo.png"):
        assert temp_target(name) is None, name


# ----------------------------------------------------------------------------------------------
# the output check

def test_the_output_check(tmp_path):
    (tmp_path / "taken.json").write_text("keep")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert check_output_path(tmp_path / "new.json", overwrite=False) == tmp_path / "new.json"
    assert check_output_path(tmp_path / "taken.json", overwrite=True) == tmp_path / "taken.json"
    for name in ("taken.json", "dangling"):
        with pytest.raises(OutputExistsError, match="--overwrite"):
            check_output_path(tmp_path / name, overwrite=False)
    for name, words in (("", "is a folder"), ("no/x.json", "folder does not exist")):
        with pytest.raises(OutputPathError, match=words) as info:
            check_output_path(tmp_path / name, overwrite=True)
        assert info.value.exit_code == EXIT_USAGE
    assert listing(tmp_path) == ["dangling", "taken.json"]


@pytest.fixture
def made(tmp_path, tiny_ckpt):
    img = tmp_path / "in.png"
    Image.fromarray(photo_like(12, 12)).save(img)
    hr = tmp_path / "hr"
    hr.mkdir()
    Image.fromarray(photo_like(24, 24)).save(hr / "a.png")
    return tmp_path, tiny_ckpt


def _argv(command: str, d: Path, ckpt: Path, target: Path) -> list[str]:
    return {
        "upscale": ["upscale", str(d / "in.png"), "-s", "2", "-m", str(ckpt), "-o", str(target)],
        "eval --json": ["eval", "--data", str(d / "hr"), "-m", str(ckpt), "--scales", "2",
                        "--json", str(target)],
        "eval --csv": ["eval", "--data", str(d / "hr"), "-m", str(ckpt), "--scales", "2",
                       "--csv", str(target)],
        "export": ["export", str(ckpt), "-o", str(target)],
        "bench --json": ["bench", "-m", str(ckpt), "--size", "8", "-s", "2", "--json",
                         str(target)],
    }[command]


SUFFIX = {"upscale": ".png", "eval --json": ".json", "eval --csv": ".csv",
          "export": ".safetensors", "bench --json": ".json"}


@pytest.mark.parametrize("command", list(SUFFIX))
def test_an_existing_output_is_the_same_exit_code_for_every_command(made, command):
    d, ckpt = made
    target = d / ("taken" + SUFFIX[command])
    target.write_bytes(b"keep")
    r = runner.invoke(app, _argv(command, d, ckpt, target))
    assert r.exit_code == EXIT_USAGE == OutputExistsError.exit_code, r.output
    assert r.output.strip() == f"error: output exists: {target} (pass --overwrite to replace it)"
    assert target.read_bytes() == b"keep"


@pytest.mark.parametrize("command", list(SUFFIX))
def test_an_output_in_a_missing_folder_is_the_same_exit_code_for_every_command(made, command):
    d, ckpt = made
    target = d / "missing" / ("out" + SUFFIX[command])
    r = runner.invoke(app, _argv(command, d, ckpt, target))
    assert r.exit_code == EXIT_USAGE, r.output
    assert r.output.strip() == f"error: output folder does not exist: {target.parent}"


# ----------------------------------------------------------------------------------------------
# discovery

def _touch(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")


def test_every_task_finds_the_same_images(tmp_path):
    """batch, eval and train list one folder alike: every suffix the readers read, any case."""
    from liif_cli.data.samples import training_images
    from liif_cli.tasks.batch import plan_batch
    from liif_cli.tasks.evaluate import find_dataset

    folder = tmp_path / "hr"
    images = [f"x{s}" for s in sorted(READABLE_SUFFIXES)] + ["UPPER.PNG", "Mixed.JpEg"]
    _touch(folder, images + ["notes.txt", "a.png.part", ".hidden.png", ".a.png.abcdefgh.part",
                             "noext"])
    want = [folder / n for n in sorted(images)]
    assert find_images(folder) == want
    assert training_images(folder) == want
    assert list(find_dataset(folder).images) == want
    plan = plan_batch(folder, tmp_path / "out")
    assert [item.input for item in plan.items] == want and plan.ignored == 3
    assert {".gif", ".ppm", ".pgm", ".pnm", ".tga", ".jp2", ".tif", ".webp"} <= READABLE_SUFFIXES


def test_discovery_order_hidden_and_recursive(tmp_path):
    names = ["b.png", "A.png", "a-b/a.png", "a/z.png", "a/deeper/c.png", "a b/x.png"]
    _touch(tmp_path, list(reversed(names)) + [".git/x.png", "a/.cache/y.png", "a/notes.md"])
    (tmp_path / "link").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "broken.png").symlink_to(tmp_path / "nowhere.png")
    assert scan_images(tmp_path).rels == ["A.png", "b.png"]
    deep = scan_images(tmp_path, recursive=True)
    # folder by folder, as sorted Paths: a/... before a-b/... (plain strings put '-' first)
    assert deep.rels == ["A.png", "a/deeper/c.png", "a/z.png", "a b/x.png", "a-b/a.png", "b.png"]
    assert deep.rels == sorted(deep.rels, key=lambda r: Path(r))
    assert deep.ignored == 1  # a/notes.md; hidden files, links to folders, broken links: none
    assert scan_images(tmp_path, recursive=True, pattern="*.PNG").rels == deep.rels
    assert scan_images(tmp_path, recursive=True, pattern="a/z*").rels == ["a/z.png"]
    assert scan_images(tmp_path, recursive=True, exclude=(tmp_path / "a").resolve()).rels == [
        "A.png", "a b/x.png", "a-b/a.png", "b.png"]
    assert find_images(tmp_path, recursive=True) == [tmp_path / r for r in deep.rels]
    with pytest.raises(OSError):
        scan_images(tmp_path / "missing")


def test_io_modules_import_each_other_one_way():
    """No cycle inside liif_cli.io (files <-> images was one): imports at any depth, a DAG."""
    import ast

    folder = Path(files.__file__).parent
    graph = {}
    for p in folder.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            found |= {m.split(".")[2] for m in mods
                      if m.startswith("liif_cli.io.") and m.split(".")[2] != "__init__"}
        graph[p.stem] = found - {p.stem}
    assert "formats" in graph["files"] and "files" in graph["images"]

    def reaches(a: str, b: str, seen=()) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, (*seen, n)))
                   for n in graph.get(a, ()))
    assert [m for m in graph if reaches(m, m)] == []


@pytest.mark.parametrize("ext", ["jpg", "webp", "tif", "png", "bmp"])
def test_a_full_disk_under_any_encoder_is_a_failed_write(tmp_path, monkeypatch, ext):
    """Pillow's JPEG encoder writes to the file descriptor itself and took a short write on a
    full disk for success: a cut-short JPEG was "written", exit 0. Every 8-bit file now goes
    through Python's own write, whose ENOSPC is an error (a 64 KiB tmpfs showed it)."""
    from liif_cli.io import images

    real_open = open

    class Full:
        def __init__(self, path, mode="r", *args, **kwargs):
            self.f = real_open(path, mode, *args, **kwargs)

        def write(self, data):
            self.f.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(images, "open", Full, raising=False)
    with pytest.raises(OutputWriteError, match="No space left on device"):
        images.write_image(tmp_path / f"out.{ext}", images.ImageData(photo_like(40, 60)))
    assert listing(tmp_path) == []
