"""`liif view` under misuse: raw sockets that reset, dribble, flood, speak other HTTP versions
or name another host; clients that leave before their tile; shutdown with tiles queued; many
denoise strengths; an image changed on disk before its export. Each answer is one line (4xx
where the client is at fault, 503 for "not now"), and nothing is printed on the terminal."""

from __future__ import annotations

import socket
import struct
import threading
import time
import urllib.request

import numpy as np
import pytest
import test_view
from conftest import photo_like
from PIL import Image
from test_view import get

import liif_cli
from liif_cli import upscale
from liif_cli.view import server as server_module
from liif_cli.view import session as session_module
from liif_cli.view.server import MAX_CONNECTIONS, ViewServer
from liif_cli.view.session import RenderQueue, Unavailable, ViewSession

files, server = test_view.files, test_view.server  # the module's fixtures, shared
WAIT_S = 30  # hang guards only: every wait below ends as soon as its condition holds


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def hold(q: RenderQueue) -> tuple[threading.Event, object]:
    """Keep the render worker busy until the returned event is set: (gate, its job)."""
    started, gate = threading.Event(), threading.Event()
    job = q.submit(lambda: started.set() or gate.wait(WAIT_S))
    assert started.wait(WAIT_S)
    return gate, job


def raw(srv: ViewServer, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes, read the answer to the end (the server closes): (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT_S) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def tile_request(srv: ViewServer, x: int = 0, *, close: bool = False) -> bytes:
    q = f"token={srv.token}&image=0&scale=2&x={x}&y=0&w=8&h=8"
    return (f"GET /api/tile?{q} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n" +
            ("Connection: close\r\n" if close else "") + "\r\n").encode()


def assert_one_line(status: int, headers: dict[str, str], body: bytes, want: int) -> None:
    assert status == want, (status, body)
    assert headers["Content-Type"].startswith("text/plain"), headers
    assert "default-src 'none'" in headers["Content-Security-Policy"], headers
    assert body.endswith(b"\n") and body.count(b"\n") == 1 and len(body) > 5, body


def test_http_servers_own_refusals_are_our_one_line_4xx(server):
    line = f"GET /api/info?token={server.token} HTTP/1.1\r\n".encode()
    cases = [  # (request bytes, status): before, HTML without our headers, 501 and 505 among them
        (b"GET /" + b"a" * 65540 + b" HTTP/1.1\r\n\r\n", 414),  # request line over 64 KiB
        (line + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"\r\n", 431),  # headers
        (line + b"X-Long: " + b"a" * 65540 + b"\r\n\r\n", 431),  # a header line over 64 KiB
        (b"BREW /api/info HTTP/1.1\r\n\r\n", 405),  # an unknown method (was 501)
        (b"GET /api/info HTTP/2.0\r\n\r\n", 400),  # a version we do not speak (was 505)
        (b"GET /api/info HTTP/one\r\n\r\n", 400),  # a malformed version
        (b"GET / a b HTTP/1.1\r\n\r\n", 400),  # a malformed request line
        (f"GET /api/info?token={server.token}\r\n\r\n".encode(), 400),  # HTTP/0.9
        # "²" is a digit to str.isdigit; int() refuses it (was a 500, before the token check)
        (b"POST /api/jobs HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", 400),
    ]
    for data, want in cases:
        assert_one_line(*raw(server, data), want)


def test_a_405_names_the_methods_the_path_is_served_with(server):
    # HTTP requires an Allow header on a 405 (RFC 9110, 15.5.6)
    def request(method: str, path: str) -> bytes:
        return (f"{method} {path}?token={server.token} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{server.port}\r\nConnection: close\r\n\r\n").encode()

    for method, path, allow in (("GET", "/api/export", "POST"),  # a GET of a POST route
                                ("POST", "/api/info", "GET"),
                                ("PUT", "/api/cancel", "POST"),  # a method never served
                                ("BREW", "/api/jobs", "GET"),  # one http.server does not know
                                ("DELETE", "/nowhere", "GET, POST")):
        status, headers, body = raw(server, request(method, path))
        assert_one_line(status, headers, body, 405)
        assert headers["Allow"] == allow, (method, path, headers)
    status, headers, _ = raw(server, request("GET", "/nowhere"))
    assert status == 404 and "Allow" not in headers


def test_parameters_take_ascii_digits_only(server):
    # "٠" and "٣" (Arabic-Indic zero and three) match \d, and int() and float() take them
    for name, value in (("image", "%D9%A0"), ("x", "%D9%A3"), ("scale", "%D9%A3"),
                        ("w", "1%D9%A0")):
        params = dict(image=0, scale=2, x=0, y=0, w=8, h=8) | {name: value}
        status, body = get(server, "/api/tile", **params)
        assert status == 400 and body.startswith(f"bad {name}".encode()), (name, body)


def test_a_reset_connection_prints_nothing(server, capfd):
    for half in (b"", tile_request(server)[:40], tile_request(server)[:-2]):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
        s.sendall(half)
        wait_for(lambda: server.connections == 1, "the server's thread")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # a reset, not a close
        wait_for(lambda: server.connections == 0, "the thread to end")
    assert capfd.readouterr().err == ""  # was a 20-line traceback each
    assert get(server, "/api/jobs")[0] == 200


def test_host_must_name_the_server_unless_host_was_given(server, files):
    def with_host(srv, host):
        req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/api/jobs?token={srv.token}",
                                     headers={"Host": host})
        try:
            with urllib.request.urlopen(req, timeout=WAIT_S) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}",
                 f"LOCALHOST:{server.port}"):
        assert with_host(server, host)[0] == 200, host
    for host in (f"evil.example:{server.port}", "127.0.0.1", f"127.0.0.1:{server.port + 1}",
                 f"127.0.0.1.evil.example:{server.port}"):
        status, body = with_host(server, host)
        assert status == 403 and b"--host" in body and body.count(b"\n") == 1, (host, body)
    # no Host header at all (a browser always sends one): refused as well
    status, headers, body = raw(server, f"GET /api/jobs?token={server.token} HTTP/1.1\r\n"
                                        "Connection: close\r\n\r\n".encode())
    assert_one_line(status, headers, body, 400)
    assert body.startswith(b"no Host header")
    srv = ViewServer(server.session, "127.0.0.1", 0, check_host=False)  # as `--host` makes it
    srv.start()
    try:
        assert with_host(srv, "evil.example")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_connections_are_capped_and_answered_503_past_the_cap(server):
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
            for _ in range(MAX_CONNECTIONS)]
    try:
        wait_for(lambda: server.connections == MAX_CONNECTIONS, "the threads")
        status, headers, body = raw(server, b"")
        assert_one_line(status, headers, body, 503)
        assert server.connections == MAX_CONNECTIONS  # no thread for it
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: server.connections == 0, "the threads to end")
    assert get(server, "/api/jobs")[0] == 200


def test_a_slow_request_is_cut_at_its_deadline(server, monkeypatch):
    monkeypatch.setattr(server_module, "REQUEST_TIMEOUT_S", 0.5)
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT_S", 0.5)
    for dribble in (False, True):  # silent after connecting; a header byte every 0.1 s
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as s:
            t0, got = time.monotonic(), b"x"
            if dribble:
                s.sendall(tile_request(server)[:-2])
            try:
                while got and time.monotonic() - t0 < WAIT_S:
                    if dribble:
                        s.sendall(b"X")
                    s.settimeout(0.1)
                    try:
                        got = s.recv(65536)
                    except TimeoutError:
                        pass
            except (BrokenPipeError, ConnectionResetError):
                got = b""
            # each read waits up to 60 s: without a deadline the dribble went on for good
            assert got == b"" and time.monotonic() - t0 < 5, dribble


def test_tiles_whose_client_has_gone_are_dropped_unrendered(server):
    q = server.session.queue
    rendered, dropped = q.rendered, q.dropped
    gate, busy = hold(q)
    gone = [socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
            for _ in range(5)]
    try:
        for i, s in enumerate(gone):
            s.sendall(tile_request(server, x=i))
        wait_for(lambda: q.pending() == 5, "the tiles to queue")
    finally:
        for s in gone:
            s.close()  # the clients give up
    fresh: dict = {}
    t = threading.Thread(target=lambda: fresh.update(r=get(server, "/api/tile", image=0,
                                                           scale=2, x=9, y=9, w=8, h=8)))
    t.start()
    wait_for(lambda: q.pending() == 6, "the fresh tile to queue")  # behind the dead ones
    gate.set()
    busy.result(WAIT_S)
    t.join(WAIT_S)
    assert fresh["r"][0] == 200
    assert (q.rendered - rendered, q.dropped - dropped) == (2, 5)  # the gate's job, the fresh


def test_tiles_queued_at_shutdown_are_answered_503(files):
    srv = ViewServer(ViewSession([files["rgb"]], models=[str(files["tiny"])], device="cpu"))
    srv.start()
    q, answers = srv.session.queue, []
    gate, _ = hold(q)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT_S) as s:
        s.sendall(tile_request(srv, close=True))
        wait_for(lambda: q.pending() == 1, "the tile to queue")
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        wait_for(lambda: q._closed, "the queue to close")
        gate.set()
        stopper.join(WAIT_S)
        while chunk := s.recv(65536):
            answers.append(chunk)
    head, _, body = b"".join(answers).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and body == b"the viewer is stopping\n", head + body


def test_the_tile_rendering_at_stop_is_answered_before_stop_returns(files, monkeypatch):
    """Its connection was closed without an answer, and the process could exit while the tile's
    thread was still in torch or OpenCV: "terminate called without an active exception"
    (SIGABRT, exit 134) in about half of the stops."""
    srv = ViewServer(ViewSession([files["rgb"]], models=[str(files["tiny"])], device="cpu"))
    srv.start()
    started, gate = threading.Event(), threading.Event()
    real_encode = server_module.encode_png

    def slow_encode(px):  # the answer's last native step, held until stop has begun
        started.set()
        gate.wait(WAIT_S)
        return real_encode(px)

    monkeypatch.setattr(server_module, "encode_png", slow_encode)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT_S) as s:
        s.sendall(tile_request(srv, close=True))
        assert started.wait(WAIT_S)
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        wait_for(lambda: srv.session.queue._closed, "the queue to close")
        assert stopper.is_alive()  # waiting for the answer under way
        gate.set()
        stopper.join(WAIT_S)
        assert not stopper.is_alive()
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 200") and b"image/png" in got, got[:200]


def test_denoise_blends_are_kept_for_the_last_few_strengths_only(files, monkeypatch):
    loads = []
    real_load = liif_cli.load_model

    def load_model(name, denoise=None, device="auto"):  # any strength: the tiny model itself
        loads.append(denoise)
        assert str(device) == "cpu"  # the session's device, not load_model's "auto"
        return real_load(name, device=device)

    monkeypatch.setattr(liif_cli, "load_model", load_model)
    session = ViewSession([files["rgb"]], models=[str(files["tiny"]), str(files["tiny2"])],
                          denoise=0.25, device="cpu")
    try:
        kept = session_module.BLENDS_KEPT
        strengths = [round(0.01 * i, 2) for i in range(1, 41)]
        for d in strengths:
            session.upscaler("tiny", d)
        blends = [k for k in session._upscalers if k[1] is not None]
        # the command line's blend stays, and the last few strengths (was: all 40, ~6 MB each)
        assert sorted(blends) == sorted([("tiny", 0.25)] + [("tiny", d)
                                                            for d in strengths[-kept:]])
        assert ("other", None) in session._upscalers
        n = len(loads)
        session.upscaler("tiny", strengths[-1])  # kept: no load
        session.upscaler("tiny", 0.25)
        assert len(loads) == n
        session.upscaler("tiny", strengths[0])  # gone: loaded again
        assert len(loads) == n + 1
    finally:
        session.close()


def test_export_upscales_the_pixels_on_screen_named_as_upscale_names_them(files, tmp_path):
    from liif_cli.tasks.upscale import upscale_file

    src = tmp_path / "photo.png"
    shown = photo_like(23, 31, seed=7)
    Image.fromarray(shown).save(src)
    session = ViewSession([src], models=[str(files["tiny"])], device="cpu")
    try:
        Image.fromarray(photo_like(23, 31, seed=8)).save(src)  # changed on disk meanwhile
        job = session.start_export(0, "2")
        wait_for(lambda: job.state != "running", "the export")
        assert job.state == "done", job.message
        want = upscale(str(files["tiny"]), shown, scale=2, device="cpu", precision="fp32")
        np.testing.assert_array_equal(np.asarray(Image.open(job.output)), want)
        for scale in ("2.000001", "3x2.5", "2.50"):  # %g made photo_x2.png of the first
            by_upscale = upscale_file(src, model=str(files["tiny"]), scale=scale,
                                      device="cpu").output
            assert session.export_path(0, scale) == by_upscale, scale
            by_upscale.unlink()
    finally:
        session.close()


def test_a_long_running_viewer_remembers_a_bounded_number_of_views_and_exports(
        files, tmp_path, monkeypatch):
    q = RenderQueue()
    try:
        for i in range(session_module.VIEWS_KEPT + 50):  # page loads over days
            q.note(f"page{i}", 3)
        q.note("page60", 4)  # heard from again: kept
        for i in range(100):
            q.note(f"tab{i}", 1)
        assert len(q._latest) == session_module.VIEWS_KEPT
        assert q._stale("page60", 3) and not q._stale("page59", 0)  # the oldest forgotten
    finally:
        q.close()
    monkeypatch.setattr(session_module, "JOBS_KEPT", 3)
    src = tmp_path / "small.png"
    Image.fromarray(photo_like(6, 5, seed=1)).save(src)
    session = ViewSession([src], models=[str(files["tiny"])], device="cpu")
    try:
        for i in range(5):
            job = session.start_export(0, "2", overwrite=True)
            wait_for(lambda: job.state != "running", "the export")
            assert job.state == "done", job.message
        assert sorted(session.jobs) == [3, 4, 5] and len(session._job_threads) <= 1
        with pytest.raises(session_module.NotFound):
            session.job(1)
    finally:
        session.close()


def test_an_export_past_the_output_limit_is_refused_before_any_work(files, monkeypatch):
    from liif_cli.errors import UsageError
    from liif_cli.runtime import sizing

    session = ViewSession([files["rgb"]], models=[str(files["tiny"])], device="cpu")
    try:
        monkeypatch.setattr(sizing, "DEFAULT_MAX_OUTPUT_PIXELS", 100 * 100)
        with pytest.raises(UsageError):
            session.start_export(0, "8")  # 248×184: over the (lowered) limit
        assert session.jobs == {}
    finally:
        session.close()


def test_a_tile_that_gets_no_turn_in_time_is_answered_busy_and_dropped():
    q, ran = RenderQueue(), []
    try:
        gate, busy = hold(q)
        late = q.submit(lambda: ran.append("late"))
        with pytest.raises(Unavailable, match="busy"):
            q.result(late, timeout=0.3)
        gate.set()
        busy.result(WAIT_S)
        q.submit(lambda: ran.append("next")).result(WAIT_S)
        assert ran == ["next"]  # the late one was dropped, not rendered for nobody
    finally:
        q.close()


def test_an_omitted_denoise_is_the_command_lines_and_a_late_file_says_overwrite_1(
        tmp_path, monkeypatch):
    """Without `denoise` a tile of the command line's model was `default` at strength 0, not
    `--denoise 0.5`'s blend; an export whose file appeared meanwhile said "--overwrite", an
    option the viewer does not have."""
    from liif_cli.errors import OutputExistsError
    from liif_cli.io import images

    src = tmp_path / "p.png"
    Image.fromarray(photo_like(10, 12)).save(src)
    session = ViewSession([src], denoise=0.5, device="cpu")
    try:
        def tile(**kw):
            return session.tile(0, "2", 0, 0, 24, 20, **kw)

        assert np.array_equal(tile(), tile(model=session.cli_models[0], denoise=0.5))
        assert not np.array_equal(tile(), tile(model=session.cli_models[0], denoise=0.0))

        def appeared(path, *args, **kwargs):
            raise OutputExistsError(path)

        monkeypatch.setattr(images, "write_image", appeared)
        job = session.start_export(0, "2")
        wait_for(lambda: job.state != "running", "the export")
        assert job.state == "failed" and job.message == (
            "output exists: p_x2.png (pass overwrite=1 to replace it)"), job.message
    finally:
        session.close()
