"""The `liif` application: the one place where an error becomes a message and an exit code.

Library errors, running out of memory and bugs become one line on stderr (`errors.describe`)
and the exit code it gives; Typer's own usage errors one line and exit 2; library warnings
(`LiifWarning`) one `note:` line, unless the command runs with --quiet. Commands live one per
module in `cli/commands/`; registering one is a line in `commands.register`. Nothing imported here
imports torch: `liif --help`, `--version` and usage errors stay instant.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from typing import Annotated

import typer
from rich.markup import escape
from typer.core import TyperGroup, TyperOption

try:  # Typer ≥ 0.23 vendors Click
    from typer._click.exceptions import ClickException
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover - older Typer uses Click itself
    from click import get_current_context
    from click.exceptions import ClickException

from liif_cli.cli import commands
from liif_cli.cli.displays import console, error_line, note_line, out
from liif_cli.cli.options import ENV_META
from liif_cli.errors import (
    CheckpointError,
    DeviceError,
    LiifWarning,
    OutputPathError,
    UsageError,
    describe,
    is_bug,
)
from liif_cli.version import __version__

DEBUG_HINT = " (rerun with LIIF_DEBUG=1 for the traceback, and please report it)"


def _quiet() -> bool:
    """Whether the command running now was given --quiet (in a thread of its own, which has
    no command context, as its parsing recorded it)."""
    ctx = get_current_context(silent=True)
    if ctx is None:
        from liif_cli.cli.options import QUIET

        return QUIET["on"]
    return bool(ctx.params.get("quiet"))


def _notes(show_other):
    """A `warnings.showwarning` that prints each warning as one `note:` line on stderr
    (nothing under --quiet): library warnings (`LiifWarning`) as they are, another package's
    (Pillow's "Corrupt EXIF data", torch's) as that package's name and the message's first
    line, not Python's two lines with a source path, after the image's name when it came while
    this thread decoded one (`io.images.decoding`). With LIIF_DEBUG set, another package's
    warning goes to `show_other` whole."""
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, LiifWarning):
            if not _quiet():
                note_line(str(message))
        elif os.environ.get("LIIF_DEBUG"):
            show_other(message, category, filename, lineno, file, line)
        elif not _quiet():
            images = sys.modules.get("liif_cli.io.images")  # loaded by then if it is decoding
            source = images.decoding() if images is not None else None
            note = _foreign_note(str(message), filename)
            note_line(f"{source}: {note}" if source else note)
    return show


def _foreign_note(message: str, filename: str) -> str:
    """"PACKAGE: first line of the message" (spaces collapsed), the package being the folder
    under site-packages in the warning's source path (no prefix from elsewhere)."""
    first = next((ln for ln in message.splitlines() if ln.strip()), "a warning")
    first = " ".join(first.split())
    parts = re.split(r"[\\/]", filename or "")
    for root in ("site-packages", "dist-packages"):
        if root in parts[:-1]:
            return f"{parts[parts.index(root) + 1]}: {first}"
    return first


def _usage_error(e: ClickException) -> typer.Exit:
    """A command-line mistake Typer found (missing argument, bad option): one line, exit 2."""
    ctx = getattr(e, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    error_line(e.format_message().strip().replace("\n", " ") + hint)
    return typer.Exit(e.exit_code)


def _failed(e: BaseException, command: str | None = None, env: dict | None = None) -> typer.Exit:
    """Any other exception: its one line (`errors.describe`, with `command`'s advice) and its
    exit code. A value that came from a LIIF_* variable (`env`: option -> (variable, value))
    and that the line names is said to come from there."""
    message, code = describe(e, command)
    if isinstance(e, KeyboardInterrupt):
        console.print(f"[yellow]{message}[/]")
    elif is_bug(e):
        console.print(f"[red]{escape(message)}[/]{DEBUG_HINT}", soft_wrap=True)
    else:
        error_line(message + _from_environment(e, message, env or {}))
    return typer.Exit(code)


def _from_environment(e: BaseException, message: str, env: dict) -> str:
    """" (LIIF_MODEL=x.pth, from the environment)" for each value from a variable that a
    configuration error (a usage, model or device error) names as a whole word."""
    if not isinstance(e, (UsageError, CheckpointError, DeviceError)) or isinstance(
            e, OutputPathError):
        return ""
    return "".join(f" ({var}={value}, from the environment)" for var, value in env.values()
                   if re.search(rf"(?<![\w.]){re.escape(str(value))}(?![\w.])", message))


def _pipe_closed() -> typer.Exit:
    """stdout's reader went away (`| head`): no traceback and no error line, as a command
    killed by SIGPIPE prints none; stdout is pointed at the null device so that the final flush
    fails no more. Exit 1, as Click does when the same happens while it prints --help."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return typer.Exit(1)


class _App(TyperGroup):
    """Turns errors into one line and an exit code, for every command.

    Typer's own usage errors (bad options, missing arguments) too: one line, exit 2, instead
    of Rich's multi-line box. `liif` alone still prints the help.
    """

    def make_context(self, info_name, args, parent=None, **extra):  # noqa: D102
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except ClickException as e:  # options of `liif` itself
            if type(e).__name__ == "NoArgsIsHelpError":
                raise
            raise _usage_error(e) from None

    def invoke(self, ctx):  # noqa: D102
        from liif_cli.cli.options import QUIET

        QUIET["on"] = False  # until the command's --quiet is parsed
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _notes(warnings.showwarning)
                return super().invoke(ctx)
        except ClickException as e:  # a command's arguments and options
            raise _usage_error(e) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BrokenPipeError:  # `liif models | head -1`: the reader has what it wanted
            raise _pipe_closed() from None
        except (Exception, KeyboardInterrupt) as e:
            if is_bug(e) and os.environ.get("LIIF_DEBUG"):
                raise
            raise _failed(e, ctx.invoked_subcommand, ctx.meta.get(ENV_META)) from None


def _flag_type(show_type):
    """Typer's help shows `<bool>` beside a flag (--overwrite, --quiet), as if it took a value:
    a flag shows no type."""
    def display_type_rich(self, ctx):
        return None if self.is_flag else show_type(self, ctx)
    return display_type_rich


TyperOption.display_type_rich = _flag_type(TyperOption.display_type_rich)

app = typer.Typer(cls=_App, no_args_is_help=True, add_completion=True,
                  pretty_exceptions_enable=False,
                  help="Upscale images to any scale or size with LIIF.")


def _version(value: bool) -> None:
    if value:
        out.print(f"liif-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")
        ] = False):
    """Upscale images to any scale or size with LIIF (Local Implicit Image Function)."""


commands.register(app)


def main() -> None:
    # OpenMP threads that spin while waiting make torch several times slower on a busy machine
    # (measured beside a training job: 126 vs 22 µs per output pixel). Set here, before any
    # command imports torch, not on `import liif_cli`; a value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if sys.platform == "win32":  # a redirected stdout is cp1252 there: "→" and names failed
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(encoding="utf-8", errors="replace")
    try:
        app()
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    _leave_distributed(code)
    sys.exit(code)


def _leave_distributed(code: int | str | None) -> None:
    """Under torchrun, end the process without interpreter finalization.

    A gloo worker thread may still be dropping the last reference to a finished collective when
    the interpreter finalizes; the drop needs the GIL, a finalizing interpreter ends the thread
    instead, and the C++ runtime aborts the process (SIGABRT, "terminate called without an
    active exception"); torchrun then kills the other ranks. This raced in 3 of 94 runs on
    a busy 2-core CPU. Training has written and renamed its files by now, so the process flushes
    its output, releases the process group and exits at once.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    dist.destroy_process_group()
    if isinstance(code, str):  # what sys.exit would print
        print(code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
