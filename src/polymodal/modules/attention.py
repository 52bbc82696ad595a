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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.errors import ConfigError

__all__ = [
    "LayerKV",
    "MultiHeadAttention",
    "Packing",
    "causal_mask",
    "cross_attention_mask",
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
        """``[B, T, parts * dim]`` (e.g. a fused qkv projection) -> ``parts`` views ``[B, heads, T, head_dim]``;
        unbind's backward is one stack, not ``parts`` scatters."""
        b, t, _ = x.shape
        return x.view(b, t, parts, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

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

    def forward_packed(
        self,
        x: Tensor,
        packing: Packing,
        context: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        context_rows: Tensor | None = None,
    ) -> Tensor:
        """:meth:`forward` for the real tokens only: ``x`` ``[N, dim]`` -> ``[N, dim]`` (see :class:`Packing`).

        The projections run on the N real tokens; only q, k, v are laid out padded, for the attention.
        """
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context")
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
    to padding; padding positions come back as zeros.
    """

    def __init__(self, mask: Tensor) -> None:
        self.batch, self.length = mask.shape
        self.index = mask.reshape(-1).nonzero().squeeze(1)

    def pack(self, x: Tensor) -> Tensor:
        """``[B, T, C]`` -> ``[N, C]``."""
        return x.reshape(self.batch * self.length, -1).index_select(0, self.index)

    def pad(self, x: Tensor) -> Tensor:
        """``[N, C]`` -> ``[B, T, C]`` with zeros at the padding."""
        out = x.new_zeros(self.batch * self.length, x.shape[-1]).index_copy(0, self.index, x)
        return out.view(self.batch, self.length, -1)


def _math_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool, dropout_p: float) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v, written out: what CPU *training* should run.

    PyTorch's CPU SDPA picks a flash kernel whose backward is slow at this library's sizes (head dim
    32-64, tens of tokens): with it, attention backward was 35% of a quickstart training step, and the
    plain matmul-softmax-matmul made the whole step 1.45x faster (benchmarks/bench_train_cpu.py).
    Inference keeps SDPA, whose forward is fast. Masks are boolean (True = may attend) and every row
    allows at least one key (see :func:`self_attention_mask`), so no row softmaxes over nothing.
    """
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
    if is_causal:
        attn_mask = causal_mask(q.shape[-2], k.shape[-2], k.shape[-2] - q.shape[-2], q.device)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, dropout_p)
    return torch.matmul(weights, v)
