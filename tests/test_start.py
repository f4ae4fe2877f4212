"""Fast start: `liif --help`, `--version` and usage errors never import torch, and importing
the package changes nothing in the process (no environment variables, no torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import liif_cli

# Runs in a fresh interpreter: each command line through the real entry point, `main()`,
# recording its exit code, its output and whether torch was imported by then.
PROBE = r"""
import contextlib, io, json, os, sys
env_before = dict(os.environ)
import liif_cli
after_import = {"torch": "torch" in sys.modules, "env_changed": dict(os.environ) != env_before}
from liif_cli.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["liif", *argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code
    results.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue(),
                    "torch": "torch" in sys.modules, "numpy": "numpy" in sys.modules})
print(json.dumps({"import": after_import, "runs": results}))
"""

COMMANDS = [["--version"], ["--help"], ["upscale", "--help"], ["upscale"],
            ["upscale", "in.png", "--no-such-option"], ["eval", "--scales"], ["view", "--help"]]
# usage errors the library checks (values, not syntax): answered before torch is imported
VALUE_ERRORS = {
    "upscale in.png --scale abc": "error: bad scale 'abc'",
    "upscale in.png --size 0x0": "error: ",
    "upscale in.png -s 2 --precision xyz": "error: unknown precision 'xyz'",
    "upscale in.png -s 2 --device tpu": "error: unknown device 'tpu'",
    "upscale in.png -s 2 --denoise 3": "error: --denoise must be between 0 and 1, not 3.0",
    "upscale in.png -s 2 --max-memory lots": "error: ",
    "eval --data hr --scales 2,a": "error: bad --scales '2,a'",
    "eval --data hr --degrade blur=x": "error: ",
    "eval --data hr --precision xyz": "error: unknown precision 'xyz'",
    "batch in out -s 2 --precision xyz": "error: unknown precision 'xyz'",
    "batch in out --scale 0": "error: ",
    "batch in out -s 2 --device cuda:0,tpu": "error: unknown device 'tpu'",
    "train --data hr --lr -1": "error: --lr must be a positive number",
    "train --data hr --decoder mlp": "error: unknown decoder 'mlp'",
    "train --data hr --val-degrade jpeg=200": "error: ",
    "view in.png --device tpu": "error: unknown device 'tpu'",
    "view in.png --denoise 3": "error: --denoise must be between 0 and 1, not 3.0",
}


def test_help_version_and_usage_errors_never_import_torch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    commands = COMMANDS + [argv.split() for argv in VALUE_ERRORS]
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["import"] == {"torch": False, "env_changed": False}
    runs = {" ".join(r["argv"]): r for r in report["runs"]}
    for argv, run in runs.items():
        assert run["torch"] is False, f"liif {argv} imported torch"
    for argv in ("--version", "--help", "upscale --help"):  # not even numpy
        assert runs[argv]["numpy"] is False, f"liif {argv} imported numpy"
    assert runs["--version"]["code"] == 0
    assert runs["--version"]["out"] == f"liif-cli {liif_cli.__version__}\n"
    assert runs["--help"]["code"] == 0 and "upscale" in runs["--help"]["out"]
    assert runs["upscale --help"]["code"] == 0 and "--scale" in runs["upscale --help"]["out"]
    missing = runs["upscale"]
    assert missing["code"] == 2 and missing["err"].startswith("error: Missing argument 'INPUT'")
    bad = runs["upscale in.png --no-such-option"]
    assert bad["code"] == 2 and "No such option: --no-such-option" in bad["err"]
    assert len(bad["err"].strip().splitlines()) == 1
    for argv, start in VALUE_ERRORS.items():
        run = runs[argv]
        assert run["code"] == 2 and run["err"].startswith(start), (argv, run)
        assert len(run["err"].strip().splitlines()) == 1, (argv, run["err"])
    assert runs["eval --scales"]["code"] == 2


def test_the_commands_defaults_are_the_librarys():
    import torch
    from typer.testing import CliRunner

    from liif_cli.cli import app, options
    from liif_cli.cli.commands import evaluate
    from liif_cli.io.images import DEFAULT_MAX_INPUT_PIXELS
    from liif_cli.runtime import engine, sizing
    from liif_cli.runtime.device import memory_budget
    from liif_cli.tasks import evaluate as evaluate_task
    from liif_cli.tasks.train.recipe import TrainConfig

    assert options.parse_bytes(options.DEFAULT_MAX_MEMORY) is None  # auto: the device's
    assert memory_budget(torch.device("cpu")) == engine.DEFAULT_MAX_MEMORY
    assert options.DEFAULT_MAX_OUTPUT_PIXELS == sizing.DEFAULT_MAX_OUTPUT_PIXELS
    assert options.DEFAULT_MAX_INPUT_PIXELS == DEFAULT_MAX_INPUT_PIXELS
    assert evaluate.DEFAULT_SCALES == ",".join(map(str, evaluate_task.DEFAULT_SCALES))
    r = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    cfg = TrainConfig()
    assert r.exit_code == 0
    lines = {line.split()[1]: line for line in r.output.splitlines() if "│ --" in line}
    assert f"(default: {cfg.epochs})" in lines["--epochs"]
    assert f"(default: {cfg.out})" in lines["--out"]
    assert "(default: " + ",".join(map(str, cfg.lr_milestones)) + ")" in lines["--lr-milestones"]


@pytest.mark.slow
def test_the_public_names_load_lazily_and_upscale_stays_the_function():
    proc = subprocess.run([sys.executable, "-c", (
        "import sys, liif_cli\n"
        "assert 'torch' not in sys.modules\n"
        "import liif_cli.tasks.upscale, liif_cli.tasks.batch  # the task modules, imported\n"
        "from liif_cli import upscale, load_model\n"
        "from liif_cli.tasks.upscale import upscale_file\n"
        "assert callable(upscale) and upscale.__module__ == 'liif_cli.tasks.upscale', upscale\n"
        "assert liif_cli.upscale is upscale and load_model.__module__ == 'liif_cli.runtime.weights'\n"
        "assert set(liif_cli.__all__) <= set(dir(liif_cli))\n"
        "try:\n    liif_cli.no_such_name\nexcept AttributeError as e:\n    print(e)\n")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "module 'liif_cli' has no attribute 'no_such_name'\n"
