"""Inference-only CPU fast path for a QuickGELU MLP (CLIP's): the first Linear and the activation in
one oneDNN call.

Measured on a 2-core Xeon (fp32, 4,160 tokens, 256 -> 1024): the Linear takes 5.8 ms and QuickGELU
after it 13-14 ms more: its three element-wise passes (scale, sigmoid, multiply) each stream a 17 MB
tensor through memory, and PyTorch's CPU sigmoid is slow. oneDNN applies the activation to each output
tile while it is still in cache (a "post-op"): 7.0 ms for both. Exact GELU gains nothing this way
(6.5 ms unfused, 6.7 fused: PyTorch's CPU GELU is one fast pass), so only QuickGELU is fused. The op
(``torch.ops.mkldnn._linear_pointwise``, the one PyTorch's own compiler emits for this pattern on CPU)
has no backward, so training keeps the plain modules.

oneDNN's swish is ``x * sigmoid(x)`` (it ignores an ``alpha``), so ``h * sigmoid(1.702 h)`` runs as
``swish(1.702 h) / 1.702``.
"""

from __future__ import annotations

import functools

import torch
import torch.autograd.forward_ad
import torch.fx
from torch import Tensor, nn
from torch.nn import functional as F

QUICK_GELU_ALPHA = 1.702
# Below this many rows (tokens) the plain modules are faster: the op re-lays the weights out on every
# call. Measured on the 2-core Xeon, 256 -> 1024, fp32: 1 row 64 vs 34 us, 64 rows 339 vs 306 us,
# 128 rows 562 vs 1,067 us, 2,048 rows 6.9 vs 10.4 ms (fused vs plain).
FUSE_MIN_ROWS = 128

_available: bool | None = None  # None: not probed yet


def fused_mlp_available() -> bool:
    """Whether this PyTorch build runs the fused op (probed once, in float32 with autocast off, so the
    caller's autocast or default dtype cannot make the probe fail: builds without oneDNN lack the op)."""
    global _available
    if _available is None:
        try:
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                x, w = torch.ones(2, 4, dtype=torch.float32), torch.ones(3, 4, dtype=torch.float32)
                y = torch.ops.mkldnn._linear_pointwise(x, w, None, "swish", [], "")
                _available = bool(torch.allclose(y, F.silu(x @ w.t())))
        except Exception:  # noqa: BLE001 - any failure means: use the plain modules
            _available = False
    return _available


@functools.cache
def _native_bf16() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype | None:
    """The dtype the plain modules would compute in, if the fused op can match it: autocast's on CPU for
    float32 / bfloat16 inputs (as autocast casts a Linear's), else the input's when the weights share it.
    bf16 needs a CPU with native bf16 (oneDNN would emulate it, slowly)."""
    if torch.is_autocast_enabled("cpu") and x.dtype in (torch.float32, torch.bfloat16):
        dtype = torch.get_autocast_dtype("cpu")
    elif x.dtype == weight.dtype:
        dtype = x.dtype
    else:
        return None
    if dtype == torch.float32 or (dtype == torch.bfloat16 and _native_bf16()):
        return dtype
    return None


def _plain_tensor(x: Tensor) -> bool:
    """Not a tensor being traced, transformed or carrying a forward-mode tangent: the fused op has no
    derivative rules of any kind, so those must see the plain modules."""
    if isinstance(x, torch.fx.Proxy):
        return False
    if getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0:
        return False
    try:
        from torch._C._functorch import is_functorch_wrapped_tensor
    except ImportError:  # pragma: no cover - every supported torch has it
        return True
    return not is_functorch_wrapped_tensor(x)


def fused_dtype(x: Tensor, activation: str, weight: Tensor, dropout_active: bool) -> torch.dtype | None:
    """The dtype to run the fused path in, or None where it must not run: it runs where it gives what
    the modules would, faster: a QuickGELU MLP on CPU over at least :data:`FUSE_MIN_ROWS` rows, no
    autograd of any kind, no active dropout, not being traced, exported or compiled (an exported graph
    keeps the portable ops)."""
    # the checks torch.compile can trace come first: under compilation (and on GPUs, and in training)
    # this returns before _plain_tensor's functorch query, which would break the compiled graph at every MLP
    if activation != "quick_gelu" or dropout_active or torch.compiler.is_compiling() or isinstance(x, torch.fx.Proxy):
        return None
    if x.device.type != "cpu" or torch.is_grad_enabled() or x.numel() < FUSE_MIN_ROWS * x.shape[-1]:
        return None
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or not _plain_tensor(x):
        return None
    dtype = _compute_dtype(x, weight)
    return dtype if dtype is not None and fused_mlp_available() else None


def fused_quick_gelu_mlp(x: Tensor, fc: nn.Linear, proj: nn.Linear, dtype: torch.dtype) -> Tensor:
    """``proj(quick_gelu(fc(x)))`` with ``fc`` and the activation fused, in the ``dtype``
    :func:`fused_dtype` gave (call it only where that is not None).

    The 1.702 scales the input and ``fc``'s bias (the input is 1/4 the size of the hidden layer) and
    its inverse rides on ``proj``'s matmul as ``alpha``, so no scaled copy of a weight is made or kept.
    Under autocast the weights are cast to its dtype on each call, as autocast itself does per region."""
    bias = None if fc.bias is None else fc.bias.to(dtype) * QUICK_GELU_ALPHA
    h = torch.ops.mkldnn._linear_pointwise(x.to(dtype) * QUICK_GELU_ALPHA, fc.weight.to(dtype), bias, "swish", [], "")
    flat, weight = h.reshape(-1, h.shape[-1]), proj.weight.to(dtype).t()
    if proj.bias is None:
        out = torch.mm(flat, weight).mul_(1.0 / QUICK_GELU_ALPHA)
    else:
        out = torch.addmm(proj.bias.to(dtype), flat, weight, alpha=1.0 / QUICK_GELU_ALPHA)
    return out.view(*h.shape[:-1], out.shape[-1])
