"""The HTTP side of `liif view`: the standard library's ThreadingHTTPServer, on purpose.

Why not a framework: the server has a handful of GET/POST routes for one user on localhost.
`http.server` gives a thread per connection (a tile waiting for the render worker does not
hold up the page's other requests), `shutdown()` for a clean stop, and is maintained with
Python itself; the limits a framework would add are written here in a few lines: a request
line of at most `MAX_URL` characters, no request bodies, only known query parameters, each
once, each checked by a pattern before it is parsed, tiles of at most `session.MAX_TILE`
pixels a side and scales within `session.MAX_SCALE`. No new dependency.

Access: every request needs the session's token (`?token=`, compared in constant time),
else 403. No request names a file: images are numbers (command-line order), models are names
from a fixed list, static files come from a dict filled at start. Every refusal is a 4xx with a
one-line text reason. Responses carry a Content-Security-Policy that allows nothing from
other origins (the page works offline) and no Referer (the URL holds the token).
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qsl, urlsplit

from liif_cli.errors import LiifError, OutputExistsError, UsageError, describe
from liif_cli.view.session import NotFound, StaleRequest, ViewSession, encode_png

MAX_URL = 2048  # characters of the request target
MAX_FIELDS = 16  # query parameters
IDLE_TIMEOUT_S = 60  # a kept-alive connection that sends nothing for this long is closed
STATIC = {  # path -> (package file, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/view.js": ("view.js", "text/javascript; charset=utf-8"),
    "/view.css": ("view.css", "text/css; charset=utf-8"),
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# what each query parameter may look like, before it is parsed
PATTERNS = {
    "token": r"[0-9a-f]{1,64}",
    "image": r"\d{1,6}",
    "x": r"\d{1,9}", "y": r"\d{1,9}", "w": r"\d{1,4}", "h": r"\d{1,4}",
    "scale": r"\d{1,4}(\.\d{1,6})?(x\d{1,4}(\.\d{1,6})?)?",
    "model": r"[\w.@+-]{1,100}",
    "denoise": r"[01](\.\d{1,6})?",
    "view": r"[\w-]{1,64}", "gen": r"\d{1,12}",
    "job": r"\d{1,9}", "overwrite": r"[01]",
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


class Refusal(Exception):
    """A request answered with `status` and a one-line reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


def _static_files(token: str) -> dict[str, bytes]:
    base = resources.files("liif_cli.view") / "static"
    out = {}
    for path, (name, _) in STATIC.items():
        data = (base / name).read_bytes()
        if name == "index.html":  # the assets' URLs carry the token too
            data = data.replace(b"{{token}}", token.encode())
        out[path] = data
    return out


class ViewServer(ThreadingHTTPServer):
    """Serves one ViewSession; `url` has the token. `serve_forever` in any thread."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, session: ViewSession, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None):
        self.session = session
        self.token = token or secrets.token_hex(24)
        self.static = _static_files(self.token)
        self.host_shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)

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
        """Stop serving, close the socket, cancel exports and stop the render worker."""
        self.shutdown()
        self.server_close()
        self.session.close()


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
        self._refuse(Refusal(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and POST are served"))

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _other

    # --------------------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        try:
            name, params = self._parse(method)
            getattr(self, "_" + name)(params)
        except Refusal as r:
            self._refuse(r)
        except StaleRequest:
            self._refuse(Refusal(HTTPStatus.CONFLICT, "stale: the page has moved on"))
        except NotFound as e:
            self._refuse(Refusal(HTTPStatus.NOT_FOUND, str(e)))
        except OutputExistsError as e:
            self._refuse(Refusal(HTTPStatus.CONFLICT, str(e)))
        except UsageError as e:
            self._refuse(Refusal(HTTPStatus.BAD_REQUEST, str(e)))
        except LiifError as e:
            self._refuse(Refusal(HTTPStatus.INTERNAL_SERVER_ERROR, str(e)))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - out of memory or a bug: the CLI's one line
            self._refuse(Refusal(HTTPStatus.INTERNAL_SERVER_ERROR, describe(e, "view")[0]))

    def _parse(self, method: str) -> tuple[str, dict[str, str]]:
        if len(self.path) > MAX_URL:
            raise Refusal(HTTPStatus.REQUEST_URI_TOO_LONG, f"URL over {MAX_URL} characters")
        length = self.headers.get("Content-Length", "0") or "0"
        if self.headers.get("Transfer-Encoding") or not length.isdigit() or int(length) > 0:
            self.close_connection = True  # the body is never read
            raise Refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "requests carry no body")
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
            known = any(p == parts.path for _, p in ROUTES)
            raise Refusal(HTTPStatus.METHOD_NOT_ALLOWED if known else HTTPStatus.NOT_FOUND,
                          f"{method} {parts.path} is not served")
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

    def _send(self, status: int, body: bytes, ctype: str, *, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "private, max-age=86400" if cache else "no-store")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, r: Refusal) -> None:
        try:
            self._send(r.status, (str(r).splitlines() or [""])[0].encode() + b"\n",
                       "text/plain; charset=utf-8")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

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
            gen=None if "gen" not in p else int(p["gen"]))
        self._send(HTTPStatus.OK, encode_png(px), "image/png", cache=True)

    def _export(self, p: dict[str, str]) -> None:
        job = self.server.session.start_export(
            int(p["image"]), p["scale"], model=p.get("model"), denoise=_float(p.get("denoise")),
            overwrite=p.get("overwrite") == "1")
        self._json(_job_json(job))

    def _jobs(self, p: dict[str, str]) -> None:
        self._json([_job_json(j) for j in self.server.session.jobs.values()])

    def _moved(self, p: dict[str, str]) -> None:
        """The page moved on and needs nothing new: its queued tiles of older gens are stale."""
        self.server.session.queue.note(p["view"], int(p["gen"]))
        self._json({})

    def _cancel(self, p: dict[str, str]) -> None:
        job = self.server.session.job(int(p["job"]))
        job.cancel.set()
        self._json(_job_json(job))


def _float(text: str | None) -> float | None:
    return None if text is None else float(text)


def _job_json(job) -> dict:
    return {"id": job.id, "image": job.image, "scale": job.scale, "model": job.model,
            "output": job.output.name, "state": job.state, "done": job.done,
            "total": job.total, "message": job.message, "seconds": round(job.seconds, 1)}
