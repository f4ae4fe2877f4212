"""keep_freed_memory: large CPU tensors are reused, not page-faulted in again on every step."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from liif_cli.runtime.malloc import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # 64 MiB, made and dropped: the heap grows for the first few (each
    torch.empty(16 * 2**20).fill_(1)  # aligned request is a little larger than the freed block)
before = faults()
for _ in range(10):
    torch.empty(16 * 2**20).fill_(1)
print(faults() - before)
"""
PAGES = 64 * 2**20 // 4096  # faults to touch one 64 MiB tensor


def faults_for_ten_tensors(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="tunes glibc's allocator; does nothing elsewhere")
@pytest.mark.slow
def test_kept_memory_is_reused_instead_of_faulted_in_again():
    assert faults_for_ten_tensors("glibc") > 5 * PAGES  # glibc: mmap, fault, munmap, each time
    # the better of two runs: on the dev machine (kdamond running) a run now and then faulted
    # some kept pages in again, for reasons outside the process (the older test too)
    assert min(faults_for_ten_tensors("keep") for _ in range(2)) < PAGES // 2


KEPT_PROBE = """
import os, sys, torch
from liif_cli.runtime.malloc import KEPT_MAX, keep_freed_memory
assert keep_freed_memory()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
small = KEPT_MAX // 2  # bytes: kept for reuse
big = KEPT_MAX + 2**24  # bytes: an image-sized block, handed back
base = rss()
torch.empty(small // 4).fill_(1)
after_small = rss()
torch.empty(big // 4).fill_(1)
print(after_small - base, rss() - after_small)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="tunes glibc's allocator; does nothing elsewhere")
@pytest.mark.slow
def test_kept_memory_is_bounded():
    """Freed blocks below the cap stay resident (reused); an image-sized one goes back."""
    from liif_cli.runtime.malloc import KEPT_MAX

    out = subprocess.run([sys.executable, "-c", KEPT_PROBE], capture_output=True, text=True,
                         check=True)
    kept_small, kept_big = (int(v) for v in out.stdout.split())
    assert kept_small > KEPT_MAX // 2 * 0.9  # still in the heap after its free
    assert kept_big < KEPT_MAX // 8  # above the cap, freed: not kept


def test_train_keeps_freed_memory(monkeypatch, tmp_path):
    import liif_cli.tasks.train.loop as tr
    from liif_cli.errors import LiifError

    called = []
    monkeypatch.setattr(tr, "keep_freed_memory", lambda **kw: called.append(kw))
    with pytest.raises(LiifError):  # no data: stops after the set-up, which is what we check
        tr.train(tr.TrainConfig(data=str(tmp_path / "none"), out=str(tmp_path / "run")))
    assert called == [{"kept_max": None}]  # all of it: a training step's peak recurs


def test_rendering_commands_keep_freed_memory_in_their_process(monkeypatch, tmp_path):
    """upscale, batch, eval and bench own their process: each asks for it (before any work; the
    inputs here are missing, so each then stops with its error)."""
    from typer.testing import CliRunner

    import liif_cli.runtime.malloc as malloc
    from liif_cli.cli import app

    called = []
    monkeypatch.setattr(malloc, "keep_freed_memory", lambda: called.append(True) or True)
    none = str(tmp_path / "none.png")
    for args in (["upscale", none, "-s", "2"], ["batch", none, str(tmp_path / "o"), "-s", "2"],
                 ["eval", "--data", str(tmp_path), "--scales", "2"],
                 ["bench", "--model", str(tmp_path / "none.pth")]):
        n = len(called)
        CliRunner().invoke(app, args)
        assert len(called) == n + 1, args



ENCODE_PROBE = """
import resource, torch
from liif_cli.model.encoders import make_encoder
from liif_cli.runtime.malloc import KEPT_MAX, keep_freed_memory
assert keep_freed_memory()
side = int((KEPT_MAX * 0.45 / 256) ** 0.5)  # one 64-channel fp32 activation: 0.45 of the cap
enc = make_encoder("edsr-baseline", {"n_resblocks": 2, "no_upsampling": True}).eval()
x = torch.rand(1, 3, side, side).contiguous(memory_format=torch.channels_last)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with torch.inference_mode():
    enc(x); enc(x)
    before = faults()
    enc(x); enc(x)
print(faults() - before, side * side * 256 // 4096)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="tunes glibc's allocator; does nothing elsewhere")
@pytest.mark.slow
def test_an_encoder_reuses_its_activations():
    """Activations under the cap, several live at once: the heap keeps them. (Trimming the
    heap's top beyond the cap, as an earlier version did, faulted 14 activations' pages in
    again per encode here, and made `fast`'s 500² encode twice as slow.)"""
    runs = [subprocess.run([sys.executable, "-c", ENCODE_PROBE], capture_output=True,
                           text=True, check=True).stdout.split() for _ in range(2)]
    faults = min(int(r[0]) for r in runs)  # the better of two, as above
    one_activation = int(runs[0][1])
    assert faults < one_activation // 4
