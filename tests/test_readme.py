"""README.md as printed: its two set-up commands are CI's and the package's, and every ```python
block runs, in a folder of small images it makes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from conftest import README, REPO, photo_like
from PIL import Image

BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def test_the_set_up_commands_are_what_ci_runs_on_what_the_package_ships():
    setup = README.read_text().split("## Set-up: two commands", 1)[1].split("```bash\n", 1)[1]
    install, test = [ln for ln in setup.split("```", 1)[0].splitlines() if ln and ln[0] != "#"]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    torch_pin = re.search(r"pip install (torch==\S+)", install).group(1)
    assert f"pip install -q {torch_pin}" in ci  # the README's torch is the one CI tests
    first = re.search(r"liif upscale (\S+)", install).group(1)
    assert (REPO / first).is_file() and "pip install ." in install
    assert test.endswith("pip install -e '.[test]' && ruff check . && python -m pytest -q")
    assert {"pip install -q -e '.[test]'", "ruff check .", "python -m pytest -q"} <= set(ci)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i + 1}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.fromarray(photo_like(12, 16)).save("photo.png")
    # names the examples take as given: an image the reader already has in memory
    namespace = {"__name__": "__readme__", "numpy_uint8_array": photo_like(10, 14, seed=1)}
    exec(compile(code, "README.md", "exec"), namespace)
    made = {p.name for p in Path(".").iterdir()}
    if "upscale_file(" in code:
        assert Image.open("photo_x2.png").size == (32, 24)
        assert made == {"photo.png", "photo_x2.png"}
    if "Upscaler(" in code:
        assert [b.pixels.shape for b in namespace["bigs"]] == [(24, 32, 3), (36, 48, 3)]
        assert namespace["raw"].shape == (24, 32, 3) and namespace["up"].precision == "fp32"
    if "box = upscale(" in code:
        assert namespace["img"].pixels.shape == (90, 120, 3)  # 12×16 at ×7.5
        assert namespace["arr"].shape == (480, 640, 3)
        assert namespace["box"].pixels.shape == (480, 640, 3)  # 4:3 in a 4:3 box
        assert Image.open("photo_x7.5.png").size == (120, 90)  # the ImageData, saved


def test_the_environment_table_lists_every_variable_and_command():
    """Each option's LIIF_* variable is in the table, on a row naming every command that reads
    it; so is the shard count that `--shard auto` reads."""
    import typer

    from liif_cli.cli.app import app
    from liif_cli.tasks.batch.shard import SHARD_COUNT_ENV

    text = README.read_text().split("**Environment variables**", 1)[1].split("```", 1)[0]
    rows = {m[0]: m[1] for m in re.findall(r"^\| `(LIIF_\w+)` \|[^|]*\| ([^|]*) \|$", text, re.M)}
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            for var in [param.envvar] if isinstance(param.envvar, str) else param.envvar or []:
                assert var in rows and re.search(rf"\b{name}\b", rows[var]), (var, name)
    assert SHARD_COUNT_ENV in rows


@pytest.mark.slow
def test_onnx_centres_in_float32_as_the_readme_says_and_the_jump_at_x3():
    """The ONNX section: `coord` computed in float32 as `make_coord` does gives `liif upscale`'s
    pixels; the same centres computed in float64 and rounded (`-1 + (2i + 1) / H`) move the
    queries that sit exactly on a latent's centre at ×3 to the other side of the tie, where the
    official local ensemble jumps by many levels."""
    import torch

    from liif_cli import load_model, upscale
    from liif_cli.model.coords import make_cell, make_coord

    onnx = README.read_text().split("### Export: safetensors, ONNX, pth", 1)[1]
    assert "float32" in onnx.split("| `coord` (input 2)", 1)[1].split("\n", 1)[0]
    assert "float64" in onnx and "×3" in onnx
    model, px, (H, W) = load_model("default"), photo_like(32, 40), (96, 120)
    ours = upscale(model, px, scale=3, device="cpu").astype(int)
    with torch.no_grad():
        feat = model.encode((torch.from_numpy(px).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5)

        def query(coord):
            rgb = model.query(feat, coord[None], make_cell((H, W), H * W)[None])[0] * 0.5 + 0.5
            return np.round(rgb.clamp(0, 1).numpy().reshape(H, W, 3) * 255).astype(int)

        ys, xs = (-1 + (2 * np.arange(n) + 1) / n for n in (H, W))  # float64, then rounded
        rounded = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
        exact = np.abs(query(make_coord((H, W))) - ours).max(-1)
        jumped = np.abs(query(torch.from_numpy(rounded.astype(np.float32))) - ours).max(-1)
    assert exact.max() <= 1
    assert 0 < (jumped > 1).sum() < 0.05 * H * W and jumped.max() > 10  # a few, far off


def readme_commands(command: str) -> list[str]:
    """Every `liif COMMAND ...` of the README's bash blocks, in order, up to a pipe or a
    redirection, without comments."""
    found = []
    for block in re.findall(r"^ *```bash\n(.*?)^ *```", README.read_text(), re.S | re.M):
        for line in block.splitlines():
            for part in re.split(r"&&|\|", line.split(" #", 1)[0]):
                words = shlex.split(part, comments=True)
                if words[:2] == ["liif", command]:
                    cut = [i for i, w in enumerate(words) if w in (">", "<")]
                    found.append(words[2:cut[0] if cut else None])
    return found


def test_the_upscale_and_export_examples_run_in_sequence_without_a_name_collision():
    """Run top to bottom in one folder, no example stops at "output exists" because an
    earlier one wrote its name (without --overwrite)."""
    import typer

    from liif_cli.cli.app import app
    from liif_cli.io.images import output_suffix
    from liif_cli.runtime.sizing import size_request
    from liif_cli.tasks.upscale import default_output_path

    commands = typer.main.get_command(app).commands
    written: dict[str, str] = {}
    for name in ("upscale", "export"):
        examples = readme_commands(name)
        assert len(examples) >= (10 if name == "upscale" else 3)
        for args in examples:
            p = commands[name].make_context(name, list(args)).params
            if name == "export":
                out = str(p["output"] or f"{Path(p['model']).stem}.{p['fmt'] or 'safetensors'}")
            elif p["output"] is not None:
                out = str(p["output"])
            elif str(p["input"]) != "-":
                sizes = {k: p[k] for k in ("scale", "size", "width", "height", "fit")}
                out = default_output_path(p["input"], size_request(**sizes), p["scale"])
                out = str(out.with_suffix(output_suffix(p["fmt"])) if p["fmt"] else out)
            else:
                continue  # stdout
            if out == "-":
                continue
            assert out not in written or p["overwrite"], (
                f"`liif {name} {' '.join(args)}` writes {out}, as `{written[out]}` did")
            written[out] = f"liif {name} {' '.join(args)}"


def test_no_text_installs_an_unpublished_package():
    """liif-cli is installed from a clone (`pip install '.[onnx]'`); no `liif-cli` package is
    published, so `pip install 'liif-cli[...]'` fails wherever a user copies it from."""
    texts = [README, *(REPO / "docs").rglob("*.md"), *(REPO / "docs").rglob("*.py"),
             *(REPO / "liif_cli").rglob("*.py")]
    said = [str(p) for p in texts if re.search(r"pip install '?liif-cli\[", p.read_text())]
    assert not said


def test_max_memory_is_said_to_move_a_pixel_by_one_level_at_most():
    """Budgets change tiling and chunking, and so the order of some float sums: at 16M against
    auto, 18-20 of 3.0 million values of a 1152×864 output moved by one level (measured). No
    line may promise the same pixels."""
    text = " ".join(README.read_text().split())
    for promise in ("(same pixels)", "never the pixels", "without changing a pixel",
                    "tested equal to untiled"):
        assert promise not in text
    memory = text.split("**Memory** —", 1)[1].split("**Real-world files**", 1)[0]
    assert "by at most one 8-bit level" in memory


def test_every_bench_line_names_what_to_time():
    """`liif bench` needs --model or --random-arch: a README line without one fails as typed."""
    lines = re.findall(r"liif bench( --[^`\n#]*)", README.read_text())
    assert len(lines) >= 4
    for args in lines:
        assert "--model" in args or "--random-arch" in args, args
