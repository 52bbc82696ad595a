"""Captioning language-model loss: next-token cross-entropy with label smoothing.

Shifting convention (the HF one): by default ``labels`` is **not** pre-shifted - it is the same
sequence as the decoder input (with pad positions set to -100), and this function drops the last
logit and the first label so that ``logits[:, t]`` is scored against ``labels[:, t + 1]``. Pass
``shift=False`` when your collate already produced aligned targets (``labels[:, t]`` is the token
that ``logits[:, t]`` must predict).
"""

from __future__ import annotations

import torch

from polymodal.losses._checks import LossInputError, check_rank, fmt_shape
from polymodal.losses._token_mean import token_mean_cross_entropy
from polymodal.losses.mlm import IGNORE_INDEX

__all__ = ["lm_loss"]


def lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    shift: bool = True,
    label_smoothing: float = 0.0,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy over the non-ignored target positions (of all ranks, when training
    under DDP/FSDP: see ``_token_mean``).

    Args:
        logits: ``[batch, seq, vocab]`` decoder outputs.
        labels: ``[batch, seq]`` token ids; ``-100`` positions are ignored.
        shift: see the module doc; True means ``labels`` is the unshifted input sequence.
        label_smoothing: torch's definition - the target is ``(1 - eps)`` on the true token plus
            ``eps / vocab`` spread uniformly over the whole vocabulary (true token included).
        pad_token_id: positions holding this id are ignored as well (for label tensors built without
            replacing pads by -100).
    """
    check_rank("lm: logits", logits, ("batch", "seq", "vocab"))
    if labels.shape != logits.shape[:2]:
        raise LossInputError(
            f"lm: labels: expected {fmt_shape(tuple(logits.shape[:2]))} (logits' [batch, seq]), got "
            f"{fmt_shape(tuple(labels.shape))}"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise LossInputError(f"lm: label_smoothing must be in [0, 1), got {label_smoothing}")
    if pad_token_id is not None:
        labels = labels.masked_fill(labels == pad_token_id, IGNORE_INDEX)
    if shift:
        logits = logits[:, :-1]
        labels = labels[:, 1:]
    return token_mean_cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), label_smoothing)
