"""Training curves drawn with Pillow (no plotting dependency): loss and validation PSNR.

The loss of one batch is noisy (the scale and the crop are random), so its running mean is drawn
over it; validation is drawn as each scale's gain since the run's first validation, so that the
hundredths of a dB a long fine-tune gains are as visible as a new run's decibels, on one axis.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from liif_cli.errors import DataError
from liif_cli.io.files import atomic_write

PANEL_W, PANEL_H, MARGIN = 640, 320, 48  # px
SMOOTH_POINTS = 40  # the loss's running mean spans 1/40 of the logged steps
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
Series = list[tuple[float, float]]


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"no metrics.jsonl in {run_dir}: is it a `liif train` run folder?")
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    recs = []
    for line in lines:
        try:
            rec = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:  # a line cut short (a kill, a full disk): left out
            continue
        if isinstance(rec, dict):
            recs.append(rec)
    return recs


def running_mean(series: Series, n: int) -> Series:
    """Each point's y as the mean of the `n` points up to it (fewer at the start)."""
    out, total = [], 0.0
    for i, (x, y) in enumerate(series):
        total += y - (series[i - n][1] if i >= n else 0.0)
        out.append((x, total / min(i + 1, n)))
    return out


def curves(recs: list[dict]) -> dict[str, dict[str, Series]]:
    """The panels of a run's metrics: {"loss": {name: points}, "val": {name: points}}; x in
    epochs. Validation: each scale's gain over its first value, named with both values."""
    steps = [r for r in recs if r.get("kind") == "step"]
    iters = max((r["iteration"] for r in steps), default=1)
    loss = [(r["epoch"] - 1 + r["iteration"] / iters, r["loss"]) for r in steps]
    n = max(1, len(loss) // SMOOTH_POINTS)
    panels: dict[str, dict[str, Series]] = {"loss": {"loss": loss}, "val": {}}
    if n > 1:
        panels["loss"][f"running mean of {n}"] = running_mean(loss, n)
    psnr: dict[str, Series] = {}
    for r in recs:
        if r.get("kind") == "val":
            for k, v in r["psnr"].items():
                psnr.setdefault(k, []).append((r["epoch"], v))
    for k, pts in psnr.items():
        first = pts[0][1]
        panels["val"][f"{k} {first:.3f} -> {pts[-1][1]:.3f} dB"] = [(x, y - first)
                                                                      for x, y in pts]
    return panels


def _panel(draw: ImageDraw.ImageDraw, top: int, title: str, series: dict[str, Series],
           colours: list[str]) -> None:
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

    for i in range(5):  # y grid: 5 labelled lines
        y = ymin + (ymax - ymin) * i / 4
        py = to_px(xmin, y)[1]
        draw.line([(x0, py), (x1, py)], fill="#e0e0e0")
        draw.text((2, py - 6), f"{y:.3g}", fill="black")
    draw.text((x0, y1 + 4), f"{xmin:g}", fill="black")
    draw.text((x1 - 70, y1 + 4), f"{xmax:g} epochs", fill="black")
    for i, (name, s) in enumerate(series.items()):
        c = colours[i % len(colours)]
        if len(s) > 1:
            draw.line([to_px(*p) for p in s], fill=c, width=1 if i == 0 and title.startswith(
                "training") else 2)
        else:
            x, y = to_px(*s[0])
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=c)
        draw.text((x1 - 200, y0 + 4 + 12 * i), name, fill=c)


def plot_run(run_dir: str | Path) -> Path:
    """Write RUN_DIR/curves.png: training loss and its running mean (top), validation PSNR
    per scale as the gain since the first validation (bottom)."""
    panels = curves(read_metrics(Path(run_dir)))
    img = Image.new("RGB", (PANEL_W, 2 * PANEL_H), "white")
    draw = ImageDraw.Draw(img)
    _panel(draw, 0, "training L1 loss", panels["loss"], ["#a6c8e6", "#1f4e9c"])
    _panel(draw, PANEL_H, "validation PSNR: gain since the first validation (dB)",
           panels["val"], COLOURS)
    path = Path(run_dir) / "curves.png"  # redrawn on each call: replaced, atomically
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), overwrite=True)
    return path
