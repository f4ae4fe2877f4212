"""Evaluation: the LIIF paper's PSNR (and SSIM) tables, under the official protocols, exactly.

What "exactly" means here (yinboc/liif `test.py`, `utils.calc_psnr`, `datasets/wrappers.py`):
- Images are read as the official `ImageFolder` reads them: `Image.open(p).convert('RGB')`
  (greyscale and palette images become RGB; no EXIF rotation), uint8, then / 255.
- LR inputs, unless paired ones are given, are made as `sr-implicit-downsampled` makes them with
  `inp_size=None`: h_lr = floor(H / s + 1e-9) (w likewise), the HR image cropped to its top-left
  round(h_lr·s) × round(w_lr·s), and LR = PIL bicubic resize of that uint8 crop (what
  torchvision's `Resize(size, BICUBIC)` on a `ToPILImage` does; the float→uint8 round trip of
  `ToTensor`/`ToPILImage` is exact for every uint8 value).
- Paired LR inputs (`lr_dir/X{s}/{stem}x{s}.png`, the standard MATLAB-bicubic layout) are used
  as `sr-implicit-paired` uses them: the HR image cropped to its top-left (h_lr·s) × (w_lr·s).
  We pair files by name (the official code pairs by sorted order) and check sizes.
- The query grid is the HR crop's pixel grid (cell = 2/H, 2/W); the prediction is the raw model
  output clamped to [0, 1], not quantised; ground truth is uint8 / 255.
- PSNR = -10·log10(mean(diff²)) over the kept pixels of one image, then averaged over images.
  Protocols: `div2k` RGB, shave scale + 6 px each side; `benchmark` BT.601 luma of the
  difference (weights 65.738, 129.057, 25.064 / 256), shave = scale; `rgb` RGB, no shave (the
  official `eval_type: None`). `auto` picks `div2k` for DIV2K folders and `benchmark` for the
  rest, as the paper's tables do (Set5, Set14, B100, Urban100 use `benchmark` at every scale).

Beyond the official code:
- `bicubic` baseline: the LR upsampled to the HR crop size with PIL's bicubic (Keys a = -0.5,
  the kernel of MATLAB's imresize), computed in float ("F" mode) from the uint8 LR, then
  clamped like the model's prediction: no quantisation, so it differs from a saved-PNG
  baseline by the rounding (~0.01 dB near 40 dB) and is scored exactly like the model.
- SSIM (Wang et al. 2004): 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, data range
  1, 'valid' filtering (no padding), mean of the SSIM map; on the protocol's channels and
  shave: RGB channels averaged for `div2k`/`rgb`, luma Y = 16/255 + weights·RGB for `benchmark`.

Shapes: images are (H, W, 3) numpy arrays, uint8 or float in [0, 1] units.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from liif_cli.data.degrade import apply_spec, parse_spec, spec_seed, spec_text
from liif_cli.data.samples import load_rgb_uint8 as load_rgb
from liif_cli.errors import DataError, UsageError
from liif_cli.io.files import atomic_write_text, check_output_path, find_images
from liif_cli.io.images import READABLE_SUFFIXES
from liif_cli.model import LIIF, SRModel
from liif_cli.runtime import engine

DEFAULT_SCALES = (2, 3, 4, 6, 12, 18, 24, 30)  # the paper's Table 1 (DIV2K) columns
PROTOCOL_NAMES = ("auto", "div2k", "benchmark", "rgb")
DIV2K_SHAVE_EXTRA = 6  # px beyond the scale shaved off each side, LIIF utils.calc_psnr
LR_FLOOR_EPS = 1e-9  # h_lr = floor(H / s + eps), LIIF SRImplicitDownsampled
# ITU-R BT.601 luma for [0, 1] RGB, as MATLAB's rgb2ycbcr and LIIF's calc_psnr ('benchmark')
Y_WEIGHTS = (65.738 / 256, 129.057 / 256, 25.064 / 256)
Y_OFFSET = 16 / 255  # luma black level; cancels in PSNR (a difference), matters for SSIM
SSIM_WINDOW = 11  # px, Gaussian window side (Wang et al. 2004)
SSIM_SIGMA = 1.5  # px
SSIM_K1, SSIM_K2 = 0.01, 0.03
EXAMPLE_IMAGES = 3  # how many images (first by name) get example crops
EXAMPLE_CROP = 192  # px, side of the square crop taken from the centre of the HR crop
EXAMPLE_GAP = 4  # px of white between panels
EXAMPLE_LABEL_H = 14  # px, label strip above the panels
BICUBIC = "bicubic"  # method name of the baseline row

ProgressFn = Callable[[int, int], None]  # (model output pixels done, total)


# ----------------------------------------------------------------------------------------------
# protocols and metrics

@dataclass(frozen=True)
class Protocol:
    """How a prediction is compared with the ground truth."""

    name: str
    luma: bool  # compare BT.601 luma only (else all three RGB channels)
    shave_extra: int | None  # px shaved beyond the scale on each side; None: no shave

    def shave(self, scale: float) -> int:
        return 0 if self.shave_extra is None else int(scale) + self.shave_extra


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


def psnr(pred: np.ndarray, gt: np.ndarray, *, protocol: Protocol | str, scale: float) -> float:
    """PSNR in dB of (H, W, 3) pred against gt, both in [0, 1] units (uint8 means /255).

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


# ----------------------------------------------------------------------------------------------
# images, LR generation, bicubic

def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header, without decoding."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    return h, w


def lr_size(hr_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """Official LR size for an HR size: floor(H / s + 1e-9), floor(W / s + 1e-9)."""
    return tuple(math.floor(n / scale + LR_FLOOR_EPS) for n in hr_hw)  # type: ignore[return-value]


def hr_crop_size(lr_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """The HR crop an LR image stands for: round(h_lr·s) × round(w_lr·s) (Python's round)."""
    return tuple(round(n * scale) for n in lr_hw)  # type: ignore[return-value]


def make_lr(hr: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 HR -> (HR crop, LR), both uint8, exactly as the official wrapper."""
    h_lr, w_lr = lr_size(hr.shape[:2], scale)
    if min(h_lr, w_lr) < 1:
        raise ValueError(f"{hr.shape[1]}×{hr.shape[0]} is too small for ×{scale}")
    H, W = hr_crop_size((h_lr, w_lr), scale)
    crop = np.ascontiguousarray(hr[:H, :W])
    lr = np.array(Image.fromarray(crop).resize((w_lr, h_lr), Image.BICUBIC))  # writable
    return crop, lr


def bicubic_upsample(lr: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 -> (H, W, 3) float32 in [0, 1]: PIL bicubic in float, clamped."""
    H, W = out_hw
    planes = [np.asarray(Image.fromarray(lr[..., c].astype(np.float32) / 255, mode="F")
                         .resize((W, H), Image.BICUBIC)) for c in range(3)]
    return np.clip(np.stack(planes, axis=-1), 0, 1)


# ----------------------------------------------------------------------------------------------
# the evaluation plan: which images, which LR, what size

@dataclass(frozen=True)
class Job:
    """One image at one scale."""

    hr: Path
    scale: float
    lr: Path | None  # the paired LR file, or None to make the LR from the HR image
    hr_hw: tuple[int, int]  # (H, W) of the HR crop scored (and the model's output size)
    lr_hw: tuple[int, int]  # (h, w) of the LR input


@dataclass(frozen=True)
class Dataset:
    name: str  # the folder's name, or its parent's when the folder is called HR
    folder: Path
    images: tuple[Path, ...]


def find_dataset(data: str | os.PathLike) -> Dataset:
    """A folder of HR images (or a folder with an HR/ subfolder); name from the folder."""
    folder = Path(data).expanduser()
    if not folder.exists():
        raise DataError(f"dataset folder not found: {folder}")
    if not folder.is_dir():
        raise DataError(f"--data must be a folder of HR images, not a file: {folder}")
    images = find_images(folder)
    if not images and (folder / "HR").is_dir():
        folder = folder / "HR"
        images = find_images(folder)
    if not images:
        raise DataError(f"no images in {folder} (looked for "
                        f"{', '.join(sorted(READABLE_SUFFIXES))}; subfolders are not searched)")
    name = folder.resolve().parent.name if folder.name.upper() == "HR" else folder.resolve().name
    return Dataset(name, folder, tuple(images))


def parse_scales(scales: str | Iterable[float]) -> list[float]:
    """'2,3,4' or [2, 3, 4] -> [2, 3, 4] (ints where whole); each must be > 1."""
    if isinstance(scales, str):
        parts = [p.strip() for p in scales.replace("×", "").replace("x", "").split(",")
                 if p.strip()]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise UsageError(f"bad --scales {scales!r}: use comma-separated numbers, "
                             "e.g. 2,3,4") from None
    else:
        values = [float(s) for s in scales]
    if not values:
        raise UsageError("no scales given: use e.g. --scales 2,3,4")
    out: list[float] = []
    for v in values:
        if not math.isfinite(v) or v <= 1:
            raise UsageError(f"scale {v:g} is not an upscale: every scale must be greater than 1")
        v = int(v) if v == int(v) else v
        if v not in out:
            out.append(v)
    return out


def _lr_folder(lr_dir: Path, scale: float) -> Path | None:
    if scale != int(scale):
        return None
    for name in (f"X{int(scale)}", f"x{int(scale)}"):
        if (lr_dir / name).is_dir():
            return lr_dir / name
    return None


def _paired_file(folder: Path, hr: Path, scale: int) -> Path:
    stem = f"{hr.stem}x{scale}"
    for suffix in (hr.suffix, *sorted(READABLE_SUFFIXES)):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise DataError(f"{folder} has no LR image for {hr.name} (expected {stem}{hr.suffix})")


def plan_jobs(dataset: Dataset, scales: Sequence[float], protocol: Protocol,
              lr_dir: str | os.PathLike | None = None, *, min_kept: int = 1) -> list[Job]:
    """Check every image, LR file and size before any compute; image-major order.

    `min_kept`: px per side that must remain after shaving (SSIM needs its window).
    """
    lr_root = None
    if lr_dir is not None:
        lr_root = Path(lr_dir).expanduser()
        if not lr_root.is_dir():
            raise DataError(f"LR folder not found: {lr_root}")
        if not any(p.is_dir() and re.fullmatch(r"[Xx]\d+", p.name) for p in lr_root.iterdir()):
            raise DataError(f"{lr_root} has no X2/, X3/, X4/… subfolders (the layout of "
                            "LR_bicubic/X{s}/{name}x{s}.png); point --lr-dir at their parent")
    for s in scales:
        if protocol.shave_extra is not None and s != int(s):
            raise UsageError(f"scale {s} is not whole: the {protocol.name} protocol shaves "
                             "`scale` px, so it needs whole scales (use --protocol rgb)")
    jobs = []
    for hr in dataset.images:
        H, W = _image_size(hr)
        for s in scales:
            folder = None if lr_root is None else _lr_folder(lr_root, s)
            if folder is not None:
                lr = _paired_file(folder, hr, int(s))
                h, w = _image_size(lr)
                if (h, w) != (H // int(s), W // int(s)):
                    raise DataError(f"{lr} is {w}×{h}, but {hr.name} ({W}×{H}) at ×{s} needs "
                                    f"{W // int(s)}×{H // int(s)}: the LR folder does not "
                                    "match the HR images")
                job = Job(hr, s, lr, (h * int(s), w * int(s)), (h, w))
            else:
                h, w = lr_size((H, W), s)
                job = Job(hr, s, None, hr_crop_size((h, w), s), (h, w))
            need = 2 * protocol.shave(s) + min_kept
            if min(job.lr_hw) < 1 or min(job.hr_hw) < need:
                raise DataError(f"{hr.name} ({W}×{H}) is too small for ×{s} under the "
                                f"{protocol.name} protocol (needs at least {need} px per side "
                                f"after cropping to a multiple of the scale)")
            jobs.append(job)
    return jobs


def job_images(job: Job, hr: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth = HR crop, LR input) of a job, both uint8; `hr` if already loaded."""
    hr = load_rgb(job.hr) if hr is None else hr
    if job.lr is None:
        return make_lr(hr, job.scale)
    H, W = job.hr_hw
    return np.ascontiguousarray(hr[:H, :W]), load_rgb(job.lr)


# ----------------------------------------------------------------------------------------------
# results

@dataclass
class ImageScore:
    """One image, one scale, one method."""

    dataset: str
    image: str
    scale: float
    method: str
    psnr: float
    ssim: float | None
    lr: str  # "paired" (from --lr-dir) or "made" (PIL bicubic from the HR image)
    degrade: str = "none"  # the --degrade spec applied to the LR (degrade.spec_text)


@dataclass
class Record:
    """The aggregate the paper reports: mean over images of per-image PSNR (and SSIM)."""

    dataset: str
    scale: float
    method: str
    psnr: float
    ssim: float | None
    images: int
    protocol: str
    lr: str  # "paired", "made", or "mixed"
    degrade: str = "none"  # the --degrade spec applied to the LR, "none" for clean inputs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalResult:
    dataset: str
    protocol: str
    model: str  # the model's method name in records
    records: list[Record]  # per (scale, method), scales in the order asked, bicubic first
    per_image: list[ImageScore]
    images: int
    seconds: float
    device: str
    precision: str
    examples: list[Path] = field(default_factory=list)
    degrade: str = "none"  # the --degrade spec applied to every LR input

    def rows(self, *, per_image: bool = False) -> list[dict[str, Any]]:
        """Records as dicts for JSON/CSV; with per_image, image-level rows follow (images=1)."""
        rows = [r.as_dict() for r in self.records]
        if per_image:
            for s in self.per_image:
                rows.append({"dataset": s.dataset, "scale": s.scale, "method": s.method,
                             "psnr": s.psnr, "ssim": s.ssim, "images": 1,
                             "protocol": self.protocol, "lr": s.lr, "degrade": s.degrade,
                             "image": s.image})
        return rows


def aggregate(scores: Sequence[ImageScore], protocol: str) -> list[Record]:
    """Mean per (scale, method), in first-seen order."""
    groups: dict[tuple[float, str], list[ImageScore]] = {}
    for s in scores:
        groups.setdefault((s.scale, s.method), []).append(s)
    out = []
    for (scale, method), group in groups.items():
        ssims = [g.ssim for g in group]
        lrs = {g.lr for g in group}
        out.append(Record(
            dataset=group[0].dataset, scale=scale, method=method,
            psnr=float(np.mean([g.psnr for g in group])),
            ssim=None if any(v is None for v in ssims) else float(np.mean(ssims)),
            images=len(group), protocol=protocol, lr=lrs.pop() if len(lrs) == 1 else "mixed",
            degrade=group[0].degrade))
    return out


# ----------------------------------------------------------------------------------------------
# reports and examples

REPORT_FIELDS = ("dataset", "scale", "method", "psnr", "ssim", "images", "protocol", "lr",
                 "degrade", "image")


def write_json(path: str | os.PathLike, rows: list[dict[str, Any]], *,
               overwrite: bool = False) -> Path:
    return atomic_write_text(Path(path).expanduser(), json.dumps(rows, indent=1) + "\n",
                             overwrite=overwrite)


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]], *,
              overwrite: bool = False) -> Path:
    fields = [f for f in REPORT_FIELDS if any(f in r for r in rows)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return atomic_write_text(Path(path).expanduser(), buf.getvalue(), overwrite=overwrite)


def _fmt_scale(scale: float) -> str:
    return f"{scale:g}"


def example_name(dataset: str, image: Path, scale: float) -> str:
    return f"{dataset}_{image.stem}_x{_fmt_scale(scale)}.png"


def example_panel(panels: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
    """Centre crops of equal-size (H, W, 3) float images side by side, labelled: (h, w, 3) u8."""
    from PIL import ImageDraw

    H, W = panels[0].shape[:2]
    side_h, side_w = min(EXAMPLE_CROP, H), min(EXAMPLE_CROP, W)
    y0, x0 = (H - side_h) // 2, (W - side_w) // 2
    n = len(panels)
    canvas = np.full((EXAMPLE_LABEL_H + side_h, n * side_w + (n - 1) * EXAMPLE_GAP, 3), 255,
                     np.uint8)
    for i, p in enumerate(panels):
        crop = p[y0:y0 + side_h, x0:x0 + side_w]
        crop = crop if crop.dtype == np.uint8 else np.round(np.clip(crop, 0, 1) * 255)
        x = i * (side_w + EXAMPLE_GAP)
        canvas[EXAMPLE_LABEL_H:, x:x + side_w] = crop.astype(np.uint8)
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    for i, label in enumerate(labels):
        draw.text((i * (side_w + EXAMPLE_GAP) + 2, 1), label[:side_w // 6], fill=(0, 0, 0))
    return np.asarray(im)


# ----------------------------------------------------------------------------------------------
# the job

def _model_and_name(model: Any) -> tuple[LIIF, str]:
    from liif_cli.runtime.weights import LoadedModel, load_model

    if isinstance(model, SRModel):  # LIIF or LM-LIIF
        return model, "liif"
    if isinstance(model, LoadedModel):
        return model.model, model.name
    loaded = load_model(model)
    return loaded.model, loaded.name


def evaluate(model: Any, data: str | os.PathLike, *,
             scales: str | Iterable[float] = DEFAULT_SCALES, protocol: str = "auto",
             lr_dir: str | os.PathLike | None = None, bicubic: bool = True,
             with_ssim: bool = False, device: str | torch.device | None = "auto",
             precision: str = "fp32", max_memory: int = engine.DEFAULT_MAX_MEMORY,
             examples_dir: str | os.PathLike | None = None,
             examples: int = EXAMPLE_IMAGES, overwrite: bool = False,
             degrade: str | None = None,
             on_progress: ProgressFn | None = None) -> EvalResult:
    """Score `model` (LoadedModel, LIIF, name or path; None: bundled) on the HR folder `data`.

    `degrade`: a spec such as "noise=5,jpeg=80" (`degrade.parse_spec`); every LR input, made or
    paired, is degraded by it, seeded by image name and scale, so reruns score the same pixels.
    Everything is checked (folders, LR files and sizes, output paths) before the model runs.
    """
    from liif_cli.io.images import ImageData, write_image
    from liif_cli.tasks.upscale import precision_name, resolve_device, resolve_precision

    t0 = time.perf_counter()
    steps = parse_spec(degrade) if degrade is not None else ()
    degrade_name = spec_text(steps)
    scale_list = parse_scales(scales)
    if protocol not in PROTOCOL_NAMES:
        raise UsageError(f"unknown protocol {protocol!r}: use {', '.join(PROTOCOL_NAMES)}")
    ds = find_dataset(data)
    proto = get_protocol(protocol, ds.name)
    jobs = plan_jobs(ds, scale_list, proto, lr_dir, min_kept=SSIM_WINDOW if with_ssim else 1)
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    enc_dtype = dtype if dev.type != "cpu" else torch.float32

    shown = ds.images[:max(0, examples)] if examples_dir is not None else ()
    ex_dir = None
    if shown:
        ex_dir = Path(examples_dir).expanduser()
        if ex_dir.exists() and not ex_dir.is_dir():
            raise UsageError(f"--save-examples must be a folder: {ex_dir}")
        ex_dir.mkdir(parents=True, exist_ok=True)
        for img in shown:
            for s in scale_list:
                check_output_path(ex_dir / example_name(ds.name, img, s), overwrite=overwrite)

    net, name = _model_and_name(model)
    if name == BICUBIC:
        name = "liif-" + name
    net = net.to(dev).eval()

    total = sum(j.hr_hw[0] * j.hr_hw[1] for j in jobs)
    done = 0
    scores: list[ImageScore] = []
    written: list[Path] = []
    hr_cache: tuple[Path, np.ndarray] | None = None
    for job in jobs:
        if hr_cache is None or hr_cache[0] != job.hr:
            hr_cache = (job.hr, load_rgb(job.hr))
        H, W = job.hr_hw
        gt_u8, lr = job_images(job, hr_cache[1])
        if steps:
            rng = np.random.default_rng(spec_seed(job.hr.name, job.scale, steps))
            lr = apply_spec(lr, steps, rng)
        gt = gt_u8.astype(np.float32) / 255  # (H, W, 3), as ToTensor makes it
        inp = torch.from_numpy(lr).to(dev).permute(2, 0, 1).float() / 255  # (3, h, w)
        pred = np.empty((H, W, 3), np.float32)

        def progress(d: int, _t: int, base: int = done) -> None:
            if on_progress is not None:
                on_progress(base + d, total)

        with torch.inference_mode():
            engine.render(net, inp, (H, W), pred, max_memory=max_memory, dtype=dtype,
                          encoder_dtype=enc_dtype, on_progress=progress)
        done += H * W
        np.clip(pred, 0, 1, out=pred)  # the official pred.clamp_(0, 1); not quantised
        lr_kind = "made" if job.lr is None else "paired"
        outputs = [(name, pred)]
        bic = None
        if bicubic or job.hr in shown:
            bic = bicubic_upsample(lr, (H, W))
        if bicubic:
            outputs.insert(0, (BICUBIC, bic))
        for method, out in outputs:
            scores.append(ImageScore(
                ds.name, job.hr.name, job.scale, method,
                psnr(out, gt, protocol=proto, scale=job.scale),
                ssim(out, gt, protocol=proto, scale=job.scale) if with_ssim else None, lr_kind,
                degrade_name))
        if ex_dir is not None and job.hr in shown:
            panel = example_panel([bic, pred, gt_u8], [BICUBIC, name, "ground truth"])
            target = ex_dir / example_name(ds.name, job.hr, job.scale)
            written.append(write_image(target, ImageData(panel), overwrite=overwrite))
    return EvalResult(
        dataset=ds.name, protocol=proto.name, model=name, records=aggregate(scores, proto.name),
        per_image=scores, images=len(ds.images), seconds=time.perf_counter() - t0,
        device=str(dev), precision=precision_name(dtype), examples=written,
        degrade=degrade_name)
