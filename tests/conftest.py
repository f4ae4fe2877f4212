"""Shared fixtures: the golden official outputs (when ../shared exists) and tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from liif_cli.model import LIIF, LiifConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN = SHARED / "golden"
GOLDEN_CKPT = GOLDEN / "edsr-baseline-liif-seed0-cudatag.pth"
DATA = SHARED / "data"


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN_CKPT.exists():
        pytest.skip(f"golden official outputs not found at {GOLDEN} (only in the project's CI "
                    "and development machines; a user's clone has no ../shared)")
    return GOLDEN


@pytest.fixture(scope="session")
def golden_manifest(golden_dir) -> dict:
    return json.loads((golden_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def golden_model(golden_dir) -> LIIF:
    from liif_cli.runtime.weights import load_checkpoint

    return load_checkpoint(golden_dir / "edsr-baseline-liif-seed0-cudatag.pth").model


def tiny_config(**kw) -> LiifConfig:
    """A small EDSR-baseline-LIIF (2 blocks, 16 feats, MLP 32-32): fast enough for any test."""
    args = {"n_resblocks": 2, "n_feats": 16, "no_upsampling": True}
    return LiifConfig(encoder="edsr-baseline", encoder_args=args, hidden=(32, 32), **kw)


def random_model(config: LiifConfig | None = None, seed: int = 0) -> LIIF:
    """A model with seeded random weights large enough that outputs vary across the image."""
    torch.manual_seed(seed)
    model = LIIF(config or tiny_config())
    for m in model.imnet.linears:
        torch.nn.init.kaiming_normal_(m.weight)
    return model.eval()


@pytest.fixture
def tiny_model() -> LIIF:
    return random_model()


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_model) -> Path:
    from liif_cli.runtime.weights import save_checkpoint

    path = tmp_path / "tiny.pth"
    save_checkpoint(tiny_model, path)
    return path


def photo_like(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A smooth-plus-edges synthetic uint8 image (not from ../shared/data)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = [np.sin(x / (3 + c) + c) * np.cos(y / (5 + c)) for c in range(channels)]
    img = np.stack(base, -1) * 0.35 + 0.5
    img[(x // 7 + y // 5) % 2 == 0] += 0.1  # hard edges
    img += rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
