"""`liif eval`: PSNR (and SSIM) tables under the LIIF paper's protocols (`tasks.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from liif_cli.cli import displays
from liif_cli.cli.options import (
    DEFAULT_MAX_MEMORY,
    DenoiseOpt,
    DeviceOpt,
    MaxMemoryOpt,
    ModelOpt,
    OverwriteOpt,
    PrecisionOpt,
    QuietTableOpt,
    check_options,
    model_for_denoise,
    own_the_process,
    parse_bytes,
)
from liif_cli.errors import UsageError

DEFAULT_SCALES = "2,3,4,6,12,18,24,30"  # tasks.evaluate.DEFAULT_SCALES: the paper's Table 1
OptionalPath = Optional[Path]


def eval_(
    # text, not Path: Path("") would be the current folder
    data: Annotated[str, typer.Option(help="Folder of HR images (or one with an HR/ subfolder).",
                                      show_default=False)],
    model: ModelOpt = None,
    scales: Annotated[str, typer.Option(help="Comma-separated scales, each > 1.")
                      ] = DEFAULT_SCALES,
    protocol: Annotated[str, typer.Option(
        help="div2k (RGB, shave s+6), benchmark (Y, shave s), rgb (no shave), or auto: div2k "
        "for DIV2K folders, else benchmark.")] = "auto",
    lr_dir: Annotated[OptionalPath, typer.Option(
        help="Paired LR folder with X2/ X3/ X4/ (names like babyx2.png); other scales are "
        "made from HR.")] = None,
    no_bicubic: Annotated[bool, typer.Option("--no-bicubic", help="Skip the bicubic row.")
                          ] = False,
    ssim: Annotated[bool, typer.Option("--ssim", help="Also report SSIM.")] = False,
    per_image: Annotated[bool, typer.Option("--per-image", help="Also a per-image table.")
                         ] = False,
    json_path: Annotated[OptionalPath, typer.Option("--json", help="Write records as JSON.")
                         ] = None,
    csv_path: Annotated[OptionalPath, typer.Option("--csv", help="Write records as CSV.")
                        ] = None,
    save_examples: Annotated[Optional[str], typer.Option(
        help="Folder for side-by-side crops (bicubic | model | ground truth).")] = None,
    degrade: Annotated[Optional[str], typer.Option(
        help="Degrade every LR input, in this order, seeded per image: e.g. jpeg=70, "
        "noise=5,jpeg=80, blur=1.5 (keys blur, noise, gray, poisson, jpeg).")] = None,
    denoise: DenoiseOpt = None, device: DeviceOpt = "auto", precision: PrecisionOpt = "fp32",
    max_memory: MaxMemoryOpt = DEFAULT_MAX_MEMORY, overwrite: OverwriteOpt = False,
    quiet: QuietTableOpt = False,
):
    """PSNR (and SSIM) of a model on a folder of HR images, under the LIIF paper's protocols.

    Example: liif eval --data Set5/HR --lr-dir Set5/LR_bicubic --model my.pth --scales 2,3,4
    """
    check_options(precision=precision, device=device, degrade=degrade, scales=scales,
                  denoise=denoise)
    budget = parse_bytes(max_memory)
    own_the_process()
    if denoise is not None:  # the task blends the pair; a LIIF_MODEL may give way to it
        model = model_for_denoise(model)
    from liif_cli.io.files import check_output_path
    from liif_cli.tasks.evaluate import BICUBIC, evaluate, write_csv, write_json

    reports = [(p.expanduser(), w) for p, w in ((json_path, write_json), (csv_path, write_csv))
               if p]
    if len(reports) == 2 and reports[0][0].resolve() == reports[1][0].resolve():
        raise UsageError(f"--json and --csv name the same file, {json_path}: give "
                         "each its own")
    for path, _ in reports:
        check_output_path(path, overwrite=overwrite)
    with displays.progress_bar(f"eval {Path(data).name}", quiet=quiet, unit_scale=1e-6) as progress:
        res = evaluate(model, data, scales=scales, protocol=protocol, lr_dir=lr_dir,
                       bicubic=not no_bicubic, with_ssim=ssim, device=device,
                       precision=precision, max_memory=budget, examples_dir=save_examples,
                       overwrite=overwrite, degrade=degrade, denoise=denoise,
                       on_progress=progress)
    for path, write in reports:
        write(path, res.rows(per_image=per_image), overwrite=overwrite)
    displays.eval_tables(res, bicubic=None if no_bicubic else BICUBIC, ssim=ssim,
                         per_image=per_image)
    if not quiet:
        for path, _ in reports:
            displays.console.print(f"[green]wrote[/] {escape(str(path))}")
        if res.examples:
            displays.console.print(f"[green]wrote[/] {len(res.examples)} example crops to "
                                   f"{escape(str(save_examples))}")
