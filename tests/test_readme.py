"""README.md as printed: its two set-up commands are CI's and the package's, and every ```python
block runs, in a folder of small images it makes."""

from __future__ import annotations

import re
from pathlib import Path

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
