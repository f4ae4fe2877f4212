"""Model-card rows from `liif eval --json` reports: the Markdown the README's cards show.

Used by scripts/card_tables.py (prints the rows), scripts/bundle_default.py (the same results
into bundled.json) and the tests that check the README shows exactly these rows. PSNR in dB;
each row: "model / bicubic (gain)" per scale, or for degraded reports "model (gain) · default
(gain) · bicubic" per scale.
"""

from __future__ import annotations

import json
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
