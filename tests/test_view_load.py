"""`liif view` under load, on loopback: several clients pan at once as the page does (a new
generation of tile requests on fresh connections; the old ones either abandoned, as an
aborted fetch closes its connection, or left to be overtaken), a few hundred tile requests in
all. No request fails; the dead and the stale are dropped unrendered; a fresh request is not
kept behind dead work; threads and memory come back afterwards."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
import test_view
from conftest import photo_like
from PIL import Image
from test_view_misuse import hold, wait_for

from liif_cli.view.server import MAX_CONNECTIONS, ViewServer
from liif_cli.view.session import ViewSession

files = test_view.files  # the module's fixture, shared
CLIENTS = 6
PER_GEN = 2  # tile requests a client sends per generation
GENS = 24  # per client: 6 × 24 × 2 = 288 tile requests
OUT_W, OUT_H, TILE = 256, 192, 32  # a 64×48 image at ×4, in 32² tiles
RSS_BOUND = 64 << 20  # bytes the process may grow by, over a warmed-up start
# open at once per client: this generation's, the last one's, and an abandoned one's whose
# thread has not yet seen it go: the load itself is never turned away
assert CLIENTS * 3 * PER_GEN < MAX_CONNECTIONS


def rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: the memory bound is not checked
        return None


class Client:
    """One page: its view id, and the generation it is at."""

    def __init__(self, srv: ViewServer, index: int):
        self.srv, self.view, self.index = srv, f"client{index}", index
        self.statuses: list[int] = []

    def send(self, gen: int) -> list[socket.socket]:
        socks = []
        for k in range(PER_GEN):
            n = gen * PER_GEN + k + self.index
            x, y = n * TILE % OUT_W, n * TILE // OUT_W * TILE % OUT_H
            q = (f"token={self.srv.token}&image=0&scale=4&x={x}&y={y}&w={TILE}&h={TILE}"
                 f"&view={self.view}&gen={gen}")
            s = socket.create_connection(("127.0.0.1", self.srv.port), timeout=60)
            s.sendall(f"GET /api/tile?{q} HTTP/1.1\r\nHost: 127.0.0.1:{self.srv.port}\r\n"
                      "Connection: close\r\n\r\n".encode())
            socks.append(s)
        return socks

    def read(self, socks: list[socket.socket]) -> list[int]:
        out = []
        for s in socks:
            with s:
                got = b""
                while chunk := s.recv(65536):
                    got += chunk
            out.append(int(got.split(b" ", 2)[1]))
        self.statuses += out
        return out

    def pan(self, first: int, last: int) -> None:
        """Generations first..last: each third abandoned at once, the others read after the
        next generation is sent (so the server sees the page move on); the last read alone."""
        previous: list[socket.socket] = []
        for gen in range(first, last + 1):
            socks = self.send(gen)
            self.read(previous)
            previous = socks
            if gen % 3 == 0 and gen != last:
                for s in socks:
                    s.close()
                previous = []
        assert set(self.read(previous)) == {200}  # nothing newer: the last view is drawn


@pytest.mark.slow
def test_several_clients_panning_at_once(files, capfd):
    src = files["rgb"].with_name("load.png")
    Image.fromarray(photo_like(OUT_H // 4, OUT_W // 4, seed=3)).save(src)
    srv = ViewServer(ViewSession([src], models=[str(files["tiny"])], device="cpu"))
    srv.start()
    q = srv.session.queue
    try:
        Client(srv, 99).pan(1, 3)  # warm up: model, allocator, the first threads
        wait_for(lambda: srv.connections == 0, "the warm-up's connections to end")
        threads_before = set(threading.enumerate())
        rss_before = rss()
        rendered, dropped = q.rendered, q.dropped
        clients = [Client(srv, i) for i in range(CLIENTS)]

        # 1. with the worker held: each page sends a view and abandons it (the tab closes its
        # fetches), then sends one it moves on from at once, then the one it stays on
        gate, busy = hold(q)
        for c in clients:
            for s in c.send(1):
                s.close()
        wait_for(lambda: q.dropped - dropped == CLIENTS * PER_GEN, "the dead to be dropped")
        overtaken = [c.send(2) for c in clients]
        current = [c.send(3) for c in clients]
        wait_for(lambda: q.pending() == 3 * CLIENTS * PER_GEN, "the tiles to queue")
        fresh: dict = {}
        api = threading.Thread(target=lambda: fresh.update(status=test_view.get(
            srv, "/api/tile", image=0, scale=4, x=0, y=0, w=TILE, h=TILE)[0]))
        api.start()  # an API user: no view, no gen
        wait_for(lambda: q.pending() == 3 * CLIENTS * PER_GEN + 1, "the API tile to queue")
        gate.set()
        busy.result(60)
        api.join(60)
        assert fresh["status"] == 200
        # rendered: the held job, the pages' current views, the API tile; the abandoned and
        # the overtaken were not (the API tile waited only for live work)
        assert q.rendered - rendered == 1 + CLIENTS * PER_GEN + 1
        assert q.dropped - dropped == 2 * CLIENTS * PER_GEN
        for c, old, new in zip(clients, overtaken, current):
            assert c.read(old) == [409] * PER_GEN  # stale: the page has moved on
            assert c.read(new) == [200] * PER_GEN

        # 2. free-running: all pan at once through generations 4..GENS
        workers = [threading.Thread(target=c.pan, args=(4, GENS)) for c in clients]
        t0 = time.monotonic()
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        seconds = time.monotonic() - t0
        assert not any(w.is_alive() for w in workers)
        statuses = [s for c in clients for s in c.statuses]
        assert set(statuses) <= {200, 409}, statuses  # no 5xx, no 503 from the cap
        sent = CLIENTS * PER_GEN * GENS + 1

        # 3. afterwards: no connection, no new thread, memory within the bound
        wait_for(lambda: srv.connections == 0, "the connections to end")
        wait_for(lambda: not set(threading.enumerate()) - threads_before, "the threads to end")
        grown = None if rss_before is None else rss() - rss_before
        assert capfd.readouterr().err == ""
        with capfd.disabled():  # for `pytest -s`: what the load did
            print(f"\n{sent} tile requests, {q.rendered - rendered} rendered, "
                  f"{q.dropped - dropped} dropped; the free-running part {seconds:.1f} s; "
                  f"RSS {'?' if grown is None else f'{grown / 2**20:+.1f} MiB'}")
        assert grown is None or grown < RSS_BOUND, f"grew {grown / 2**20:.1f} MiB"
    finally:
        srv.stop()
