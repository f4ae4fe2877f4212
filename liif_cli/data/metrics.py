"""Image quality under the LIIF paper's protocols: PSNR (yinboc/liif `utils.calc_psnr`) and SSIM.

- PSNR = -10·log10(mean(diff²)) over the kept pixels of one image (callers average over
  images). Protocols: `div2k` RGB, shave scale + 6 px each side; `benchmark` BT.601 luma of the
  difference (weights 65.738, 129.057, 25.064 / 256), shave = scale; `rgb` RGB, no shave (the
  official `eval_type: None`). `auto` picks `div2k` for DIV2K folders and `benchmark` for the
  rest, as the paper's tables do (Set5, Set14, B100, Urban100 use `benchmark` at every scale).
- SSIM (Wang et al. 2004): 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, data range
  1, 'valid' filtering (no padding), mean of the SSIM map; on the protocol's channels and
  shave: RGB channels averaged for `div2k`/`rgb`, luma Y = 16/255 + weights·RGB for `benchmark`.

Used by evaluation and by training's validation. Images are (H, W, 3) numpy arrays, uint8 or
float in [0, 1] units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from liif_cli.errors import DataError, UsageError

PROTOCOL_NAMES = ("auto", "div2k", "benchmark", "rgb")
DIV2K_SHAVE_EXTRA = 6  # px beyond the scale shaved off each side, LIIF utils.calc_psnr
# ITU-R BT.601 luma for [0, 1] RGB, as MATLAB's rgb2ycbcr and LIIF's calc_psnr ('benchmark')
Y_WEIGHTS = (65.738 / 256, 129.057 / 256, 25.064 / 256)
Y_OFFSET = 16 / 255  # luma black level; cancels in PSNR (a difference), matters for SSIM
SSIM_WINDOW = 11  # px, Gaussian window side (Wang et al. 2004)
SSIM_SIGMA = 1.5  # px
SSIM_K1, SSIM_K2 = 0.01, 0.03


@dataclass(frozen=True)
class Protocol:
    """How a prediction is compared with the ground truth."""

    name: str
    luma: bool  # compare BT.601 luma only (else all three RGB channels)
    shave_extra: int | None  # px shaved beyond the scale on each side; None: no shave

    def shave(self, scale: float) -> int:
        return 0 if self.shave_extra is None else int(scale) + self.shave_extra

    def check_size(self, what: str, size_wh: tuple[int, int], scale: float,
                   lr_hw: tuple[int, int], hr_hw: tuple[int, int], *, min_kept: int = 1,
                   hint: str = "") -> None:
        """DataError unless the image `what` (`size_wh`), scored at `scale` as an `lr_hw`
        input and an `hr_hw` ground truth, keeps `min_kept` px per side after the shave."""
        need = 2 * self.shave(scale) + min_kept
        if min(lr_hw) < 1 or min(hr_hw) < need:
            raise DataError(f"{what} ({size_wh[0]}×{size_wh[1]}) is too small for ×{scale:g} "
                            f"under the {self.name} protocol (needs at least {need} px per "
                            f"side after cropping to a multiple of the scale){hint}")


PROTOCOLS = {
    "div2k": Protocol("div2k", luma=False, shave_extra=DIV2K_SHAVE_EXTRA),
    "benchmark": Protocol("benchmark", luma=True, shave_extra=0),
    "rgb": Protocol("rgb", luma=False, shave_extra=None),
}


def get_protocol(name: str, dataset: str = "") -> Protocol:
    """'auto' -> div2k for DIV2K folders, benchmark otherwise (the paper's choice)."""
    if name == "auto":
        name = "div2k" if "div2k" in dataset.lower() else "benchmark"
    if name not in PROTOCOLS:
        raise UsageError(f"unknown protocol {name!r}: use {', '.join(PROTOCOL_NAMES)}")
    return PROTOCOLS[name]


def _as_float(img: np.ndarray) -> np.ndarray:
    """uint8 -> float64 in [0, 1] (value / 255); float passes through as float64."""
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255
    return img.astype(np.float64, copy=False)


def _shaved(x: np.ndarray, shave: int) -> np.ndarray:
    """Drop `shave` px on each side of (H, W, ...) x."""
    if shave == 0:
        return x
    return x[shave:-shave, shave:-shave]


def _check_shapes(pred: np.ndarray, gt: np.ndarray, shave: int) -> None:
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[2] != 3:
        raise ValueError(f"need two (H, W, 3) images of one shape, got {pred.shape}, {gt.shape}")
    if min(gt.shape[:2]) <= 2 * shave:
        raise ValueError(f"image {gt.shape[1]}×{gt.shape[0]} has nothing left after shaving "
                         f"{shave} px per side")


def psnr(pred: np.ndarray, gt: np.ndarray, *, protocol: Protocol | str = "rgb",
         scale: float = 1) -> float:
    """PSNR in dB of (H, W, 3) pred against gt, both in [0, 1] units (uint8 means /255).

    The default, `rgb` (no shave), compares two renders of one image (bench's precisions).

    As the official calc_psnr: difference first, then (benchmark) its luma, shave, mean square.
    """
    proto = protocol if isinstance(protocol, Protocol) else get_protocol(protocol)
    shave = proto.shave(scale)
    _check_shapes(pred, gt, shave)
    diff = _as_float(pred) - _as_float(gt)  # (H, W, 3)
    if proto.luma:
        diff = diff @ np.asarray(Y_WEIGHTS)  # (H, W)
    mse = float(np.mean(_shaved(diff, shave) ** 2))
    return math.inf if mse == 0 else -10 * math.log10(mse)


def luma(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] units -> (H, W) BT.601 Y in [0, 1] units (16/255 .. 235/255)."""
    return Y_OFFSET + _as_float(img) @ np.asarray(Y_WEIGHTS)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """(size,) normalised 1-D Gaussian; its outer product is MATLAB's fspecial('gaussian')."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim_plane(x: np.ndarray, y: np.ndarray, *, data_range: float = 1.0) -> float:
    """Mean SSIM of two (H, W) float planes, 'valid' Gaussian filtering (Wang et al. 2004)."""
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"need two (H, W) planes of one shape, got {x.shape}, {y.shape}")
    if min(x.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}×{SSIM_WINDOW} px, got "
                         f"{x.shape[1]}×{x.shape[0]}")
    import cv2

    g = gaussian_window()
    r = SSIM_WINDOW // 2

    def blur(a: np.ndarray) -> np.ndarray:  # (H, W) -> (H-10, W-10): 'valid' part only
        full = cv2.sepFilter2D(a, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)
        return full[r:-r, r:-r]  # the border mode never reaches these

    a = np.ascontiguousarray(x, dtype=np.float64)
    b = np.ascontiguousarray(y, dtype=np.float64)
    mu_x, mu_y = blur(a), blur(b)
    var_x = blur(a * a) - mu_x ** 2
    var_y = blur(b * b) - mu_y ** 2
    cov = blur(a * b) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(smap.mean())  # float64 throughout: one plane at a time, a few H×W buffers


def ssim(pred: np.ndarray, gt: np.ndarray, *, protocol: Protocol | str, scale: float) -> float:
    """SSIM of (H, W, 3) pred against gt on the protocol's channels and shave."""
    proto = protocol if isinstance(protocol, Protocol) else get_protocol(protocol)
    shave = proto.shave(scale)
    _check_shapes(pred, gt, shave)
    if proto.luma:
        return ssim_plane(_shaved(luma(pred), shave), _shaved(luma(gt), shave))
    p, t = _shaved(_as_float(pred), shave), _shaved(_as_float(gt), shave)
    return float(np.mean([ssim_plane(p[..., c], t[..., c]) for c in range(3)]))
