"""Every fusion op behind one interface: ``forward(features: Dict[str, Tensor], masks=None) -> Tensor``.

Each op is built from the modality names and their feature sizes (``dims={"image": 256, "text": 128}``)
and an output size, and exposes ``out_dim``. Inside, modalities are always visited in sorted name
order, so the order of the input dict never changes the result (and a checkpoint never depends on
how a batch dict happened to be built).

Inputs: the vector ops (concat, weighted_sum, gated, tensor, low_rank_tensor, tucker) take one pooled
vector per modality, ``[batch, dim]``. ``cross_attention`` takes token sequences ``[batch, tokens,
dim]`` (a ``[batch, dim]`` vector counts as a single token) plus optional padding masks in a separate
``masks`` dict keyed by modality name, ``[batch, tokens]``, True (or 1) = a real token; so does ``mult``
(MulT: pairwise directional cross-modal transformers, every modality a target). Vector ops
accept ``masks`` and ignore it (their inputs are already pooled), so a generic classifier can always
pass it. Keys are checked strictly: a missing *or* an unexpected modality is an error, because a
silently ignored modality is the kind of bug that only shows up in the results table.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from polymodal.errors import PolymodalError

__all__ = [
    "FUSIONS",
    "ConcatFusion",
    "CrossAttentionFusion",
    "Fusion",
    "FusionConfigError",
    "FusionInputError",
    "GatedFusion",
    "LowRankTensorFusion",
    "MulTFusion",
    "TensorFusion",
    "TuckerFusion",
    "WeightedSumFusion",
    "build_fusion",
]

Features = Mapping[str, torch.Tensor]
Masks = Mapping[str, torch.Tensor] | None


class FusionInputError(PolymodalError, ValueError):
    """A fusion op received a missing / unexpected modality or a tensor of the wrong shape."""


class FusionConfigError(PolymodalError, ValueError):
    """A fusion op was configured with an unknown name, option or impossible sizes."""


def _shape(t: torch.Tensor | tuple) -> str:
    dims = tuple(t.shape) if isinstance(t, torch.Tensor) else t
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _mlp(in_dim: int, out_dim: int, hidden: int | None, dropout: float) -> nn.Module:
    if hidden is None:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
    )


def _append_one(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)


class Fusion(nn.Module):
    """Base class: holds the sorted modality names and dims and validates inputs.

    Subclasses set ``name`` (used in error messages and in ``FUSIONS``) and implement ``forward``.
    """

    name: ClassVar[str] = "fusion"
    min_modalities: ClassVar[int] = 1

    def __init__(self, dims: Mapping[str, int], out_dim: int) -> None:
        super().__init__()
        if not isinstance(dims, Mapping) or len(dims) < self.min_modalities:
            raise FusionConfigError(
                f"fusion '{self.name}': needs at least {self.min_modalities} modality(ies) in dims, got "
                f"{dict(dims) if isinstance(dims, Mapping) else dims!r}"
            )
        for modality, dim in dims.items():
            if not isinstance(modality, str) or not modality or "." in modality:
                raise FusionConfigError(
                    f"fusion '{self.name}': modality names must be non-empty strings without '.', got "
                    f"{modality!r}"
                )
            if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
                raise FusionConfigError(
                    f"fusion '{self.name}': modality '{modality}': dim must be a positive int, got {dim!r}"
                )
        if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim <= 0:
            raise FusionConfigError(f"fusion '{self.name}': out_dim must be a positive int, got {out_dim!r}")
        self.modalities: tuple[str, ...] = tuple(sorted(dims))
        self.dims: dict[str, int] = {m: int(dims[m]) for m in self.modalities}
        self.out_dim = int(out_dim)

    # -- validation ---------------------------------------------------------------------------
    def _check_keys(self, features: Features) -> None:
        keys = list(self.modalities)
        if not isinstance(features, Mapping):
            raise FusionInputError(
                f"fusion '{self.name}': expected a dict modality -> tensor with keys {keys}, "
                f"got {type(features).__name__}"
            )
        for modality in self.modalities:
            if modality not in features:
                raise FusionInputError(
                    f"fusion '{self.name}': modality '{modality}' missing; expected keys {keys}"
                )
        for key in sorted(features):
            if key not in self.dims:
                raise FusionInputError(
                    f"fusion '{self.name}': unexpected modality '{key}'; expected keys {keys}"
                )

    def _check_tensor(self, modality: str, x: object, allow_tokens: bool) -> torch.Tensor:
        dim = self.dims[modality]
        expected = f"[batch, tokens, {dim}] or [batch, {dim}]" if allow_tokens else f"[batch, {dim}]"
        if not isinstance(x, torch.Tensor):
            raise FusionInputError(
                f"fusion '{self.name}': modality '{modality}': expected a tensor {expected}, got "
                f"{type(x).__name__}"
            )
        if not x.is_floating_point():
            raise FusionInputError(
                f"fusion '{self.name}': modality '{modality}': expected floating-point features {expected}, "
                f"got dtype {x.dtype} (pass encoder features, not token ids)"
            )
        ranks = (2, 3) if allow_tokens else (2,)
        if x.dim() not in ranks or x.shape[-1] != dim:
            hint = ""
            if not allow_tokens and x.dim() == 3 and x.shape[-1] == dim:
                hint = " (pool the token sequence to one vector first, or use 'cross_attention')"
            raise FusionInputError(
                f"fusion '{self.name}': modality '{modality}': expected {expected}, got {_shape(x)}{hint}"
            )
        return x

    def _check_batch(self, tensors: Mapping[str, torch.Tensor]) -> int:
        first = self.modalities[0]
        batch = tensors[first].shape[0]
        for modality in self.modalities[1:]:
            if tensors[modality].shape[0] != batch:
                raise FusionInputError(
                    f"fusion '{self.name}': modality '{modality}' has batch {tensors[modality].shape[0]} "
                    f"but '{first}' has batch {batch}; all modalities must share the batch"
                )
        return batch

    def vectors(self, features: Features) -> list[torch.Tensor]:
        """Validated ``[batch, dim]`` inputs in sorted modality order."""
        self._check_keys(features)
        tensors = {m: self._check_tensor(m, features[m], allow_tokens=False) for m in self.modalities}
        self._check_batch(tensors)
        return [tensors[m] for m in self.modalities]

    def extra_repr(self) -> str:
        return f"dims={self.dims}, out_dim={self.out_dim}"


class ConcatFusion(Fusion):
    """Early fusion by concatenation, followed by a linear layer or an MLP (``hidden``).

    ``out_dim=None`` keeps the bare concatenation (``out_dim`` becomes the sum of the dims), the usual
    baseline that leaves all mixing to the head.
    """

    name = "concat"

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int | None = None,
        *,
        hidden: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(dims, 1 if out_dim is None else out_dim)
        if out_dim is None:
            if hidden is not None:
                raise FusionConfigError(f"fusion '{self.name}': hidden={hidden} needs an out_dim")
            self.out_dim = sum(self.dims.values())
            self.head: nn.Module = nn.Identity()
        else:
            self.head = _mlp(sum(self.dims.values()), self.out_dim, hidden, dropout)

    def forward(self, features: Features, masks: Masks = None) -> torch.Tensor:
        return self.head(torch.cat(self.vectors(features), dim=1))


class WeightedSumFusion(Fusion):
    """Project every modality to ``out_dim`` and sum with learned softmax weights.

    The weights start uniform; ``modality_weights()`` reports them, which makes this the cheapest
    op to ask "which modality does the model lean on".
    """

    name = "weighted_sum"

    def __init__(self, dims: Mapping[str, int], out_dim: int) -> None:
        super().__init__(dims, out_dim)
        self.proj = nn.ModuleDict({m: nn.Linear(self.dims[m], self.out_dim) for m in self.modalities})
        self.weight_logits = nn.Parameter(torch.zeros(len(self.modalities)))

    def modality_weights(self) -> dict[str, float]:
        weights = torch.softmax(self.weight_logits.detach(), dim=0)
        return {m: float(w) for m, w in zip(self.modalities, weights)}

    def forward(self, features: Features, masks: Masks = None) -> torch.Tensor:
        xs = self.vectors(features)
        projected = torch.stack([self.proj[m](x) for m, x in zip(self.modalities, xs)], dim=1)
        weights = torch.softmax(self.weight_logits, dim=0).to(projected.dtype)
        return (projected * weights[None, :, None]).sum(dim=1)


class GatedFusion(Fusion):
    """Gated multimodal unit (GMU, Arevalo et al. 2017).

    Each modality becomes ``h_m = tanh(W_m x_m)``; a gate computed from all raw inputs decides, per
    output unit and per example, how much of each modality to let through. Two modalities use the
    paper's sigmoid gate ``z * h_a + (1 - z) * h_b`` (a = first in sorted order); more use a softmax
    gate over modalities.
    """

    name = "gated"
    min_modalities = 2

    def __init__(self, dims: Mapping[str, int], out_dim: int) -> None:
        super().__init__(dims, out_dim)
        self.proj = nn.ModuleDict({m: nn.Linear(self.dims[m], self.out_dim) for m in self.modalities})
        gates = 1 if len(self.modalities) == 2 else len(self.modalities)
        self.gate = nn.Linear(sum(self.dims.values()), gates * self.out_dim)

    def forward(self, features: Features, masks: Masks = None) -> torch.Tensor:
        xs = self.vectors(features)
        hidden = [torch.tanh(self.proj[m](x)) for m, x in zip(self.modalities, xs)]
        gate_logits = self.gate(torch.cat(xs, dim=1))
        if len(hidden) == 2:
            z = torch.sigmoid(gate_logits)
            return z * hidden[0] + (1 - z) * hidden[1]
        z = torch.softmax(gate_logits.view(-1, len(hidden), self.out_dim), dim=1)
        return (z * torch.stack(hidden, dim=1)).sum(dim=1)


class TensorFusion(Fusion):
    """Tensor fusion (TFN, Zadeh et al. 2017): outer product of ``[x_m, 1]`` over modalities, then a head.

    Appending 1 keeps the unimodal and all lower-order interaction terms inside the product. The
    flattened product has ``prod(dim_m + 1)`` entries (first sorted modality varies slowest), which
    explodes quickly - ``max_fused_dim`` guards against an accidental multi-GB layer; use
    ``low_rank_tensor`` for large dims.
    """

    name = "tensor"

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        *,
        hidden: int | None = None,
        dropout: float = 0.0,
        max_fused_dim: int = 1 << 20,
    ) -> None:
        super().__init__(dims, out_dim)
        self.fused_dim = math.prod(d + 1 for d in self.dims.values())
        if self.fused_dim > max_fused_dim:
            raise FusionConfigError(
                f"fusion '{self.name}': the outer product of dims {self.dims} has {self.fused_dim} entries "
                f"(> max_fused_dim={max_fused_dim}); use 'low_rank_tensor' or smaller dims"
            )
        self.head = _mlp(self.fused_dim, self.out_dim, hidden, dropout)

    def fused(self, features: Features) -> torch.Tensor:
        """The flattened outer product ``[batch, prod(dim_m + 1)]`` before the head."""
        xs = self.vectors(features)
        out = _append_one(xs[0])
        for x in xs[1:]:
            out = (out[:, :, None] * _append_one(x)[:, None, :]).flatten(1)
        return out

    def forward(self, features: Features, masks: Masks = None) -> torch.Tensor:
        return self.head(self.fused(features))


class LowRankTensorFusion(Fusion):
    """Low-rank multimodal fusion (LMF, Liu et al. 2018): TFN with a rank-R factorised weight.

    ``out = sum_r prod_m ([x_m, 1] @ W_m[r]) + bias`` with ``W_m`` of shape ``[rank, dim_m + 1, out]``;
    this equals a TFN whose weight tensor has CP rank ``rank``, at a cost linear in the dims.
    """

    name = "low_rank_tensor"

    def __init__(self, dims: Mapping[str, int], out_dim: int, *, rank: int = 4) -> None:
        super().__init__(dims, out_dim)
        if rank <= 0:
            raise FusionConfigError(f"fusion '{self.name}': rank must be positive, got {rank}")
        self.rank = rank
        self.factors = nn.ParameterDict()
        for i, m in enumerate(self.modalities):
            # Each factor's output has O(1) scale; the first one also divides by sqrt(rank) so the sum
            # over ranks keeps O(1) scale at initialisation.
            std = 1.0 / math.sqrt(self.dims[m] + 1) / (math.sqrt(rank) if i == 0 else 1.0)
            self.factors[m] = nn.Parameter(torch.randn(rank, self.dims[m] + 1, self.out_dim) * std)
        self.bias = nn.Parameter(torch.zeros(self.out_dim))

    def forward(self, features: Features, masks: Masks = None) -> torch.Tensor:
        xs = self.vectors(features)
        product: torch.Tensor | None = None
        for m, x in zip(self.modalities, xs):
            factor = torch.einsum("bd,rdo->bro", _append_one(x), self.factors[m])
            product = factor if product is None else product * factor
        assert product is not None
        return product.sum(dim=1) + self.bias


class TuckerFusion(Fusion):
    """Bilinear pooling with a Tucker-decomposed weight (MUTAN-style; works for 2+ modalities).

    Each modality is projected to a small space (``tanh(W_m x_m)``, size ``proj_dim``), and a core
    tensor ``[proj_1, ..., proj_M, out]`` mixes every multiplicative combination of the projections.
    Full bilinear pooling would need ``dim_a * dim_b * out`` weights; the core needs
    ``prod(proj_m) * out``, which ``max_core_size`` bounds.
    """

    name = "tucker"
    min_modalities = 2

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        *,
        proj_dim: int | Mapping[str, int] = 32,
        dropout: float = 0.0,
        max_core_size: int = 1 << 24,
    ) -> None:
        super().__init__(dims, out_dim)
        if isinstance(proj_dim, Mapping):
            missing = [m for m in self.modalities if m not in proj_dim]
            if missing:
                raise FusionConfigError(
                    f"fusion '{self.name}': proj_dim has no size for modality '{missing[0]}'; expected keys "
                    f"{list(self.modalities)}"
                )
            sizes = {m: int(proj_dim[m]) for m in self.modalities}
        else:
            sizes = {m: int(proj_dim) for m in self.modalities}
        if any(s <= 0 for s in sizes.values()):
            raise FusionConfigError(f"fusion '{self.name}': proj_dim must be positive, got {sizes}")
        core_shape = [sizes[m] for m in self.modalities] + [self.out_dim]
        if math.prod(core_shape) > max_core_size:
            raise FusionConfigError(
                f"fusion '{self.name}': core tensor {core_shape} has {math.prod(core_shape)} entries "
                f"(> max_core_size={max_core_size}); lower proj_dim"
            )
        self.proj = nn.ModuleDict({m: nn.Linear(self.dims[m], sizes[m]) for m in self.modalities})
        self.dropout = nn.Dropout(dropout)
        # tanh projections have E[p^2] of roughly 1/4; this std gives outputs of about unit variance.
        std = 1.0 / math.sqrt(math.prod(s / 4.0 for s in sizes.values()))
        self.core = nn.Parameter(torch.randn(core_shape) * std)
        self.bias = nn.Parameter(torch.zeros(self.out_dim))

    def forward(self, features: Features, masks: Masks = None) -> torch.Tensor:
        xs = self.vectors(features)
        projected = [self.dropout(torch.tanh(self.proj[m](x))) for m, x in zip(self.modalities, xs)]
        out = torch.einsum("bi,i...->b...", projected[0], self.core)
        for p in projected[1:]:
            out = torch.einsum("bi,bi...->b...", p, out)
        return out + self.bias


class _CrossAttentionBlock(nn.Module):
    """Pre-norm block: query tokens attend to context tokens, then an MLP; both residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_dropout = dropout
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        batch, tq, dim = x.shape
        tk = context.shape[1]
        heads = self.num_heads
        q = self.q(self.norm_q(x)).view(batch, tq, heads, dim // heads).transpose(1, 2)
        k, v = self.kv(self.norm_kv(context)).view(batch, tk, 2, heads, dim // heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if context_mask is None else context_mask[:, None, None, :]
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.drop(self.out(attended.transpose(1, 2).reshape(batch, tq, dim)))
        return x + self.drop(self.mlp(self.norm_mlp(x)))


class _TokenFusion(Fusion):
    """Shared input handling of the token-level ops: ``[batch, tokens, dim]`` inputs (a ``[batch, dim]``
    vector counts as one token) and optional ``[batch, tokens]`` masks, True = a real token."""

    def _tokens(self, features: Features) -> dict[str, torch.Tensor]:
        self._check_keys(features)
        tokens = {}
        for m in self.modalities:
            x = self._check_tensor(m, features[m], allow_tokens=True)
            tokens[m] = x[:, None, :] if x.dim() == 2 else x
        self._check_batch(tokens)
        return tokens

    def _masks(self, masks: Masks, tokens: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
        masks = masks or {}
        for key in sorted(masks):
            if key not in self.dims:
                raise FusionInputError(
                    f"fusion '{self.name}': mask for unexpected modality '{key}'; expected keys among "
                    f"{list(self.modalities)}"
                )
        checked: dict[str, torch.Tensor | None] = {}
        for m in self.modalities:
            mask = masks.get(m)
            if mask is not None:
                expected = tuple(tokens[m].shape[:2])
                if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != expected:
                    got = _shape(mask) if isinstance(mask, torch.Tensor) else type(mask).__name__
                    raise FusionInputError(
                        f"fusion '{self.name}': mask of modality '{m}': expected {_shape(expected)} "
                        f"([batch, tokens], True = real token), got {got}"
                    )
                mask = mask.bool()
            checked[m] = mask
        return checked


class CrossAttentionFusion(_TokenFusion):
    """The ``query`` modality's tokens attend to the tokens of all other modalities (concatenated in
    sorted order), through ``num_layers`` pre-norm cross-attention blocks of width ``out_dim``.

    Args:
        query: the modality whose tokens are updated (e.g. "text" attends to image patches).
        pool: "mean" (mask-aware mean over query tokens) or "first" (the query's first token, e.g.
            [CLS]) give ``[batch, out_dim]``; "none" returns the tokens ``[batch, tokens, out_dim]``.
    """

    name = "cross_attention"
    min_modalities = 2
    POOLS: ClassVar[tuple[str, ...]] = ("mean", "first", "none")

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        *,
        query: str,
        num_heads: int = 4,
        num_layers: int = 1,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        pool: str = "mean",
    ) -> None:
        super().__init__(dims, out_dim)
        if query not in self.dims:
            raise FusionConfigError(
                f"fusion '{self.name}': query modality '{query}' is not in dims; expected one of "
                f"{list(self.modalities)}"
            )
        if pool not in self.POOLS:
            raise FusionConfigError(
                f"fusion '{self.name}': pool '{pool}' unknown; expected one of {list(self.POOLS)}"
            )
        if num_heads <= 0 or self.out_dim % num_heads:
            raise FusionConfigError(
                f"fusion '{self.name}': out_dim={self.out_dim} must be divisible by num_heads={num_heads}"
            )
        if num_layers <= 0:
            raise FusionConfigError(f"fusion '{self.name}': num_layers must be positive, got {num_layers}")
        self.query = query
        self.pool = pool
        self.context_modalities = tuple(m for m in self.modalities if m != query)
        self.proj = nn.ModuleDict({m: nn.Linear(self.dims[m], self.out_dim) for m in self.modalities})
        self.blocks = nn.ModuleList(
            [_CrossAttentionBlock(self.out_dim, num_heads, mlp_ratio, dropout) for _ in range(num_layers)]
        )
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, features: Features, masks: Masks = None) -> torch.Tensor:
        tokens = self._tokens(features)
        checked = self._masks(masks, tokens)
        context = torch.cat([self.proj[m](tokens[m]) for m in self.context_modalities], dim=1)
        context_mask: torch.Tensor | None = None
        if any(checked[m] is not None for m in self.context_modalities):
            context_mask = torch.cat(
                [
                    checked[m]
                    if checked[m] is not None  # type: ignore[misc]
                    else torch.ones(tokens[m].shape[:2], dtype=torch.bool, device=tokens[m].device)
                    for m in self.context_modalities
                ],
                dim=1,
            )
            if not bool(context_mask.any(dim=1).all()):
                raise FusionInputError(
                    f"fusion '{self.name}': a sample has no real token in any of "
                    f"{list(self.context_modalities)} (all masked); nothing to attend to"
                )
        x = self.proj[self.query](tokens[self.query])
        for block in self.blocks:
            x = block(x, context, context_mask)
        x = self.norm(x)
        if self.pool == "none":
            return x
        if self.pool == "first":
            return x[:, 0]
        query_mask = checked[self.query]
        if query_mask is None:
            return x.mean(dim=1)
        counts = query_mask.sum(dim=1, keepdim=True)
        if not bool((counts > 0).all()):
            raise FusionInputError(
                f"fusion '{self.name}': a sample of query modality '{self.query}' has every token masked; "
                "mean pooling needs at least one"
            )
        weights = query_mask.to(x.dtype)[:, :, None]
        return (x * weights).sum(dim=1) / counts.to(x.dtype)


class MulTFusion(_TokenFusion):
    """Multimodal Transformer (MulT, Tsai et al. 2019): directional pairwise cross-modal attention.

    For every target modality and every other (source) modality, a cross-modal transformer of
    ``num_layers`` pre-norm blocks lets the target's tokens attend to the source's tokens, so the
    target sequence is repeatedly "reinforced" by the source without aligning the sequences in time.
    A target's cross-modal outputs are concatenated (width ``(M - 1) * width``), passed through
    ``self_layers`` self-attention blocks, normalised and pooled; the pooled vectors of all targets
    (sorted order) are concatenated and projected to ``out_dim``. Unlike ``cross_attention`` (one
    query modality), every modality is a target, which is the point of MulT on text/audio/video.

    Args:
        width: common token width every modality is projected to (default ``out_dim``).
        pool: "last" (the last real token, as MulT takes ``h[-1]``) or "mean" (mask-aware mean).
    """

    name = "mult"
    min_modalities = 2
    POOLS: ClassVar[tuple[str, ...]] = ("last", "mean")

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        *,
        width: int | None = None,
        num_heads: int = 4,
        num_layers: int = 2,
        self_layers: int = 1,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        pool: str = "last",
    ) -> None:
        super().__init__(dims, out_dim)
        self.width = self.out_dim if width is None else int(width)
        if pool not in self.POOLS:
            raise FusionConfigError(f"fusion '{self.name}': pool '{pool}' unknown; expected one of {list(self.POOLS)}")
        if self.width <= 0 or num_heads <= 0 or self.width % num_heads:
            raise FusionConfigError(
                f"fusion '{self.name}': width={self.width} must be positive and divisible by num_heads={num_heads}"
            )
        if num_layers <= 0 or self_layers < 0:
            raise FusionConfigError(
                f"fusion '{self.name}': num_layers must be positive and self_layers >= 0, got {num_layers} and "
                f"{self_layers}"
            )
        self.pool = pool
        sources = len(self.modalities) - 1
        self.proj = nn.ModuleDict({m: nn.Linear(self.dims[m], self.width) for m in self.modalities})
        self.cross = nn.ModuleDict(
            {
                self._pair(target, source): nn.ModuleList(
                    [_CrossAttentionBlock(self.width, num_heads, mlp_ratio, dropout) for _ in range(num_layers)]
                )
                for target in self.modalities
                for source in self.modalities
                if source != target
            }
        )
        self.memory = nn.ModuleDict(
            {
                m: nn.ModuleList(
                    [_CrossAttentionBlock(sources * self.width, num_heads, mlp_ratio, dropout) for _ in range(self_layers)]
                )
                for m in self.modalities
            }
        )
        self.norm = nn.ModuleDict({m: nn.LayerNorm(sources * self.width) for m in self.modalities})
        self.out = nn.Linear(len(self.modalities) * sources * self.width, self.out_dim)

    @staticmethod
    def _pair(target: str, source: str) -> str:
        return f"{target}_from_{source}"

    def _pooled(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.pool == "mean":
            if mask is None:
                return x.mean(dim=1)
            weights = mask.to(x.dtype)[:, :, None]
            return (x * weights).sum(dim=1) / weights.sum(dim=1)
        if mask is None:
            return x[:, -1]
        positions = torch.arange(x.shape[1], device=x.device)
        last = (mask.long() * positions).argmax(dim=1)  # the largest real index, wherever padding sits
        return x[torch.arange(x.shape[0], device=x.device), last]

    def forward(self, features: Features, masks: Masks = None) -> torch.Tensor:
        tokens = self._tokens(features)
        checked = self._masks(masks, tokens)
        for m, mask in checked.items():
            if mask is not None and not bool(mask.any(dim=1).all()):
                raise FusionInputError(
                    f"fusion '{self.name}': a sample of modality '{m}' has every token masked; each modality "
                    "needs at least one real token to attend to and to pool"
                )
        h = {m: self.proj[m](tokens[m]) for m in self.modalities}
        pooled = []
        for target in self.modalities:
            parts = []
            for source in self.modalities:
                if source == target:
                    continue
                x = h[target]
                for block in self.cross[self._pair(target, source)]:
                    x = block(x, h[source], checked[source])
                parts.append(x)
            x = torch.cat(parts, dim=-1)
            for block in self.memory[target]:
                x = block(x, x, checked[target])
            pooled.append(self._pooled(self.norm[target](x), checked[target]))
        return self.out(torch.cat(pooled, dim=-1))


FUSIONS: dict[str, type[Fusion]] = {
    "concat": ConcatFusion,
    "weighted_sum": WeightedSumFusion,
    "gated": GatedFusion,
    "tensor": TensorFusion,
    "low_rank_tensor": LowRankTensorFusion,
    "tucker": TuckerFusion,
    "cross_attention": CrossAttentionFusion,
    "mult": MulTFusion,
}


def build_fusion(name: str, dims: Mapping[str, int], out_dim: int, **kwargs: object) -> Fusion:
    """Build a fusion op by its registry name; options go to that op's constructor.

    Unknown names and unknown options raise ``FusionConfigError`` listing what is valid, so a typo
    in a YAML config reads as a sentence, not a ``TypeError`` from deep inside.
    """
    if name not in FUSIONS:
        raise FusionConfigError(f"unknown fusion '{name}'; valid names: {sorted(FUSIONS)}")
    cls = FUSIONS[name]
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p not in ("self", "dims", "out_dim")]
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown:
        raise FusionConfigError(f"fusion '{name}': unknown option(s) {unknown}; accepted options: {accepted}")
    required = [p.name for p in params.values() if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    missing = [p for p in required if p not in kwargs]
    if missing:
        raise FusionConfigError(f"fusion '{name}': option(s) {missing} required")
    return cls(dims, out_dim, **kwargs)  # type: ignore[arg-type]
