"""Training and validation data: HR image folders, random-scale crops, bicubic degradation.

Sample creation follows the official `sr-implicit-downsampled` wrapper exactly: a random HR crop
of round(48·s)² with s ~ U(scale_min, scale_max), the LR made by PIL bicubic on uint8 down to
48×48, random h-flip, v-flip and transpose, and `sample_q` random HR pixels (without replacement)
as queries with their cells. With `degrade`, the LR then goes through the real-world
pipeline of `degrade.py` (blur, noise, JPEG) from a generator of its own. Images are
(3, H, W) float in [0, 1] unless said otherwise.

Evaluation and validation LR (`make_lr`) follow the same wrapper with `inp_size=None`: the
whole HR image cropped to a multiple of the scale, then PIL bicubic down; `bicubic_upsample`
is the baseline they are scored against.

Randomness is per sample, not per worker: sample `i` of epoch `e` draws from a generator seeded
with (seed, e, i). Any number of DataLoader workers or DDP ranks then give the same samples
(the official code repeats query sets across workers), and a resumed run sees the same data.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from liif_cli.data.degrade import RealRanges, Step, degrade_image, random_degrade
from liif_cli.errors import DataError
from liif_cli.io import files
from liif_cli.io.formats import READABLE_SUFFIXES
from liif_cli.model.coords import make_coord

LR_FLOOR_EPS = 1e-9  # h_lr = floor(H / s + eps), LIIF SRImplicitDownsampled


def training_images(folder: str | Path, *, recursive: bool = True) -> list[Path]:
    """The training (or validation) images in `folder` and below, as `files.find_images` finds
    them (the readable suffixes, hidden files skipped, in path order); DataError when the
    folder is missing, unreadable or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    try:
        found = files.find_images(folder, recursive=recursive)
    except OSError as e:
        raise DataError(f"cannot list the data folder {folder}: {e.strerror}") from None
    if not found:
        raise DataError(f"no images in {folder} (looked for "
                        f"{', '.join(sorted(READABLE_SUFFIXES))})")
    return found


def load_rgb_uint8(path: Path) -> np.ndarray:
    """(H, W, 3) uint8, as the official ImageFolder does: `Image.open(p).convert('RGB')`."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # a writable copy
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def resize_bicubic(img: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """PIL bicubic resize of an (H, W, 3) uint8 array: the official `resize_fn`."""
    h, w = size_hw
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC))


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


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1] (torchvision's ToTensor)."""
    return torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1).div_(255)


def predict_from_lr(up: Any, lr: np.ndarray, hr_hw: tuple[int, int], *,
                    degrade: Sequence[Step] = (), name: str = "", scale: float = 1.0,
                    on_progress: Callable[[int, int], None] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(the LR as rendered, the prediction) as `liif eval` and training's validation score a
    model: the uint8 LR degraded by the `degrade` steps first (`degrade.degrade_image`, seeded
    by the image's file `name` and `scale`, so both see the same pixels), then rendered by `up`
    (an `Upscaler`) to the HR crop's size `hr_hw`, the raw output clamped to [0, 1] as the
    official `pred.clamp_(0, 1)`, not quantised: (H, W, 3) float32."""
    if degrade:
        lr = degrade_image(lr, degrade, name=name, scale=scale)
    pred = np.empty((*hr_hw, 3), np.float32)
    up.render(to_tensor(lr), hr_hw, pred, on_progress=on_progress)
    np.clip(pred, 0, 1, out=pred)
    return lr, pred


class ImageCache:
    """Decoded training images, kept in memory as uint8 so epochs never re-decode files.

    Built once in the main process; DataLoader workers share it copy-on-write.
    """

    def __init__(self, files: Sequence[Path], *, min_side: int = 0,
                 on_progress: Callable[[int, int], None] | None = None):
        self.images: list[np.ndarray] = []
        self.files: list[Path] = []
        self.skipped: list[Path] = []  # smaller than min_side
        self.unreadable: list[Path] = []  # damaged or cut short: a scraped set has a few
        first_error = ""
        for i, f in enumerate(files):
            try:
                img = load_rgb_uint8(f)
            except DataError as e:
                self.unreadable.append(f)
                first_error = first_error or str(e)
            else:
                if min(img.shape[:2]) < min_side:
                    self.skipped.append(f)
                else:
                    self.images.append(img)
                    self.files.append(f)
            if on_progress:
                on_progress(i + 1, len(files))
        if not self.images:
            if not self.skipped:
                raise DataError(f"no training image could be read ({first_error})")
            raise DataError(f"no image is at least {min_side}px on its shorter side "
                            "(needed for the largest crop: patch size × scale max)")

    def __len__(self) -> int:
        return len(self.images)


class RandomScaleSamples(torch.utils.data.Dataset):
    """Training samples of the official recipe; index = epoch * len(self) + position."""

    def __init__(self, cache: ImageCache, *, repeat: int = 20, patch: int = 48,
                 scale_min: float = 1.0, scale_max: float = 4.0, sample_q: int | None = 2304,
                 augment: bool = True, seed: int = 0, degrade: RealRanges | None = None):
        self.cache, self.repeat, self.patch = cache, repeat, patch
        self.degrade = degrade
        self.scale_min, self.scale_max = scale_min, scale_max
        self.sample_q, self.augment, self.seed = sample_q, augment, seed

    def __len__(self) -> int:
        return len(self.cache) * self.repeat

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        epoch, pos = divmod(int(index), len(self))
        rng = np.random.default_rng([self.seed, epoch, pos])
        img = self.cache.images[pos % len(self.cache)]
        s = rng.uniform(self.scale_min, self.scale_max)
        w_hr = round(self.patch * s)
        y0 = int(rng.integers(0, img.shape[0] - w_hr + 1))
        x0 = int(rng.integers(0, img.shape[1] - w_hr + 1))
        hr = img[y0:y0 + w_hr, x0:x0 + w_hr]
        lr = resize_bicubic(hr, (self.patch, self.patch))
        if self.degrade is not None:
            # its own stream, so the crops, flips and queries stay those of a clean run
            lr = random_degrade(lr, np.random.default_rng([self.seed, epoch, pos, 1]),
                                self.degrade)
        if self.augment:
            hflip, vflip, dflip = rng.random(3) < 0.5
            hr, lr = (_augment(a, hflip, vflip, dflip) for a in (hr, lr))
        hr_t, lr_t = to_tensor(hr), to_tensor(lr)  # (3, w_hr, w_hr), (3, 48, 48)
        coord = make_coord(hr_t.shape[-2:])  # (w_hr², 2)
        rgb = hr_t.reshape(3, -1).t()  # (w_hr², 3)
        if self.sample_q is not None:
            pick = torch.from_numpy(rng.choice(len(coord), self.sample_q, replace=False))
            coord, rgb = coord[pick], rgb[pick]
        cell = torch.empty_like(coord)
        cell[:, 0] = 2 / hr_t.shape[-2]
        cell[:, 1] = 2 / hr_t.shape[-1]
        return {"inp": lr_t, "coord": coord, "cell": cell, "gt": rgb}


def _augment(a: np.ndarray, hflip: bool, vflip: bool, dflip: bool) -> np.ndarray:
    """The official augmentation on (H, W, C): flip rows, flip columns, transpose."""
    if hflip:
        a = a[::-1]
    if vflip:
        a = a[:, ::-1]
    if dflip:
        a = a.transpose(1, 0, 2)
    return np.ascontiguousarray(a)


class EpochBatches(torch.utils.data.Sampler):
    """Batches of dataset indices for one epoch: a seeded shuffle, split across DDP ranks.

    Global batch k of a run with `world` ranks holds the same samples as batch k of a
    single-process run with the same global batch size. `skip` batches are dropped from the
    front (resuming mid-epoch). The last incomplete global batch is dropped.
    """

    def __init__(self, n: int, *, batch_size: int, epoch: int, seed: int, rank: int = 0,
                 world: int = 1, skip: int = 0):
        if batch_size % world:
            raise DataError(f"batch size {batch_size} is not divisible by {world} processes")
        self.n, self.batch, self.epoch, self.seed = n, batch_size, epoch, seed
        self.rank, self.world, self.skip = rank, world, skip

    def __len__(self) -> int:
        return max(0, self.n // self.batch - self.skip)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        per_rank = self.batch // self.world
        offset = self.epoch * self.n  # the dataset reads the epoch from the index
        for k in range(self.skip, self.n // self.batch):
            glob = perm[k * self.batch:(k + 1) * self.batch]
            yield [offset + i for i in glob[self.rank::self.world][:per_rank]]
