"""Images through standard input and output (the name `-`): read whole, written whole.

A terminal, or a closed stream, is a usage error before any work; a failed write (a full disk
behind `> file`) is one error line; a reader that went away (`| head`) ends the CLI quietly.
"""

from __future__ import annotations

import sys

from liif_cli.errors import ImageReadError, OutputWriteError, UsageError
from liif_cli.io.images import DEFAULT_MAX_INPUT_PIXELS, ImageData, encode_image, read_image_bytes

STDIO = "-"  # as an input or output name: stdin / stdout


def read_stdin(*, max_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> ImageData:
    """Read one encoded image from standard input (the input name `-`)."""
    stream = sys.stdin
    if stream is None:  # `<&-`
        raise UsageError("input '-' reads an image from stdin, but stdin is closed: pipe one "
                         "in, e.g. `liif upscale - -s 2 < photo.jpg > big.png`")
    if stream.isatty():
        raise UsageError("input '-' reads an image from stdin, but stdin is a terminal: pipe "
                         "one in, e.g. `liif upscale - -s 2 < photo.jpg > big.png`")
    blob = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
    if not blob:
        raise ImageReadError("no image on stdin: it was empty (0 bytes)")
    return read_image_bytes(blob, name="stdin", max_pixels=max_pixels)


def check_stdout() -> None:
    """Output '-' onto a terminal is a usage error, as input '-' from one is: binary image
    data would scroll across the screen."""
    if sys.stdout is None:  # `>&-`
        raise UsageError("output '-' writes the image to stdout, but stdout is closed: "
                         "redirect it, e.g. `liif upscale photo.jpg -s 2 -o - > big.png`")
    if sys.stdout.isatty():
        raise UsageError("output '-' writes the image to stdout, but stdout is a terminal: "
                         "redirect it, e.g. `liif upscale photo.jpg -s 2 -o - > big.png`")


def write_stdout(data: ImageData, fmt: str = "png", *, quality: int = 95) -> int:
    """Encode, then write the whole file to stdout at once (nothing on failure). Bytes written."""
    blob = encode_image(data, fmt, quality=quality)
    stream = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else sys.stdout
    try:
        stream.write(blob)
        stream.flush()
    except BrokenPipeError:  # the reader went away (`| head`): the CLI ends quietly
        raise
    except OSError as e:  # `> file` on a full disk, a gone network mount: a failed write
        raise OutputWriteError(f"cannot write to stdout: {e.strerror or e}") from None
    return len(blob)
