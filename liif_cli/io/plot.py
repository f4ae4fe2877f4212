"""Training curves drawn with Pillow (no plotting dependency): loss and validation PSNR."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from liif_cli.errors import DataError
from liif_cli.io.files import atomic_write

PANEL_W, PANEL_H, MARGIN = 640, 320, 48  # px


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise DataError(f"no metrics.jsonl in {run_dir}: is it a `liif train` run folder?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _panel(draw: ImageDraw.ImageDraw, top: int, title: str,
           series: dict[str, list[tuple[float, float]]]) -> None:
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    x0, y0, x1, y1 = MARGIN, top + MARGIN // 2, PANEL_W - MARGIN // 2, top + PANEL_H - MARGIN
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text((x0, top + 4), title, fill="black")
    pts = [p for s in series.values() for p in s]
    if not pts:
        draw.text((x0 + 10, y0 + 10), "no data yet", fill="gray")
        return
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    xmin, xmax = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    ymin, ymax = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (x0 + (x - xmin) / (xmax - xmin) * (x1 - x0),
                y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))

    draw.text((x0, y1 + 4), f"{xmin:g}", fill="black")
    draw.text((x1 - 40, y1 + 4), f"{xmax:g} epochs", fill="black")
    draw.text((2, y0), f"{ymax:.3g}", fill="black")
    draw.text((2, y1 - 10), f"{ymin:.3g}", fill="black")
    for i, (name, s) in enumerate(series.items()):
        c = colours[i % len(colours)]
        if len(s) > 1:
            draw.line([to_px(*p) for p in s], fill=c, width=2)
        else:
            x, y = to_px(*s[0])
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=c)
        draw.text((x1 - 120, y0 + 4 + 12 * i), name, fill=c)


def plot_run(run_dir: str | Path) -> Path:
    """Write RUN_DIR/curves.png: training loss (top) and validation PSNR per scale (bottom)."""
    recs = read_metrics(Path(run_dir))
    steps = [r for r in recs if r.get("kind") == "step"]
    iters = max((r["iteration"] for r in steps), default=1)
    loss = [(r["epoch"] - 1 + r["iteration"] / iters, r["loss"]) for r in steps]
    psnr: dict[str, list[tuple[float, float]]] = {}
    for r in recs:
        if r.get("kind") == "val":
            for k, v in r["psnr"].items():
                psnr.setdefault(k, []).append((r["epoch"], v))
    img = Image.new("RGB", (PANEL_W, 2 * PANEL_H), "white")
    draw = ImageDraw.Draw(img)
    _panel(draw, 0, "training L1 loss", {"loss": loss})
    _panel(draw, PANEL_H, "validation PSNR (dB)", psnr)
    path = Path(run_dir) / "curves.png"  # redrawn on each call: replaced, atomically
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), overwrite=True)
    return path
