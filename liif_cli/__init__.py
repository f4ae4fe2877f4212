"""liif-cli: upscale images to any scale or size with LIIF.

Library use:
    from liif_cli import load_model, upscale
    model = load_model()            # bundled default, or a path / name
    big = upscale(model, "in.png", scale=7.5)   # ImageData (.pixels, .alpha, ...)
    arr = upscale(model, uint8_array, size=(1920, 1080))   # array in, array out
"""

import os

# OpenMP threads that spin while waiting make torch several times slower on a busy machine
# (measured here beside a training job: 126 vs 22 µs per output pixel). Set before torch is
# first imported, as it is when liif_cli is imported first (the `liif` command); a value the
# user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from .errors import LiifError  # noqa: E402
from .upscale import upscale  # noqa: E402
from .weights import load_model  # noqa: E402

__all__ = ["LiifError", "__version__", "load_model", "upscale"]
