"""`liif view`: serve a local page to look at images at any zoom (`liif_cli.view`).

Prints the URL (with its token) on stdout at once, opens the browser unless --no-browser, and
serves until Ctrl-C (exit 130) or SIGTERM (exit 143), then stops the server, cancels a running
export (its temporary file is removed) and returns.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from liif_cli.cli.options import DEVICE_ENV, from_env

LOOPBACK = ("127.0.0.1", "localhost", "::1")
WAIT_S = 0.5  # the main thread's wait between looks at the stop flag (signals land there)


def view(
    images: Annotated[List[Path], typer.Argument(help="Images to look at (a strip switches "
                                                 "between several).", show_default=False)],
    model: Annotated[Optional[List[str]], typer.Option(
        "--model", "-m", help="Model name or checkpoint path; repeat it to compare two "
        "(the second starts on the left of the split). Default: bundled.",
        envvar="LIIF_MODEL", show_envvar=True, callback=from_env)] = None,
    denoise: Annotated[Optional[float], typer.Option(
        help="0 to 1: the default/real blend the first model starts at (see `liif upscale`).",
        show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.",
                                        envvar=DEVICE_ENV, show_envvar=True)] = "auto",
    host: Annotated[Optional[str], typer.Option(
        help="Address to listen on (default 127.0.0.1); an address other machines reach "
        "(0.0.0.0, a LAN address) lets others who have the URL in, under any host name; on a "
        "loopback address (127.0.0.2, ::1) requests must still name it or localhost.",
        show_default=False)] = None,
    port: Annotated[int, typer.Option(min=0, max=65535,
                                      help="Port; 0 picks a free one.")] = 8765,
    no_browser: Annotated[bool, typer.Option("--no-browser",
                                             help="Print the URL only.")] = False,
    output_dir: Annotated[Optional[Path], typer.Option(
        help="Folder for 'upscale the whole image' (default: next to each image).")] = None,
):
    """Look at images at any zoom in the browser, the visible part drawn by the model.

    Example: liif view photo.jpg · liif view a.png b.png --model real --no-browser --port 0
    """
    from liif_cli.cli.displays import console
    from liif_cli.cli.options import check_options, model_for_denoise, own_the_process
    from liif_cli.errors import UsageError

    check_options(device=device, denoise=denoise)
    if denoise is not None and model and len(model) == 1:  # as upscale: --denoise picks the pair
        model = [m] if (m := model_for_denoise(model[0])) else None
    own_the_process()
    from liif_cli.view.server import ViewServer
    from liif_cli.view.session import ViewSession

    session = ViewSession(images, models=model, denoise=denoise, device=device,
                          output_dir=output_dir)
    # without --host (or with an empty one, or a loopback address, which no other machine
    # reaches), a request must name this address or localhost (DNS-rebinding defence)
    check_host, host = not host or _loopback(host), host or "127.0.0.1"
    try:
        server = ViewServer(session, host, port, check_host=check_host)
    except OSError as e:
        session.close()
        in_use = getattr(e, "errno", None) in (errno.EADDRINUSE, errno.EACCES)
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}" + (
            " (try another --port, or --port 0)" if in_use else " (check --host)")) from None
    if host not in LOOPBACK:
        console.print(f"note: listening on {host}: anyone who can reach this machine and has "
                      "the URL can use it", soft_wrap=True)
    print(server.url, flush=True)  # stdout, at once: scripts and tests read it

    raise typer.Exit(_serve_until_signal(server, console, browser=not no_browser))


def _serve_until_signal(server, console, *, browser: bool) -> int:
    """Serve until SIGINT or SIGTERM (the main thread waits; signals land there), then stop
    the server; returns the first signal's exit code. A second signal while it stops changes
    nothing: the stop (an export cancelled, the tile being rendered finished) runs to its end,
    not cut by a KeyboardInterrupt with torch's threads still at work."""
    from liif_cli.errors import signal_exit_code
    from liif_cli.runtime.process import on_stop_signals

    stop, got = threading.Event(), {}

    def on_signal(signum, frame):
        got.setdefault("signal", signum)
        stop.set()

    with on_stop_signals(on_signal):
        try:
            server.start()
            if browser:
                _open_browser(server.url, console)
            while not stop.wait(WAIT_S):
                pass
        finally:
            server.stop()
    console.print("stopped")
    return signal_exit_code(got.get("signal"))


def _open_browser(url: str, console) -> None:
    """The default browser, in a thread (some wait for the browser); not on a Linux console
    without a display, where Python's fallbacks are text browsers that would take the
    terminal."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                 or os.environ.get("WAYLAND_DISPLAY")):
        console.print("note: no display: open the URL in a browser", soft_wrap=True)
        return
    import webbrowser

    threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()


def _loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: only this machine reaches the server there."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False
