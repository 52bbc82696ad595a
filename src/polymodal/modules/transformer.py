"""Pre-LayerNorm transformer blocks and stacks, with a KV cache for incremental decoding.

One stack serves every use in the library: a bidirectional encoder (ViT, BERT-style text), a causal
text encoder (CLIP-style), and a decoder / fusion encoder whose blocks also cross-attend to another
modality's tokens (captioning, BLIP-style fusion). Pre-LN keeps deep stacks trainable without warm-up
tricks; masks are built once per forward and shared by all layers.

KV cache, for a captioner's generate loop (see :class:`KVCache`)::

    cache = KVCache()
    h = stack(x_prompt, context=image_tokens, context_mask=image_mask, cache=cache)  # fills the cache
    while ...:
        h = stack(x_new_token, cache=cache)          # attends to everything cached; context reused
        cache = reorder_cache(cache, beam_indices)   # beam search: follow the surviving beams
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from polymodal.errors import ConfigError
from polymodal.modules.attention import (
    ContextGroups,
    LayerKV,
    MultiHeadAttention,
    Packing,
    cross_attention_mask,
    query_rows_mask,
    rows_at,
    self_attention_mask,
)
from polymodal.modules.fused_mlp import fused_dtype, fused_quick_gelu_mlp
from polymodal.modules.hooks import has_forward_hooks

# Pack only when at most this fraction of a batch's token positions is real: gathering and scattering
# the tokens around each attention costs about what 10% fewer tokens save in the other layers.
PACK_MAX_REAL_FRACTION = 0.9
# While autograd records, every gather and scatter runs again in backward, so packing must save more.
# Measured (width 128, 256 rows, bf16 autocast, forward + backward, 2-core Xeon): a 2-layer text stack of
# 25 tokens breaks even at 75-85% real (1.08x faster packed at 74%, 0.95x at 87%); a 1-layer stack with
# cross-attention to an unpacked context, at 60-75% (1.00x at 75%; 0.92x for 6-token rows at 74%).
PACK_MAX_REAL_FRACTION_TRAINING = 0.7
# Packed lengths are rounded up to a multiple of this (see Packing: new shapes cost oneDNN new kernels).
PACK_BUCKET = 64

__all__ = [
    "MLP",
    "KVCache",
    "LayerCache",
    "QuickGELU",
    "Transformer",
    "TransformerBlock",
    "make_activation",
    "reorder_cache",
    "set_bf16_residual",
]


@dataclass
class LayerCache:
    """Keys / values cached by one block: its self-attention and (if any) its cross-attention."""

    self_attn: LayerKV = field(default_factory=LayerKV)
    cross_attn: LayerKV = field(default_factory=LayerKV)

    def index_select(self, index: Tensor) -> LayerCache:
        return LayerCache(self.self_attn.index_select(index), self.cross_attn.index_select(index))


@dataclass
class KVCache:
    """Everything incremental decoding needs to continue a sequence, for a whole stack.

    Start with an empty ``KVCache()`` and pass the same object to every call: the stack fills
    ``layers`` on the first call and appends to them on later ones (it is updated in place).

    * ``layers``: one :class:`LayerCache` per block.
    * ``key_mask``: ``[B, length]`` padding mask of every cached position (None = all real), so
      later calls only pass the mask of their new tokens.
    * ``context_mask``: the encoder-token padding mask given with the context on the first call;
      reused on later calls, which need not pass the context again (its keys / values are cached).
    """

    layers: list[LayerCache] = field(default_factory=list)
    key_mask: Tensor | None = None
    context_mask: Tensor | None = None

    @property
    def length(self) -> int:
        """Number of positions already cached (= position offset of the next token)."""
        return self.layers[0].self_attn.length if self.layers else 0

    def index_select(self, index: Tensor) -> KVCache:
        """A new cache whose batch row ``i`` is row ``index[i]`` of this one.

        Use it to reorder beams after a beam-search step, or to expand a batch to ``n`` beams per
        example with ``index = torch.arange(B).repeat_interleave(n)``.
        """

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.index_select(0, index.to(t.device))

        return KVCache(
            layers=[layer.index_select(index) for layer in self.layers],
            key_mask=pick(self.key_mask),
            context_mask=pick(self.context_mask),
        )


def reorder_cache(cache: KVCache, beam_indices: Tensor) -> KVCache:
    """Beam search: return the cache rearranged so row ``i`` continues beam ``beam_indices[i]``."""
    return cache.index_select(beam_indices)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the activation OpenAI's CLIP weights were trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    """``'gelu'`` (exact), ``'gelu_tanh'`` (tanh approximation) or ``'quick_gelu'`` (CLIP)."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    raise ConfigError(f"transformer: activation must be 'gelu', 'gelu_tanh' or 'quick_gelu', got {name!r}")


class MLP(nn.Module):
    """Position-wise feed-forward: Linear -> GELU -> Linear."""

    def __init__(
        self, width: int, hidden: int, dropout: float = 0.0, bias: bool = True, activation: str = "gelu"
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(width, hidden, bias=bias)
        self.activation = activation
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.proj = nn.Linear(hidden, width, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():  # TorchScript compiles only the plain modules
            dtype = self._fused_dtype(x)
            if dtype is not None:
                return fused_quick_gelu_mlp(x, self.fc, self.proj, dtype)
        return self.proj(self.drop(self.act(self.fc(x))))

    def _fused_dtype(self, x: Tensor) -> torch.dtype | None:
        activation = getattr(self, "activation", "")  # an MLP pickled before the attribute existed has none
        return fused_dtype(x, activation, self.fc.weight, dropout_active=self.training and isinstance(self.drop, nn.Dropout))


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + SelfAttn(LN x)``, optionally ``+ CrossAttn(LN x, context)``, ``+ MLP(LN x)``.

    Causality is not a property of the block: the stack passes the mask (``attn_mask`` /
    ``is_causal``) so it is built once for all blocks. The cross-attention sub-layer exists when
    ``cross_attention=True`` and runs only when a context is given or cached, so one set of weights
    can also run text-only (as BLIP's text encoder does for its contrastive loss).
    """

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 4.0,
        *,
        cross_attention: bool = False,
        context_dim: int | None = None,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        norm_eps: float = 1e-5,
        bias: bool = True,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=norm_eps)
        self.attn = MultiHeadAttention(width, heads, bias=bias, dropout=attn_dropout)
        self.ln_cross: nn.LayerNorm | None = None
        self.cross_attn: MultiHeadAttention | None = None
        if cross_attention:
            self.ln_cross = nn.LayerNorm(width, eps=norm_eps)
            self.cross_attn = MultiHeadAttention(
                width, heads, cross=True, kv_dim=context_dim or width, bias=bias, dropout=attn_dropout
            )
        self.ln_2 = nn.LayerNorm(width, eps=norm_eps)
        self.mlp = MLP(width, int(width * mlp_ratio), dropout=dropout, bias=bias, activation=activation)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        cache: LayerCache | None = None,
        context_rows: Tensor | None = None,
    ) -> Tensor:
        """``x`` ``[B, T, width]``; masks in SDPA form (see :mod:`polymodal.modules.attention`); row ``i``
        of ``x`` cross-attends to ``context[context_rows[i]]`` (``None``: to ``context[i]``)."""
        x = x + self.drop(
            self.attn(
                self.ln_1(x),
                attn_mask=attn_mask,
                is_causal=is_causal,
                cache=cache.self_attn if cache is not None else None,
            )
        )
        if self.cross_attn is not None and self.ln_cross is not None:
            cross_cache = cache.cross_attn if cache is not None else None
            if context is not None or (cross_cache is not None and cross_cache.k is not None):
                x = x + self.drop(
                    self.cross_attn(self.ln_cross(x), context, attn_mask=context_mask, cache=cross_cache, context_rows=context_rows)
                )
        return x + self.drop(self.mlp(self.ln_2(x)))

    def forward_rows(
        self,
        x: Tensor,
        positions: Tensor,
        *,
        attn_mask: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        context_rows: Tensor | None = None,
    ) -> Tensor:
        """:meth:`forward` at one position per row: ``x`` ``[B, T, width]`` -> ``[B, 1, width]``.

        A stack's last block, when only a pooled token is read (CLIP's class or end-of-text token):
        every token still gives keys and values, but the query, output projection, cross-attention
        and MLP run on that token alone. ``attn_mask`` is :func:`query_rows_mask`'s.
        """
        x = rows_at(x, positions).unsqueeze(1) + self.drop(self.attn.forward_rows(self.ln_1(x), positions, attn_mask=attn_mask))
        if self.cross_attn is not None and self.ln_cross is not None and context is not None:
            x = x + self.drop(self.cross_attn(self.ln_cross(x), context, attn_mask=context_mask, context_rows=context_rows))
        return x + self.drop(self.mlp(self.ln_2(x)))

    def forward_packed(
        self,
        x: Tensor,
        packing: Packing,
        *,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        context_rows: Tensor | None = None,
        context_groups: ContextGroups | None = None,
    ) -> Tensor:
        """:meth:`forward` on the real tokens only, ``x`` ``[N, width]`` (see :class:`Packing`; for
        ``context_groups``, :class:`~polymodal.modules.attention.ContextGroups`)."""
        x = x + self.drop(self.attn.forward_packed(self.ln_1(x), packing, attn_mask=attn_mask, is_causal=is_causal))
        if self.cross_attn is not None and self.ln_cross is not None and context is not None:
            x = x + self.drop(
                self.cross_attn.forward_packed(
                    self.ln_cross(x), packing, context, attn_mask=context_mask, context_rows=context_rows, context_groups=context_groups
                )
            )
        return x + self.drop(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """A stack of pre-LN :class:`TransformerBlock` (no final LayerNorm: the encoder owning it adds one).

    ``causal=True`` makes every self-attention causal. ``grad_checkpointing=True`` recomputes each
    block during backward (``torch.utils.checkpoint``, non-reentrant) to trade compute for memory;
    it only applies when gradients are being recorded and no cache is used.

    ``bf16_residual`` (off by default; :func:`set_bf16_residual` turns it on for a whole model): under
    bf16 autocast, the residual stream, the ``x`` every block adds to, is kept in bf16. Autocast leaves
    it fp32, because the embeddings are fp32 and an fp32 + bf16 sum is fp32. The residual adds and
    their gradients then move 2 bytes per value, not 4, and so does each LayerNorm's input where the
    LayerNorm's own cast to fp32 fuses into its kernel: under ``torch.compile``, and on CPU, whose
    autocast keeps LayerNorm in its input's dtype. CUDA autocast without compile instead makes an fp32
    copy of each LayerNorm input and keeps it for backward, so expect the gain compiled. The matmuls,
    attention and LayerNorm statistics compute as before; the residual sums (two per block, three with
    cross-attention) are rounded to bf16, as in Megatron-LM's default (``fp32_residual_connection``
    off). Inductor may keep some of those sums in fp32 inside a fused kernel, so compiled and eager
    results differ within bf16 rounding. The stack returns the dtype it was given. Outside bf16
    autocast it changes nothing.
    """

    bf16_residual: bool = False  # a class default, so stacks pickled before the attribute existed read False

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        *,
        causal: bool = False,
        cross_attention: bool = False,
        context_dim: int | None = None,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        norm_eps: float = 1e-5,
        bias: bool = True,
        activation: str = "gelu",
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ConfigError(f"transformer: depth must be >= 1, got {depth}")
        self.width = width
        self.depth = depth
        self.causal = causal
        self.cross_attention = cross_attention
        self.grad_checkpointing = grad_checkpointing
        self.blocks = nn.ModuleList(
            TransformerBlock(
                width,
                heads,
                mlp_ratio,
                cross_attention=cross_attention,
                context_dim=context_dim,
                dropout=dropout,
                attn_dropout=attn_dropout,
                norm_eps=norm_eps,
                bias=bias,
                activation=activation,
            )
            for _ in range(depth)
        )
        self.apply(_init_weights)

    def forward(
        self,
        x: Tensor,
        *,
        mask: Tensor | None = None,
        context: Tensor | None = None,
        context_mask: Tensor | None = None,
        cache: KVCache | None = None,
        context_rows: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """``x`` ``[B, T, width]`` -> ``[B, T, width]`` (with ``positions``, ``[B, 1, width]``).

        ``mask`` ``[B, T]`` marks the real tokens of ``x`` (True / 1); ``context`` ``[B, S, context_dim]``
        with ``context_mask`` ``[B, S]`` feeds the cross-attention sub-layers. With ``context_rows``
        (``[B]``), ``context`` is ``[C, S, context_dim]`` for ``C`` distinct contexts and row ``i`` of
        ``x`` reads ``context[context_rows[i]]``: each context's keys and values are projected once. With ``cache`` the
        tokens in ``x`` continue the cached sequence (positions ``cache.length ...``) and the cache
        is updated in place.

        ``positions`` (``[B]``, each in ``0 .. T-1``, no cache) asks for one token per row, e.g. the one an encoder pools:
        the stack then returns ``[B, 1, width]``, those tokens' outputs, and its last block computes
        nothing else (:meth:`TransformerBlock.forward_rows`). The keys and values of every token are
        still needed there, so this saves most of one block's work, ~7% of a 12-block ViT-B/32.
        """
        b, t, _ = x.shape
        given = None  # with a bf16 stream: the fp32 the stack was given, and returns
        if self.bf16_residual and x.dtype == torch.float32 and _bf16_autocast(x.device.type):
            given, x = x.dtype, x.to(torch.bfloat16)
        if positions is not None and (cache is not None or positions.shape != (b,)):
            raise ValueError(
                f"transformer: positions must be one index per row of x ({b}) and needs no cache, got "
                f"shape {list(positions.shape)}{' with a cache' if cache is not None else ''}"
            )
        if mask is not None:
            if mask.shape != (b, t):
                raise _shape_error("mask", (b, t), mask)
            mask = mask if mask.dtype == torch.bool else mask != 0
        if context_mask is not None and context_mask.dtype != torch.bool:
            context_mask = context_mask != 0
        if context_rows is not None:
            if context is None or context_rows.shape != (b,) or indexes_beyond(context_rows, context.shape[0]):
                raise ValueError(
                    f"transformer: context_rows must index the context's {None if context is None else context.shape[0]} entries "
                    f"once per row of x ({b}), got shape {list(context_rows.shape)}"
                )
        packing = self._packing(mask, cache)
        # packed rows that share a context read it per group (its own mask, once); others need a mask per row
        groups = None if packing is None or context is None or context_rows is None else ContextGroups.build(packing, context_rows, context.shape[0])
        if groups is None and context_rows is not None and context_mask is not None:
            context_mask = context_mask.index_select(0, context_rows)
        past = 0
        key_mask = mask
        if cache is not None:
            if not cache.layers:
                cache.layers = [LayerCache() for _ in range(self.depth)]
            elif len(cache.layers) != self.depth:
                raise ValueError(
                    f"transformer: the cache has {len(cache.layers)} layers, the stack {self.depth}"
                )
            past = cache.length
            if mask is not None or cache.key_mask is not None:
                old = (
                    cache.key_mask if cache.key_mask is not None else x.new_ones((b, past), dtype=torch.bool)
                )
                new = mask if mask is not None else x.new_ones((b, t), dtype=torch.bool)
                key_mask = torch.cat([old, new], dim=1) if past else new
                cache.key_mask = key_mask
            if context is not None:
                cache.context_mask = context_mask
            elif context_mask is None:
                context_mask = cache.context_mask
        attn_mask, is_causal = self_attention_mask(
            key_mask, t, causal=self.causal, past_len=past, device=x.device
        )
        ctx_mask = cross_attention_mask(context_mask)
        use_checkpoint = self.grad_checkpointing and cache is None and torch.is_grad_enabled()
        blocks = list(self.blocks)
        last = blocks.pop() if positions is not None and not has_forward_hooks(self.blocks[-1]) else None
        kwargs = {"attn_mask": attn_mask, "is_causal": is_causal, "context": context, "context_mask": ctx_mask, "context_rows": context_rows}
        if packing is not None:
            if groups is not None:
                kwargs |= {"context_groups": groups, "context_rows": None}
            x = packing.pack(x)
            for block in blocks:
                if use_checkpoint:
                    x = checkpoint(block.forward_packed, x, packing, use_reentrant=False, **kwargs)
                else:
                    x = block.forward_packed(x, packing, **kwargs)
            x = packing.unpack(x)  # the last block, if it reads one token per row, reads them padded
            if groups is not None and ctx_mask is not None:  # grouped layouts kept one mask per context
                ctx_mask = ctx_mask.index_select(0, context_rows)
        else:
            for i, block in enumerate(blocks):
                if use_checkpoint:
                    x = checkpoint(block, x, use_reentrant=False, **kwargs)
                else:
                    x = block(x, cache=cache.layers[i] if cache is not None else None, **kwargs)
        if last is None:  # no positions, or the last block's hooks must see its full output
            return _as(x if positions is None else rows_at(x, positions).unsqueeze(1), given)
        kwargs = {
            "attn_mask": query_rows_mask(attn_mask, is_causal, positions, t),
            "context": context,
            "context_mask": ctx_mask,
            "context_rows": context_rows,
        }
        rows = (checkpoint(last.forward_rows, x, positions, use_reentrant=False, **kwargs) if use_checkpoint
                else last.forward_rows(x, positions, **kwargs))
        if packing is None or mask is None:
            return _as(rows, given)
        # a packed stack gives padding positions back as zeros: so does a chosen position that is padding
        return _as(torch.where(rows_at(mask, positions)[:, None, None], rows, rows.new_zeros(())), given)

    @staticmethod
    def _packing(mask: Tensor | None, cache: KVCache | None) -> Packing | None:
        """Pack on CPU when there is enough padding to be worth it (see :class:`Packing`), training or not;
        training (autograd recording) asks for more padding than inference.

        On CPU this was measured: training in benchmarks/bench_train_cpu.py; inference in
        benchmarks/bench_inference.py, where embedding texts that are 75% real tokens went from 1.01x
        to 1.23x the `transformers` peer. On GPUs finding the real tokens (``nonzero``) waits for the
        device, so they keep the padded layout; incremental decoding (a cache) and ONNX export do too.
        """
        if mask is None or cache is not None or mask.device.type != "cpu":
            return None
        # an exported or compiled graph keeps fixed shapes; counting the real tokens would also break a compiled graph
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
            return None
        # the general limit bounds training's too, so lowering it (tests: -1, never pack) turns packing off everywhere
        limit = min(PACK_MAX_REAL_FRACTION, PACK_MAX_REAL_FRACTION_TRAINING) if torch.is_grad_enabled() else PACK_MAX_REAL_FRACTION
        real = int(mask.sum())
        if real == 0 or real > limit * mask.numel():
            return None
        return Packing(mask, bucket=PACK_BUCKET)


def set_bf16_residual(model: nn.Module, enabled: bool = True) -> int:
    """Turn :class:`Transformer`'s ``bf16_residual`` on (or off) in every stack of ``model``.

    It is a training-speed setting, not part of the weights: checkpoints do not record it. It acts only under
    bf16 autocast (``train.precision: bf16`` with ``train.bf16_residual: true``). Returns how many stacks
    it set, so a caller can tell the user when a model has none, e.g. a Hugging Face tower.
    """
    stacks = [m for m in model.modules() if isinstance(m, Transformer)]
    for stack in stacks:
        stack.bf16_residual = enabled
    return len(stacks)


def _as(x: Tensor, dtype: torch.dtype | None) -> Tensor:
    return x if dtype is None else x.to(dtype)


def _bf16_autocast(device_type: str) -> bool:
    return torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.bfloat16


def indexes_beyond(index: Tensor, size: int) -> bool:
    """Whether ``index`` holds a value ``>= size``, for a readable error before an indexing op fails.
    Under ``torch.compile`` it answers False without looking: reading the maximum back to Python would
    break the compiled graph, and the indexing op still fails on a bad index."""
    return bool(index.numel()) and not torch.compiler.is_compiling() and int(index.max()) >= size


def _shape_error(what: str, expected: tuple, got: Tensor) -> Exception:
    # Imported here: encoders import this module, so a top-level import would be circular.
    from polymodal.modules.encoders.base import shape_error

    return shape_error("transformer", what, expected, got)


def _init_weights(module: nn.Module) -> None:
    """Small truncated-normal weights and zero biases (the ViT / BERT recipe)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
