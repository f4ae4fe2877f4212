"""Names a package offers without importing them until first use (PEP 562), so that importing
it stays cheap: `liif_cli` (no torch until a model is asked for) and `liif_cli.tasks.train` (its
torch-free recipe at once, the loop on first use)."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports each name of `where` (name: module)
    on first use; once loaded, it is an ordinary attribute of the package."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
