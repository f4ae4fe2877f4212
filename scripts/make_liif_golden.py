"""Make tests/data/liif_golden: a small committed subset of ../shared/golden (the official LIIF
code's outputs), so that a clone without ../shared still proves LIIF exact.

The official checkpoint (EDSR-baseline-LIIF, 18.9 MB with its optimizer state, 6.3 MB as an
fp32 state dict) is too large to commit. It is not needed: its weights can be rebuilt from
their seed (tests/conftest.py `official_golden_weights`: seed 0, the official construction
order, Kaiming MLP, last layer ×0.6). This script records the real checkpoint's
`state_dict_sha256`; the tests rebuild the weights and check that hash before comparing
anything (and, where ../shared exists, that the rebuilt weights equal the checkpoint's). Everything else copied here was written by the official code
(github yinboc/liif 4c833f8f, demo.py and test.py, see ../shared/golden/README.md): the inputs,
the raw outputs of six cases (down, ×1, ×2, non-integer, anisotropic), the encoder features and
the evaluation files (LR made by the official resize_fn, ground truth, raw prediction; PSNRs
in the manifest) and the official RDN-LIIF state-dict key list.

    python scripts/make_liif_golden.py [--shared ../shared/golden] [--out tests/data/liif_golden]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from liif_cli.runtime.weights import state_dict_sha256

REPO = Path(__file__).resolve().parents[1]
CASES = ["synth_31x57_to_16x28", "synth_31x57_to_31x57", "synth_48x40_to_48x40",
         "synth_48x40_to_96x80", "synth_48x40_to_173x131", "synth_31x57_to_40x300"]
FILES = (["inputs/synth_48x40.png", "inputs/synth_31x57.png", "inputs/synth_100x84_hr.png",
          "edsr-baseline-liif/synth_48x40.feat.npy", "edsr-baseline-liif/synth_31x57.feat.npy"]
         + ["rdn-liif-state-dict.txt"]
         + [f"edsr-baseline-liif/{c}.raw.npy" for c in CASES]
         + [f"edsr-baseline-liif/eval/synth_100x84_x{s}_{k}"
            for s in (2, 3, 4, 6) for k in ("lr.npy", "lr.png", "gt.npy", "pred_raw.npy")])



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "golden"))
    ap.add_argument("--out", default=str(REPO / "tests" / "data" / "liif_golden"))
    args = ap.parse_args()
    src, out = Path(args.shared), Path(args.out)
    from liif_cli.runtime.weights import load_checkpoint

    official = load_checkpoint(src / "edsr-baseline-liif-seed0-cudatag.pth").state_dict()
    for rel in FILES:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, out / rel)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["committed_subset"] = {
        "state_dict_sha256": state_dict_sha256(official),
        "weights_recipe": "torch.manual_seed(0); the official EDSR-baseline-LIIF built in its "
                          "construction order; kaiming_normal_ on every MLP Linear weight in "
                          "order; the last one's weight × 0.6",
        "weights": "not included: rebuilt by tests/conftest.py official_golden_weights() and "
                   "checked against state_dict_sha256 (of the official checkpoint's weights)",
        "files": FILES,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum((out / rel).stat().st_size for rel in [*FILES, "manifest.json"])
    print(f"wrote {len(FILES) + 1} files, {total / 1e6:.2f} MB, to {out}")


if __name__ == "__main__":
    main()
