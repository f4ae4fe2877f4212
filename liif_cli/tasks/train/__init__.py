"""Training, in one wing: the loop (`loop`), its recipe (`recipe`: `TrainConfig`, torch-free),
validation (`validation`) and the helpers of a run over many processes (`distributed`).

`from liif_cli.tasks.train import train, TrainConfig, config_from, validate, Progress` as
before the wing; the recipe's names load without torch, the rest on first use, so that `liif
train` answers a mistake in its options at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from liif_cli.lazy import lazy_attributes
from liif_cli.tasks.train.recipe import (
    RESUME_MAY_CHANGE,
    TrainConfig,
    check_new_run,
    config_from,
    resume_config,
)

__all__ = ["RESUME_MAY_CHANGE", "Progress", "TrainConfig", "check_new_run", "config_from",
           "resume_config", "train", "validate"]

if TYPE_CHECKING:
    from liif_cli.tasks.train.loop import Progress, train
    from liif_cli.tasks.train.validation import validate

_LAZY = {"train": "liif_cli.tasks.train.loop", "Progress": "liif_cli.tasks.train.loop",
         "validate": "liif_cli.tasks.train.validation"}  # name: module

__getattr__ = lazy_attributes(__name__, _LAZY)
