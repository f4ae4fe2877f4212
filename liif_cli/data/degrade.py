"""Real-world degradations of low-res images: blur, noise, JPEG; random for training, fixed for eval.

Conventions: images are (H, W, 3) uint8 RGB arrays, the LR image *after* the bicubic downscale
(so every strength is in the LR photo's own units, whatever the scale: blur σ in LR pixels,
noise σ in 8-bit levels, JPEG quality as libjpeg/PIL count it, 4:2:0 chroma as phones save).
Every random draw comes from the `numpy.random.Generator` passed in, so a training sample is a
pure function of its seed (workers, resume and DDP stay exact) and an eval image is degraded the
same way on every run.

Training (`RealRanges`, `random_degrade`): like Real-ESRGAN's "second-order" pipeline, a first
round of blur -> noise -> JPEG, each step taken with a probability, then sometimes a second,
milder round; a share of samples stays clean and another share only lightly degraded, so the
model keeps its quality on clean photos.

Eval (`parse_spec`, `apply_spec`): a spec such as ``noise=5,jpeg=80`` lists steps applied in
the order written: ``blur=S`` (Gaussian σ in LR px), ``noise=S`` (Gaussian colour noise, σ in
levels), ``gray=S`` (same noise on all channels), ``poisson=P`` (signal-dependent noise, P
photons at white: lower is noisier), ``jpeg=Q`` (quality 1-100).
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import numpy as np
from PIL import Image

from liif_cli.errors import UsageError

KERNEL_RADIUS_SIGMAS = 3.0  # blur kernels reach 3σ each side (covers 99.7 % of the mass)
MAX_KERNEL_RADIUS = 10  # px; wider kernels add nothing visible on a 48 px patch
SPEC_KEYS = ("blur", "noise", "gray", "poisson", "jpeg")


# ----------------------------------------------------------------------------------------------
# the steps

def gaussian_kernel(sigma_x: float, sigma_y: float | None = None,
                    angle: float = 0.0) -> np.ndarray:
    """(k, k) float32 Gaussian kernel summing to 1; anisotropic when sigma_y differs.

    `angle` (radians) rotates the sigma_x axis from the image's x (column) axis.
    """
    sigma_y = sigma_x if sigma_y is None else sigma_y
    r = min(MAX_KERNEL_RADIUS, max(1, math.ceil(KERNEL_RADIUS_SIGMAS * max(sigma_x, sigma_y))))
    ax = np.arange(-r, r + 1, dtype=np.float64)
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * xx + s * yy, -s * xx + c * yy  # coordinates along the rotated axes
    k = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (k / k.sum()).astype(np.float32)


def blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve each channel with `kernel`, edges mirrored (no dark border), back to uint8."""
    import cv2

    out = cv2.filter2D(img.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    return _to_uint8(out)


def add_gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator, *,
                       gray: bool = False) -> np.ndarray:
    """Additive Gaussian noise of σ `sigma` levels; `gray`: one noise plane for all channels."""
    shape = img.shape[:2] + (1,) if gray else img.shape
    noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
    return _to_uint8(img.astype(np.float32) + noise)


def add_poisson_noise(img: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Shot noise: each value v in [0, 1] becomes Poisson(v·photons) / photons.

    Its σ grows with brightness, sqrt(v / photons): at mid-grey and 200 photons about 13 levels.
    """
    lam = img.astype(np.float64) * (photons / 255)
    return _to_uint8(rng.poisson(lam).astype(np.float32) * np.float32(255 / photons))


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode as JPEG (PIL/libjpeg, 4:2:0 chroma as cameras and browsers save) and decode."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.array(im.convert("RGB"))


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# training: random degradations

@dataclass(frozen=True)
class RealRanges:
    """The ranges `liif train --degrade real` draws from (the `real` model's recipe).

    Each `*_prob` is the chance that a step is taken; (lo, hi) ranges are drawn uniformly.
    Chosen to cover phone photos (mild noise, quality 70-95), web images (quality 30-80) and
    scans (blur, grain), with clean and light samples kept so clean inputs stay sharp.
    """

    clean_prob: float = 0.2  # samples left as the plain bicubic LR (the paper's samples)
    light_prob: float = 0.2  # samples with only a mild JPEG (quality in light_jpeg_quality)
    light_jpeg_quality: tuple[int, int] = (75, 95)
    blur_prob: float = 0.4  # first round
    blur_sigma: tuple[float, float] = (0.3, 1.6)  # LR px
    aniso_prob: float = 0.4  # of blurred samples: anisotropic kernel at a random angle
    aniso_ratio: tuple[float, float] = (0.4, 1.0)  # sigma_y / sigma_x
    noise_prob: float = 0.6
    noise_sigma: tuple[float, float] = (1.0, 12.0)  # 8-bit levels
    gray_noise_prob: float = 0.4  # of noisy samples: the same noise on every channel
    poisson_prob: float = 0.3  # of noisy samples: shot noise instead of Gaussian
    poisson_photons: tuple[float, float] = (150.0, 3000.0)  # at white; lower is noisier
    jpeg_prob: float = 0.9
    jpeg_quality: tuple[int, int] = (30, 95)
    second_prob: float = 0.3  # of degraded samples: a second, milder round
    second_blur_prob: float = 0.3
    second_blur_sigma: tuple[float, float] = (0.2, 0.8)
    second_noise_prob: float = 0.4
    second_noise_sigma: tuple[float, float] = (1.0, 5.0)
    second_jpeg_quality: tuple[int, int] = (60, 95)

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_prob"):
                if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                    raise UsageError(f"degrade range {f.name} must be a probability in [0, 1], "
                                     f"not {v!r}")
            else:
                if not (isinstance(v, (tuple, list)) and len(v) == 2
                        and all(isinstance(x, (int, float)) for x in v) and v[0] <= v[1]):
                    raise UsageError(f"degrade range {f.name} must be [low, high] with "
                                     f"low <= high, not {v!r}")
        if self.clean_prob + self.light_prob > 1:
            raise UsageError("degrade ranges: clean_prob + light_prob must not exceed 1")
        for name in ("jpeg_quality", "light_jpeg_quality", "second_jpeg_quality"):
            lo, hi = getattr(self, name)
            if not (1 <= lo and hi <= 100):
                raise UsageError(f"degrade range {name} must lie within 1..100")
        for name in ("blur_sigma", "second_blur_sigma", "aniso_ratio", "poisson_photons"):
            if getattr(self, name)[0] <= 0:
                raise UsageError(f"degrade range {name} must be positive")
        for name in ("noise_sigma", "second_noise_sigma"):
            if getattr(self, name)[0] < 0:
                raise UsageError(f"degrade range {name} must not be negative")

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


DEGRADE_RECIPES = ("real",)


def real_ranges(overrides: dict[str, Any] | None = None) -> RealRanges:
    """`RealRanges` with some fields replaced (TOML `[degrade_ranges]`); unknown keys refused."""
    overrides = dict(overrides or {})
    known = {f.name for f in fields(RealRanges)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UsageError(f"unknown degrade range(s): {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    return RealRanges(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in overrides.items()})


def _uniform(rng: np.random.Generator, lo_hi: Sequence[float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _quality(rng: np.random.Generator, lo_hi: Sequence[int]) -> int:
    return int(rng.integers(int(lo_hi[0]), int(lo_hi[1]) + 1))


def _random_blur(img: np.ndarray, rng: np.random.Generator, sigma: Sequence[float],
                 r: RealRanges) -> np.ndarray:
    sx = _uniform(rng, sigma)
    if rng.random() < r.aniso_prob:
        k = gaussian_kernel(sx, sx * _uniform(rng, r.aniso_ratio), _uniform(rng, (0, math.pi)))
    else:
        k = gaussian_kernel(sx)
    return blur(img, k)


def _random_noise(img: np.ndarray, rng: np.random.Generator, sigma: Sequence[float],
                  r: RealRanges) -> np.ndarray:
    if rng.random() < r.poisson_prob:
        return add_poisson_noise(img, _uniform(rng, r.poisson_photons), rng)
    return add_gaussian_noise(img, _uniform(rng, sigma), rng, gray=rng.random() < r.gray_noise_prob)


def random_degrade(img: np.ndarray, rng: np.random.Generator, r: RealRanges) -> np.ndarray:
    """One training LR: clean, lightly compressed, or one or two rounds of blur/noise/JPEG."""
    u = rng.random()
    if u < r.clean_prob:
        return img
    if u < r.clean_prob + r.light_prob:
        return jpeg(img, _quality(rng, r.light_jpeg_quality))
    if rng.random() < r.blur_prob:
        img = _random_blur(img, rng, r.blur_sigma, r)
    if rng.random() < r.noise_prob:
        img = _random_noise(img, rng, r.noise_sigma, r)
    if rng.random() < r.jpeg_prob:
        img = jpeg(img, _quality(rng, r.jpeg_quality))
    if rng.random() < r.second_prob:
        if rng.random() < r.second_blur_prob:
            img = _random_blur(img, rng, r.second_blur_sigma, r)
        if rng.random() < r.second_noise_prob:
            img = _random_noise(img, rng, r.second_noise_sigma, r)
        img = jpeg(img, _quality(rng, r.second_jpeg_quality))
    return img


# ----------------------------------------------------------------------------------------------
# eval: fixed degradations from a spec

@dataclass(frozen=True)
class Step:
    kind: str  # one of SPEC_KEYS
    value: float


def parse_spec(spec: str) -> tuple[Step, ...]:
    """'noise=5,jpeg=80' -> (Step('noise', 5), Step('jpeg', 80)); errors name the bad part."""
    text = spec.strip()
    if not text:
        raise UsageError("empty --degrade: use e.g. jpeg=70, noise=5,jpeg=80 or blur=1.5")
    if text.lower() in ("none", "clean"):
        return ()
    steps = []
    for part in text.split(","):
        key, sep, val = part.strip().partition("=")
        key = key.strip().lower()
        if key not in SPEC_KEYS or not sep:
            raise UsageError(f"bad --degrade step {part.strip()!r}: use KEY=VALUE with KEY one "
                             f"of {', '.join(SPEC_KEYS)} (e.g. noise=5,jpeg=80)")
        try:
            v = float(val)
        except ValueError:
            raise UsageError(f"bad --degrade value in {part.strip()!r}: not a number") from None
        if not math.isfinite(v):
            raise UsageError(f"bad --degrade value in {part.strip()!r}: not finite")
        if key == "jpeg" and not (1 <= v <= 100 and v == int(v)):
            raise UsageError(f"--degrade jpeg quality must be a whole number 1-100, not {val}")
        if key in ("blur", "poisson") and v <= 0:
            raise UsageError(f"--degrade {key} must be positive, not {val}")
        if key in ("noise", "gray") and v < 0:
            raise UsageError(f"--degrade {key} must not be negative, not {val}")
        steps.append(Step(key, int(v) if key == "jpeg" else v))
    return tuple(steps)


def spec_text(steps: Sequence[Step]) -> str:
    """The canonical spec ('noise=5,jpeg=80'; 'none' for no steps), as tables and JSON show it."""
    return ",".join(f"{s.kind}={s.value:g}" for s in steps) or "none"


def spec_seed(name: str, scale: float, steps: Sequence[Step]) -> int:
    """A seed fixed by image name, scale and spec: the same noise on every run and machine."""
    return zlib.crc32(f"{name}|{scale:g}|{spec_text(steps)}".encode())


def apply_spec(img: np.ndarray, steps: Sequence[Step], rng: np.random.Generator) -> np.ndarray:
    """Apply the steps in order to an (H, W, 3) uint8 LR image."""
    for s in steps:
        if s.kind == "blur":
            img = blur(img, gaussian_kernel(s.value))
        elif s.kind == "noise":
            img = add_gaussian_noise(img, s.value, rng)
        elif s.kind == "gray":
            img = add_gaussian_noise(img, s.value, rng, gray=True)
        elif s.kind == "poisson":
            img = add_poisson_noise(img, s.value, rng)
        elif s.kind == "jpeg":
            img = jpeg(img, int(s.value))
    return img


def degrade_image(img: np.ndarray, spec: str | Sequence[Step], *, name: str = "",
                  scale: float = 1.0) -> np.ndarray:
    """A degraded copy of an LR image by a spec, seeded from (name, scale, spec).

    The one way an evaluation LR is degraded: `liif eval --degrade` and training validation
    (`liif train --val-degrade`) both call it, so the same image at the same scale and spec
    gets the same pixels in both. `name` is the image's file name with its suffix and without
    its folder (`Path.name`, e.g. "0801.png"): renaming a file changes its noise, moving it
    does not.
    """
    steps = parse_spec(spec) if isinstance(spec, str) else tuple(spec)
    return apply_spec(img, steps, np.random.default_rng(spec_seed(name, scale, steps)))
