"""Multi-head attention (self and cross) on top of ``F.scaled_dot_product_attention``.

Why it looks the way it does:

* One fused ``Linear`` produces q, k and v for self-attention (one matmul instead of three); cross-
  attention has one ``Linear`` for q and one fused ``Linear`` for k and v of the context.
* Masks are built once per forward by the stack (:func:`self_attention_mask`,
  :func:`cross_attention_mask`) in the form SDPA takes (bool, True = may attend) and shared by every
  layer, instead of being rebuilt per layer.
* Without a padding mask a causal layer uses SDPA's ``is_causal`` (the fastest kernels); with one,
  the causal and padding masks are combined into a single boolean mask.
* Incremental decoding keeps past keys / values in a :class:`LayerKV` per attention layer; cross-
  attention keys / values of the encoder tokens are projected once and reused for every new token.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.errors import ConfigError

__all__ = [
    "ContextGroups",
    "LayerKV",
    "MultiHeadAttention",
    "Packing",
    "causal_mask",
    "cross_attention_mask",
    "query_rows_mask",
    "rows_at",
    "self_attention_mask",
]


@dataclass
class LayerKV:
    """Cached keys / values of one attention layer, ``[batch, heads, seq, head_dim]`` each.

    Mutable on purpose: the attention layer appends to it during incremental decoding.
    """

    k: Tensor | None = None
    v: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def index_select(self, index: Tensor) -> LayerKV:
        """A new cache with batch rows picked by ``index`` (beam search reordering / expansion)."""
        if self.k is None or self.v is None:
            return LayerKV()
        index = index.to(self.k.device)
        return LayerKV(self.k.index_select(0, index), self.v.index_select(0, index))


def causal_mask(q_len: int, k_len: int, past_len: int, device: torch.device) -> Tensor:
    """``[q_len, k_len]`` bool: query ``i`` (absolute position ``past_len + i``) sees keys ``<= itself``."""
    i = torch.arange(q_len, device=device).unsqueeze(1) + past_len
    j = torch.arange(k_len, device=device).unsqueeze(0)
    return j <= i


def self_attention_mask(
    key_mask: Tensor | None,
    q_len: int,
    *,
    causal: bool,
    past_len: int = 0,
    device: torch.device | None = None,
) -> tuple[Tensor | None, bool]:
    """Turn a padding mask ``[B, past_len + q_len]`` (True = real) into SDPA's ``(attn_mask, is_causal)``.

    Returns ``(None, True)`` when SDPA's built-in causal masking is exact (no padding, no cache), so
    the fast path is taken; otherwise an explicit bool mask broadcastable to ``[B, 1, q_len, k_len]``.
    A query row with no key it may attend to (a causal row of left padding, an all-padding sequence)
    would softmax over nothing and produce NaN, which then leaks into real tokens of the next layer
    through ``0 * NaN``; such rows are allowed to attend to themselves / everything instead. Real
    tokens never attend to padding either way.
    """
    k_len = past_len + q_len
    if key_mask is None:
        if not causal:
            return None, False
        if past_len == 0:
            return None, True
        if q_len == 1:  # one new token may see every cached one
            return None, False
        return causal_mask(q_len, k_len, past_len, device or torch.device("cpu")), False
    if key_mask.dtype != torch.bool:
        key_mask = key_mask != 0
    keys = key_mask[:, None, None, :]  # [B, 1, 1, S]
    if causal:
        allowed = causal_mask(q_len, k_len, past_len, key_mask.device)
        diagonal = torch.arange(k_len, device=key_mask.device).unsqueeze(0) == (
            torch.arange(q_len, device=key_mask.device).unsqueeze(1) + past_len
        )
        return (keys & allowed) | diagonal, False
    return keys | ~key_mask.any(dim=-1)[:, None, None, None], False


def rows_at(x: Tensor, positions: Tensor) -> Tensor:
    """``x[i, positions[i]]`` for every row ``i``: ``[B, T, ...]`` -> ``[B, ...]``."""
    return x[torch.arange(positions.shape[0], device=x.device), positions]


def query_rows_mask(
    attn_mask: Tensor | None, is_causal: bool, positions: Tensor, k_len: int
) -> Tensor | None:
    """The rows of a self-attention mask that one query per batch row needs: ``[B, 1, 1, k_len]`` or None.

    ``attn_mask`` / ``is_causal`` are :func:`self_attention_mask`'s (no cache); ``positions`` ``[B]``
    are the queries kept (see :meth:`MultiHeadAttention.forward_rows`).
    """
    b = positions.shape[0]
    if attn_mask is None:
        if not is_causal:
            return None
        keys = torch.arange(k_len, device=positions.device)
        return (keys[None, :] <= positions[:, None]).view(b, 1, 1, k_len)
    if attn_mask.shape[-2] == 1:  # the same mask for every query already
        return attn_mask
    full = attn_mask.expand(b, attn_mask.shape[1], attn_mask.shape[2], k_len)
    return full[torch.arange(b, device=positions.device), :, positions].unsqueeze(2)


def cross_attention_mask(key_mask: Tensor | None) -> Tensor | None:
    """Padding mask of the context ``[B, S]`` (True = real) -> SDPA mask ``[B, 1, 1, S]`` (or None).

    A context with no real token at all would give NaN; its queries attend to all of it instead.
    """
    if key_mask is None:
        return None
    if key_mask.dtype != torch.bool:
        key_mask = key_mask != 0
    return (key_mask | ~key_mask.any(dim=-1, keepdim=True))[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """Multi-head self- or cross-attention with a fused projection and an optional KV cache.

    ``cross=False``: ``forward(x)`` attends over ``x`` itself (q, k, v from one ``Linear``).
    ``cross=True``: ``forward(x, context)`` attends from ``x`` over ``context`` (``kv_dim`` wide).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        cross: bool = False,
        kv_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ConfigError(f"attention: width {dim} is not divisible by heads={heads}")
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.cross = cross
        self.dropout = dropout
        if cross:
            self.q = nn.Linear(dim, dim, bias=bias)
            self.kv = nn.Linear(kv_dim or dim, 2 * dim, bias=bias)
        else:
            if kv_dim is not None and kv_dim != dim:
                raise ConfigError("attention: kv_dim only applies to cross-attention (cross=True)")
            self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def project_kv(self, context: Tensor, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Keys and values of a cross-attention context, ``[B, heads, S, head_dim]`` each. With ``rows``
        (``[B]``, an index into ``context``'s batch), several queries share one context: it is
        projected once per context and the keys and values are then picked per row, which is cheaper
        than projecting a repeated context (a multi-task batch asks 3-4 texts about each image)."""
        k, v = self._split_heads(self.kv(context), 2)
        if rows is not None:
            k, v = k.index_select(0, rows), v.index_select(0, rows)
        return k, v

    def _split_heads(self, x: Tensor, parts: int) -> tuple[Tensor, ...]:
        """``[B, T, parts * dim]`` (e.g. a fused qkv projection) -> ``parts`` views ``[B, heads, T, head_dim]``.

        Split before moving the head axis: the backward then stacks the parts' gradients straight
        into the projection's ``[B, T, parts, heads, head_dim]`` layout, one pass, where unbinding a
        permuted view stacked them head-major and then copied them back (two passes)."""
        b, t, _ = x.shape
        return tuple(part.transpose(1, 2) for part in x.view(b, t, parts, self.heads, self.head_dim).unbind(2))

    def _merge_heads(self, x: Tensor) -> Tensor:
        """``[B, heads, T, head_dim]`` -> ``[B, T, dim]``."""
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.dim)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: LayerKV | None = None,
        context_rows: Tensor | None = None,
    ) -> Tensor:
        """``x`` ``[B, T, dim]`` -> ``[B, T, dim]``.

        ``attn_mask``/``is_causal`` come from :func:`self_attention_mask` / :func:`cross_attention_mask`.
        With ``cache``: self-attention appends this call's keys / values to it and attends over all of
        them; cross-attention stores the context's keys / values when ``context`` is given and reuses
        the stored ones when it is None. ``context_rows``: see :meth:`project_kv`.
        """
        if self.cross:
            (q,) = self._split_heads(self.q(x), 1)
            if context is not None:
                k, v = self.project_kv(context, context_rows)
                if cache is not None:
                    cache.k, cache.v = k, v
            elif cache is not None and cache.k is not None and cache.v is not None:
                k, v = cache.k, cache.v
            else:
                raise ValueError("cross-attention needs a context or a cache holding its keys/values")
        else:
            if context is not None:
                raise ValueError("self-attention takes no context; build it with cross=True")
            q, k, v = self._split_heads(self.qkv(x), 3)
            if cache is not None:
                if cache.k is not None and cache.v is not None:
                    k = torch.cat([cache.k, k], dim=2)
                    v = torch.cat([cache.v, v], dim=2)
                cache.k, cache.v = k, v
        return self.proj(self._merge_heads(self._attend(q, k, v, attn_mask, is_causal)))

    def forward_rows(self, x: Tensor, positions: Tensor, *, attn_mask: Tensor | None = None) -> Tensor:
        """Self-attention output at one position per row only: ``x`` ``[B, T, dim]``, ``positions`` ``[B]``
        -> ``[B, 1, dim]``, what :meth:`forward` gives at those positions.

        Keys and values come from every token, the query from the chosen one; the query and output
        projections run on ``B`` tokens instead of ``B * T``. ``attn_mask`` is the chosen queries'
        mask, broadcastable to ``[B, 1, 1, T]`` (see :func:`query_rows_mask`).
        """
        if self.cross:
            raise ValueError("forward_rows is self-attention's; cross-attention reads every query anyway")
        if type(self.qkv) is nn.Linear:  # the query's slice of the fused weight, for the chosen tokens alone
            w_q, w_kv = self.qkv.weight.split([self.dim, 2 * self.dim])
            b_q, b_kv = (None, None) if self.qkv.bias is None else self.qkv.bias.split([self.dim, 2 * self.dim])
            (q,) = self._split_heads(F.linear(rows_at(x, positions).unsqueeze(1), w_q, b_q), 1)
            k, v = self._split_heads(F.linear(x, w_kv, b_kv), 2)
        else:  # a wrapped or replaced projection (quantised, adapters) is called as it is
            q, k, v = self._split_heads(self.qkv(x), 3)
            q = rows_at(q.transpose(1, 2), positions).unsqueeze(2)  # [B, heads, 1, head_dim]
        return self.proj(self._merge_heads(self._attend(q, k, v, attn_mask, False)))

    def forward_packed(
        self,
        x: Tensor,
        packing: Packing,
        context: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        context_rows: Tensor | None = None,
        context_groups: ContextGroups | None = None,
    ) -> Tensor:
        """:meth:`forward` for the real tokens only: ``x`` ``[N, dim]`` -> ``[N, dim]`` (see :class:`Packing`).

        The projections run on the N real tokens; only q, k, v are laid out padded, for the attention.
        With ``context_groups`` (built from ``context_rows``), cross-attention lays the queries out by
        context instead and ``attn_mask`` is the contexts' own ``[contexts, 1, 1, S]`` mask.
        """
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context")
            if context_groups is not None:  # one query sequence per context: no repeated keys / values
                (q,) = self._split_heads(context_groups.pad(self.q(x)), 1)
                k, v = self.project_kv(context)
                return self.proj(context_groups.pack(self._merge_heads(self._attend(q, k, v, attn_mask, False))))
            (q,) = self._split_heads(packing.pad(self.q(x)), 1)
            k, v = self.project_kv(context, context_rows)
        else:
            q, k, v = self._split_heads(packing.pad(self.qkv(x)), 3)
        return self.proj(packing.pack(self._merge_heads(self._attend(q, k, v, attn_mask, is_causal))))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
        dropout_p = self.dropout if self.training else 0.0
        is_causal = is_causal and attn_mask is None
        if q.device.type == "cpu" and torch.is_grad_enabled():
            return _math_attention(q, k, v, attn_mask, is_causal, dropout_p)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)


class Packing:
    """The real (unpadded) tokens of a padded batch, and the way back.

    A batch of texts padded to its longest is ~40% padding (the world's questions and statements);
    every per-token layer (LayerNorm, projections, MLP) computed on it is wasted. A stack that packs
    keeps its residual stream as ``[N, width]`` over the N real tokens and lays tokens out padded only
    for the attention itself. Real tokens get exactly what they would padded, since they never attend
    to padding; :meth:`unpack` gives padding positions back as zeros.

    ``bucket`` rounds the packed length up to a multiple of it by carrying some padding positions
    along as filler tokens (after the real ones). Every new matrix shape costs oneDNN a kernel of its
    own, built on first use: with the packed length different in every batch, that was ~95 ms of a
    ~300 ms quickstart training step (measured: 205 ms a step on batches seen before, 300 ms on new
    ones). Fillers are padding, so no real token attends to them; :meth:`unpack` drops them.
    """

    def __init__(self, mask: Tensor, bucket: int = 1) -> None:
        self.batch, self.length = mask.shape
        flat = mask.reshape(-1)
        self.index = flat.nonzero().squeeze(1)
        self.real = len(self.index)
        fillers = min(-self.real % bucket, flat.numel() - self.real)
        if fillers:
            self.index = torch.cat([self.index, (~flat).nonzero().squeeze(1)[:fillers]])

    def pack(self, x: Tensor) -> Tensor:
        """``[B, T, C]`` -> ``[N, C]``."""
        return _Relayout.apply(x.reshape(self.batch * self.length, -1), self, False)

    def pad(self, x: Tensor) -> Tensor:
        """``[N, C]`` -> ``[B, T, C]`` with zeros at the padding (fillers, if any, at theirs)."""
        return _Relayout.apply(x, self, True).view(self.batch, self.length, -1)

    def unpack(self, x: Tensor) -> Tensor:
        """``[N, C]`` -> ``[B, T, C]``, the real tokens only: zeros at every padding position."""
        if self.real == len(self.index):
            return self.pad(x)
        real = copy.copy(self)
        real.index = self.index[: self.real]
        return real.pad(x[: self.real])

    def _gather(self, x: Tensor) -> Tensor:
        return x.index_select(0, self.index)

    def _scatter(self, x: Tensor) -> Tensor:
        return x.new_zeros(self.batch * self.length, x.shape[-1]).index_copy_(0, self.index, x)


class _Relayout(torch.autograd.Function):
    """Packing's gather (``to_padded=False``) or scatter (True); each is the other's gradient. Autograd's
    own gradient of ``index_select`` accumulates with ``index_add``, slower than the plain
    ``index_copy`` the scatter is (the indices never repeat)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, packing: Packing, to_padded: bool) -> Tensor:
        ctx.packing, ctx.to_padded = packing, to_padded
        return packing._scatter(x) if to_padded else packing._gather(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return _Relayout.apply(grad, ctx.packing, not ctx.to_padded), None, None


class ContextGroups(Packing):
    """Packed tokens laid out by the context they cross-attend to, ``[contexts, per_context * T, C]``.

    A multi-task batch asks several texts about each image. Cross-attention from queries that share
    a context need not repeat the context's keys and values per text (an ``index_select`` forward and
    a ``scatter_add`` backward of ``[texts, heads, S, head_dim]``): stacking the texts' queries of one
    context into one longer query sequence gives the same result, because queries do not interact in
    cross-attention. The layout is free here: the packed tokens are scattered into it instead of into
    the padded ``[B, T, C]``. Rows a context lacks (fewer texts than the most-asked context) and
    padding positions are zeros, and :meth:`pack` drops them. Measured 2x faster for the quickstart's
    fusion cross-attention, forward + backward.
    """

    def __init__(self, packing: Packing, rows: Tensor, counts: Tensor) -> None:
        self.contexts = len(counts)
        self.per_context = int(counts.max())
        order = torch.argsort(rows, stable=True)
        first_of_context = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(rows)
        slot[order] = torch.arange(len(rows), device=rows.device) - first_of_context[rows[order]]
        self.batch, self.length = self.contexts * self.per_context, packing.length
        token_row = packing.index // packing.length
        self.index = (rows * self.per_context + slot)[token_row] * packing.length + packing.index % packing.length
        self.real = len(self.index)  # a packing's fillers ride along as tokens of this layout

    @classmethod
    def build(cls, packing: Packing, rows: Tensor, contexts: int) -> ContextGroups | None:
        """The grouped layout of ``packing``'s rows, whose row ``i`` reads context ``rows[i]``; None when it
        would be more than twice the padded one (a context asked far more often than the others would
        pad every other context to its count)."""
        if len(rows) == 0:
            return None
        counts = torch.bincount(rows, minlength=contexts)
        if contexts * int(counts.max()) > 2 * len(rows):
            return None
        return cls(packing, rows, counts)

    def pad(self, x: Tensor) -> Tensor:
        """``[N, C]`` -> ``[contexts, per_context * T, C]`` with zeros at padding and missing rows."""
        return super().pad(x).view(self.contexts, self.per_context * self.length, -1)


# PyTorch's CPU softmax has a vectorised bf16 / fp16 kernel only for rows of at least 32 elements;
# shorter rows take a scalar loop ~3.5x slower than float32's (forward + backward; torch 2.13 on a
# 2-core Xeon), while longer rows are faster in bf16 than cast to float32 and back.
FAST_LOW_PRECISION_SOFTMAX_MIN_KEYS = 32


def _math_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool, dropout_p: float) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v, written out: what CPU *training* should run.

    PyTorch's CPU SDPA picks a flash kernel whose backward is slow at this library's sizes (head dim
    32-64, tens of tokens): with it, attention backward was 35% of a quickstart training step, and the
    plain matmul-softmax-matmul made the whole step 1.45x faster (benchmarks/bench_train_cpu.py).
    Inference keeps SDPA, whose forward is fast. Masks are boolean (True = may attend; every row
    allows at least one key, see :func:`self_attention_mask`, so no row softmaxes over nothing) or
    additive, as SDPA takes them.

    In bf16 or fp16 (tensors or autocast), fewer keys than :data:`FAST_LOW_PRECISION_SOFTMAX_MIN_KEYS`
    are softmaxed in float32 (1.7x faster attention for the quickstart's 26-token texts). A mask is
    added as a -inf bias, scaled on the way (one op instead of a scaling of q and a ``masked_fill``).
    """
    scale = q.shape[-1] ** -0.5
    if is_causal:
        attn_mask = causal_mask(q.shape[-2], k.shape[-2], k.shape[-2] - q.shape[-2], q.device)
    low_precision = q.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled(q.device.type)
    upcast = low_precision and k.shape[-2] < FAST_LOW_PRECISION_SOFTMAX_MIN_KEYS
    if attn_mask is None and not upcast:
        scores = torch.matmul(q * scale, k.transpose(-2, -1))  # q is the smaller tensor to scale
    else:
        scores = torch.matmul(q, k.transpose(-2, -1))
        dtype = torch.float32 if upcast else scores.dtype
        if attn_mask is None:
            scores = scores.to(dtype) * scale
        else:
            scores = torch.add(_additive_mask(attn_mask, dtype), scores, alpha=scale)
    weights = scores.softmax(dim=-1).to(v.dtype)
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p)
    return torch.matmul(weights, v)


def _additive_mask(attn_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (True = may attend) as 0 / -inf in ``dtype``; an additive mask as it is."""
    if attn_mask.dtype != torch.bool:
        return attn_mask.to(dtype)
    return torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill_(~attn_mask, float("-inf"))
