"""Training's validation: mean PSNR per scale of a model on HR images (LR made from them)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Mapping, Sequence

import numpy as np
import torch

from liif_cli.data.degrade import parse_spec, spec_text
from liif_cli.data.metrics import get_protocol, psnr
from liif_cli.data.samples import (
    hr_crop_size,
    load_rgb_uint8,
    lr_size,
    make_lr,
    predict_from_lr,
    training_images,
)
from liif_cli.errors import DataError
from liif_cli.model import SRModel
from liif_cli.runtime.upscaler import Upscaler

PROTOCOL = get_protocol("div2k")  # validation's PSNR


def load_val_images(folder: str | Path, count: int, scales: tuple[float, ...]
                    ) -> dict[str, np.ndarray]:
    """The first `count` images under `folder`, by path under it (unique; the file name seeds
    a degradation), each checked now against every validation scale, as `liif eval` plans its
    jobs: a wrong folder or an image too small would otherwise fail the first validation, an
    epoch later."""
    try:
        files = training_images(folder)[:count]
    except DataError as e:
        raise DataError(f"--val-data: {e}") from None
    images = {}
    for path in files:
        img = load_rgb_uint8(path)
        H, W = img.shape[:2]
        for s in scales:
            h, w = lr_size((H, W), s)
            PROTOCOL.check_size(f"validation image {path.name}", (W, H), s, (h, w),
                                hr_crop_size((h, w), s), hint="; remove it from --val-data, "
                                "or lower --val-images")
        images[path.relative_to(folder).as_posix()] = img
    return images


def validate(model: SRModel, images: Mapping[str, np.ndarray] | Sequence[np.ndarray],
             scales: tuple[float, ...], dtype: torch.dtype = torch.float32,
             degrade: str | None = None) -> dict[str, float]:
    """Mean PSNR per scale (official div2k protocol: RGB, shave scale + 6; LR made from HR).

    `dtype` is the precision of the whole forward pass, as `liif upscale --precision` sets it
    (a bf16 run validates in bf16: within ~0.01 dB of fp32, and faster on the CPU); it is
    taken as resolved (train resolved it). The model renders through a fresh `Upscaler` on its
    own device: the weights changed since the last validation, so its decoder is rebuilt.
    `degrade`: a spec (`degrade.parse_spec`); the LR is also degraded by it as `liif eval
    --degrade` does (`samples.predict_from_lr`, seeded by file name: `images` then maps each
    image's path, or its name, to it), and those scores are added under keys such as "x2 jpeg=75".
    """
    if degrade and not isinstance(images, Mapping):
        raise TypeError("validate with degrade needs images by file name (a dict), as eval "
                        "seeds each image's degradation by its name")
    named = list(images.items()) if isinstance(images, Mapping) else [("", im) for im in images]
    up = Upscaler(model, device=next(model.parameters()).device, precision=dtype)
    res = {}
    specs = [()] + ([parse_spec(degrade)] if degrade else [])
    for steps, s in [(st, s) for st in specs for s in scales]:
        vals = []
        for name, hr in named:
            crop, lr = make_lr(hr, s)
            _, pred = predict_from_lr(up, lr, crop.shape[:2], degrade=steps,
                                      name=PurePosixPath(name).name, scale=s)
            vals.append(psnr(pred, crop, protocol=PROTOCOL.name, scale=s))
        res[f"x{s:g}" + (f" {spec_text(steps)}" if steps else "")] = float(np.mean(vals))
    return res
