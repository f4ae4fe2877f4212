"""liif-cli: upscale images to any scale or size with LIIF.

Library use:
    from liif_cli import Upscaler, load_model, upscale
    model = load_model()            # the network (nn.Module); name, file, metadata: model.card
    big = upscale(model, "in.png", scale=7.5)   # ImageData (.pixels, .alpha, ...)
    arr = upscale(model, uint8_array, size=(1920, 1080))   # array in, array out
    up = Upscaler(model, precision="auto")   # device, precision, decoder: once for many images
    big = upscale(up, "in.png", scale=2)
    result = evaluate("default", "Set14/HR", scales=[2, 4])   # PSNR vs bicubic: .records

Importing the package has no side effects and does not import torch: the names below are
loaded on first use (so `liif --help` starts at once). The layout: `model/` (the networks),
`runtime/` (device and precision, weights, engine, `Upscaler`), `io/` (files), `data/`
(training and evaluation data), `tasks/` (upscale, batch, evaluate, train, bench, export) and
`cli/` (the command line over them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from liif_cli.errors import LiifError
from liif_cli.lazy import lazy_attributes
from liif_cli.version import __version__

__all__ = ["LiifError", "Upscaler", "__version__", "evaluate", "load_model", "upscale",
           "upscale_file"]

if TYPE_CHECKING:
    from liif_cli.runtime.upscaler import Upscaler
    from liif_cli.runtime.weights import load_model
    from liif_cli.tasks.evaluate import evaluate
    from liif_cli.tasks.upscale import upscale, upscale_file

_LAZY = {"upscale": "liif_cli.tasks.upscale", "upscale_file": "liif_cli.tasks.upscale",
         "evaluate": "liif_cli.tasks.evaluate",
         "load_model": "liif_cli.runtime.weights",
         "Upscaler": "liif_cli.runtime.upscaler"}  # name: module


__getattr__ = lazy_attributes(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
