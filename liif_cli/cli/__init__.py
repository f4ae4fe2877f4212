"""The `liif` command line: a thin Typer layer over the library (`main` is the entry point)."""

from liif_cli.cli.main import app, main

__all__ = ["app", "main"]
