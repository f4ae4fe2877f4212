"""Benchmark of `liif view` (not collected by pytest; run it by hand).

    python scripts/bench_view.py                     # B100's first photo, or the bundled example
    python scripts/bench_view.py --image photo.png --models default,fast --zoom 4

A 1280×800 viewport at 400 % over a photo, centred, as the page asks for it: the tiles under
the viewport (`session.PAGE_TILE` a side), nearest the centre first, three requests open at
once (the page's MAX_INFLIGHT), over HTTP to a `ViewServer` in this process. Reports the time
to the first model tile and to the whole viewport, per model (`default`, and `fast` when it is
bundled or given). Each model is loaded before the clock starts, as `liif view` loads it at
start. Targets (issue 24, 2-core CPU): first tile within ~2 s, viewport within ~15 s with
`default`. The load average is printed: on a busy machine the numbers are not the tool's.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
B100 = REPO.parent / "shared" / "data" / "val" / "B100" / "HR"
EXAMPLE = REPO / "liif_cli" / "assets" / "example.png"
VIEWPORT = (1280, 800)  # device pixels (W, H)
INFLIGHT = 3  # as the page (static/view.js MAX_INFLIGHT)


def default_image() -> Path:
    photos = sorted(B100.glob("*.png")) if B100.is_dir() else []
    return photos[0] if photos else EXAMPLE


def viewport_tiles(out_hw: tuple[int, int], tile: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of the tiles under a centred VIEWPORT, nearest the centre first."""
    H, W = out_hw
    vw, vh = min(VIEWPORT[0], W), min(VIEWPORT[1], H)
    x0, y0 = (W - vw) // 2, (H - vh) // 2
    cx, cy = x0 + vw / 2, y0 + vh / 2
    tiles = []
    for ty in range(y0 // tile * tile, y0 + vh, tile):
        for tx in range(x0 // tile * tile, x0 + vw, tile):
            w, h = min(tile, W - tx), min(tile, H - ty)
            tiles.append((tx, ty, w, h))
    return sorted(tiles, key=lambda t: (t[0] + t[2] / 2 - cx) ** 2 + (t[1] + t[3] / 2 - cy) ** 2)


def bench(image: Path, model: str, zoom: float, device: str) -> dict:
    from liif_cli.view.server import ViewServer
    from liif_cli.view.session import PAGE_TILE, ViewSession, output_hw

    session = ViewSession([image], models=[model], device=device)
    srv = ViewServer(session, "127.0.0.1", 0)
    srv.start()
    try:
        scale = f"{zoom:g}"
        _, out_hw = output_hw(session.images[0], scale)
        tiles = viewport_tiles(out_hw, PAGE_TILE)
        base = f"http://127.0.0.1:{srv.port}/api/tile?token={srv.token}&image=0&scale={scale}"

        def fetch(t):
            x, y, w, h = t
            url = f"{base}&x={x}&y={y}&w={w}&h={h}&model={session.cli_models[0]}&view=b&gen=1"
            with urllib.request.urlopen(url, timeout=3600) as r:
                r.read()
            return time.perf_counter()

        t0 = time.perf_counter()
        with ThreadPoolExecutor(INFLIGHT) as pool:
            done = sorted(f.result() - t0 for f in as_completed(pool.submit(fetch, t)
                                                                 for t in tiles))
        return {"model": session.cli_models[0], "image": image.name,
                "input": f"{session.images[0].width}x{session.images[0].height}",
                "scale": scale, "output": f"{out_hw[1]}x{out_hw[0]}", "tiles": len(tiles),
                "first_tile_s": round(done[0], 2), "viewport_s": round(done[-1], 2),
                "device": str(session.device)}
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", type=Path, default=None)
    ap.add_argument("--models", default=None, help="comma-separated (default: default, and "
                    "fast when bundled)")
    ap.add_argument("--zoom", type=float, default=4.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `liif` sets it
    from liif_cli.runtime.weights import list_models

    names = [r["name"] for r in list_models()]
    models = args.models.split(",") if args.models else ["default"] + (
        ["fast"] if "fast" in names else [])
    image = args.image or default_image()
    import torch

    print(f"# {VIEWPORT[0]}x{VIEWPORT[1]} viewport at {args.zoom * 100:g} % over {image}; "
          f"torch threads {torch.get_num_threads()}, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    rows = [bench(image, m, args.zoom, args.device) for m in models]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for r in rows:
        print(f"{r['model']:>10}  {r['input']} x{r['scale']} -> {r['output']}  {r['tiles']} "
              f"tiles  first tile {r['first_tile_s']:.2f} s  viewport {r['viewport_s']:.2f} s")


if __name__ == "__main__":
    main()
