"""Model-card rows from `liif eval --json` reports (maintainers only).

    mkdir -p /tmp/card
    liif eval --data ../shared/data/val/Set5/HR --lr-dir ../shared/data/val/Set5/LR_bicubic \\
        --scales 2,3,4,6,8,12 --protocol benchmark --precision fp32 --json /tmp/card/Set5.json
    python scripts/card_tables.py /tmp/card/Set5.json /tmp/card/Set14.json /tmp/card/B100.json

Prints one Markdown row per report (`liif_cli.data.cards`, which the tests also use to check
that the README shows exactly these rows). The same results go into bundled.json
(scripts/bundle_default.py --eval-json).
"""

from __future__ import annotations

import sys
from pathlib import Path

from liif_cli.data.cards import (
    card_rows,
    degraded_metrics_from_reports,
    degraded_rows,
    metrics_from_reports,
)

if __name__ == "__main__":
    # --degraded: the real-world card's rows (reports of `liif eval --degrade`, both models)
    args = sys.argv[1:]
    missing = [p for p in args if p != "--degraded" and not Path(p).is_file()]
    if missing or not [p for p in args if p != "--degraded"]:
        sys.exit(f"error: no such report: {missing[0]}" if missing else
                 "usage: card_tables.py [--degraded] REPORT.json ...")
    if args and args[0] == "--degraded":
        print("\n".join(degraded_rows(degraded_metrics_from_reports([Path(p) for p in args[1:]]))))
    else:
        print("\n".join(card_rows(metrics_from_reports([Path(p) for p in args]))))
