"""The hidden layers' linear + bias + ReLU: oneDNN's fused kernel on the CPU where it is exact,
else `addmm` + `relu_` (checked once per dtype)."""

from __future__ import annotations

from typing import Callable

import torch

LinearFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _addmm_relu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """relu(x @ w.T + b) for x (M, in), w (out, in), b (out,)."""
    return torch.addmm(b, x, w.t()).relu_()


def _onednn_linear_relu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "relu", [], "")


_FUSED_OK: dict[torch.dtype, bool] = {}


def linear_relu_fn(device: torch.device, dtype: torch.dtype) -> LinearFn:
    """The fastest exact linear+bias+ReLU here: oneDNN's fused kernel on the CPU, else addmm.

    The private oneDNN op is checked once per dtype against addmm; any failure (old PyTorch,
    a CPU without native bf16) falls back to addmm, which is always correct.
    """
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return _addmm_relu
    if dtype not in _FUSED_OK:
        ok = False
        try:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(64, 48, generator=g).to(dtype)
            w = torch.randn(40, 48, generator=g).to(dtype)
            b = torch.randn(40, generator=g).to(dtype)
            got, ref = _onednn_linear_relu(x, w, b).float(), _addmm_relu(x, w, b).float()
            tol = 1e-4 if dtype == torch.float32 else 0.1
            ok = got.shape == ref.shape and bool((got - ref).abs().max() <= tol)
        except Exception:  # noqa: BLE001 - private op missing or unsupported: use addmm
            ok = False
        _FUSED_OK[dtype] = ok
    return _onednn_linear_relu if _FUSED_OK[dtype] else _addmm_relu


def fused_linear_in_use(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether the decoder's hidden layers run through oneDNN's fused kernel (for reports)."""
    return linear_relu_fn(torch.device(device), dtype) is _onednn_linear_relu


