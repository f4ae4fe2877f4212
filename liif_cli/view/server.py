"""The HTTP side of `liif view`: the standard library's ThreadingHTTPServer, on purpose.

Why not a framework: the server has a handful of GET/POST routes for one user on localhost.
`http.server` gives a thread per connection (a tile waiting for the render worker does not
hold up the page's other requests), `shutdown()` for a clean stop, and is maintained with
Python itself; the limits a framework would add are written here in a few lines: a request
line of at most `MAX_URL` characters, no request bodies, only known query parameters, each
once, each checked by a pattern before it is parsed, tiles of at most `session.MAX_TILE`
pixels a side and scales within `session.MAX_SCALE`. No new dependency.

Access: every request needs the session's token (`?token=`, compared in constant time),
else 403, and, unless `check_host` is off (`liif view --host`), a Host header naming the
listening address (a DNS-rebinding page's requests name its own domain). No request names a
file: images are numbers (command-line order), models are names from a fixed list, static
files come from a dict filled at start. Every refusal, http.server's own included (request
line too long or malformed, too many headers, unknown methods), is a 4xx with a one-line text
reason and the usual headers; 503 (one line too) says "not now": too many connections, a tile
busy past its wait, or the server stopping. Responses carry a Content-Security-Policy that
allows nothing from other origins (the page works offline) and no Referer (the URL holds the
token).

Bounds: at most `MAX_CONNECTIONS` open at once (more are answered 503 and closed); a
kept-alive connection waits `IDLE_TIMEOUT_S` for its next request line, and a request then
has `REQUEST_TIMEOUT_S` for its headers, its work and its answer, after which a watchdog cuts
the connection (a slow sender cannot hold a thread by sending a byte a minute). A client that
resets its connection is not worth a word on the terminal.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import select
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Iterator
from urllib.parse import parse_qsl, urlsplit

from liif_cli.errors import LiifError, OutputExistsError, UsageError, describe
from liif_cli.view.session import NotFound, StaleRequest, Unavailable, ViewSession, encode_png

MAX_URL = 2048  # characters of the request target
MAX_FIELDS = 16  # query parameters
IDLE_TIMEOUT_S = 60  # a kept-alive connection that sends nothing for this long is closed
# from a request's first line to the end of its answer; above session.TILE_WAIT_S plus a tile
REQUEST_TIMEOUT_S = 60
STOP_WAIT_S = 30  # at stop, how long the requests under way get to finish their answers
# connections open at once, each its own thread: a browser opens at most 6 to one host, and
# an aborted tile's thread lingers up to session.ALIVE_POLL_S
MAX_CONNECTIONS = 64
# http.server's own 5xx that are the client's doing, as 4xx
CLIENT_FAULT = {HTTPStatus.NOT_IMPLEMENTED: HTTPStatus.METHOD_NOT_ALLOWED,  # unknown method
                HTTPStatus.HTTP_VERSION_NOT_SUPPORTED: HTTPStatus.BAD_REQUEST}  # HTTP/2.0 etc.
STATIC = {  # path -> (package file, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/view.js": ("view.js", "text/javascript; charset=utf-8"),
    "/view.css": ("view.css", "text/css; charset=utf-8"),
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# what each query parameter may look like, before it is parsed
PATTERNS = {
    # [0-9], not \d: \d takes any script's digits ("٣"), which int() and float() then accept
    "token": r"[0-9a-f]{1,64}",
    "image": r"[0-9]{1,6}",
    "x": r"[0-9]{1,9}", "y": r"[0-9]{1,9}", "w": r"[0-9]{1,4}", "h": r"[0-9]{1,4}",
    "scale": r"[0-9]{1,4}(\.[0-9]{1,6})?(x[0-9]{1,4}(\.[0-9]{1,6})?)?",
    # a name from the list, only ever looked up in it: a file's stem, which may be "modèle" or
    # "edsr (1)" (any printable character but a path separator)
    "model": r"[^/\\\x00-\x1f\x7f]{1,255}",
    "denoise": r"[01](\.[0-9]{1,6})?",
    "view": r"[A-Za-z0-9_-]{1,64}", "gen": r"[0-9]{1,12}",
    "job": r"[0-9]{1,9}", "overwrite": r"[01]",
}
ROUTES = {  # (method, path) -> (handler name, parameters it takes besides the token)
    ("GET", "/"): ("static", set()),
    ("GET", "/view.js"): ("static", set()),
    ("GET", "/view.css"): ("static", set()),
    ("GET", "/api/info"): ("info", set()),
    ("GET", "/api/image"): ("image", {"image"}),
    ("GET", "/api/tile"): ("tile", {"image", "scale", "x", "y", "w", "h", "model", "denoise",
                                    "view", "gen"}),
    ("POST", "/api/export"): ("export", {"image", "scale", "model", "denoise", "overwrite"}),
    ("GET", "/api/jobs"): ("jobs", set()),
    ("POST", "/api/moved"): ("moved", {"view", "gen"}),
    ("POST", "/api/cancel"): ("cancel", {"job"}),
}
REQUIRED = {"image": {"image"}, "tile": {"image", "scale", "x", "y", "w", "h"},
            "moved": {"view", "gen"},
            "export": {"image", "scale"}, "cancel": {"job"}}
HEADERS = (("Content-Security-Policy", CSP), ("Referrer-Policy", "no-referrer"),
           ("X-Content-Type-Options", "nosniff"))  # on every answer, refusals included


class Refusal(Exception):
    """A request answered with `status` and a one-line reason."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(reason)
        self.status = status
        self.headers = headers


def _not_allowed(method: str, path: str) -> Refusal:
    """405 with the Allow header HTTP requires: the methods `path` is served with."""
    allowed = sorted(m for m, p in ROUTES if p == path) or ["GET", "POST"]
    return Refusal(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} {path} is not served",
                   (("Allow", ", ".join(allowed)),))


def _static_files(token: str) -> dict[str, bytes]:
    base = resources.files("liif_cli.view") / "static"
    out = {}
    for path, (name, _) in STATIC.items():
        data = (base / name).read_bytes()
        if name == "index.html":  # the assets' URLs carry the token too
            data = data.replace(b"{{token}}", token.encode())
        out[path] = data
    return out


class _Watchdog:
    """Cuts connections whose deadline has passed: `shutdown` makes a read or write blocked on
    them return at once (one thread for all connections; deadlines are few and coarse)."""

    def __init__(self) -> None:
        self._deadlines: dict[socket.socket, float | None] = {}  # None: cut, not yet disarmed
        self._cv = threading.Condition()
        self._closed = False
        threading.Thread(target=self._run, name="liif-view-watchdog", daemon=True).start()

    def arm(self, conn: socket.socket, seconds: float) -> None:
        with self._cv:
            self._deadlines[conn] = time.monotonic() + seconds
            self._cv.notify()

    def disarm(self, conn: socket.socket) -> None:
        with self._cv:
            self._deadlines.pop(conn, None)

    def cut(self, conn: socket.socket) -> bool:
        """Whether `conn` ran out of time (its request is not to be served)."""
        with self._cv:
            return conn in self._deadlines and self._deadlines[conn] is None

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()

    def _run(self) -> None:
        with self._cv:
            while not self._closed:
                now = time.monotonic()
                for conn, deadline in self._deadlines.items():
                    if deadline is not None and deadline <= now:
                        self._deadlines[conn] = None
                        try:
                            conn.shutdown(socket.SHUT_RDWR)
                        except OSError:  # already gone
                            pass
                pending = [d for d in self._deadlines.values() if d is not None]
                self._cv.wait(None if not pending else max(0.0, min(pending) - now) + 0.01)


class ViewServer(ThreadingHTTPServer):
    """Serves one ViewSession; `url` has the token. `serve_forever` in any thread.

    `check_host` (default on) refuses requests whose Host header is not the listening address
    (or localhost) at its port: off for `liif view --host`, where other names may be in use.
    """

    daemon_threads = True
    block_on_close = False
    request_queue_size = MAX_CONNECTIONS  # a burst of connects waits for accept, not SYN retries

    # SO_REUSEADDR lets a second server bind a port in use on Windows: no "address in use"
    allow_reuse_address = sys.platform != "win32"

    def __init__(self, session: ViewSession, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, *, check_host: bool = True):
        self.session = session
        self.token = token or secrets.token_hex(24)
        self.static = _static_files(self.token)
        self.host_shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.watchdog = _Watchdog()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._open = 0  # connections with a thread now
        self._open_lock = threading.Lock()
        self._busy = 0  # requests being answered now (not idle kept-alive connections)
        self._busy_cv = threading.Condition()
        try:
            super().__init__((host, port), _Handler)
        except BaseException:
            self.watchdog.close()
            raise
        self.hosts = _host_names(self.host_shown, self.port) if check_host else None

    @property
    def connections(self) -> int:
        """Connections open now, each with its thread (at most `MAX_CONNECTIONS`)."""
        return self._open

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host_shown}]" if ":" in self.host_shown else self.host_shown
        return f"http://{host}:{self.port}/?token={self.token}"

    def start(self) -> threading.Thread:
        """Serve in a daemon thread (tests, and the CLI, whose main thread waits for signals)."""
        t = threading.Thread(target=self.serve_forever, name="liif-view-http", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        """Stop serving, close the socket, cancel exports and stop the render worker (queued
        tiles are answered 503)."""
        self.shutdown()
        self.server_close()
        self.watchdog.close()
        self.session.close()
        # the requests being answered end now (queued tiles get their 503, the one rendering
        # its pixels): the process must not exit while one is inside torch or OpenCV, whose
        # threads' teardown then aborts it ("terminate called without an active exception")
        with self._busy_cv:
            self._busy_cv.wait_for(lambda: self._busy == 0, timeout=STOP_WAIT_S)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Around a request's answer: `stop` waits for those under way."""
        with self._busy_cv:
            self._busy += 1
        try:
            yield
        finally:
            with self._busy_cv:
                self._busy -= 1
                self._busy_cv.notify_all()

    def process_request(self, request, client_address) -> None:
        """A thread for the connection, if one of `MAX_CONNECTIONS` is free; else 503."""
        if not self._slots.acquire(blocking=False):
            _turn_away(request)
            self.shutdown_request(request)
            return
        self._count(+1)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._count(-1)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._count(-1)

    def _count(self, step: int) -> None:
        with self._open_lock:
            self._open += step
        if step < 0:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        """An exception out of a connection's thread: a client that reset or left (or one the
        watchdog cut) is not news; anything else is a bug, told in one line, not a traceback."""
        e = sys.exc_info()[1]
        if not isinstance(e, OSError):
            print(f"liif view: {describe(e, 'view')[0]}", file=sys.stderr)


def _host_names(host: str, port: int) -> frozenset[str]:
    """The Host headers that name this server: its address or localhost, with the port (which
    a browser leaves out only for port 80)."""
    names = {f"[{host}]" if ":" in host else host, "localhost"}
    return frozenset({f"{n}:{port}" for n in names} | (names if port == 80 else set()))


def _turn_away(request: socket.socket) -> None:
    """Answer a connection over the cap 503 without a thread (the accept loop's; a few bytes
    into a fresh socket's buffer) and read what it has sent (an unread request would turn
    the close into a reset, and the answer with it)."""
    body = b"busy: too many connections; try again\n"
    head = [f"HTTP/1.1 {HTTPStatus.SERVICE_UNAVAILABLE.value} Service Unavailable",
            "Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}",
            "Cache-Control: no-store", "Connection: close", *(f"{k}: {v}" for k, v in HEADERS)]
    try:
        request.settimeout(1)
        request.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        request.setblocking(False)
        request.recv(65536)
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    server: ViewServer
    protocol_version = "HTTP/1.1"  # keep-alive: the page sends many small requests
    timeout = IDLE_TIMEOUT_S
    server_version = "liif-view"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - quiet: the terminal shows the URL
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def _other(self):
        self.close_connection = True  # (a HEAD answer has no body: end the connection)
        r = _not_allowed(self.command, urlsplit(self.path).path)
        self._refuse(Refusal(r.status, "only GET and POST are served", r.headers))

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _other

    # --------------------------------------------------------------------------------------
    # http.server's side: deadlines and its own refusals

    def handle_one_request(self) -> None:
        # the wait for the request line, and the line itself; parse_request arms the rest
        self.server.watchdog.arm(self.connection, IDLE_TIMEOUT_S)
        try:
            super().handle_one_request()
        finally:
            self.server.watchdog.disarm(self.connection)

    def parse_request(self) -> bool:
        self.server.watchdog.arm(self.connection, REQUEST_TIMEOUT_S)
        if not super().parse_request():
            return False
        if self.request_version == "HTTP/0.9":  # "GET /": its answer would have no headers
            self.send_error(HTTPStatus.BAD_REQUEST, "HTTP/0.9 requests are not served")
            return False
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None):
        """http.server's refusals (request line too long or malformed, bad version, too many
        or too long headers, unknown method) as ours: one line and our headers, a 4xx."""
        self.close_connection = True
        if self.request_version not in ("HTTP/1.0", "HTTP/1.1"):
            self.request_version = "HTTP/1.0"  # else the status line and headers are left out
        status = CLIENT_FAULT.get(code, code)
        reason = (message or HTTPStatus(code).phrase)[:200]
        headers = ()
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            headers = _not_allowed(self.command or "", urlsplit(getattr(self, "path", "")).path).headers
        self._refuse(Refusal(status, reason, headers))

    # --------------------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        with self.server.busy():
            self._answer(method)

    def _answer(self, method: str) -> None:
        if self.server.watchdog.cut(self.connection):  # out of time: its headers may be cut
            self.close_connection = True
            return
        try:
            name, params = self._parse(method)
            getattr(self, "_" + name)(params)
        except Refusal as r:
            self._refuse(r)
        except StaleRequest:
            self._refuse(Refusal(HTTPStatus.CONFLICT, "stale: the page has moved on"))
        except NotFound as e:
            self._refuse(Refusal(HTTPStatus.NOT_FOUND, str(e)))
        except OutputExistsError as e:  # its "pass --overwrite" is the CLI's
            self._refuse(Refusal(HTTPStatus.CONFLICT,
                                 f"output exists: {e.path} (pass overwrite=1 to replace it)"))
        except UsageError as e:
            self._refuse(Refusal(HTTPStatus.BAD_REQUEST, str(e)))
        except Unavailable as e:
            self._refuse(Refusal(HTTPStatus.SERVICE_UNAVAILABLE, str(e)))
        except LiifError as e:
            self._refuse(Refusal(HTTPStatus.INTERNAL_SERVER_ERROR, str(e)))
        except OSError:  # the client has gone (reset, closed) or the watchdog cut it
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - out of memory or a bug: the CLI's one line
            self._refuse(Refusal(HTTPStatus.INTERNAL_SERVER_ERROR, describe(e, "view")[0]))

    def _parse(self, method: str) -> tuple[str, dict[str, str]]:
        if len(self.path) > MAX_URL:
            raise Refusal(HTTPStatus.REQUEST_URI_TOO_LONG, f"URL over {MAX_URL} characters")
        length = self.headers.get("Content-Length", "0").strip() or "0"
        if not re.fullmatch(r"[0-9]{1,18}", length):  # not isdigit(): "²" is a digit to it
            self.close_connection = True
            raise Refusal(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        if self.headers.get("Transfer-Encoding") or int(length) > 0:
            self.close_connection = True  # the body is never read
            raise Refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "requests carry no body")
        host = self.headers.get("Host")
        if self.server.hosts is not None and host is None:  # browsers always send one
            raise Refusal(HTTPStatus.BAD_REQUEST, "no Host header: a request must name the "
                          "server (127.0.0.1 or localhost)")
        if self.server.hosts is not None and (
                host.strip().lower() not in self.server.hosts):
            raise Refusal(HTTPStatus.FORBIDDEN, f"forbidden: Host {host[:80]!r} is not this "
                          "server's address (`liif view --host` allows other names)")
        parts = urlsplit(self.path)
        try:
            pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(
                parts.query), max_num_fields=MAX_FIELDS)
        except ValueError:
            raise Refusal(HTTPStatus.BAD_REQUEST, "malformed query string") from None
        params: dict[str, str] = {}
        for k, v in pairs:
            if k in params:
                raise Refusal(HTTPStatus.BAD_REQUEST, f"parameter {k!r} given twice")
            params[k] = v
        token = params.pop("token", "")
        if not secrets.compare_digest(token.encode(), self.server.token.encode()):
            raise Refusal(HTTPStatus.FORBIDDEN, "forbidden: use the URL `liif view` printed "
                          "(with its ?token=)")
        route = ROUTES.get((method, parts.path))
        if route is None:
            if any(p == parts.path for _, p in ROUTES):
                raise _not_allowed(method, parts.path)
            raise Refusal(HTTPStatus.NOT_FOUND, f"{method} {parts.path} is not served")
        name, allowed = route
        for k, v in params.items():
            if k not in allowed:
                raise Refusal(HTTPStatus.BAD_REQUEST, f"unknown parameter {k!r}")
            if not re.fullmatch(PATTERNS[k], v):
                raise Refusal(HTTPStatus.BAD_REQUEST, f"bad {k}: {v[:40]!r}")
        missing = REQUIRED.get(name, set()) - params.keys()
        if missing:
            raise Refusal(HTTPStatus.BAD_REQUEST, f"missing {', '.join(sorted(missing))}")
        if name == "static":
            params["path"] = parts.path
        return name, params

    def _send(self, status: int, body: bytes, ctype: str, *, cache: bool = False,
              headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=86400" if cache else "no-store")
        for k, v in HEADERS + headers:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, r: Refusal) -> None:
        try:
            self._send(r.status, (str(r).splitlines() or [""])[0].encode() + b"\n",
                       "text/plain; charset=utf-8", headers=r.headers)
        except OSError:  # the client has gone, or the watchdog cut it
            self.close_connection = True

    def _client_alive(self) -> bool:
        """False once the client has closed or reset the connection: it waits for no answer.
        (Called by the render worker while this thread waits; a pipelined next request is
        data, not an end.)"""
        try:
            return not _readable(self.connection) or self.connection.recv(1, socket.MSG_PEEK) != b""
        except (OSError, ValueError):
            return False

    def _json(self, obj) -> None:
        self._send(HTTPStatus.OK, json.dumps(obj).encode(), "application/json")

    # --------------------------------------------------------------------------------------
    # routes

    def _static(self, p: dict[str, str]) -> None:
        path = p["path"]
        self._send(HTTPStatus.OK, self.server.static[path], STATIC[path][1])

    def _info(self, p: dict[str, str]) -> None:
        from liif_cli.view import session as s

        sess = self.server.session
        self._json({
            "images": [{"name": im.path.name, "width": im.width, "height": im.height}
                       for im in sess.images],
            "models": sess.model_names(), "model": sess.cli_models[0],
            "compare": sess.cli_models[1] if len(sess.cli_models) > 1 else s.BICUBIC,
            "denoise": sess.denoise_models(), "max_tile": s.MAX_TILE, "max_scale": s.MAX_SCALE,
            "tile": s.PAGE_TILE,
            "device": str(sess.device),
        })

    def _image(self, p: dict[str, str]) -> None:
        png = self.server.session.image_png(int(p["image"]))
        self._send(HTTPStatus.OK, png, "image/png", cache=True)

    def _tile(self, p: dict[str, str]) -> None:
        px = self.server.session.tile(
            int(p["image"]), p["scale"], int(p["x"]), int(p["y"]), int(p["w"]), int(p["h"]),
            model=p.get("model"), denoise=_float(p.get("denoise")), view=p.get("view"),
            gen=None if "gen" not in p else int(p["gen"]), alive=self._client_alive)
        self._send(HTTPStatus.OK, encode_png(px), "image/png", cache=True)

    def _export(self, p: dict[str, str]) -> None:
        job = self.server.session.start_export(
            int(p["image"]), p["scale"], model=p.get("model"), denoise=_float(p.get("denoise")),
            overwrite=p.get("overwrite") == "1")
        self._json(_job_json(job))

    def _jobs(self, p: dict[str, str]) -> None:
        self._json([_job_json(j) for j in list(self.server.session.jobs.values())])

    def _moved(self, p: dict[str, str]) -> None:
        """The page moved on and needs nothing new: its queued tiles of older gens are stale."""
        self.server.session.queue.note(p["view"], int(p["gen"]))
        self._json({})

    def _cancel(self, p: dict[str, str]) -> None:
        job = self.server.session.job(int(p["job"]))
        job.cancel.set()
        self._json(_job_json(job))


def _readable(sock: socket.socket) -> bool:
    """Whether a read would return at once (data, an end or an error), without waiting: poll
    where there is one (select's fd_set stops at descriptor 1023), else select (Windows)."""
    if hasattr(select, "poll"):
        p = select.poll()
        p.register(sock, select.POLLIN)
        return bool(p.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


def _job_json(job) -> dict:
    return {"id": job.id, "image": job.image, "scale": job.scale, "model": job.model,
            "output": job.output.name, "state": job.state, "done": job.done,
            "total": job.total, "message": job.message, "seconds": round(job.seconds, 1)}
