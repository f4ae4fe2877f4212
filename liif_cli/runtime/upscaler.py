"""The model as every task runs it: on its device, in one precision, its decoder built once.

`Upscaler(model, device=..., precision=..., max_memory=...)` resolves the device and the dtype
once (`runtime.device`: the one precision policy, TF32 off on a GPU, the memory budget), puts
the network there, and builds the engine's decoder (`engine.make_decoder`) the first time it
renders, then reuses it for every image. Upscale, batch (one per worker), eval, train's validation and bench all render through
one, so `--precision` means one thing everywhere: the dtype of the whole forward pass, encoder
(under autocast) and decoder MLP alike, as `engine.render`'s `dtype` and `encoder_dtype`.
16-bit images are computed in float32 whatever the precision (`render_dtype`; a second decoder,
built once); `model_input` turns any image into what the model takes.

A network the caller passes is never moved, cast nor flipped in place: when it is not already
on the device in eval mode and float32, the Upscaler renders a copy (so a second Upscaler on
another device leaves the first, and the caller's module, as they were; a caller's fp16 module
renders in any precision). A model it loads itself is its own. Nor is the caller's current CUDA
GPU changed: each render makes the Upscaler's GPU current for its own duration only.

On a GPU, a render that runs out of memory is retried once at half the budget (which the
Upscaler then keeps for later images) before the error goes up: a first user should not have
to learn `--max-memory`.

The decoder is a snapshot of the weights (some of its tensors are copies): after the weights
change (a training step, `load_state_dict`) make a new Upscaler. That is cheap (a decoder
build, milliseconds); training's validation makes one per validation.
"""

from __future__ import annotations

import copy
import numbers
import os
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from liif_cli.errors import UsageError, is_out_of_memory
from liif_cli.io.images import ImageData
from liif_cli.model import SRModel
from liif_cli.runtime import engine
from liif_cli.runtime.device import (
    DTYPES,
    MIN_MAX_MEMORY,
    current,
    memory_budget,
    precision_name,
    resolve_device,
    resolve_precision,
    set_tf32,
)
from liif_cli.runtime.weights import card_of, load_model

ModelRef = SRModel | str | os.PathLike | None  # a network, a name or a path; None: the default
OOM_RETRY_DEVICES = ("cuda", "mps")  # where an out-of-memory render is retried at half budget


@dataclass
class UpscaleResult:
    image: ImageData
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    device: str
    precision: str  # the precision that ran ("fp32" for 16-bit images)
    seconds: float


class Upscaler:
    """A model ready to render: on `device`, in `precision`, within `max_memory` bytes.

    `model`: a network (LIIF or LM-LIIF, e.g. from `load_model`), a model name or a checkpoint
    path (None: the bundled default); a network is used as it is only when it is already on
    `device` in eval mode and float32, else copied (the caller's module is never moved, cast
    nor flipped).
    `precision`: a `--precision` name, resolved by `device.resolve_precision` (an explicit
    bf16 where the hardware lacks it falls back with one `PrecisionWarning`), or a torch dtype
    taken as already resolved (bench measures emulated bf16 that way). Usage errors (device, precision) come before the model is loaded.
    `max_memory`: bytes, None for the device's default (`device.memory_budget`: 512 MiB on a
    CPU, half the free memory of a CUDA GPU, which also caps a given value). `tf32`: allow
    TF32 in fp32 work on a CUDA GPU (`device.set_tf32`; default off: fp32 is exact).
    """

    def __init__(self, model: ModelRef = None, *, device: str | torch.device | None = "auto",
                 precision: str | torch.dtype = "auto",
                 max_memory: int | None = None, tf32: bool = False):
        self.device = resolve_device(device)
        if isinstance(precision, torch.dtype):
            if precision not in DTYPES.values():
                raise UsageError(f"unsupported dtype {precision}: use float32, bfloat16 or "
                                 "float16")
            self.dtype = precision
        else:
            self.dtype = resolve_precision(precision, self.device)
        set_tf32(self.device, tf32)
        if isinstance(model, SRModel) and _ready_on(model, self.device):
            net = model  # the caller's, used as it is: never moved nor flipped
        else:  # a copy of the caller's, or one we load: ours to move (and make float32)
            net = (copy.deepcopy(model) if isinstance(model, SRModel)
                   else load_model(model, device=self.device))
            net = net.to(self.device).float().eval()
        card = card_of(net)
        self.name: str | None = card.name if card else None  # None: the caller names it
        self.model: SRModel = net
        self.max_memory = memory_budget(self.device, max_memory)
        self._decoders: dict[torch.dtype, engine.Decoder] = {}
        self._decoders_lock = threading.Lock()  # `liif view` renders from several threads

    @property
    def precision(self) -> str:
        """The precision name that runs: "fp32", "bf16" or "fp16"."""
        return precision_name(self.dtype)

    def decoder(self, dtype: torch.dtype | None = None) -> engine.Decoder:
        """The engine's decoder in `dtype` (default: this Upscaler's), built on first use."""
        dtype = self.dtype if dtype is None else dtype
        with self._decoders_lock:
            if dtype not in self._decoders:
                with torch.no_grad():  # plain tensors: usable in and out of inference mode
                    self._decoders[dtype] = engine.make_decoder(self.model, dtype, self.device)
            return self._decoders[dtype]

    def render_dtype(self, bit_depth: int) -> torch.dtype:
        """The dtype an image of `bit_depth` bits per sample renders in: float32 for 16-bit
        images whatever the precision (bf16 or fp16 would not keep 65,536 levels), this
        Upscaler's otherwise. `upscale_image` and `liif view`'s tiles both ask here."""
        return torch.float32 if bit_depth == 16 else self.dtype

    def render(self, img: torch.Tensor, out_hw: tuple[int, int], out: np.ndarray | None = None,
               *, on_progress: engine.ProgressFn | None = None,
               dtype: torch.dtype | None = None,
               window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """`engine.render` of `img` (3, h, w) in [0, 1] to `out_hw` (H, W), the whole forward
        pass in `dtype` (default: this Upscaler's precision), with the cached decoder.

        `out` as in `engine.render`: None (float32 (H, W, 3), raw), or a preallocated
        uint8/uint16/float32 (H, W, 3) or (H, W, 1) array. Returns it. `window` (y0, x0, h, w):
        only that window of the output, into an (h, w, C) `out` (`engine.render`).
        On a GPU, out of memory is retried once at half the budget, kept from then on.
        """
        if not (isinstance(img, torch.Tensor) and img.ndim == 3 and img.shape[0] == 3
                and min(img.shape[1:]) >= 1 and img.is_floating_point()):
            shown = (f"{tuple(img.shape)} {img.dtype}" if isinstance(img, torch.Tensor)
                     else type(img).__name__)
            raise UsageError(f"render takes one (3, h, w) tensor of floats in [0, 1], got "
                             f"{shown}")
        # NaN would come out as plausible pixels. Whole renders only: the scan is nothing
        # beside encoding the whole input, but a window (a viewer's tile, a video's changed
        # part) encodes a small part of it
        if window is None and not torch.isfinite(img).all():
            raise UsageError("render's input has NaN or infinite values")
        out_hw = _check_hw(out_hw)
        _check_out(out, out_hw, window)
        dtype = self.dtype if dtype is None else dtype
        dec = self.decoder(dtype)
        reached = 0

        def progress(done: int, total: int) -> None:  # never backwards across the retry
            nonlocal reached
            reached = max(reached, done)
            if on_progress is not None:
                on_progress(reached, total)

        def attempt() -> np.ndarray:
            with current(self.device), torch.inference_mode():
                return engine.render(self.model, img.to(self.device), out_hw, out,
                                     max_memory=self.max_memory, dtype=dtype,
                                     encoder_dtype=dtype, decoder=dec, on_progress=progress,
                                     window=window)

        try:
            return attempt()
        except Exception as e:  # noqa: BLE001 - only out of memory on a GPU is retried
            if self.device.type not in OOM_RETRY_DEVICES or not is_out_of_memory(e):
                raise
        # out of the except block: the failed attempt's tensors, held by its traceback, are free
        _empty_cache(self.device)
        self.max_memory = max(MIN_MAX_MEMORY, self.max_memory // 2)
        return attempt()

    def upscale_image(self, image: ImageData, out_hw: tuple[int, int], *,
                      on_progress: engine.ProgressFn | None = None) -> UpscaleResult:
        """Upscale ImageData to out_hw = (H, W), keeping mode, bit depth and metadata.

        Colour goes through the model; alpha is resized with bicubic (`resize_plane`);
        greyscale goes through as R = G = B and comes back as the mean of its three answers;
        16-bit images are computed in float32 throughout whatever the precision.
        """
        t0 = time.perf_counter()
        check_image_data(image)
        H, W = _check_hw(out_hw)
        dtype = self.render_dtype(image.bit_depth)
        rgb = model_input(image, self.device)
        out_px = np.empty((H, W, image.channels), dtype=image.pixels.dtype)
        self.render(rgb, (H, W), out_px, on_progress=on_progress, dtype=dtype)
        alpha = None if image.alpha is None else resize_plane(image.alpha, (H, W))
        h, w = image.height, image.width
        dpi = None if image.dpi is None else (image.dpi[0] * W / w, image.dpi[1] * H / h)
        result = replace(image, pixels=out_px, alpha=alpha, dpi=dpi)
        return UpscaleResult(result, (h, w), (H, W), str(self.device), precision_name(dtype),
                             time.perf_counter() - t0)

    def __repr__(self) -> str:
        return (f"Upscaler({self.name or type(self.model).__name__}, device={self.device}, "
                f"precision={self.precision}, max_memory={self.max_memory})")


def check_image_data(image: ImageData) -> ImageData:
    """A UsageError unless `image` holds what `ImageData` says: (H, W, 1|3) uint8 or uint16
    pixels and an (H, W) alpha of their dtype, or None (as `read_image` makes them)."""
    if not isinstance(image, ImageData):
        raise UsageError(f"image is a {type(image).__name__}, not ImageData")
    px, alpha = image.pixels, image.alpha
    if not (isinstance(px, np.ndarray) and px.ndim == 3 and px.shape[2] in (1, 3)
            and px.dtype in (np.uint8, np.uint16) and min(px.shape[:2]) >= 1):
        shown = (f"{px.dtype} {px.shape}" if isinstance(px, np.ndarray)
                 else type(px).__name__)
        raise UsageError(f"ImageData.pixels must be an (H, W, 1) or (H, W, 3) uint8 or uint16 "
                         f"array, not {shown} (`upscale` takes (H, W, 2|4) arrays and splits "
                         "their alpha off)")
    if alpha is not None and not (isinstance(alpha, np.ndarray) and alpha.shape == px.shape[:2]
                                  and alpha.dtype == px.dtype):
        shown = (f"{alpha.dtype} {alpha.shape}" if isinstance(alpha, np.ndarray)
                 else type(alpha).__name__)
        raise UsageError(f"ImageData.alpha must be None or a {px.dtype} {px.shape[:2]} array "
                         f"(the pixels' height, width and dtype), not {shown}")
    return image


def _check_hw(out_hw: tuple[int, int]) -> tuple[int, int]:
    """(H, W): two whole numbers of pixels, each at least 1."""
    if not (isinstance(out_hw, (tuple, list)) and len(out_hw) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
            for v in out_hw)):
        shown = tuple(out_hw) if isinstance(out_hw, (tuple, list)) else repr(out_hw)
        raise UsageError(f"out_hw {shown} must be (H, W): two whole numbers of pixels, each at "
                         "least 1")
    return int(out_hw[0]), int(out_hw[1])


def model_input(image: ImageData, device: torch.device | None = None) -> torch.Tensor:
    """`image`'s colour as the model takes it: (3, h, w) float32 in [0, 1] on `device` (default:
    the CPU), 8- or 16-bit levels scaled to 1, grey repeated (an expanded view)."""
    maxval = 65535.0 if image.bit_depth == 16 else 255.0
    px = image.pixels
    # torch has few uint16 kernels (none on some devices) and warns on read-only arrays
    px = px.astype(np.float32) if px.dtype == np.uint16 else np.array(px, copy=True)
    pixels = torch.from_numpy(px).to(device)  # (h, w, C), uint8 or float32
    rgb = pixels.permute(2, 0, 1).float() / maxval  # (C, h, w) in [0, 1]
    return rgb.expand(3, -1, -1) if rgb.shape[0] == 1 else rgb


def _check_out(out: np.ndarray | None, out_hw: tuple[int, int],
               window: tuple[int, int, int, int] | None) -> None:
    """`render`'s `window` inside the output, and its `out` array of a kind it fills."""
    H, W = out_hw
    if window is not None:
        if not (isinstance(window, (tuple, list)) and len(window) == 4 and all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in window)):
            raise UsageError(f"window must be (y0, x0, h, w) in whole pixels, not {window!r}")
        y0, x0, h, w = window
        if min(y0, x0) < 0 or min(h, w) < 1 or y0 + h > H or x0 + w > W:
            raise UsageError(f"window {tuple(window)} is not inside the {H}×{W} output")
        H, W = h, w
    if out is None:
        return
    if not (isinstance(out, np.ndarray) and out.dtype in (np.uint8, np.uint16, np.float32)
            and out.shape in ((H, W, 3), (H, W, 1))):
        shown = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(
            out).__name__
        raise UsageError(f"out must be a uint8, uint16 or float32 ({H}, {W}, 3) or ({H}, {W}, "
                         f"1) array, not {shown}")


def _ready_on(model: SRModel, device: torch.device) -> bool:
    """True when `model` can render as it is: in eval mode, every tensor on `device`, every
    floating one float32 (the engine casts for bf16/fp16 itself; 16-bit images need fp32)."""
    tensors = [*model.parameters(), *model.buffers()]
    return not model.training and all(
        _same_device(t.device, device) and (not t.is_floating_point() or t.dtype == torch.float32)
        for t in tensors)


def _empty_cache(device: torch.device) -> None:
    """Give the caching allocator's free blocks back, before a retry at a smaller budget."""
    if device.type == "cuda":
        with current(device):
            torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _same_device(a: torch.device, b: torch.device) -> bool:
    """'cuda' (the current GPU) and 'cuda:N' are the same device when N is current."""
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (a.index if a.index is not None else current) == (
        b.index if b.index is not None else current)


def resize_plane(plane: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of one uint8/uint16 plane (alpha); area averaging where it shrinks."""
    import cv2

    H, W = out_hw
    up = H >= plane.shape[0] and W >= plane.shape[1]
    interp = cv2.INTER_CUBIC if up else cv2.INTER_AREA
    # OpenCV rounds and saturates to the plane's own type: no float copy of a big plane
    return cv2.resize(np.ascontiguousarray(plane), (W, H), interpolation=interp)
