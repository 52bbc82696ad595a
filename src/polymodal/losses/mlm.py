"""Masked language modelling (BERT): the 80/10/10 corruption and its loss.

The 10% random and 10% unchanged tokens exist so the encoder cannot learn that only ``[MASK]``
positions matter - it must keep a good representation of every token, which is what fine-tuning
(no ``[MASK]`` in sight) needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from polymodal.losses._checks import LossInputError, check_rank, fmt_shape

__all__ = ["IGNORE_INDEX", "MaskedTokens", "mask_tokens", "mlm_loss"]

IGNORE_INDEX = -100


@dataclass
class MaskedTokens:
    """Corrupted input for MLM.

    Attributes:
        input_ids: ``[batch, seq]`` ids after corruption (a new tensor; the input is not modified).
        labels: ``[batch, seq]`` original id at selected positions, ``-100`` everywhere else.
        selected: ``[batch, seq]`` bool, the positions the loss is computed on.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    selected: torch.Tensor


def _uniform(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def mask_tokens(
    input_ids: torch.Tensor,
    vocab_size: int,
    mask_token_id: int,
    *,
    special_tokens_mask: torch.Tensor | None = None,
    pad_token_id: int | None = None,
    prob: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
    generator: torch.Generator | None = None,
) -> MaskedTokens:
    """Select ``prob`` of the eligible tokens; replace 80% by ``[MASK]``, 10% by a random id, keep 10%.

    Args:
        input_ids: ``[batch, seq]`` integer ids.
        vocab_size: random replacements are drawn uniformly from ``[0, vocab_size)`` (BERT's rule:
            the whole vocabulary, specials included).
        mask_token_id: id written at the 80% positions.
        special_tokens_mask: optional bool ``[batch, seq]``, True where a token must never be selected
            ([CLS], [SEP], ...).
        pad_token_id: positions holding this id are never selected either.
        prob, mask_fraction, random_fraction: the 15% / 80% / 10% of BERT; the rest stays unchanged.
        generator: makes the corruption reproducible (must live on ``input_ids``'s device).
    """
    check_rank("mlm: input_ids", input_ids, ("batch", "seq"))
    if input_ids.dtype.is_floating_point:
        raise LossInputError(f"mlm: input_ids must be integer token ids, got dtype {input_ids.dtype}")
    if not 0.0 <= prob <= 1.0:
        raise LossInputError(f"mlm: prob must be in [0, 1], got {prob}")
    if mask_fraction < 0 or random_fraction < 0 or mask_fraction + random_fraction > 1.0:
        raise LossInputError(
            f"mlm: mask_fraction ({mask_fraction}) + random_fraction ({random_fraction}) must be in [0, 1]"
        )
    eligible = torch.ones_like(input_ids, dtype=torch.bool)
    if special_tokens_mask is not None:
        if special_tokens_mask.shape != input_ids.shape:
            raise LossInputError(
                f"mlm: special_tokens_mask: expected {fmt_shape(tuple(input_ids.shape))} like input_ids, "
                f"got {fmt_shape(tuple(special_tokens_mask.shape))}"
            )
        eligible &= ~special_tokens_mask.bool()
    if pad_token_id is not None:
        eligible &= input_ids != pad_token_id

    device = input_ids.device
    selected = (_uniform(input_ids.shape, generator, device) < prob) & eligible
    # One draw decides the fate of each selected token: [0, m) mask, [m, m + r) random, rest unchanged.
    fate = _uniform(input_ids.shape, generator, device)
    to_mask = selected & (fate < mask_fraction)
    to_random = selected & (fate >= mask_fraction) & (fate < mask_fraction + random_fraction)
    random_ids = torch.randint(
        0, vocab_size, input_ids.shape, generator=generator, device=device, dtype=input_ids.dtype
    )

    corrupted = input_ids.clone()
    corrupted[to_mask] = mask_token_id
    corrupted[to_random] = random_ids[to_random]
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return MaskedTokens(input_ids=corrupted, labels=labels, selected=selected)


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the selected positions only (``labels == -100`` elsewhere).

    ``logits`` ``[batch, seq, vocab]``, ``labels`` ``[batch, seq]``; the mean is over selected tokens
    (of all ranks, when training under DDP/FSDP).
    A batch in which nothing was selected returns a zero that still carries the graph (instead of the
    NaN that ``cross_entropy`` would give), so the step and DDP's gradient sync go on unharmed.
    """
    check_rank("mlm: logits", logits, ("batch", "seq", "vocab"))
    if labels.shape != logits.shape[:2]:
        raise LossInputError(
            f"mlm: labels: expected {fmt_shape(tuple(logits.shape[:2]))} (logits' [batch, seq]), got "
            f"{fmt_shape(tuple(labels.shape))}"
        )
    from polymodal.losses._token_mean import token_mean_cross_entropy

    return token_mean_cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
