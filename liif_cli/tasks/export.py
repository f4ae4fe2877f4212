"""`liif export`: a model as .safetensors (no pickle), .pth (the official layout) or ONNX.

safetensors: the checkpoint's tensors as they are (dtype kept, so pixels are identical to the
.pth), the official spec in the file's metadata ('name', 'args' as JSON; see `weights`).

ONNX: one graph with the official query signature (`query_rgb` in yinboc/liif, after
`gen_feat`), the normalisation inside, batch 1, h, w and N dynamic:
    image float32 [1, 3, h, w] in [0, 1]
    coord float32 [1, N, 2]  (row, col) pixel centres in [-1, 1]: -1 + (2i + 1) / H
    cell  float32 [1, N, 2]  (2 / H, 2 / W) for an H×W output
    ->  rgb float32 [1, N, 3] in [0, 1] (clamped, as the official demo does)
The encoder runs on each call, so a caller that chunks N (as our engine does, for memory)
re-encodes the image per chunk; the README shows that loop. The graph computes the first
MLP layer on the latent grid (a 3×3 convolution) and gathers it per query, as our engine does.

Every file is written to a temporary name, checked by reading it back, then renamed
(`io.files.atomic_write`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from liif_cli.errors import ExportError, LiifError, UsageError
from liif_cli.io.files import atomic_write, check_output_path
from liif_cli.model import SRModel, denormalise, normalise
from liif_cli.runtime.weights import (
    card_or_class,
    checkpoint_dict,
    load_model,
    model_from_spec,
    read_checkpoint,
    read_safetensors,
    safetensors_bytes,
)
from liif_cli.version import __version__

EXPORT_FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx", "pth": ".pth"}
SUFFIX_FORMATS = {".safetensors": "safetensors", ".onnx": "onnx", ".pth": "pth", ".pt": "pth"}
ONNX_INPUTS = ("image", "coord", "cell")
ONNX_OUTPUT = "rgb"
# the example input torch.export traces with (any size works; dims are declared dynamic)
TRACE_HW, TRACE_OUT_HW = (12, 14), (29, 31)
ONNX_CHECK_TOLERANCE = 1e-3  # onnxruntime vs torch on the examples, in [0, 1] units
# (in h, w), (out H, W) the written graph is checked on, none the traced size: a fractional
# scale, and ×3, whose border pixels sit exactly on latent centres (where a lost epsilon once
# gave NaN) and whose ensemble shifts land exactly on latent edges
ONNX_CHECK_CASES = (((9, 17), (20, 23)), ((19, 23), (57, 69)))


@dataclass
class ExportResult:
    path: Path
    format: str
    model: str
    bytes: int
    seconds: float
    check: str  # what was verified on the written file


def export_format(fmt: str | None, output: str | os.PathLike | None) -> str:
    """--format (or the output's extension) -> 'safetensors', 'onnx' or 'pth'."""
    if fmt is not None:
        key = str(fmt).lower().lstrip(".")
        if key not in EXPORT_FORMATS:
            raise UsageError(f"unknown --format {fmt!r}: use safetensors, onnx or pth")
        if output is not None:
            suffix = Path(output).suffix.lower()
            if SUFFIX_FORMATS.get(suffix, key) != key:
                raise UsageError(f"--format {key} disagrees with the output's extension "
                                 f"{Path(output)}; drop one of them")
        return key
    if output is None:
        return "safetensors"
    suffix = Path(output).suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise UsageError(f"cannot tell the format of {Path(output)} from its extension: pass "
                         "--format safetensors, onnx or pth")
    return SUFFIX_FORMATS[suffix]


def export_model(model: str | os.PathLike | SRModel | None, output: str | os.PathLike
                 | None = None, *, fmt: str | None = None, overwrite: bool = False,
                 on_stage: Callable[[str], None] | None = None) -> ExportResult:
    """Write `model` (a name, a path, None for the bundled default) as `fmt` to `output`
    (default: NAME.safetensors / .onnx / .pth in the current folder). A network passed in is
    left where it is, in its dtype and mode: the export works on a CPU fp32 copy.
    `on_stage(text)` is told when the slow part (ONNX tracing) starts, after every check."""
    t0 = time.perf_counter()
    key = export_format(fmt, output)
    net = model if isinstance(model, SRModel) else load_model(model, device="cpu")
    loaded = card_or_class(net)
    dst = Path(output) if output is not None else Path(loaded.name + EXPORT_FORMATS[key])
    check_output_path(dst, overwrite=overwrite)
    if key == "onnx":
        if on_stage is not None:
            on_stage("tracing the model for ONNX (takes a few seconds) …")
        check = atomic_write(dst, lambda tmp: _write_onnx(net, tmp), overwrite=overwrite)
    else:
        ckpt = _checkpoint_of(net)
        if key == "safetensors":
            blob = safetensors_bytes(ckpt)

            def write(tmp: str) -> str:
                Path(tmp).write_bytes(blob)
                return _check_checkpoint(tmp, read_safetensors(tmp), ckpt)
        else:
            def write(tmp: str) -> str:
                with open(tmp, "wb") as f:
                    torch.save(ckpt, f)
                return _check_checkpoint(tmp, read_checkpoint(tmp), ckpt)
        check = atomic_write(dst, write, overwrite=overwrite)
    return ExportResult(dst, key, loaded.name, dst.stat().st_size, time.perf_counter() - t0,
                        check)



def _checkpoint_of(net: SRModel) -> dict[str, Any]:
    """The file's own checkpoint when it still holds the network's weights (its dtypes kept:
    a half-precision .pth stays half), else the network's: weights changed since loading
    (fine-tuned, `load_state_dict`) or a file changed since are not exported stale."""
    loaded = card_or_class(net)
    if loaded.path is not None:
        try:
            ckpt = read_checkpoint(loaded.path)
        except LiifError:
            ckpt = None
        if ckpt is not None and _same_weights(ckpt["model"]["sd"], net.state_dict()):
            return ckpt
    return checkpoint_dict(net, liif_cli=_changed_meta(loaded.name, loaded.meta))


# what a file says about the training behind its weights: not true of weights changed since
TRAINING_META = ("config", "epoch", "iteration", "steps", "source")


def _changed_meta(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata of a network whose weights changed since it was loaded from `name`: its
    file's, less the training behind those weights, with what they were changed from."""
    steps = meta.get("steps")
    kept = {k: v for k, v in meta.items() if k not in TRAINING_META}
    return kept | {"version": __version__,
                   "changed_from": f"{name} ({steps:,} steps)" if steps else name}


def _same_weights(sd: Any, want: dict[str, torch.Tensor]) -> bool:
    """A file's state dict holds `want`'s values (compared as the loader casts: to float32)."""
    return (isinstance(sd, dict) and sd.keys() == want.keys()
            and all(isinstance(sd[k], torch.Tensor) and sd[k].shape == v.shape
                    and torch.equal(sd[k].float(), v.detach().cpu().float())
                    for k, v in want.items()))


def _check_checkpoint(tmp: str, back: dict[str, Any], ckpt: dict[str, Any]) -> str:
    """The written file must rebuild the same model with the same tensors."""
    model_from_spec(back["model"], source=tmp)  # architecture and shapes, strictly
    want, got = ckpt["model"]["sd"], back["model"]["sd"]
    if want.keys() != got.keys() or any(not torch.equal(want[k].cpu(), got[k]) for k in want):
        raise ExportError("the written file does not read back to the same weights")
    return f"read back: {len(got)} tensors equal"


# ----------------------------------------------------------------------------------------------
# ONNX

class LiifQueryGraph(nn.Module):
    """image (1, 3, h, w) in [0, 1], coord (1, N, 2), cell (1, N, 2) -> rgb (1, N, 3) in [0, 1].

    The official `gen_feat` + `query_rgb`: the normalisation, the encoder, then the model's own
    decoder (`decode`: LIIF's `query_fast`, the first MLP layer as a 3×3 convolution on the
    grid gathered per query; LM-LIIF's convolutional latent MLP and render MLP), whose local
    ensemble is `model.ensemble`'s: the nearest latents by arithmetic (grid_sample's
    unnormalisation, rounded half to even), which every ONNX runtime has. Any model with
    `encode` and `decode` (LIIF, LM-LIIF).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, coord: torch.Tensor, cell: torch.Tensor
                ) -> torch.Tensor:
        feat = self.model.encode(normalise(image))  # (1, C, h, w); official normalisation
        return denormalise(self.model.decode(feat, coord, cell)).clamp(0, 1)


def query_graph(model: nn.Module) -> nn.Module:
    return LiifQueryGraph(model).eval()


def example_inputs(in_hw: tuple[int, int] = TRACE_HW, out_hw: tuple[int, int] = TRACE_OUT_HW,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random image and the full query grid of an out_hw output, in the graph's layout."""
    from liif_cli.model.coords import make_cell, make_coord

    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, *in_hw, generator=g)
    n = out_hw[0] * out_hw[1]
    return image, make_coord(out_hw).unsqueeze(0), make_cell(out_hw, n).unsqueeze(0)


def _onnx_modules():
    try:
        import onnx
        import onnxscript  # noqa: F401 - torch's ONNX exporter needs it
    except ImportError as e:
        raise ExportError(f"ONNX export needs the onnx extra ({e.name} is missing): "
                          "pip install '.[onnx]' in a clone of liif-cli") from None
    return onnx


def _write_onnx(net: SRModel, tmp: str) -> str:
    loaded = card_or_class(net)
    onnx = _onnx_modules()
    graph = query_graph(copy.deepcopy(net).float().cpu().eval())  # the caller's stays put
    inputs = example_inputs()
    h, w, n = (torch.export.Dim(d, min=1) for d in ("h", "w", "N"))
    shapes = {"image": {2: h, 3: w}, "coord": {1: n}, "cell": {1: n}}
    quiet = io.StringIO()
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), \
                contextlib.redirect_stderr(quiet), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, inputs, input_names=list(ONNX_INPUTS),
                                        output_names=[ONNX_OUTPUT], dynamic_shapes=shapes,
                                        dynamo=True, external_data=False, verbose=False)
    except Exception as e:  # noqa: BLE001 - the exporter raises many types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"ONNX export of {loaded.name} failed: {msg[:200]}") from None
    finally:
        exporter_log.setLevel(level)
    proto = program.model_proto
    proto.doc_string = ("LIIF query: image [1,3,h,w] in [0,1], coord [1,N,2] (row, col) pixel "
                        "centres in [-1,1], cell [1,N,2] = (2/H, 2/W) -> rgb [1,N,3] in [0,1]")
    spec = net.config.to_spec()
    for key, value in (("liif_cli_version", __version__), ("model", loaded.name),
                       ("name", spec["name"]), ("args", json.dumps(spec["args"]))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, tmp)
    return _check_onnx(tmp, graph, inputs)


def _check_onnx(path: str, graph: nn.Module, inputs) -> str:
    """onnx.checker on the file, and onnxruntime against torch on an example not traced."""
    onnx = _onnx_modules()
    try:
        onnx.checker.check_model(path, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"the written ONNX graph does not pass onnx.checker: {e}") from None
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnx.checker passed (onnxruntime not installed: not run)"
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    diff = 0.0
    for in_hw, out_hw in ONNX_CHECK_CASES:
        image, coord, cell = example_inputs(in_hw, out_hw, seed=1)
        got = session.run([ONNX_OUTPUT], {"image": image.numpy(), "coord": coord.numpy(),
                                          "cell": cell.numpy()})[0]
        with torch.no_grad():
            want = graph(image, coord, cell).numpy()
        d = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        if not d <= ONNX_CHECK_TOLERANCE:  # NaN fails too
            raise ExportError(f"onnxruntime's output differs from torch's by {d:.3g} on a "
                              f"{in_hw[1]}x{in_hw[0]} -> {out_hw[1]}x{out_hw[0]} test input; "
                              "not writing the graph")
        diff = max(diff, d)
    return f"onnx.checker passed; onnxruntime matches torch to {diff:.1e}"
