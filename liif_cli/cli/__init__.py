"""The `liif` command line: a thin Typer layer over the library (`main` is the entry point).

`app.py` turns errors into one line and an exit code; `options.py` holds the options several
commands share; `displays.py` the progress bars, tables and summaries; `commands/` one module
per command.
"""

from liif_cli.cli.app import app, main

__all__ = ["app", "main"]
