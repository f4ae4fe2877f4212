"""Every ```python block of README.md runs as printed, in a folder of small images it makes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, photo_like
from PIL import Image

BLOCKS = re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), re.S | re.M)


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
