"""Shared test helpers: the golden official outputs (when ../shared exists), tiny seeded models,
small synthetic images, and the one-thread fixture for tests on tiny tensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from liif_cli.model import LIIF, LMLIIF, LiifConfig, LmfConfig

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHARED = REPO.parent / "shared"
SHARED_GOLDEN = SHARED / "golden"
SHARED_GOLDEN_CKPT = SHARED_GOLDEN / "edsr-baseline-liif-seed0-cudatag.pth"
GOLDEN = SHARED_GOLDEN
DATA = SHARED / "data"
SUBPROCESS_TIMEOUT_S = 180  # generous: the test machine is shared and often loaded
TINY_ENCODER = {"n_resblocks": 2, "n_feats": 16, "no_upsampling": True}  # EDSR-baseline, tiny


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


def force_cpu(monkeypatch) -> None:
    """Make this process, and the commands it starts, see no GPU: `--device auto` is the CPU.

    In process: torch.cuda and MPS report none. Subprocesses: CUDA_VISIBLE_DEVICES hides CUDA,
    LIIF_DEVICE=cpu sets `--device` of upscale, batch and eval (MPS has no hiding variable).
    """
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("LIIF_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def cpu_unless_marked_cuda(request, monkeypatch):
    """Every test not marked `cuda` runs on the CPU, so `pytest` passes the same on a GPU
    workstation or a Mac as here (tests assert "cpu fp32" after a run with no --device)."""
    if "cuda" not in request.keywords:
        force_cpu(monkeypatch)
    else:  # the library's fp32 policy (Upscaler applies it; engine tests call render directly)
        from liif_cli.runtime.device import set_tf32

        set_tf32(torch.device("cuda"), False)


@pytest.fixture
def fake_gpus(monkeypatch):
    """Fake CUDA GPUs for the device policy: `fake_gpus({0: (8, 0), 1: (7, 5)})` makes torch
    report them (capability per index; 80 GiB each, 10 GiB of it free). No tensor can go there:
    for the questions asked of torch, not for running on them."""

    def fake(capabilities: dict[int, tuple[int, int]]) -> None:
        def index(dev=None) -> int:
            dev = torch.device("cuda", 0) if dev is None else torch.device(dev)
            return 0 if dev.index is None else dev.index

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(capabilities))
        monkeypatch.setattr(torch.cuda, "get_device_capability",
                            lambda dev=None: capabilities[index(dev)])
        monkeypatch.setattr(torch.cuda, "mem_get_info",
                            lambda dev=None: (10 * 2**30, 80 * 2**30))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulation
        monkeypatch.setattr(torch.cuda, "set_device", lambda dev: None)

    return fake


SHARED_ONLY = ("only in the project's CI and development machines: ../shared is never "
               "committed, and a user's clone has none")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The official LIIF code's outputs (../shared/golden)."""
    if not SHARED_GOLDEN_CKPT.exists():
        pytest.skip(f"golden official outputs not found at {GOLDEN} ({SHARED_ONLY})")
    return GOLDEN


@pytest.fixture(scope="session")
def shared_golden_ckpt(golden_dir) -> Path:
    """The official checkpoint file itself (saved on a GPU)."""
    return SHARED_GOLDEN_CKPT


@pytest.fixture(scope="session")
def golden_manifest(golden_dir) -> dict:
    return json.loads((golden_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def golden_model(golden_dir) -> LIIF:
    """The official checkpoint's model."""
    from liif_cli.runtime.weights import load_checkpoint

    return load_checkpoint(SHARED_GOLDEN_CKPT)


@pytest.fixture(scope="session")
def golden_ckpt(golden_dir) -> Path:
    """The official checkpoint file."""
    return SHARED_GOLDEN_CKPT


def tiny_config(**kw) -> LiifConfig:
    """A small EDSR-baseline-LIIF (2 blocks, 16 feats, MLP 32-32): fast enough for any test."""
    return LiifConfig(encoder="edsr-baseline", encoder_args=TINY_ENCODER, hidden=(32, 32), **kw)


def random_model(config: LiifConfig | None = None, seed: int = 0) -> LIIF:
    """A model with seeded random weights large enough that outputs vary across the image."""
    torch.manual_seed(seed)
    model = LIIF(config or tiny_config())
    for m in model.imnet.linears:
        torch.nn.init.kaiming_normal_(m.weight)
    return model.eval()


def random_lmf(seed: int = 0, **kw) -> LMLIIF:
    """A tiny-encoder LM-LIIF with the official decoder sizes, outputs far from flat."""
    torch.manual_seed(seed)
    model = LMLIIF(LmfConfig(encoder_args=TINY_ENCODER, **kw))
    for lin in model.imnet.linears + model.hypernet.linears:
        torch.nn.init.kaiming_normal_(lin.weight)
        torch.nn.init.normal_(lin.bias, std=0.1)
    return model.eval()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread is faster, and immune to busy neighbours. A module takes it with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def autocasts(monkeypatch) -> list[tuple]:
    """(dtype, enabled) of every torch.autocast region the test enters."""
    seen: list[tuple] = []
    real = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        seen.append((dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    return seen


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


def write_images(folder: Path, names: list[str], hw: tuple[int, int] = (16, 20)) -> None:
    """Photo-like PNGs (or any format Pillow takes from the name) at folder/name, seeded by
    position; subfolders in the names are made."""
    for k, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo_like(*hw, seed=k)).save(path)


def listing(folder: Path) -> list[str]:
    """The names in a folder, sorted: what a run left there (temporaries included)."""
    return sorted(p.name for p in folder.iterdir())


def onnx_upscale(session, image: np.ndarray, out_hw, chunk: int = 4096) -> np.ndarray:
    """Every output pixel's query through an exported ONNX graph (an onnxruntime session),
    N chunked, as the README tells other runtimes to do; rounded to 8-bit levels (ints)."""
    from liif_cli.model.coords import make_cell, make_coord

    H, W = out_hw
    x = (image.astype(np.float32) / 255).transpose(2, 0, 1)[None]
    coord = make_coord((H, W)).numpy()[None]
    cell = make_cell((H, W), H * W).numpy()[None]
    parts = [session.run(["rgb"], {"image": x, "coord": coord[:, i:i + chunk],
                                   "cell": cell[:, i:i + chunk]})[0]
             for i in range(0, H * W, chunk)]
    rgb = np.concatenate(parts, 1)[0].reshape(H, W, 3)
    assert np.isfinite(rgb).all()
    return np.round(rgb * 255).astype(int)
