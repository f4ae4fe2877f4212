"""liif batch on clusters: --shard auto, streamed JSONL reports, --summary, --files-from, and
the recipes of docs/cluster.md run as written (the sbatch script with an array's variables)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SUBPROCESS_TIMEOUT_S, write_images
from typer.testing import CliRunner

from liif_cli.cli import app
from liif_cli.errors import UsageError
from liif_cli.runtime.sizing import size_request
from liif_cli.tasks.batch import (
    SHARD_COUNT_ENV,
    FileRecord,
    JsonlReport,
    detect_shard,
    listed_files,
    plan_batch,
    read_file_list,
    resolve_shard,
    run_batch,
    summarize_reports,
)

runner = CliRunner()
DOCS = REPO / "docs" / "cluster.md"
# every variable --shard auto reads: cleared so that the host's own (a CI job under Slurm) and
# the other tests' never leak in
SHARD_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
              "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_JOB_ID",
              "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_ID",
              "SLURM_JOB_ID", "RANK", "WORLD_SIZE", "JOB_COMPLETION_INDEX", SHARD_COUNT_ENV)


@pytest.fixture(autouse=True)
def no_job_engine(monkeypatch):
    for name in SHARD_VARS:
        monkeypatch.delenv(name, raising=False)


def _array(tid: int, lo: int, count: int, **extra) -> dict[str, str]:
    return {"SLURM_ARRAY_TASK_ID": str(tid), "SLURM_ARRAY_TASK_MIN": str(lo),
            "SLURM_ARRAY_TASK_COUNT": str(count), **{k: str(v) for k, v in extra.items()}}


def _lines(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


# ----------------------------------------------------------------------------------------------
# --shard auto: what each engine sets

def test_slurm_array_ids_need_not_start_at_0_or_1():
    got = [detect_shard(_array(t, 4, 3)) for t in (4, 5, 6)]
    assert [s.shard for s in got] == [(1, 3), (2, 3), (3, 3)]
    assert got[1].found == "Slurm array task 5 of ids 4-6" and got[1].auto
    # as Slurm 22.05 sets them for --array=0-10:5 (checked on a real one)
    stepped = [detect_shard(_array(t, 0, 3, SLURM_ARRAY_TASK_STEP=5, SLURM_ARRAY_TASK_MAX=10))
               for t in (0, 5, 10)]
    assert [s.shard for s in stepped] == [(1, 3), (2, 3), (3, 3)]
    assert stepped[2].found == "Slurm array task 10 of ids 0-10:5"
    # --array=1,4,9 sets MIN=1 MAX=9 COUNT=3 STEP=1: no way to number task 4, so refuse
    with pytest.raises(UsageError, match="not 3 evenly spaced ids"):
        detect_shard(_array(4, 1, 3, SLURM_ARRAY_TASK_MAX=9, SLURM_ARRAY_TASK_STEP=1))
    with pytest.raises(UsageError, match="SLURM_ARRAY_TASK_COUNT is not"):
        detect_shard({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1"})
    with pytest.raises(UsageError, match="not one of"):
        detect_shard(_array(9, 4, 3))
    with pytest.raises(UsageError, match="whole number"):
        detect_shard(_array(4, 4, 3, SLURM_ARRAY_TASK_COUNT="three"))


def test_ranks_and_their_product_with_an_array():
    assert detect_shard({"RANK": "2", "WORLD_SIZE": "4"}).shard == (3, 4)
    srun = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1",
            "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2"}
    got = detect_shard(srun)
    assert got.shard == (2, 2) and got.found == "srun rank 1 of 2"
    assert detect_shard({"SLURM_PROCID": "0", "SLURM_NTASKS": "3"}).shard == (1, 3)
    # torchrun under srun: RANK/WORLD_SIZE count every process, SLURM_PROCID only launchers
    assert detect_shard({**srun, "RANK": "5", "WORLD_SIZE": "8"}).shard == (6, 8)
    # a batch script outside srun has the job's SLURM_NTASKS and SLURM_PROCID=0 but no
    # step: it is one process and must not take only 1/NTASKS of the files
    script = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}
    assert detect_shard(script).shard == (1, 1)
    assert detect_shard({**script, **_array(2, 1, 3)}).shard == (2, 3)
    # an array task running `srun -n 2`: its share split between the two ranks
    both = [detect_shard({**_array(t, 7, 2), **srun, "SLURM_PROCID": str(r)})
            for t in (7, 8) for r in (0, 1)]
    assert [s.shard for s in both] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert both[3].found == "Slurm array task 8 of ids 7-8 × srun rank 1 of 2"
    assert detect_shard({**_array(5, 5, 2), "RANK": "0", "WORLD_SIZE": "1"}).found == \
        "Slurm array task 5 of ids 5-6"
    with pytest.raises(UsageError, match="RANK=4 is not a rank of WORLD_SIZE=4"):
        detect_shard({"RANK": "4", "WORLD_SIZE": "4"})


def test_kubernetes_indexed_jobs_need_the_count():
    assert detect_shard({"JOB_COMPLETION_INDEX": "0"}, count=8).shard == (1, 8)
    got = detect_shard({"JOB_COMPLETION_INDEX": "7", SHARD_COUNT_ENV: "8"})
    assert got.shard == (8, 8) and got.found == "Kubernetes Indexed Job index 7 of 8"
    with pytest.raises(UsageError, match="--shards N"):
        detect_shard({"JOB_COMPLETION_INDEX": "3"})
    with pytest.raises(UsageError, match="0 to 3"):
        detect_shard({"JOB_COMPLETION_INDEX": "4"}, count=4)
    # --shards must agree with what was found: a guard against a stale job script
    with pytest.raises(UsageError, match="--shards 4 does not match the 3"):
        detect_shard(_array(4, 4, 3), count=4)
    with pytest.raises(UsageError, match="none|no job array"):
        detect_shard({})
    assert resolve_shard("2/5").shard == (2, 5) and not resolve_shard("2/5").auto
    assert resolve_shard(None).shard == (1, 1)
    with pytest.raises(UsageError, match="--shards N goes with --shard auto"):
        resolve_shard("1/2", count=2)


def test_cli_says_what_it_found_first_or_fails_in_one_line(tmp_path, tiny_ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["a.png", "b.png"])
    base = ["batch", str(inp), str(out), "-s", "2", "-m", str(tiny_ckpt), "--shard", "auto"]
    r = runner.invoke(app, base)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --shard auto found no job array")
    assert "SLURM_ARRAY_TASK_ID" in lines[0] and "JOB_COMPLETION_INDEX" in lines[0]
    assert not out.exists()
    r = runner.invoke(app, [*base, "--dry-run"], env={"JOB_COMPLETION_INDEX": "1"})
    assert r.exit_code == 2 and "--shards N" in r.output
    r = runner.invoke(app, [*base, "--dry-run", "--shards", "2"],
                      env={"JOB_COMPLETION_INDEX": "1"})
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0] == "shard 2/2 from Kubernetes Indexed Job index 1 of 2"
    r = runner.invoke(app, [*base, "--quiet", "--shards", "2"], env={"JOB_COMPLETION_INDEX": "1"})
    assert r.exit_code == 0 and r.output.splitlines() == [  # a task's log says it even so
        "shard 2/2 from Kubernetes Indexed Job index 1 of 2"]
    r = runner.invoke(app, ["batch", str(inp), str(out), "-s", "2", "--shard", "1/2",
                            "--shards", "2"])
    assert r.exit_code == 2 and "--shards N goes with --shard auto" in r.output


def test_three_array_tasks_do_each_file_once_with_one_runs_outputs(tmp_path, tiny_ckpt):
    """The issue's bar: a 3-task array (ids 7-9) over a folder == one plain run."""
    inp = tmp_path / "in"
    names = [f"p{i}.png" for i in range(7)] + ["sub/q.png", "sub/r.png"]
    write_images(inp, names)
    common = ["-s", "2", "-m", str(tiny_ckpt), "--device", "cpu", "-r"]
    one = runner.invoke(app, ["batch", str(inp), str(tmp_path / "one"), *common, "--quiet"])
    assert one.exit_code == 0, one.output
    shards = []
    for tid in (7, 8, 9):
        report = tmp_path / f"r{tid}.jsonl"
        r = runner.invoke(app, ["batch", str(inp), str(tmp_path / "out"), *common,
                                "--shard", "auto", "--report", str(report)],
                          env=_array(tid, 7, 3))
        assert r.exit_code == 0, r.output
        assert r.output.splitlines()[0] == f"shard {tid - 6}/3 from Slurm array task {tid} " \
            "of ids 7-9"
        shards.append(_lines(report))
    done = [Path(rec["input"]).relative_to(inp).as_posix() for lines in shards for rec in lines
            if rec["status"] == "done"]
    assert sorted(done) == sorted(names)  # every file, each exactly once
    assert all(rec["status"] == "done" for lines in shards for rec in lines)
    assert [{rec["shard"] for rec in lines} for lines in shards if lines] == \
        [{f"{k}/3"} for k, lines in enumerate(shards, 1) if lines]
    for n in names:
        assert (tmp_path / "out" / n).read_bytes() == (tmp_path / "one" / n).read_bytes(), n

    r = runner.invoke(app, ["batch", "--summary", *(str(tmp_path / f"r{t}.jsonl")
                                                     for t in (7, 8, 9))])
    assert r.exit_code == 0, r.output
    assert re.search(r"done\s*│\s*9\s", r.output)
    assert re.search(r"\b3 report\(s\) · 9 record\(s\)", r.output), r.output
    # a pattern the shell did not expand (quoted) is expanded by --summary itself
    r = runner.invoke(app, ["batch", "--summary", str(tmp_path / "r*.jsonl")])
    assert r.exit_code == 0 and re.search(r"\b3 report\(s\)", r.output), r.output
    r = runner.invoke(app, ["batch", "--summary", str(tmp_path / "nothing*.jsonl")])
    assert r.exit_code == 2 and "no report matches" in r.output


# ----------------------------------------------------------------------------------------------
# streamed reports

def test_on_record_sees_every_item_once_as_it_ends(tmp_path, tiny_ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["a.png", "c.png", "d.png"])
    (inp / "b.png").write_bytes(b"")  # fails when read
    out.mkdir()
    (out / "a.png").write_bytes(b"x")  # skipped: the plan says so before any work
    seen = []
    res = run_batch(plan_batch(inp, out), str(tiny_ckpt), size=size_request(scale=2),
                    devices="cpu", on_record=seen.append)
    assert [r.status for r in seen][0] == "skipped"  # planned records come first
    assert sorted((Path(r.input).name, r.status) for r in seen) == [
        ("a.png", "skipped"), ("b.png", "failed"), ("c.png", "done"), ("d.png", "done")]
    assert sorted(map(id, seen)) == sorted(map(id, res.records))

    seen.clear()  # --fail-fast on a planned failure (two inputs, one output): the rest are
    write_images(inp, ["a.gif"])  # recorded as cancelled, after it
    res = run_batch(plan_batch(inp, tmp_path / "ff"), str(tiny_ckpt),
                    size=size_request(scale=2), devices="cpu", fail_fast=True,
                    on_record=seen.append)
    assert [(Path(r.input).name, r.status) for r in seen] == [
        ("a.png", "failed"), ("a.gif", "cancelled"), ("b.png", "cancelled"),
        ("c.png", "cancelled"), ("d.png", "cancelled")]
    assert res.stopped_early and not (tmp_path / "ff").exists()


def test_jsonl_report_lines_append_and_merge(tmp_path):
    path = tmp_path / "r.jsonl"
    with JsonlReport(path, shard=(2, 3), host="node1") as rep:
        rep.write(FileRecord("in/a.png", "out/a.png", "done", seconds=1.23456,
                             in_size=(4, 3), out_size=(8, 6), worker="cpu"))
        rep.write(FileRecord("in/b.png", "out/b.png", "failed", "cannot read in/b.png: bad"))
    with JsonlReport(path, shard=(2, 3), host="node1") as rep:  # a requeued task: appends
        rep.write(FileRecord("in/b.png", "out/b.png", "done", seconds=2.0, in_size=(4, 3),
                             out_size=(8, 6)))
        rep.write(FileRecord("in/a.png", "out/a.png", "skipped", "output exists"))
    lines = _lines(path)
    assert len(lines) == 4 and rep.lines == 2
    assert lines[0] == {**lines[0], "input": "in/a.png", "output": "out/a.png",
                        "status": "done", "reason": "", "seconds": 1.235, "in_size": [4, 3],
                        "out_size": [8, 6], "worker": "cpu", "shard": "2/3", "host": "node1"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", lines[0]["finished"])
    other = tmp_path / "s.jsonl"
    other.write_text(json.dumps({"input": "in/c.png", "output": "out/c.png",
                                 "status": "cancelled", "reason": "interrupted",
                                 "shard": "1/3"}) + "\n" + '{"input": "in/d.png", "stat')
    doc = tmp_path / "old.json"  # today's one-document report merges too
    doc.write_text(json.dumps({"shard": "3/3", "files": [
        {"input": "in/e.png", "output": "out/e.png", "status": "done", "seconds": 1.0,
         "in_size": [2, 2], "out_size": [4, 4]},
        {"input": "in/a.png", "output": "out/a.png", "status": "done"}]}))
    s = summarize_reports([path, other, doc])
    assert [(f["input"], f["status"]) for f in s.files] == [
        ("in/a.png", "done"), ("in/b.png", "done"), ("in/c.png", "cancelled"),
        ("in/e.png", "done")]
    assert s.lines == 7 and s.bad_lines == 1 and s.reports == 3
    assert s.done_twice == ["in/a.png"] and s.shards == ["1/3", "2/3", "3/3"]

    r = runner.invoke(app, ["batch", "--summary", str(path), str(other), str(doc)])
    assert r.exit_code == 1  # in/c.png is not done
    assert re.search(r"\b1 file\(s\) not done", r.output)
    assert re.search(r"\b1 file\(s\) done more than once", r.output)
    assert re.search(r"\b1 unreadable line\(s\) skipped", r.output)
    r = runner.invoke(app, ["batch", "--summary", str(path)])
    assert r.exit_code == 0 and re.search(r"done\s*│\s*2\s", r.output), r.output
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    r = runner.invoke(app, ["batch", "--summary", str(bad)])
    assert r.exit_code == 1 and "not a liif batch report" in r.output
    with pytest.raises(UsageError, match="needs report files"):
        summarize_reports([])


@pytest.mark.slow
def test_a_sigkilled_task_leaves_its_report_complete(tmp_path, tiny_ckpt):
    inp, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "r.jsonl"
    names = [f"p{i:02d}.png" for i in range(10)]
    write_images(inp, names, hw=(48, 48))
    cmd = [sys.executable, "-m", "liif_cli", "batch", str(inp), str(out), "-s", "4", "-m",
           str(tiny_ckpt), "--device", "cpu", "--quiet", "--report", str(report)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while not (report.exists() and report.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no report lines appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # no handler, no cleanup, no end-of-run report
    proc.wait()
    lines = _lines(report)  # every line whole: a kill never cuts one
    written = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    reported = {Path(rec["output"]).name for rec in lines}
    assert all(rec["status"] == "done" for rec in lines) and len(lines) == len(reported)
    assert reported <= written  # never a line for an output that is not there
    # at most the one file between its rename and its line can be unreported
    assert len(written - reported) <= 1, (written, reported)
    assert 2 <= len(lines) < len(names), "the run finished before it could be killed"

    # the rerun appends; merged, every file is done exactly once
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert r.returncode == 0, r.stderr
    s = summarize_reports([report])
    assert s.count("done") == len(names) and not s.done_twice
    assert s.lines == len(lines) + len(names)  # the rerun recorded all, skips included
    assert sum(rec["status"] == "skipped" for rec in _lines(report)) == len(written)


# ----------------------------------------------------------------------------------------------
# --files-from

def test_files_from_lists_replace_the_walk(tmp_path, tiny_ckpt):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_images(inp, ["a.png", "b.png", "sub/c.png", "sub/d.png", ".hidden.png"])
    (inp / "notes.txt").write_text("x")
    listing = tmp_path / "todo.txt"
    listing.write_text(f"./a.png\n\nsub/c.png\r\n{inp.absolute() / 'sub/d.png'}\na.png\n"
                       ".hidden.png\nnotes.txt\nmissing.png\n")
    plan = plan_batch(inp, out, files=read_file_list(listing))
    got = {item.rel: (item.action, item.reason) for item in plan.items}
    assert sorted(got) == [".hidden.png", "a.png", "missing.png", "notes.txt", "sub/c.png",
                           "sub/d.png"]  # listed, once each; b.png was not listed
    assert got["missing.png"][0] == "fail" and "not found" in got["missing.png"][1]
    assert got["notes.txt"][0] == "fail" and "not an image" in got["notes.txt"][1]
    assert {got[k][0] for k in ("a.png", "sub/c.png", "sub/d.png", ".hidden.png")} == {"upscale"}
    nul = tmp_path / "todo0"
    nul.write_bytes(b"sub/c.png\0a name with\nnewline.png\0")
    assert read_file_list(nul) == ["sub/c.png", "a name with\nnewline.png"]
    assert listed_files(inp, ["sub/c.png", "a.png", "sub/d.png"], pattern="sub/*") == \
        ["sub/c.png", "sub/d.png"]
    for bad in ("../x.png", str(tmp_path / "elsewhere.png")):
        with pytest.raises(UsageError, match="INPUT_DIR"):
            plan_batch(inp, out, files=[bad])
    # a list is sharded as the walk is: the same files go to the same shard
    walked = plan_batch(inp, out, recursive=True, shard=(2, 3))
    listed = plan_batch(inp, out, shard=(2, 3), files=["a.png", "b.png", "sub/c.png",
                                                        "sub/d.png"])
    assert [i.rel for i in listed.items] == [i.rel for i in walked.items]

    r = runner.invoke(app, ["batch", str(inp), str(out), "-s", "2", "-m", str(tiny_ckpt),
                            "--files-from", "-", "--report", str(tmp_path / "r.jsonl")],
                      input="sub/c.png\nb.png\nmissing.png\n")
    assert r.exit_code == 1, r.output  # missing.png failed, alone
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "b.png", "sub/c.png"]
    line = next(ln for ln in r.output.splitlines() if "missing.png" in ln)
    assert line.startswith("failed:") and "listed in --files-from" in line
    r = runner.invoke(app, ["batch", str(inp), str(out), "-s", "2", "--files-from",
                            str(tmp_path / "nope.txt")])
    assert r.exit_code == 1 and "cannot read --files-from" in r.output


# ----------------------------------------------------------------------------------------------
# docs/cluster.md, as written

def _doc_block(marker: str, lang: str) -> str:
    text = DOCS.read_text()
    start = text.index(marker) if marker else 0
    m = re.compile(rf"^```{lang}\n(.*?)^```$", re.M | re.S).search(text, start)
    return m.group(1)


@pytest.mark.slow
def test_the_docs_sbatch_script_runs_as_three_array_tasks(tmp_path, tiny_ckpt):
    """docs/cluster.md's liif-array.sbatch, run by bash as Slurm would run its 3 tasks."""
    script = tmp_path / "liif-array.sbatch"
    script.write_text(_doc_block("<!-- liif-array.sbatch", "bash"))
    lo, hi = map(int, re.search(r"#SBATCH --array=(\d+)-(\d+)", script.read_text()).groups())
    assert "--shard auto" in script.read_text() and hi - lo + 1 == 3
    inp, out = tmp_path / "in", tmp_path / "out"
    names = [f"p{i}.png" for i in range(6)]
    write_images(inp, names)
    venv_bin = str(Path(sys.executable).parent)
    for tid in range(lo, hi + 1):
        env = {k: v for k, v in os.environ.items() if k not in SHARD_VARS}
        env.update(_array(tid, lo, hi - lo + 1, SLURM_ARRAY_JOB_ID=42), IN=str(inp),
                   OUT=str(out), SCALE="2", PATH=venv_bin + os.pathsep + env.get("PATH", ""),
                   SLURM_CPUS_PER_TASK="1")
        r = subprocess.run(["bash", str(script), "-m", str(tiny_ckpt), "--device", "cpu"],
                           cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=SUBPROCESS_TIMEOUT_S)
        assert r.returncode == 0, r.stderr
        assert r.stderr.splitlines()[0].startswith(f"shard {tid - lo + 1}/3 from Slurm array")
    lines = [rec for tid in range(lo, hi + 1) for rec in _lines(tmp_path / f"liif-42_{tid}.jsonl")]
    assert sorted(Path(rec["input"]).name for rec in lines) == names
    assert {rec["status"] for rec in lines} == {"done"}
    r = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": os.environ["PATH"]}, timeout=60)
    assert r.returncode != 0 and "set IN to the input folder" in r.stderr


def test_the_docs_indexed_job_manifest_is_consistent():
    yaml = pytest.importorskip("yaml")
    job = yaml.safe_load(_doc_block("## Kubernetes", "yaml"))
    spec = job["spec"]
    assert job["kind"] == "Job" and spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (box,) = pod["containers"]
    command = " ".join(box["command"] + box["args"])
    assert "--shard auto" in command and "$JOB_COMPLETION_INDEX" in command
    env = {e["name"]: e["value"] for e in box["env"]}
    assert int(env[SHARD_COUNT_ENV]) == spec["completions"]  # the count --shard auto needs
    # what each pod then finds
    found = [detect_shard({"JOB_COMPLETION_INDEX": str(i), **env}).shard
             for i in range(spec["completions"])]
    assert found == [(i + 1, spec["completions"]) for i in range(spec["completions"])]
