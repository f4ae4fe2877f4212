"""`liif view` without a browser: the tile contract against the library's whole upscale, the
refusals (with nothing rendered or written), the token, stale requests, exports and the CLI's
start and stop."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SUBPROCESS_TIMEOUT_S, photo_like, random_model
from PIL import Image
from typer.testing import CliRunner

from liif_cli import upscale
from liif_cli.errors import UsageError
from liif_cli.runtime.weights import save_checkpoint
from liif_cli.view.server import ViewServer
from liif_cli.view.session import RenderQueue, StaleRequest, ViewSession

SCALES = ["2", "3", "7.5", "3x2.5"]  # "3x2.5": 3 across, 2.5 down, as `liif upscale` reads it


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("view")
    out = {"rgb": d / "photo.png", "grey": d / "scan.png", "tiny": d / "tiny.pth",
           "tiny2": d / "other.pth"}
    Image.fromarray(photo_like(23, 31, seed=1)).save(out["rgb"])
    Image.fromarray(photo_like(17, 13, seed=2, channels=1)[:, :, 0]).save(out["grey"])
    save_checkpoint(random_model(seed=0), out["tiny"])
    save_checkpoint(random_model(seed=1), out["tiny2"])
    return out


@pytest.fixture(scope="module")
def server(files):
    session = ViewSession([files["rgb"], files["grey"]],
                          models=[str(files["tiny"]), str(files["tiny2"])], device="cpu")
    srv = ViewServer(session, "127.0.0.1", 0)
    srv.start()
    yield srv
    srv.stop()


def get(srv: ViewServer, route: str, /, *, token: str | None = None, method: str = "GET",
        **params) -> tuple[int, bytes]:
    q = "&".join(f"{k}={v}" for k, v in {"token": token or srv.token, **params}.items())
    req = urllib.request.Request(f"http://127.0.0.1:{srv.port}{route}?{q}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def tile(srv: ViewServer, **params) -> np.ndarray:
    status, body = get(srv, "/api/tile", **params)
    assert status == 200, body
    return np.asarray(Image.open(io.BytesIO(body)))


def assert_within_one_level(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    diff = np.abs(got.astype(int) - want.astype(int)).max()
    assert diff <= 1, f"{what}: max difference {diff} 8-bit levels"


def windows(H: int, W: int) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h): top-left, middle, the right border, the bottom border, the corner."""
    return [(0, 0, 17, 11), (W // 3, H // 4, min(40, W - W // 3), min(30, H - H // 4)),
            (W - 13, H // 2, 13, 9), (W // 2, H - 7, min(21, W - W // 2), 7),
            (W - 1, H - 1, 1, 1)]


@pytest.mark.parametrize("scale", SCALES)
def test_tile_is_that_window_of_the_whole_upscale(server, files, scale):
    for image, key in ((0, "rgb"), (1, "grey")):
        whole = upscale(str(files["tiny"]), files[key], scale=scale, device="cpu",
                        precision="fp32").pixels  # (H, W, C) uint8
        H, W = whole.shape[:2]
        for x, y, w, h in windows(H, W):
            got = tile(server, image=image, scale=scale, x=x, y=y, w=w, h=h, model="tiny")
            want = whole[y:y + h, x:x + w]
            want = want[:, :, 0] if want.shape[2] == 1 else want
            assert_within_one_level(got, want, f"{key} x{scale} window {(x, y, w, h)}")


def test_second_model_and_default_model_name(server, files):
    whole = upscale(str(files["tiny2"]), files["rgb"], scale=2, device="cpu",
                    precision="fp32").pixels
    assert_within_one_level(tile(server, image=0, scale=2, x=5, y=3, w=30, h=20, model="other"),
                            whole[3:23, 5:35], "second model")
    # no model: the first of the command line's
    first = upscale(str(files["tiny"]), files["rgb"], scale=2, device="cpu",
                    precision="fp32").pixels
    assert_within_one_level(tile(server, image=0, scale=2, x=0, y=0, w=8, h=8),
                            first[:8, :8], "first model")
    assert sorted(server.session._upscalers) == [("other", None), ("tiny", None)]  # once each


def test_a_model_named_with_spaces_and_brackets_is_served(files, tmp_path):
    """A downloaded checkpoint's name ("edsr (1).pth"): the page asks for the name it was
    given in /api/info, and gets its tiles (was 400 "bad model" for every tile)."""
    ckpt = tmp_path / "edsr (1).pth"
    ckpt.write_bytes(files["tiny"].read_bytes())
    srv = ViewServer(ViewSession([files["rgb"]], models=[str(ckpt)], device="cpu"),
                     "127.0.0.1", 0)
    srv.start()
    try:
        status, body = get(srv, "/api/info")
        assert json.loads(body)["model"] == "edsr (1)"
        whole = upscale(str(ckpt), files["rgb"], scale=2, device="cpu", precision="fp32").pixels
        assert_within_one_level(tile(srv, image=0, scale=2, x=0, y=0, w=8, h=8,
                                     model="edsr%20%281%29"), whole[:8, :8], "edsr (1)")
        assert get(srv, "/api/tile", image=0, scale=2, x=0, y=0, w=8, h=8,
                   model="edsr%20(2)")[0] == 404  # a name not in the list: unknown, as before
    finally:
        srv.stop()


def test_real_at_the_strength_the_page_starts_at_is_loaded_once(files):
    """`liif view --model real`: the page asks for real's tiles at denoise 1 (/api/info's
    start), which is `real` itself, loaded at start: not a second copy (README: "loads each
    model once")."""
    session = ViewSession([files["rgb"]], models=["real"], device="cpu")
    try:
        start = session.denoise_models()["real"]
        assert session.upscaler("real", start) is session.upscaler("real", None)
        assert list(session._upscalers) == [("real", None)]
    finally:
        session.close()


def test_bicubic_tile_is_opencv_bicubic(server, files):
    import cv2

    src = np.asarray(Image.open(files["rgb"]))
    want = cv2.resize(src, (93, 69), interpolation=cv2.INTER_CUBIC)  # ×3: 31×23 → 93×69
    got = tile(server, image=0, scale=3, x=60, y=40, w=33, h=29, model="bicubic")
    assert_within_one_level(got, want[40:69, 60:93], "bicubic")


@pytest.mark.slow
def test_bundled_default_tile(tmp_path):
    src = REPO / "liif_cli" / "assets" / "example.png"
    whole = upscale(None, src, scale=2, device="cpu", precision="fp32").pixels
    srv = ViewServer(ViewSession([src], device="cpu"), "127.0.0.1", 0)
    srv.start()
    try:
        got = tile(srv, image=0, scale=2, x=256, y=176, w=64, h=64, model="default")
    finally:
        srv.stop()
    assert_within_one_level(got, whole[176:240, 256:320], "default x2, bottom-right corner")


BAD = [  # (path, params, status): each refused before anything is rendered
    ("/api/tile", dict(image=0, scale=2, x=60, y=0, w=8, h=8), 400),  # past the right border
    ("/api/tile", dict(image=0, scale=2, x=0, y=40, w=8, h=8), 400),  # past the bottom
    ("/api/tile", dict(image=0, scale=2, x=0, y=0, w=513, h=8), 400),  # over the cap
    ("/api/tile", dict(image=0, scale=2, x=0, y=0, w=0, h=8), 400),
    ("/api/tile", dict(image=0, scale=2, x=-1, y=0, w=8, h=8), 400),
    ("/api/tile", dict(image=0, scale="abc", x=0, y=0, w=8, h=8), 400),
    ("/api/tile", dict(image=0, scale=0, x=0, y=0, w=8, h=8), 400),
    ("/api/tile", dict(image=0, scale=1000, x=0, y=0, w=8, h=8), 400),  # over MAX_SCALE
    ("/api/tile", dict(image=0, scale="nan", x=0, y=0, w=8, h=8), 400),
    ("/api/tile", dict(image=0, scale=2, x="1e3", y=0, w=8, h=8), 400),
    ("/api/tile", dict(image=0, scale=2, x=0, y=0), 400),  # missing w, h
    ("/api/tile", dict(image=7, scale=2, x=0, y=0, w=8, h=8), 404),  # no such image
    ("/api/tile", dict(image=0, scale=2, x=0, y=0, w=8, h=8, model="nope"), 404),
    ("/api/tile", dict(image=0, scale=2, x=0, y=0, w=8, h=8, model="..%2Fetc%2Fpasswd"), 400),
    ("/api/tile", dict(image=0, scale=2, x=0, y=0, w=8, h=8, model="tiny", denoise=0.5), 400),
    ("/api/tile", dict(image=0, scale=2, x=0, y=0, w=8, h=8, path="/etc/passwd"), 400),
    ("/api/image", dict(image="../photo.png"), 400),
    ("/etc/passwd", {}, 404),
    ("/../../etc/passwd", {}, 404),
    ("/api/export", dict(image=0, scale=2), 405),  # a GET: export is a POST
]


def test_bad_requests_are_refused_with_one_line_and_nothing_done(server, files):
    before = (server.session.queue.rendered, sorted(os.listdir(files["rgb"].parent)))
    for path, params, status in BAD:
        got, body = get(server, path, **params)
        assert got == status, (path, params, body)
        text = body.decode()
        assert text.endswith("\n") and text.count("\n") == 1 and len(text) > 5, text
    # a repeated parameter, a query that is not one, an over-long URL, a body, other methods
    assert get(server, "/api/tile", image="0&image=1", scale=2, x=0, y=0, w=8, h=8)[0] == 400
    assert get(server, "/api/info", junk="x" * 3000)[0] == 414
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}/api/jobs?token={server.token}",
                                 data=b"x" * 100, method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 413
    assert get(server, "/api/info", method="PUT")[0] == 405
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}/api/jobs?token={server.token}",
                                 headers={"Content-Length": "abc"}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400  # malformed, not too large
    # exports that cannot be: bicubic, a scale past the cap, an unknown image
    assert get(server, "/api/export", method="POST", image=0, scale=2, model="bicubic")[0] == 400
    assert get(server, "/api/export", method="POST", image=0, scale=100)[0] == 400
    assert get(server, "/api/export", method="POST", image=5, scale=2)[0] == 404
    after = (server.session.queue.rendered, sorted(os.listdir(files["rgb"].parent)))
    assert after == before


def test_every_route_needs_the_token(server):
    for path, method in (("/", "GET"), ("/view.js", "GET"), ("/api/info", "GET"),
                         ("/api/image", "GET"), ("/api/jobs", "GET"), ("/api/export", "POST"),
                         ("/api/tile", "GET")):
        for token in ("", "0" * 48, server.token[:-1]):
            status, body = get(server, path, token=token or "x", method=method, image=0)
            assert status == 403, (path, token, body)
    status, body = get(server, "/")
    assert status == 200 and b"view.js?token=" + server.token.encode() in body


def test_page_fetches_nothing_from_elsewhere(server):
    for path in ("/", "/view.js", "/view.css"):
        status, body = get(server, path)
        assert status == 200
        assert b"http://" not in body and b"https://" not in body and b"//cdn" not in body, path
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}/?token={server.token}")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["Referrer-Policy"] == "no-referrer"


def test_info_lists_images_and_models(server):
    status, body = get(server, "/api/info")
    info = json.loads(body)
    assert [im["name"] for im in info["images"]] == ["photo.png", "scan.png"]
    assert (info["images"][0]["width"], info["images"][0]["height"]) == (31, 23)
    assert info["models"][:2] == ["tiny", "other"] and info["models"][-1] == "bicubic"
    assert (info["model"], info["compare"]) == ("tiny", "other")
    status, png = get(server, "/api/image", image=1)
    assert np.asarray(Image.open(io.BytesIO(png))).shape == (17, 13)


def test_the_page_says_it_moved_on(server):
    assert get(server, "/api/moved", method="POST", view="page1", gen=5)[0] == 200
    assert server.session.queue._stale("page1", 4) and not server.session.queue._stale("page1", 5)
    assert get(server, "/api/moved", method="POST", view="page1")[0] == 400


def test_stale_requests_are_dropped_unrendered():
    q = RenderQueue()
    started, gate, ran = threading.Event(), threading.Event(), []
    try:
        first = q.submit(lambda: started.set() or gate.wait(30) and ran.append("busy"))
        assert started.wait(30)  # the worker is busy with it
        q.note("page", 1)
        old = q.submit(lambda: ran.append("old"), view="page", gen=1)
        q.note("page", 2)  # the page moved on before the worker was free
        new = q.submit(lambda: ran.append("new"), view="page", gen=2)
        other = q.submit(lambda: ran.append("other tab"), view="tab", gen=1)
        gate.set()
        first.result(30), new.result(30), other.result(30)
        with pytest.raises(StaleRequest):
            old.result(30)
        assert ran == ["busy", "new", "other tab"] and q.dropped == 1
    finally:
        q.close()


def test_export_writes_next_to_the_image_and_never_overwrites_unasked(server, files):
    def wait(job_id):
        for _ in range(600):
            job = [j for j in json.loads(get(server, "/api/jobs")[1]) if j["id"] == job_id][0]
            if job["state"] != "running":
                return job
            time.sleep(0.1)
        raise AssertionError("export did not finish")

    dst = files["rgb"].with_name("photo_x2.png")
    status, body = get(server, "/api/export", method="POST", image=0, scale=2, model="tiny")
    assert status == 200, body
    job = wait(json.loads(body)["id"])
    assert job["state"] == "done" and job["output"] == "photo_x2.png", job
    whole = upscale(str(files["tiny"]), files["rgb"], scale=2, device="cpu",
                    precision="fp32").pixels
    np.testing.assert_array_equal(np.asarray(Image.open(dst)), whole)
    dst.write_bytes(b"mine")
    status, body = get(server, "/api/export", method="POST", image=0, scale=2, model="tiny")
    assert status == 409 and b"exists" in body and dst.read_bytes() == b"mine"
    # how to replace it here: `liif view` has no --overwrite (the 409 said "pass --overwrite")
    assert body.endswith(b"(pass overwrite=1 to replace it)\n"), body
    status, body = get(server, "/api/export", method="POST", image=0, scale=2, model="tiny",
                       overwrite=1)
    assert status == 200
    assert wait(json.loads(body)["id"])["state"] == "done"
    assert dst.read_bytes()[:4] == b"\x89PNG"
    leftovers = [p.name for p in dst.parent.iterdir() if p.name.endswith(".part")]
    assert leftovers == []
    dst.unlink()


def _start_cli(files, *extra) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "liif_cli", "view", str(files["rgb"]), "--model",
         str(files["tiny"]), "--no-browser", "--port", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline().strip()  # printed and flushed at once
    return proc, line


@pytest.mark.parametrize("signum, code, host", [
    (signal.SIGTERM, 143, None),  # no --host: 127.0.0.1, and the Host header is checked
    pytest.param(signal.SIGINT, 130, "127.0.0.2", marks=pytest.mark.slow)])
def test_cli_prints_the_url_serves_and_stops_on_signals(files, signum, code, host):
    proc, url = _start_cli(files, *(["--host", host] if host else []))
    try:
        assert url.startswith(f"http://{host or '127.0.0.1'}:") and "/?token=" in url, url
        base, token = url.split("/?token=")
        with urllib.request.urlopen(f"{base}/api/info?token={token}", timeout=30) as r:
            assert json.loads(r.read())["model"] == "tiny"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/api/info", timeout=30)
        assert e.value.code == 403
        # another name for the server (DNS rebinding): refused unless --host was given
        req = urllib.request.Request(f"{base}/api/info?token={token}",
                                     headers={"Host": "rebound.example"})
        try:
            status = urllib.request.urlopen(req, timeout=30).status
        except urllib.error.HTTPError as e:
            status = e.code
        assert status == 403  # (127.0.0.2 too: a loopback --host keeps the check)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "stopped" in err and "Traceback" not in err
    if host is not None:
        assert "anyone who can reach this machine" in err


def test_a_second_ctrl_c_while_stopping_lets_the_stop_finish():
    """Ctrl-C twice: the second, while the server stops (a running export cancelling, the
    tile being rendered finishing), changes nothing; it was a KeyboardInterrupt out of the
    stop, and the interpreter then ended under the export's torch threads ("terminate called
    without an active exception", SIGABRT), maybe with its temporary file left."""
    from liif_cli.cli.commands.view import _serve_until_signal

    class Server:
        url, stopped = "http://127.0.0.1:1/?token=0", False

        def start(self):
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C

        def stop(self):
            os.kill(os.getpid(), signal.SIGINT)  # the second, while stopping
            time.sleep(0.2)  # its handler runs here
            self.stopped = True

    class Console:
        def print(self, *args, **kwargs):
            pass

    server = Server()
    old = signal.getsignal(signal.SIGINT)
    try:
        code = _serve_until_signal(server, Console(), browser=False)
    except KeyboardInterrupt:
        code = None
    finally:
        signal.signal(signal.SIGINT, old)
    assert server.stopped and code == 130


@pytest.mark.slow
def test_cli_denoise_wins_over_a_liif_model_without_a_partner(files):
    """As `liif upscale`: --denoise picks the default/real pair whatever LIIF_MODEL says."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "LIIF_MODEL": "fast"}
    proc = subprocess.Popen([sys.executable, "-m", "liif_cli", "view", str(files["rgb"]),
                             "--denoise", "0.5", "--no-browser", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().strip()
        assert "/?token=" in url, proc.stderr.read() if proc.poll() is not None else url
        base, token = url.split("/?token=")
        with urllib.request.urlopen(f"{base}/api/info?token={token}", timeout=30) as r:
            info = json.loads(r.read())
        assert info["model"] in ("default", "real") and info["denoise"]["default"] == 0.5, info
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "--denoise picks the default/real pair: LIIF_MODEL=fast not used" in err


@pytest.mark.slow
def test_cli_refuses_a_bad_model_before_printing_a_url(files):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "liif_cli", "view", str(files["rgb"]), "--model",
                        str(files["rgb"].with_name("missing.pth")), "--no-browser"],
                       capture_output=True, text=True, env=env, timeout=SUBPROCESS_TIMEOUT_S)
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_an_empty_host_keeps_the_host_check(files, monkeypatch):
    """`--host ""` listens on 127.0.0.1 as no --host does, and keeps its Host-header check (it
    turned the check off)."""
    from liif_cli.cli import app
    from liif_cli.view import server as view_server

    seen = {}

    def fake(session, host, port, *, check_host):
        seen.update(host=host, check_host=check_host)
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(view_server, "ViewServer", fake)
    for given in ([], ["--host", ""]):
        r = CliRunner().invoke(app, ["view", str(files["rgb"]), "--model", "fast",
                                     "--no-browser", *given])
        assert r.exit_code == 2 and seen == {"host": "127.0.0.1", "check_host": True}, (
            given, seen, r.output)
    # a loopback address: no other machine reaches it, so only DNS rebinding names it otherwise
    for host, check in (("127.0.0.2", True), ("::1", True), ("localhost", True),
                        ("0.0.0.0", False), ("192.168.1.5", False)):
        r = CliRunner().invoke(app, ["view", str(files["rgb"]), "--model", "fast",
                                     "--no-browser", "--host", host])
        assert seen == {"host": host, "check_host": check}, (host, seen, r.output)


def test_cli_cannot_listen_says_which_option_to_change(files):
    """A port in use points to --port; an address this machine does not have, to --host."""
    from liif_cli.cli import app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(app, ["view", str(files["rgb"]), "--model", "fast",
                                     "--no-browser", "--port", str(port)])
        assert r.exit_code == 2 and "(try another --port, or --port 0)" in r.output, r.output
    r = CliRunner().invoke(app, ["view", str(files["rgb"]), "--model", "fast", "--no-browser",
                                 "--host", "192.0.2.1", "--port", "0"])  # TEST-NET: not ours
    assert r.exit_code == 2 and r.output.strip().endswith("(check --host)"), r.output


@pytest.mark.slow
def test_denoise_tiles_are_the_blend_upscale_runs(files):
    from liif_cli import load_model

    srv = ViewServer(ViewSession([files["rgb"]], models=["real"], denoise=0.3, device="cpu"),
                     "127.0.0.1", 0)
    srv.start()
    try:
        info = json.loads(get(srv, "/api/info")[1])
        assert info["denoise"]["real"] == 0.3  # the page starts at --denoise
        for d in (0.3, 0.8):
            whole = upscale(load_model("real", denoise=d), files["rgb"], scale=2, device="cpu",
                            precision="fp32").pixels
            got = tile(srv, image=0, scale=2, x=30, y=20, w=32, h=26, model="real", denoise=d)
            assert_within_one_level(got, whole[20:46, 30:62], f"denoise {d}")
        # default is the pair's other end: --denoise applies to it, not to a tiny checkpoint
        assert get(srv, "/api/tile", image=0, scale=2, x=0, y=0, w=4, h=4, model="default",
                   denoise=0.5)[0] == 200
    finally:
        srv.stop()


def test_16_bit_image_tiles_are_its_upscale_in_8_bits(files, tmp_path):
    import cv2

    src = tmp_path / "deep.png"
    deep = (photo_like(19, 25, seed=5).astype(np.uint16) * 257 + 100).clip(0, 65535)
    cv2.imwrite(str(src), np.ascontiguousarray(deep[:, :, ::-1].astype(np.uint16)))
    whole = upscale(str(files["tiny"]), src, scale=3, device="cpu", precision="fp32").pixels
    assert whole.dtype == np.uint16
    session = ViewSession([src], models=[str(files["tiny"])], device="cpu")
    try:
        got = session.tile(0, "3", 40, 30, 35, 27)
    finally:
        session.close()
    want = np.round(whole[30:57, 40:75] / 257.0)
    assert_within_one_level(got, want, "16-bit")


def test_a_cancelled_export_leaves_nothing(files, tmp_path):
    src = tmp_path / "big.png"
    Image.fromarray(photo_like(40, 50, seed=6)).save(src)
    session = ViewSession([src], models=[str(files["tiny"])], device="cpu")
    job = session.start_export(0, "40")  # 2000×1600: seconds of work
    session.close()  # as Ctrl-C does: cancels, waits for the temporary file to go
    assert job.state == "cancelled" and "nothing written" in job.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]


def test_a_file_called_like_the_bundled_real_is_offered_no_denoise(files, tmp_path):
    """`--model x/real.pth` (a user's file, no denoise partner): the page is not offered a
    strength for it (its tiles were all refused, "--denoise needs a model with a partner")."""
    mine = tmp_path / "real.pth"
    save_checkpoint(random_model(seed=3), mine)
    session = ViewSession([files["rgb"]], models=[str(mine)], device="cpu")
    try:
        assert "real" not in session.denoise_models()
        with pytest.raises(UsageError, match="has no denoise partner"):
            session.check_model("real", 1.0)
        assert session.check_model("real", None) == "real"
    finally:
        session.close()
    bundled = ViewSession([files["rgb"]], models=["fast"], device="cpu")
    try:
        assert bundled.denoise_models() == {"real": 1.0}
    finally:
        bundled.close()


def test_an_unreadable_file_in_the_models_folder_is_not_offered(files, tmp_path, monkeypatch):
    """The page's model menu leaves out what `liif models` calls unreadable (picking it failed
    every tile with a 500), and offers the readable ones."""
    monkeypatch.setenv("LIIF_MODELS_DIR", str(tmp_path))
    (tmp_path / "broken.pth").write_text("not a checkpoint")
    save_checkpoint(random_model(seed=4), tmp_path / "mine.pth")
    session = ViewSession([files["rgb"]], models=["fast"], device="cpu")
    try:
        names = session.model_names()
        assert "mine" in names and "broken" not in names
    finally:
        session.close()
