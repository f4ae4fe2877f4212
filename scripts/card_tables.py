"""Model-card rows from `liif eval --json` reports (maintainers only).

    liif eval --data ../shared/data/val/Set5/HR --lr-dir ../shared/data/val/Set5/LR_bicubic \\
        --scales 2,3,4,6,8,12 --protocol benchmark --precision bf16 --json /tmp/card/Set5.json
    python scripts/card_tables.py /tmp/card/Set5.json /tmp/card/Set14.json /tmp/card/B100.json

Prints one Markdown row per report: "model / bicubic (gain)" per scale, PSNR in dB. The same
results go into bundled.json (scripts/bundle_default.py --eval-json), and a test checks that the
README shows exactly these rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

Metrics = dict[str, dict[str, dict[str, float]]]  # dataset -> "x2" -> {"model", "bicubic"}


def metrics_from_reports(paths: list[Path]) -> Metrics:
    out: Metrics = {}
    for path in paths:
        for r in json.loads(Path(path).read_text()):
            method = "bicubic" if r["method"] == "bicubic" else "model"
            out.setdefault(r["dataset"], {}).setdefault(f"x{r['scale']:g}", {})[method] = \
                r["psnr"]
    return out


def degraded_metrics_from_reports(paths: list[Path]) -> dict[str, Metrics]:
    """spec -> dataset -> "x2" -> {"bicubic", "default", "model"}: reports of the model and of
    its partner `default` under `liif eval --degrade` (clean runs have spec "none")."""
    out: dict[str, Metrics] = {}
    for path in paths:
        for r in json.loads(Path(path).read_text()):
            method = r["method"] if r["method"] in ("bicubic", "default") else "model"
            cell = out.setdefault(r.get("degrade", "none"), {}).setdefault(
                r["dataset"], {}).setdefault(f"x{r['scale']:g}", {})
            cell[method] = r["psnr"]
    return out


def degraded_rows(metrics: dict[str, Metrics]) -> list[str]:
    """One Markdown row per (spec, dataset): per scale, "model (gain) · default (gain)"."""
    lines = []
    for spec, by_set in metrics.items():
        for dataset, by_scale in by_set.items():
            cells = []
            for _, m in sorted(by_scale.items(), key=lambda kv: float(kv[0][1:])):
                b = m["bicubic"]
                cells += [f"{m['model']:.2f} ({m['model'] - b:+.2f})",
                          f"{m['default']:.2f} ({m['default'] - b:+.2f})" if "default" in m
                          else "—", f"{b:.2f}"]
            lines.append(f"| {spec} | {dataset} | " + " | ".join(cells) + " |")
    return lines


def card_rows(metrics: Metrics) -> list[str]:
    lines = []
    for dataset, by_scale in metrics.items():
        cells = [f"{m['model']:.2f} / {m['bicubic']:.2f} ({m['model'] - m['bicubic']:+.2f})"
                 for _, m in sorted(by_scale.items(), key=lambda kv: float(kv[0][1:]))]
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    # --degraded: the real-world card's rows (reports of `liif eval --degrade`, both models)
    args = sys.argv[1:]
    if args and args[0] == "--degraded":
        print("\n".join(degraded_rows(degraded_metrics_from_reports([Path(p) for p in args[1:]]))))
    else:
        print("\n".join(card_rows(metrics_from_reports([Path(p) for p in args]))))
