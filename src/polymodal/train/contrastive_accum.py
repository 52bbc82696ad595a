"""Gradient accumulation that keeps every contrastive negative.

Plain accumulation (loss per micro-batch, gradients summed) shrinks the contrastive problem: each
micro-batch only sees its own ``B / K`` negatives, so accumulating K steps is *not* the same as one
step on the full batch. Here the loss is computed once on the full batch, and only the encoder
activations are processed micro-batch by micro-batch:

1. Under ``no_grad``, encode every micro-batch and cache the features (cheap: no activations kept).
2. Evaluate the loss once on the concatenated full-batch features, made leaf tensors, and backward.
   This gives the loss's own parameters (e.g. ITC's ``logit_scale``) their exact gradient, and the
   gradient of the loss with respect to every feature row.
3. For each micro-batch, re-encode it *with* grad and backpropagate the cached feature gradient of its
   rows into the encoder (``torch.autograd.backward(features, grad_tensors)``).

This is the gradient-caching formulation (Gao et al., 2021) of open_clip's ``accum_freq``: open_clip
splices the re-encoded micro-batch into the cached features and recomputes the full-batch loss K
times; the gradient reaching the re-encoded rows is the same ``dL/dfeatures`` slice, so encoder
gradients are identical. We differ on purpose in two ways: the O(B^2) logits are built once instead of
K times with graphs (that matrix is what runs out of memory), and parameters of the loss itself get
their gradient once - splicing adds it K times, i.e. a K-times too large temperature gradient.

Determinism: step 3 must reproduce step 1's features exactly. Dropout and other random ops are
handled by saving the RNG state (CPU and initialised CUDA devices) before each micro-batch's first
encoding and restoring it before its re-encoding (``preserve_rng=True``). BatchNorm in train mode
would update its running statistics in both passes; given the ``module``, the statistics the first
pass wrote are put back, so each micro-batch counts once. (Its batch statistics are a micro-batch's,
as with any accumulation.) Non-deterministic kernels may differ by rounding.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from polymodal.errors import PolymodalError

__all__ = ["AccumStepOutput", "AccumulationError", "contrastive_accum_step", "split_micro_batches"]


class AccumulationError(PolymodalError, ValueError):
    """The encoder or the loss returned something accumulation cannot work with."""


@dataclass
class AccumStepOutput:
    """Result of one accumulated step.

    Attributes:
        loss: the full-batch loss value, detached (what a single full-batch step would log).
        loss_output: whatever ``loss_fn`` returned (e.g. an ``ITCOutput`` with accuracies and the logit
            scale), computed on detached features, so keeping it does not keep the encoder graph alive.
            Its tensors are detached, and its matrices other than the features (the ``[rows, columns]``
            logits) are replaced by ``None`` once the feature gradients are known: they are no longer
            needed, and at a large batch they are gigabytes that would otherwise stay allocated while
            every micro-batch is re-encoded. Found inside tuples, lists, dicts and dataclasses; any other
            object is returned as it is.
        features: the cached full-batch features, detached, one tensor per encoder output.
    """

    loss: torch.Tensor
    loss_output: Any
    features: tuple[torch.Tensor, ...]


@dataclass
class _RngState:
    cpu: torch.Tensor
    cuda: list[torch.Tensor] | None

    @classmethod
    def capture(cls) -> _RngState:
        cuda = (
            torch.cuda.get_rng_state_all()
            if torch.cuda.is_available() and torch.cuda.is_initialized()
            else None
        )
        return cls(cpu=torch.get_rng_state(), cuda=cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def _running_stat_buffers(module: torch.nn.Module | None) -> list[torch.Tensor]:
    """The running statistics that BatchNorm layers of ``module`` update in a training forward."""
    norms = [] if module is None else [
        m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    return [b for m in norms for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]


@contextlib.contextmanager
def _running_stats_kept(buffers: list[torch.Tensor]) -> Iterator[None]:
    """Put back ``buffers`` as they were before the block."""
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        for buffer, value in zip(buffers, saved):
            buffer.copy_(value)


def _as_features(output: Any, index: int) -> tuple[torch.Tensor, ...]:
    if isinstance(output, torch.Tensor):
        return (output,)
    if isinstance(output, (tuple, list)) and output and all(isinstance(t, torch.Tensor) for t in output):
        return tuple(output)
    raise AccumulationError(
        f"contrastive accumulation: encode(micro_batch {index}) must return a tensor or a tuple of tensors "
        f"[micro_batch, ...] (e.g. (image_features, text_features)), got {type(output).__name__}"
    )


def _loss_value(result: Any) -> torch.Tensor:
    loss = result if isinstance(result, torch.Tensor) else getattr(result, "loss", None)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise AccumulationError(
            "contrastive accumulation: loss_fn must return a scalar tensor or an object with a scalar "
            f"`.loss` (e.g. ITCOutput), got {type(result).__name__}"
        )
    return loss


def _released(value: Any, keep: tuple[torch.Tensor, ...]) -> Any:
    """``value`` with every tensor detached and every matrix not in ``keep`` (by identity) dropped.

    Scalars and vectors (loss, accuracies, labels, logit scale) stay, detached; tensors of two or more
    dimensions - the B x B logits, the big ones - become ``None`` unless they are the features
    themselves. Walks tuples (named ones too), lists, dicts and dataclass instances, copying them. A
    Hugging Face ``ModelOutput`` (a mapping and a dataclass at once, whose fields and items must agree)
    is returned as it is: the losses here return polymodal's own outputs.
    """
    if isinstance(value, torch.Tensor):
        if any(value is k for k in keep):
            return value.detach()
        return None if value.dim() >= 2 else value.detach()
    if dataclasses.is_dataclass(value) and not isinstance(value, (type, Mapping)):
        released = copy.copy(value)
        for field in dataclasses.fields(value):
            object.__setattr__(released, field.name, _released(getattr(value, field.name), keep))
        return released
    if isinstance(value, tuple):
        items = [_released(v, keep) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [_released(v, keep) for v in value]
    if type(value) is dict:
        return {k: _released(v, keep) for k, v in value.items()}
    return value


def contrastive_accum_step(
    encode: Callable[[Any], Any],
    micro_batches: Sequence[Any],
    loss_fn: Callable[..., Any],
    *,
    scale_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    no_sync: Callable[[], AbstractContextManager[Any]] | None = None,
    preserve_rng: bool = True,
    check_determinism: bool = False,
    module: torch.nn.Module | None = None,
) -> AccumStepOutput:
    """Accumulate gradients of ``loss_fn`` evaluated on the full batch, encoding K micro-batches.

    Leaves gradients in ``.grad`` (added to what is there, like ``backward``); the caller then clips,
    steps the optimiser and zeroes the gradients as for any step.

    Args:
        encode: micro-batch -> tensor or tuple of tensors, each ``[micro_batch, ...]`` (for CLIP:
            ``(image_features, text_features)``). Run it in training mode; wrap the whole call in
            ``torch.autocast`` for mixed precision.
        micro_batches: the K pieces of the batch (see ``split_micro_batches``).
        loss_fn: ``loss_fn(*full_features)`` -> scalar tensor or an object with ``.loss`` - e.g.
            ``lambda img, txt: itc_module(img, txt, image_ids)``. May gather across ranks.
        scale_loss: applied to the loss before backward, e.g. ``GradScaler.scale`` for fp16 AMP, or
            ``lambda l: l / n`` for further outer accumulation. The feature gradients carry the
            scaling into the encoder.
        no_sync: for DDP, ``model.no_sync``; used for every re-encoding but the last, so gradients are
            all-reduced once per step.
        preserve_rng: restore the RNG state before each re-encoding (needed with dropout).
        check_determinism: verify that re-encoded features equal the cached ones (debugging aid; costs
            a comparison per micro-batch).
        module: the model ``encode`` runs; its BatchNorm running statistics then count each
            micro-batch once (by the pass with gradients), not twice.
    """
    if len(micro_batches) == 0:
        raise AccumulationError("contrastive accumulation: micro_batches is empty; need at least one")

    rng_states: list[_RngState | None] = []
    cached: list[tuple[torch.Tensor, ...]] = []
    running_stats = _running_stat_buffers(module)
    with torch.no_grad():
        for k, micro_batch in enumerate(micro_batches):
            rng_states.append(_RngState.capture() if preserve_rng else None)
            with _running_stats_kept(running_stats):
                features = _as_features(encode(micro_batch), k)
            if cached and len(features) != len(cached[0]):
                raise AccumulationError(
                    f"contrastive accumulation: micro_batch {k} gave {len(features)} outputs, micro_batch 0 "
                    f"gave {len(cached[0])}"
                )
            cached.append(tuple(f.detach() for f in features))

    sizes = [c[0].shape[0] for c in cached]
    full = tuple(torch.cat([c[j] for c in cached], dim=0).requires_grad_(True) for j in range(len(cached[0])))
    result = loss_fn(*full)
    loss = _loss_value(result)
    (scale_loss(loss) if scale_loss is not None else loss).backward()
    feature_grads = [f.grad for f in full]
    # From here on only the feature gradients are needed: release the logits before re-encoding.
    loss = loss.detach()
    result = _released(result, keep=full)

    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    last = len(micro_batches) - 1
    for k, micro_batch in enumerate(micro_batches):
        state = rng_states[k]
        if state is not None:
            state.restore()
        sync_ctx = no_sync() if (no_sync is not None and k < last) else contextlib.nullcontext()
        with sync_ctx:
            features = _as_features(encode(micro_batch), k)
            outputs, grads = [], []
            for j, feature in enumerate(features):
                if feature.shape != cached[k][j].shape:
                    raise AccumulationError(
                        f"contrastive accumulation: micro_batch {k} output {j} changed shape between passes "
                        f"({list(cached[k][j].shape)} -> {list(feature.shape)}); encode must be deterministic"
                    )
                if check_determinism and not torch.allclose(
                    feature.detach(), cached[k][j], rtol=1e-4, atol=1e-6
                ):
                    raise AccumulationError(
                        f"contrastive accumulation: micro_batch {k} output {j} differs between the cached "
                        "and the re-encoded pass; keep preserve_rng=True and avoid non-deterministic ops"
                    )
                grad = feature_grads[j]
                if grad is not None and feature.requires_grad:
                    outputs.append(feature)
                    grads.append(grad[offsets[k] : offsets[k + 1]].to(feature.dtype))
            if outputs:
                torch.autograd.backward(outputs, grad_tensors=grads)

    return AccumStepOutput(loss=loss, loss_output=result, features=tuple(f.detach() for f in full))


def _piece_sizes(total: int, num: int, what: str) -> list[int]:
    if total < num:
        raise AccumulationError(
            f"split_micro_batches: {what} of {total} rows cannot make {num} non-empty micro-batches"
        )
    return [total // num + (1 if i < total % num else 0) for i in range(num)]


def split_micro_batches(batch: Any, num: int) -> list[Any]:
    """Split a batch into ``num`` micro-batches along the first dimension.

    Understands a tensor, a list (of rows, e.g. strings), a tuple (split element-wise, structure
    kept: ``(images, texts)`` -> K ``(images_k, texts_k)``) and a dict (values split the same way;
    values that are neither tensors, lists nor tuples - a task name - are copied into every piece).
    Sizes differ by at most one, larger pieces first, identically for every field.
    """
    if num <= 0:
        raise AccumulationError(f"split_micro_batches: num must be positive, got {num}")
    if isinstance(batch, torch.Tensor):
        return list(torch.split(batch, _piece_sizes(batch.shape[0], num, "tensor"), dim=0))
    if isinstance(batch, list):
        bounds = [0]
        for size in _piece_sizes(len(batch), num, "list"):
            bounds.append(bounds[-1] + size)
        return [batch[bounds[i] : bounds[i + 1]] for i in range(num)]
    if isinstance(batch, tuple):
        parts = [split_micro_batches(value, num) for value in batch]
        return [tuple(p[i] for p in parts) for i in range(num)]
    if isinstance(batch, Mapping):
        split = {
            key: split_micro_batches(value, num)
            if isinstance(value, (torch.Tensor, list, tuple))
            else [value] * num
            for key, value in batch.items()
        }
        return [{key: pieces[i] for key, pieces in split.items()} for i in range(num)]
    raise AccumulationError(f"split_micro_batches: cannot split a {type(batch).__name__}")
