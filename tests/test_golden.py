"""The committed golden of the official LIIF code (tests/data/liif_golden): a clone without
../shared still proves LIIF exact. Its weights are rebuilt from their seed and checked against
the official checkpoint's hash; its outputs are copies of the official ones."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import (
    COMMITTED_GOLDEN,
    SHARED_GOLDEN,
    SHARED_GOLDEN_CKPT,
    official_golden_weights,
)
from PIL import Image

from liif_cli.runtime import engine
from liif_cli.runtime.weights import state_dict_sha256

ORACLE_TOL = 1e-4  # max |Δ| on raw [0, 1] outputs: float reordering only (golden README)
MAX_BYTES = 3_000_000  # the committed golden stays small
MANIFEST = json.loads((COMMITTED_GOLDEN / "manifest.json").read_text())


def test_rebuilt_weights_are_the_official_checkpoints():
    sd = official_golden_weights().state_dict()
    assert state_dict_sha256(sd) == MANIFEST["committed_subset"]["state_dict_sha256"]
    if SHARED_GOLDEN_CKPT.exists():  # and tensor for tensor, where the checkpoint is at hand
        from liif_cli.runtime.weights import load_checkpoint

        official = load_checkpoint(SHARED_GOLDEN_CKPT).state_dict()
        assert sd.keys() == official.keys()
        assert all(torch.equal(sd[k], official[k]) for k in sd)


def test_committed_files_are_the_official_ones_and_small():
    files = MANIFEST["committed_subset"]["files"]
    total = sum((COMMITTED_GOLDEN / rel).stat().st_size for rel in files)
    assert 0 < total < MAX_BYTES
    if SHARED_GOLDEN.is_dir():
        for rel in files:
            assert (COMMITTED_GOLDEN / rel).read_bytes() == (SHARED_GOLDEN / rel).read_bytes(), rel


def test_committed_golden_outputs_reproduce():
    """Our forward on the committed inputs equals the official raw outputs, whatever
    ../shared holds: ×2 and an anisotropic, non-integer case."""
    model = official_golden_weights()
    for case in ("synth_48x40_to_96x80", "synth_31x57_to_40x300"):
        name, size = case.split("_to_")
        H, W = (int(v) for v in size.split("x"))
        lr = np.asarray(Image.open(COMMITTED_GOLDEN / "inputs" / f"{name}.png").convert("RGB"))
        img = torch.from_numpy(lr.copy()).permute(2, 0, 1).float() / 255
        out = np.empty((H, W, 3), np.float32)
        engine.render(model, img, (H, W), out)
        ref = np.load(COMMITTED_GOLDEN / "edsr-baseline-liif" / f"{case}.raw.npy")
        np.testing.assert_allclose(out, ref, rtol=0, atol=ORACLE_TOL, err_msg=case)
