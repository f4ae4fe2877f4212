"""The commands, one module each: parse, call one library function, show the result.

A new command is a module here and one line in `register` (the order is `liif --help`'s).
Modules import torch-free code only at the top: the heavy imports are inside the commands.
"""

from __future__ import annotations

import typer

from liif_cli.cli.commands import (
    batch,
    bench,
    evaluate,
    export,
    models,
    train,
    upscale,
    video,
    view,
)


def register(app: typer.Typer) -> None:
    app.command()(upscale.upscale)
    app.command()(models.models)
    app.command()(export.export)
    app.command(cls=train.TrainCommand)(train.train)
    app.command(name="eval")(evaluate.eval_)
    app.command(context_settings=batch.CONTEXT)(batch.batch)
    app.command()(bench.bench)
    app.command()(video.video)
    app.command()(view.view)
