"""Every command's `--help` says what the command does: flags show no value type, no text is
eaten as Rich markup, defaults are the real ones."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from liif_cli.cli.app import app

GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)
WIDE = {"COLUMNS": "400"}  # no wrapping: each option's help on one line


def help_text(*argv: str) -> str:
    r = CliRunner().invoke(app, [*argv, "--help"], env=WIDE)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_flags_show_no_value_type(name):
    text = help_text(*([name] if name else []))
    assert "<bool>" not in text
    flags = [ln for ln in text.splitlines() if re.search(r"│\s+--(overwrite|quiet|help)\b", ln)]
    # the help text follows the names at once: no type column
    assert flags and all(re.match(r"│\s+--[\w-]+\s+(-\w\s+)?[A-Z]", ln) for ln in flags), flags


@pytest.mark.parametrize("name", COMMANDS)
def test_no_help_text_is_eaten_as_markup(name):
    """Rich reads `[onnx]` as a style tag and prints nothing: each bracketed word of an
    option's declared help (escaped as `\\[onnx]`) is printed."""
    text = help_text(name)
    for param in GROUP.commands[name].params:
        declared = (getattr(param, "help", None) or "").replace("\\[", "[")
        for word in re.findall(r"\[[^\]\s]+\]", declared):
            assert word in text, (name, param.name, word)


def test_export_help_names_the_onnx_extra_as_it_installs():
    assert "onnx (needs the [onnx] extra: pip install '.[onnx]')" in help_text("export")


def test_fast_is_a_liif_in_every_help():
    for name in ("train", "bench"):
        assert "fast model's" not in help_text(name)


def test_bench_help_says_a_model_is_needed():
    line = next(ln for ln in help_text("bench").splitlines() if "│ --model" in ln)
    assert "Default: bundled" not in line and "--random-arch is needed" in line
    r = CliRunner().invoke(app, ["bench"])
    assert r.exit_code == 2 and "--random-arch" in r.output


def test_upscale_help_names_the_default_output_in_the_inputs_format():
    line = next(ln for ln in help_text("upscale").splitlines() if "│ --output" in ln)
    assert "photo.jpg -s 7.5 -> photo_x7.5.jpg" in line


def test_the_missing_onnx_extra_names_an_install_that_works(monkeypatch):
    """liif-cli is installed from a clone: `pip install 'liif-cli[onnx]'` names no package."""
    import sys

    from liif_cli.errors import ExportError
    from liif_cli.tasks import export

    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    with pytest.raises(ExportError, match=r"pip install '\.\[onnx\]'") as e:
        export._onnx_modules()
    assert "liif-cli[onnx]" not in str(e.value)


def test_a_reader_that_stops_early_is_no_internal_error():
    """`liif models | head -1`: the pipe closes before the rows are written; no error line."""
    import subprocess
    import sys

    code = "import sys; from liif_cli.cli import main; sys.argv = ['liif', 'models']; main()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child prints anything: it starts far slower
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and "internal error" not in err and "Traceback" not in err, err
