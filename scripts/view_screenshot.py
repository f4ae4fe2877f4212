"""The README's `liif view` screenshot, made by the tool (run by hand; needs chromium,
chromium-driver and selenium, as tests/test_view_browser.py).

    python scripts/view_screenshot.py              # writes docs/view.png

The bundled example at 400 %, bicubic on the left of the split and the bundled `default` on
the right, once every tile of both has arrived; saved as a 256-colour PNG to keep it small.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_view_browser import start_browser  # noqa: E402 - the same headless flags

from liif_cli.io.files import atomic_write_bytes  # noqa: E402
from liif_cli.view.server import ViewServer  # noqa: E402
from liif_cli.view.session import ViewSession  # noqa: E402

EXAMPLE = REPO / "liif_cli" / "assets" / "example.png"
SIZE = (820, 560)  # CSS pixels of the window, device pixel ratio 1
TIMEOUT_S = 600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", type=Path, default=REPO / "docs" / "view.png")
    ap.add_argument("--zoom", type=float, default=4.0)
    args = ap.parse_args()
    srv = ViewServer(ViewSession([EXAMPLE], device="cpu"), "127.0.0.1", 0)
    srv.start()
    drv = start_browser(*SIZE)
    try:
        drv.get(srv.url)
        wait(drv, "v.ready")
        drv.execute_script(f"window.__liifView.zoomTo({args.zoom}); "
                           "window.__liifView.settleNow()")
        wait(drv, f"v.S === {args.zoom} && v.drawn.a.done === v.drawn.a.wanted && "
                  "v.drawn.b.done === v.drawn.b.wanted && v.inflight === 0")
        time.sleep(0.5)  # the last frame
        shot = Image.open(io.BytesIO(drv.get_screenshot_as_png())).convert("RGB")
    finally:
        drv.quit()
        srv.stop()
    buf = io.BytesIO()
    shot.quantize(256, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
    atomic_write_bytes(args.output, buf.getvalue(), overwrite=True)
    print(f"wrote {args.output} ({len(buf.getvalue()) / 1024:.0f} KiB)")


def wait(drv, expr: str) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < TIMEOUT_S:
        if drv.execute_script(f"const v = window.__liifView; return v && ({expr})"):
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {expr}")


if __name__ == "__main__":
    main()
