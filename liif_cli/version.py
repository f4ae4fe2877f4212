"""The package's version, on its own: what tasks stamp into their files (checkpoints, reports,
exports) without importing the package's face (`liif_cli/__init__.py`); pyproject.toml reads it
for the wheel."""

__version__ = "0.1.0"
