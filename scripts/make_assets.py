"""Regenerate liif_cli/assets/example.png: a small scene drawn here (no outside images).

Drawn at 4× and downsampled with a box filter, so edges are anti-aliased like a photo's.
Run: python scripts/make_assets.py
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

W, H, SS = 160, 120, 4  # output size and supersampling factor


def scene() -> Image.Image:
    w, h = W * SS, H * SS
    y = np.linspace(0, 1, h)[:, None, None]
    sky = (np.array([70, 130, 200]) * (1 - y) + np.array([200, 220, 240]) * y)
    img = Image.fromarray(np.broadcast_to(sky, (h, w, 3)).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse([w * 0.72, h * 0.08, w * 0.86, h * 0.27], fill=(255, 220, 120))
    d.polygon([(0, h * 0.62), (w * 0.2, h * 0.3), (w * 0.42, h * 0.58), (w * 0.6, h * 0.36),
               (w, h * 0.64), (w, h), (0, h)], fill=(90, 110, 95))
    d.rectangle([0, h * 0.7, w, h], fill=(80, 140, 70))
    d.rectangle([w * 0.18, h * 0.5, w * 0.48, h * 0.82], fill=(190, 80, 60))
    d.polygon([(w * 0.15, h * 0.52), (w * 0.33, h * 0.36), (w * 0.51, h * 0.52)],
              fill=(110, 50, 40))
    for x in (0.22, 0.38):
        d.rectangle([w * x, h * 0.58, w * (x + 0.06), h * 0.67], fill=(240, 230, 160))
        d.line([w * (x + 0.03), h * 0.58, w * (x + 0.03), h * 0.67], fill=(60, 40, 30), width=3)
    d.rectangle([w * 0.3, h * 0.66, w * 0.36, h * 0.82], fill=(70, 45, 30))
    for i in range(28):  # a picket fence: fine, regular detail
        x0 = w * 0.55 + i * w * 0.016
        d.rectangle([x0, h * 0.72, x0 + w * 0.008, h * 0.84], fill=(245, 245, 240))
    d.rectangle([w * 0.55, h * 0.76, w, h * 0.775], fill=(245, 245, 240))
    d.text((w * 0.05, h * 0.88), "liif-cli", fill=(255, 255, 255), font_size=int(h * 0.09))
    rng = np.random.default_rng(0)
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(SS * 0.4))).astype(np.float32)
    arr += rng.normal(0, 3, arr.shape)  # a little sensor-like noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).resize((W, H), Image.BOX)


if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "liif_cli" / "assets" / "example.png"
    scene().save(out, optimize=True)
    print(out)
