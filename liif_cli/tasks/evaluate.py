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

The metrics live in `data/metrics.py`, LR making and the bicubic baseline in `data/samples.py`;
the model runs through a `runtime.upscaler.Upscaler`, `--precision` applying to the whole
forward pass as in `liif upscale`. Shapes: images are (H, W, 3) numpy arrays, uint8 or float in
[0, 1] units.
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from liif_cli.data.degrade import parse_spec, spec_text
from liif_cli.data.metrics import PROTOCOL_NAMES, SSIM_WINDOW, Protocol, get_protocol, psnr, ssim
from liif_cli.data.samples import (
    bicubic_upsample,
    hr_crop_size,
    lr_size,
    make_lr,
    predict_from_lr,
)
from liif_cli.data.samples import load_rgb_uint8 as load_rgb
from liif_cli.errors import DataError, UsageError
from liif_cli.io.files import (
    atomic_write_text,
    check_folder_makeable,
    check_output_path,
    find_images,
    json_text,
)
from liif_cli.io.formats import READABLE_SUFFIXES
from liif_cli.runtime.device import resolve_device, resolve_precision
from liif_cli.runtime.sizing import parse_scales
from liif_cli.runtime.upscaler import Upscaler
from liif_cli.runtime.weights import check_denoise_model, denoise_pair, load_model

DEFAULT_SCALES = (2, 3, 4, 6, 12, 18, 24, 30)  # the paper's Table 1 (DIV2K) columns
EXAMPLE_IMAGES = 3  # how many images (first by name) get example crops
EXAMPLE_CROP = 192  # px, side of the square crop taken from the centre of the HR crop
EXAMPLE_GAP = 4  # px of white between panels
EXAMPLE_LABEL_H = 14  # px, label strip above the panels
BICUBIC = "bicubic"  # method name of the baseline row

ProgressFn = Callable[[int, int], None]  # (model output pixels done, total)


# ----------------------------------------------------------------------------------------------
# images

def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header, without decoding."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    return h, w


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
    if not str(data).strip():  # Path("") is the current folder
        raise UsageError("--data is empty: give a folder of HR images")
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
            protocol.check_size(hr.name, (W, H), s, job.lr_hw, job.hr_hw, min_kept=min_kept)
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
    return atomic_write_text(Path(path).expanduser(), json_text(rows), overwrite=overwrite)


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


def example_name(dataset: str, image: Path, scale: float, *, with_suffix: bool = False) -> str:
    """DATASET_STEM_xS.png; `with_suffix` (for images that share a stem, `a.png` and `a.jpg`):
    DATASET_STEM_EXT_xS.png."""
    stem = f"{image.stem}_{image.suffix[1:].lower()}" if with_suffix else image.stem
    return f"{dataset}_{stem}_x{_fmt_scale(scale)}.png"


def example_paths(folder: Path, ds: Dataset, images: Sequence[Path],
                  scales: Sequence[float]) -> dict[tuple[Path, float], Path]:
    """Each example's file, (image, scale) -> path: names apart for images of one stem."""
    stems = Counter(p.stem for p in ds.images)
    return {(img, s): folder / example_name(ds.name, img, s, with_suffix=stems[img.stem] > 1)
            for img in images for s in scales}


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

def evaluate(model: Any, data: str | os.PathLike, *,
             scales: str | Iterable[float] = DEFAULT_SCALES, protocol: str = "auto",
             lr_dir: str | os.PathLike | None = None, bicubic: bool = True,
             with_ssim: bool = False, device: str | torch.device | None = "auto",
             precision: str = "fp32", max_memory: int | None = None,
             examples_dir: str | os.PathLike | None = None,
             examples: int = EXAMPLE_IMAGES, overwrite: bool = False,
             degrade: str | None = None, denoise: float | None = None,
             on_progress: ProgressFn | None = None) -> EvalResult:
    """Score `model` (a network, a name or a path; None: bundled) on the HR folder `data`.

    `degrade`: a spec such as "noise=5,jpeg=80" (`degrade.parse_spec`); every LR input, made or
    paired, is degraded by it, seeded by image name and scale, so reruns score the same pixels.
    `denoise`: a bundled pair's weights blended at that strength (`weights.load_model`; the
    model given by name, or None), scored as e.g. "real@0.5".
    Everything is checked (folders, LR files and sizes, output paths) before the model runs.
    """
    from liif_cli.io.images import ImageData, write_image

    t0 = time.perf_counter()
    check_denoise_model(model, denoise)
    if denoise is not None:
        denoise_pair(model)  # a model without a partner: one usage error before any reading
    steps = parse_spec(degrade) if degrade is not None else ()
    degrade_name = spec_text(steps)
    scale_list = parse_scales(scales)
    if protocol not in PROTOCOL_NAMES:
        raise UsageError(f"unknown protocol {protocol!r}: use {', '.join(PROTOCOL_NAMES)}")
    ds = find_dataset(data)
    proto = get_protocol(protocol, ds.name)
    jobs = plan_jobs(ds, scale_list, proto, lr_dir, min_kept=SSIM_WINDOW if with_ssim else 1)
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)  # the whole forward pass (runtime.upscaler)

    shown = ds.images[:max(0, examples)] if examples_dir is not None else ()
    targets: dict[tuple[Path, float], Path] = {}
    if shown:
        if not str(examples_dir).strip():
            raise UsageError("--save-examples is empty: give a folder for the example crops")
        ex_dir = Path(examples_dir).expanduser()
        if ex_dir.exists() and not ex_dir.is_dir():
            raise UsageError(f"--save-examples must be a folder: {ex_dir}")
        check_folder_makeable(ex_dir, "the examples folder", "--save-examples")
        targets = example_paths(ex_dir, ds, shown, scale_list)
        if ex_dir.is_dir():
            for target in targets.values():
                check_output_path(target, overwrite=overwrite)

    if denoise is not None:
        model = load_model(model, device=dev, denoise=denoise)
    up = Upscaler(model, device=dev, precision=dtype, max_memory=max_memory)
    name = up.name or "liif"
    if name == BICUBIC:
        name = "liif-" + name

    total = sum(j.hr_hw[0] * j.hr_hw[1] for j in jobs)
    done = 0
    scores: list[ImageScore] = []
    written: list[Path] = []
    panels: list[tuple[Path, np.ndarray]] = []  # (file, crops) of the examples
    hr_cache: tuple[Path, np.ndarray] | None = None
    for job in jobs:
        if hr_cache is None or hr_cache[0] != job.hr:
            hr_cache = (job.hr, load_rgb(job.hr))
        H, W = job.hr_hw
        gt_u8, lr = job_images(job, hr_cache[1])
        gt = gt_u8.astype(np.float32) / 255  # (H, W, 3), as ToTensor makes it

        def progress(d: int, _t: int, base: int = done) -> None:
            if on_progress is not None:
                on_progress(base + d, total)

        lr, pred = predict_from_lr(up, lr, (H, W), degrade=steps, name=job.hr.name,
                                   scale=job.scale, on_progress=progress)
        done += H * W
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
        if (job.hr, job.scale) in targets:  # written once all is scored: a failure leaves none
            panels.append((targets[job.hr, job.scale],
                           example_panel([bic, pred, gt_u8], [BICUBIC, name, "ground truth"])))
    for target, panel in panels:
        target.parent.mkdir(parents=True, exist_ok=True)
        written.append(write_image(target, ImageData(panel), overwrite=overwrite))
    return EvalResult(
        dataset=ds.name, protocol=proto.name, model=name, records=aggregate(scores, proto.name),
        per_image=scores, images=len(ds.images), seconds=time.perf_counter() - t0,
        device=str(dev), precision=up.precision, examples=written,
        degrade=degrade_name)
