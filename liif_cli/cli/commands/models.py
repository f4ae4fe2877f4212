"""`liif models`: the bundled models and those in the user's models folder."""

from __future__ import annotations

from typing import Annotated

import typer

from liif_cli.cli import displays


def models(
    json_out: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
):
    """List the bundled models and those in your models folder.

    A table in a terminal; piped, a header line, then one tab-separated row per model (name,
    source, arch, encoder, params, trained, bytes, path); --json for everything as JSON.
    """
    import json

    from liif_cli.runtime.weights import list_models, user_models_dir

    rows = list_models()
    if json_out:
        # plain print: Rich would wrap long lines at the console width
        print(json.dumps([{**r, "path": str(r["path"])} for r in rows], indent=1))
        return
    displays.models_table(rows, user_models_dir())
