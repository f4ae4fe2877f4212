"""`liif export`: a model as .safetensors, ONNX or the official .pth (`tasks.export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from liif_cli.cli import displays
from liif_cli.cli.options import OverwriteOpt, QuietOpt


def export(
    model: Annotated[str, typer.Argument(
        help="Model name (see `liif models`) or checkpoint path.", show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Output file. Default: MODEL.safetensors/.onnx/.pth here.")
    ] = None,
    fmt: Annotated[Optional[str], typer.Option(
        "--format", "-f", help="safetensors, onnx (needs the \\[onnx] extra: pip install "
        "'.\\[onnx]') or pth. Default: from -o's extension, else safetensors.",
        show_default=False)] = None,
    overwrite: OverwriteOpt = False, quiet: QuietOpt = False,
):
    """Write a model as .safetensors (no pickle), an ONNX graph, or the official .pth.

    Examples: liif export default -o default.safetensors · liif export default -f onnx
    """
    from liif_cli.tasks.export import export_model

    res = export_model(model, output, fmt=fmt, overwrite=overwrite,
                       on_stage=None if quiet else displays.stage_line)
    if not quiet:
        displays.export_summary(res)
