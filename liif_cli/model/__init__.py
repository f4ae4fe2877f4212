"""The LIIF model: coordinate grids, encoders, and the implicit decoder."""

from .coords import make_cell, make_coord, to_pixel_samples
from .liif import LIIF, LiifConfig

__all__ = ["LIIF", "LiifConfig", "make_cell", "make_coord", "to_pixel_samples"]
