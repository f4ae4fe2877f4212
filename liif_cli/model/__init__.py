"""The models: coordinate grids, pixel normalisation, encoders, LIIF and LM-LIIF (`lmf.py`)
decoders."""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError
from .coords import make_cell, make_coord, to_pixel_samples
from .liif import LIIF, LiifConfig
from .lmf import LMF_NAME, LMLIIF, LmfConfig
from .pixels import denormalise, normalise

SRModel = LIIF | LMLIIF  # any model the engine renders (also usable with isinstance)
ModelConfig = LiifConfig | LmfConfig
ARCH_NAMES = {"liif": "LIIF", LMF_NAME: "LM-LIIF"}  # official spec name -> display name


def config_from_spec(spec: dict[str, Any]) -> ModelConfig:
    """The architecture an official model spec describes, by its 'name'."""
    name = spec.get("name") if isinstance(spec, dict) else None
    if name == LMF_NAME:
        return LmfConfig.from_spec(spec)
    if name == "liif":
        return LiifConfig.from_spec(spec)
    shown = name if isinstance(spec, dict) else type(spec).__name__
    raise CheckpointError(f"model is {shown!r}, not a LIIF model ('liif', or LM-LIIF "
                          f"{LMF_NAME!r})")


def build_model(config: ModelConfig) -> SRModel:
    return LMLIIF(config) if isinstance(config, LmfConfig) else LIIF(config)


def arch_name(model_or_config: SRModel | ModelConfig) -> str:
    """'LIIF' or 'LM-LIIF', for tables and messages."""
    cfg = getattr(model_or_config, "config", model_or_config)
    return "LM-LIIF" if isinstance(cfg, LmfConfig) else "LIIF"


__all__ = ["ARCH_NAMES", "LIIF", "LMLIIF", "LiifConfig", "LmfConfig", "ModelConfig", "SRModel",
           "arch_name", "build_model", "config_from_spec", "denormalise", "make_cell", "make_coord",
           "normalise", "to_pixel_samples"]
