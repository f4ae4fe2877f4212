"""liif-cli: upscale images to any scale or size with LIIF.

Library use:
    from liif_cli import load_model, upscale
    model = load_model()            # bundled default, or a path / name
    big = upscale(model, "in.png", scale=7.5)   # (H, W, C) numpy array
"""

__version__ = "0.1.0"

from .errors import LiifError  # noqa: E402
from .upscale import upscale  # noqa: E402
from .weights import load_model  # noqa: E402

__all__ = ["LiifError", "__version__", "load_model", "upscale"]
