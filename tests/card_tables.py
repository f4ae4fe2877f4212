"""Model-card rows from `liif eval --json` reports (maintainers only).

    liif eval --data ../shared/data/val/Set5/HR --lr-dir ../shared/data/val/Set5/LR_bicubic \\
        --scales 2,3,4,6,8,12 --protocol benchmark --precision bf16 --json /tmp/card/Set5.json
    python tests/card_tables.py /tmp/card/Set5.json /tmp/card/Set14.json /tmp/card/B100.json

Prints one Markdown row per report: "model / bicubic (gain)" per scale, PSNR in dB.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(paths: list[Path]) -> list[str]:
    lines = []
    for path in paths:
        recs = json.loads(path.read_text())
        model = {r["scale"]: r["psnr"] for r in recs if r["method"] != "bicubic"}
        bic = {r["scale"]: r["psnr"] for r in recs if r["method"] == "bicubic"}
        cells = [f"{model[s]:.2f} / {bic[s]:.2f} ({model[s] - bic[s]:+.2f})"
                 for s in sorted(model, key=float)]
        lines.append(f"| {recs[0]['dataset']} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    print("\n".join(rows([Path(p) for p in sys.argv[1:]])))
