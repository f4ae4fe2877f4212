"""liif-cli: upscale images to any scale or size with LIIF.

Library use:
    from liif_cli import load_model, upscale
    model = load_model()            # bundled default, or a path / name
    big = upscale(model, "in.png", scale=7.5)   # ImageData (.pixels, .alpha, ...)
    arr = upscale(model, uint8_array, size=(1920, 1080))   # array in, array out

Importing the package has no side effects and does not import torch: `load_model` and
`upscale` are loaded on first use (so `liif --help` starts at once).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from .errors import LiifError

__version__ = "0.1.0"

__all__ = ["LiifError", "__version__", "load_model", "upscale", "upscale_file"]

if TYPE_CHECKING:
    from .upscale import upscale, upscale_file
    from .weights import load_model

_LAZY = {"upscale": "upscale", "upscale_file": "upscale", "load_model": "weights"}  # name: module


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'liif_cli' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """`liif_cli.upscale` stays the function once the module of that name is imported.

    (Importing `liif_cli.upscale` sets the package's attribute to the submodule; the function
    is the public name. `from liif_cli.upscale import ...` still reaches the module.)
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "upscale" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
