"""What `liif view` serves, without the HTTP: the images, the models, tiles and export jobs.

A tile is the window (x, y, w, h) of the output grid that `liif upscale --scale S` gives for
image I (`runtime.sizing.target_size`), rendered with `engine.render(window=...)`, so its
pixels are that window of the whole upscale's (8-bit, colour only: alpha is not shown).
The model `bicubic` is OpenCV's bicubic at the same output grid (a reference to compare with).

One `RenderQueue` per device renders one tile at a time, newest request first; a request
tagged (view, gen) is dropped unrendered once the same view has sent a later gen (the page
moved on), and any request is dropped once its client has closed the connection. A request
waits at most `TILE_WAIT_S` for its turn (then `Unavailable`: 503, busy). Models are loaded
once, on first use, and kept; denoise blends (a new model for each strength) only the last
`BLENDS_KEPT`. Exports ("upscale the whole image at this scale") upscale the pixels loaded at
start (what the page shows, even if the file has changed since) to the file `liif upscale
--scale S` would name, through the atomic writer, never replacing a file without `overwrite`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections import OrderedDict
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from liif_cli.errors import LiifError, OutputExistsError, UsageError, describe
from liif_cli.io import png
from liif_cli.runtime.sizing import parse_scale

if TYPE_CHECKING:  # torch is imported where it is used: `liif view --help` stays instant
    import torch

    from liif_cli.io.images import ImageData
    from liif_cli.runtime.upscaler import Upscaler

BICUBIC = "bicubic"  # the pseudo-model: OpenCV bicubic on the same output grid
MAX_TILE = 512  # output pixels per side of one tile request
# the page's tiles: a 256² tile of EDSR-baseline at ×4 encodes 64² latents plus a 37-latent
# halo on each side; smaller tiles come sooner but redo more of the encoder's work
PAGE_TILE = 256
MAX_SCALE = 64.0  # per axis; the page zooms to 30× and more
MIN_SCALE = 1 / 64  # per axis; a tile of a downscale is allowed, as upscale allows it
# renderers on the device at once: the tile queue's, and one export; on a GPU each gets half of
# the budget `auto` gives one (`runtime.device.memory_budget`)
RENDERERS = 2
# a tile waits this long for its turn, then is answered 503 (busy): well inside the server's
# REQUEST_TIMEOUT_S, so its answer arrives before the connection is cut
TILE_WAIT_S = 30
ALIVE_POLL_S = 0.25  # while a tile waits, how often it looks whether its client is still there
# denoise blends kept loaded (each strength is its own model, ~6 MB for `real`; the page's
# two layers and a few recent strengths stay instant, older ones are loaded again)
BLENDS_KEPT = 4
# what a long-running viewer remembers: the newest generation of this many page views (an
# older view's tiles are then no longer dropped as stale) and this many finished exports
VIEWS_KEPT = 256
JOBS_KEPT = 100


class StaleRequest(Exception):
    """The page has moved on (or the client has gone): this tile was dropped unrendered."""


class Unavailable(Exception):
    """Not now (503): the render worker is busy past `TILE_WAIT_S`, or the viewer is stopping."""


class NotFound(LiifError):
    """An image, model or job the request names that this session does not have (404)."""


@dataclass
class ViewImage:
    """One image of the command line: its name (never a path a request can give) and pixels."""

    path: Path
    rgb: torch.Tensor  # (3, h, w) float32 in [0, 1] (grey repeated), on the CPU
    grey: bool
    bit_depth: int
    height: int
    width: int
    data: ImageData  # as read: what exports upscale (alpha, 16 bits and metadata kept)
    _png: bytes | None = None
    _on_device: torch.Tensor | None = None  # `rgb` on the session's GPU or Mac, once

    def on(self, device: torch.device) -> torch.Tensor:
        """`rgb` on `device`, uploaded on the first tile and kept (not once per tile: a 24 MP
        photo is 288 MB of float32). One render thread asks (`RenderQueue`)."""
        if device.type == "cpu":
            return self.rgb
        if self._on_device is None:
            self._on_device = self.rgb.to(device)
        return self._on_device


@dataclass
class Job:
    """An export: the whole image upscaled at one scale, written by `upscale_file`."""

    id: int
    image: int
    scale: str
    model: str
    output: Path
    state: str = "running"  # running, done, failed, cancelled
    done: int = 0
    total: int = 0
    message: str = ""
    seconds: float = 0.0
    cancel: threading.Event = field(default_factory=threading.Event)


class _Cancelled(Exception):
    pass


def output_hw(image: ViewImage, scale: str) -> tuple[tuple[float, float], tuple[int, int]]:
    """((sy, sx), (H, W)) for `scale` as `liif upscale --scale` reads it, within the caps."""
    from liif_cli.runtime.sizing import target_size

    sy, sx = parse_scale(scale)
    if not (MIN_SCALE <= sy <= MAX_SCALE and MIN_SCALE <= sx <= MAX_SCALE):
        raise UsageError(f"scale {scale} is outside {MIN_SCALE:g} to {MAX_SCALE:g}")
    # only a window is ever allocated here: the whole output's size needs no limit
    return (sy, sx), target_size((image.height, image.width), scale=(sx, sy),
                                 max_pixels=math.inf)


def encode_png(pixels: np.ndarray) -> bytes:
    """(h, w, 1|3|4) uint8 RGB(A) or grey -> PNG bytes, as `liif upscale` writes them."""
    return png.cv2_encode(pixels)


def bicubic_window(image: ViewImage, out_hw: tuple[int, int],
                   window: tuple[int, int, int, int]) -> np.ndarray:
    """The window (y0, x0, h, w) of OpenCV's bicubic resize to out_hw, as (h, w, C) uint8:
    source coordinates (dst + 0.5) · in / out - 0.5 (cv2.resize's), edges replicated."""
    import cv2

    H, W = out_hw
    y0, x0, h, w = window
    src = image.rgb.permute(1, 2, 0).numpy()  # (ih, iw, 3) float32
    mx = ((np.arange(x0, x0 + w, dtype=np.float64) + 0.5) * image.width / W - 0.5)
    my = ((np.arange(y0, y0 + h, dtype=np.float64) + 0.5) * image.height / H - 0.5)
    map_x = np.broadcast_to(mx[None, :], (h, w)).astype(np.float32)
    map_y = np.broadcast_to(my[:, None], (h, w)).astype(np.float32)
    out = cv2.remap(src, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    if image.grey:
        out = out.mean(2, keepdims=True)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8).reshape(h, w, -1)


class RenderQueue:
    """One worker thread per device: jobs run one at a time, the newest generation first;
    a job whose (view, gen) is older than the newest gen seen for its view is dropped, and so
    is one whose `alive()` says False when its turn comes (its client has gone)."""

    def __init__(self) -> None:
        self._heap: list = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._latest: OrderedDict[str, int] = OrderedDict()  # least recently heard from first
        self._closed = False
        self.rendered = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="liif-view-render", daemon=True)
        self._thread.start()

    def note(self, view: str | None, gen: int | None) -> None:
        """A request from `view` at `gen` arrived: older gens of that view are now stale."""
        if view is not None and gen is not None:
            with self._cv:
                self._latest[view] = max(gen, self._latest.get(view, gen))
                self._latest.move_to_end(view)
                while len(self._latest) > VIEWS_KEPT:
                    self._latest.popitem(last=False)

    def _stale(self, view: str | None, gen: int | None) -> bool:
        return view is not None and gen is not None and gen < self._latest.get(view, gen)

    def submit(self, fn: Callable[[], object], *, view: str | None = None,
               gen: int | None = None, alive: Callable[[], bool] | None = None) -> Future:
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise Unavailable("the viewer is stopping")
            # newest generation first; within one, first come first served (the page sends
            # the tiles nearest the centre first)
            heapq.heappush(self._heap, (-(gen or 0), next(self._seq), fut, (fn, view, gen, alive)))
            self._cv.notify()
        return fut

    def pending(self) -> int:
        """Jobs waiting for their turn (not the one rendering)."""
        with self._cv:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._closed:
                    self._cv.wait()
                if self._closed:
                    for _, _, fut, _ in self._heap:
                        fut.cancel()
                    return
                _, _, fut, (fn, view, gen, alive) = heapq.heappop(self._heap)
                stale = self._stale(view, gen)
            if not fut.set_running_or_notify_cancel():
                continue
            if stale or (alive is not None and not alive()):
                with self._cv:
                    self.dropped += 1
                fut.set_exception(StaleRequest())
                continue
            try:
                fut.set_result(fn())
                self.rendered += 1
            except BaseException as e:  # noqa: BLE001 - handed to the waiting request
                fut.set_exception(e)

    def result(self, fut: Future, *, timeout: float, alive: Callable[[], bool] | None = None):
        """`fut`'s result, looking every `ALIVE_POLL_S` whether the client waits for it: once it
        does not, the job is dropped (StaleRequest) and the waiting thread is free; past
        `timeout`, Unavailable (the job dropped if still queued), as when the queue closes."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return fut.result(timeout=min(ALIVE_POLL_S, max(0.0, deadline - time.monotonic())))
            except FutureTimeout:
                pass
            except CancelledError:  # only close() cancels a job someone waits for
                raise Unavailable("the viewer is stopping") from None
            if alive is not None and not alive():
                if fut.cancel():
                    with self._cv:
                        self.dropped += 1
                raise StaleRequest("the client has gone")
            if time.monotonic() >= deadline:
                fut.cancel()  # dropped if still queued; a tile rendering finishes unseen
                raise Unavailable(f"busy: no turn to render within {timeout:g} s; try again")

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=60)


class ViewSession:
    """The images and models of one `liif view`, and what the server asks of them."""

    def __init__(self, images: list[str | Path], *, models: list[str] | None = None,
                 denoise: float | None = None, device: str = "auto",
                 output_dir: str | Path | None = None) -> None:
        from liif_cli.io.images import read_image
        from liif_cli.runtime.device import resolve_device
        from liif_cli.runtime.options import check_denoise
        from liif_cli.runtime.upscaler import model_input

        if not images:
            raise UsageError("give at least one image to view")
        if denoise is not None:
            check_denoise(denoise)
        self.device = resolve_device(device)
        self.output_dir = None if output_dir is None else Path(output_dir)
        if self.output_dir is not None and not self.output_dir.is_dir():
            raise UsageError(f"--output-dir {self.output_dir} is not a folder")
        self.images: list[ViewImage] = []
        for p in images:
            data = read_image(Path(p))
            rgb = model_input(data)  # (3, h, w) on the CPU
            self.images.append(ViewImage(Path(p), rgb.contiguous(), data.channels == 1,
                                         data.bit_depth, data.height, data.width, data))
        self._lock = threading.Lock()
        # (name, denoise) -> Upscaler, least recently used first; all but blends kept for good
        self._upscalers: OrderedDict[tuple[str, float | None], Upscaler] = OrderedDict()
        self._sources: dict[str, str] = {}  # model name -> what load_model takes
        self.cli_models: list[str] = []
        self._names: list[str] | None = None
        for m in models or [None]:
            name = self._add_cli_model(m)
            self.cli_models.append(name)
        self.main_denoise = denoise
        # the command line's blend, kept for good (None when --denoise was not given)
        self._main_key = self._key(self.cli_models[0], denoise)
        # load the command line's models now: their errors come before the URL is printed
        for i, name in enumerate(self.cli_models):
            self.upscaler(name, denoise if i == 0 else None)
        self.queue = RenderQueue()
        self.jobs: dict[int, Job] = {}
        self._job_ids = itertools.count(1)
        self._job_threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------------------
    # models

    def _add_cli_model(self, model: str | None) -> str:
        from liif_cli.runtime.weights import resolve_model_path

        name, _ = resolve_model_path(model)
        if name == BICUBIC:
            raise UsageError(f"{BICUBIC!r} is the viewer's own comparison; name the model file")
        if self._sources.get(name, str(model)) != str(model):
            raise UsageError(f"two models are both called {name!r}: rename one file")
        self._sources[name] = name if model is None else str(model)
        return name

    def model_names(self) -> list[str]:
        """The command line's models first, then bundled and user-folder ones, then bicubic
        (listed once: the models folder is read on first use)."""
        from liif_cli.runtime.weights import list_models

        if self._names is not None:
            return self._names
        names = list(self.cli_models)
        try:
            rows = list_models()
        except LiifError:  # a broken file in the models folder: offer what we have
            rows = []
        for r in rows:  # a file `liif models` lists as unreadable would fail every tile
            if r["name"] not in names and r["name"] != BICUBIC and r["encoder"] != "unreadable":
                names.append(r["name"])
                self._sources.setdefault(r["name"], r["name"])
        self._names = names + [BICUBIC]
        return self._names

    def denoise_models(self) -> dict[str, float]:
        """Models the page offers a --denoise strength for, and the strength each starts at:
        those with a denoise partner (`real`), and the first model when --denoise was given
        (which may be the partner, `default`, as on `liif upscale`'s command line)."""
        from liif_cli.runtime.weights import BUNDLED

        out = {w.name: w.denoise_default for w in BUNDLED.values()
               if w.denoise_partner and self._is_bundled(w.name)}
        if self.main_denoise is not None:
            out[self.cli_models[0]] = self.main_denoise
        return out

    def _is_bundled(self, name: str) -> bool:
        """`name` is the bundled model of that name, not a file of the command line's that is
        called the same (`--model x/real.pth`), which has no denoise partner."""
        return self._sources.get(name, name) == name

    def _blendable(self, name: str) -> bool:
        from liif_cli.runtime.weights import BUNDLED

        return self._is_bundled(name) and any(name in (w.name, w.denoise_partner)
                                              for w in BUNDLED.values() if w.denoise_partner)

    def check_model(self, model: str | None, denoise: float | None) -> str:
        """The model name to use (None: the first of the command line's), or NotFound/UsageError."""
        from liif_cli.runtime.options import check_denoise

        name = self.cli_models[0] if model is None else model
        if name not in self.model_names():
            raise NotFound(f"unknown model {name!r}")
        if denoise is not None:
            check_denoise(denoise)
            if not self._blendable(name):
                raise UsageError(f"model {name!r} has no denoise partner")
        return name

    def _budget(self) -> int:
        """One renderer's memory budget: RENDERERS of them share the device."""
        from liif_cli.runtime.device import memory_budget

        return memory_budget(self.device, sharers=RENDERERS)

    def _key(self, name: str, denoise: float | None) -> tuple[str, float | None]:
        """(name, denoise)'s place among the loaded models: a bundled model at the strength
        `--model NAME` alone runs at (`real` at 1, which the page asks for) is that model, not
        a second copy of it."""
        from liif_cli.runtime.weights import BUNDLED

        d = None if denoise is None else round(float(denoise), 4)
        w = BUNDLED.get(name)
        if (d is not None and w is not None and w.denoise_partner and d == w.denoise_default
                and self._is_bundled(name)):
            d = None
        return name, d

    def upscaler(self, name: str, denoise: float | None) -> Upscaler:
        """The Upscaler for (name, denoise), loaded once; of the denoise blends not given on
        the command line, only the `BLENDS_KEPT` most recently used stay loaded (a tile
        rendering with one that leaves keeps it until it is done)."""
        from liif_cli import Upscaler, load_model

        key = self._key(name, denoise)
        with self._lock:
            up = self._upscalers.get(key)
            if up is None:
                loaded = load_model(self._sources[name], denoise=key[1], device=self.device)
                up = Upscaler(loaded, device=self.device, max_memory=self._budget())
                self._upscalers[key] = up
            self._upscalers.move_to_end(key)
            blends = [k for k in self._upscalers if k[1] is not None and k != self._main_key]
            for k in blends[:-BLENDS_KEPT]:
                del self._upscalers[k]
            return up

    # ------------------------------------------------------------------------------------
    # pixels

    def image(self, index: int) -> ViewImage:
        if not 0 <= index < len(self.images):
            raise NotFound(f"no image {index}: there are {len(self.images)}")
        return self.images[index]

    def image_png(self, index: int) -> bytes:
        """The image itself as an 8-bit PNG (colour; what the page shows up to 100 %)."""
        img = self.image(index)
        if img._png is None:
            px = img.rgb.permute(1, 2, 0).numpy()
            px = px[:, :, :1] if img.grey else px
            img._png = encode_png(np.clip(np.round(px * 255), 0, 255).astype(np.uint8))
        return img._png

    def check_tile(self, index: int, scale: str, x: int, y: int, w: int, h: int
                   ) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """((H, W), window) of a tile request, or NotFound/UsageError before any work."""
        img = self.image(index)
        _, (H, W) = output_hw(img, scale)
        if not (1 <= w <= MAX_TILE and 1 <= h <= MAX_TILE):
            raise UsageError(f"tile {w}x{h} is not between 1x1 and {MAX_TILE}x{MAX_TILE}")
        if x < 0 or y < 0 or x + w > W or y + h > H:
            raise UsageError(f"window {w}x{h} at ({x}, {y}) is outside the {W}x{H} output")
        return (H, W), (y, x, h, w)

    def tile(self, index: int, scale: str, x: int, y: int, w: int, h: int, *,
             model: str | None = None, denoise: float | None = None,
             view: str | None = None, gen: int | None = None,
             alive: Callable[[], bool] | None = None) -> np.ndarray:
        """The (h, w, C) uint8 window at (x, y) of image `index` upscaled by `scale`.

        Checked first (NotFound, UsageError); bicubic is computed here, a model's tile on the
        device's queue: StaleRequest when the page has moved on, or `alive()` says the client
        has gone, before its turn (`RenderQueue.result`); Unavailable when its turn does not
        come within `TILE_WAIT_S` or the viewer stops.
        """
        out_hw, window = self.check_tile(index, scale, x, y, w, h)
        if model is None and denoise is None:  # the command line's model: its blend too
            denoise = self.main_denoise
        name = self.check_model(model, denoise)
        img = self.images[index]
        if name == BICUBIC:
            return bicubic_window(img, out_hw, window)
        self.queue.note(view, gen)

        def render() -> np.ndarray:
            up = self.upscaler(name, denoise)
            out = np.empty((h, w, 1 if img.grey else 3), np.uint8)
            up.render(img.on(up.device), out_hw, out, dtype=up.render_dtype(img.bit_depth),
                      window=window)
            return out

        fut = self.queue.submit(render, view=view, gen=gen, alive=alive)
        return self.queue.result(fut, timeout=TILE_WAIT_S, alive=alive)

    # ------------------------------------------------------------------------------------
    # export jobs

    def export_path(self, index: int, scale: str) -> Path:
        """Where the whole image at `scale` goes: next to it (or in --output-dir), named as
        `liif upscale --scale S` names it (photo_x4.png; ×2.000001 is not ×2)."""
        from liif_cli.runtime.sizing import SizeRequest
        from liif_cli.tasks.upscale import default_output_path

        img = self.image(index)
        (sy, sx), _ = output_hw(img, scale)
        path = default_output_path(img.path, SizeRequest(scale=(sy, sx)), scale_text=scale)
        return path if self.output_dir is None else self.output_dir / path.name

    def start_export(self, index: int, scale: str, *, model: str | None = None,
                     denoise: float | None = None, overwrite: bool = False) -> Job:
        """Start writing the whole upscale; OutputExistsError (before any work) when the file
        exists and `overwrite` is not set; UsageError when a job is already running."""
        from liif_cli.io.images import check_output_path
        from liif_cli.runtime import sizing

        if model is None and denoise is None:  # the command line's model: its blend too
            denoise = self.main_denoise
        name = self.check_model(model, denoise)
        if name == BICUBIC:
            raise UsageError("export renders with a model: pick one other than bicubic")
        dst = self.export_path(index, scale)
        img = self.images[index]
        (sy, sx), _ = output_hw(img, scale)  # within the viewer's caps
        out_hw = sizing.target_size((img.height, img.width), scale=(sx, sy),
                                    max_pixels=sizing.DEFAULT_MAX_OUTPUT_PIXELS)  # upscale's
        check_output_path(dst, overwrite=overwrite)
        with self._lock:
            if any(j.state == "running" for j in self.jobs.values()):
                raise UsageError("an export is already running: wait for it or cancel it")
            job = Job(next(self._job_ids), index, scale, name, dst)
            for old in list(self.jobs)[:max(0, len(self.jobs) + 1 - JOBS_KEPT)]:
                del self.jobs[old]  # the oldest, all finished: one runs at a time
            self.jobs[job.id] = job
            self._job_threads = [t for t in self._job_threads if t.is_alive()]
        t = threading.Thread(target=self._export, args=(job, out_hw, denoise, overwrite),
                             name=f"liif-view-export-{job.id}", daemon=True)
        self._job_threads.append(t)
        t.start()
        return job

    def _export(self, job: Job, out_hw: tuple[int, int], denoise: float | None,
                overwrite: bool) -> None:
        from liif_cli import Upscaler
        from liif_cli.io.images import write_image

        t0 = time.perf_counter()

        def on_progress(done: int, total: int) -> None:
            job.done, job.total = done, total
            if job.cancel.is_set():
                raise _Cancelled

        try:
            shared = self.upscaler(job.model, denoise)
            # its own decoders: the tile worker renders with the shared one meanwhile
            up = Upscaler(shared.model, device=shared.device, precision=shared.dtype,
                          max_memory=self._budget())
            up.name = shared.name
            # the pixels loaded at start, as on screen: not the file again, which may have changed
            res = up.upscale_image(self.images[job.image].data, out_hw, on_progress=on_progress)
            write_image(job.output, res.image, overwrite=overwrite)
            job.state, job.message = "done", f"wrote {job.output}"
        except _Cancelled:
            job.state, job.message = "cancelled", "cancelled; nothing written"
        except OutputExistsError as e:  # appeared meanwhile; the page's way to replace it
            job.state, job.message = "failed", (f"output exists: {Path(e.path).name} (pass "
                                                "overwrite=1 to replace it)")
        except Exception as e:  # noqa: BLE001 - reported to the page: the CLI's one line
            job.state, job.message = "failed", describe(e, "view")[0]
        job.seconds = time.perf_counter() - t0

    def job(self, job_id: int) -> Job:
        if job_id not in self.jobs:
            raise NotFound(f"no job {job_id}")
        return self.jobs[job_id]

    def close(self) -> None:
        """Cancel exports (their temporary files are removed) and stop the render worker."""
        for j in self.jobs.values():
            j.cancel.set()
        for t in self._job_threads:
            t.join(timeout=60)
        self.queue.close()
