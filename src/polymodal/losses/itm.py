"""Image-text matching (ITM) with hard negatives mined from the ITC similarities (ALBEF).

Random negatives are too easy for a fusion encoder once ITC is trained; ALBEF samples, for each
image, a negative text with probability proportional to ``softmax(similarity)`` (and symmetrically a
negative image per text), so confusable pairs are seen more often. The positive - and, when
``image_ids`` is given, every text of the same image - gets probability exactly zero.

Typical use::

    negs = sample_hard_negatives(itc.logits_per_image.detach(), image_ids=ids, generator=g)
    pairs = itm_pairs(negs)            # 3B (image, text, label) triples: B pos + B + B negs
    logits = fusion_model(images[pairs.image_index], texts[pairs.text_index])   # [3B, 2]
    out = itm_loss(logits, pairs.labels)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from polymodal.losses._checks import LossInputError, check_rank, check_same_dim, fmt_shape

__all__ = ["HardNegatives", "ITMOutput", "ITMPairs", "itm_loss", "itm_pairs", "sample_hard_negatives"]


@dataclass
class HardNegatives:
    """One sampled negative per row.

    Attributes:
        text_for_image: ``[B]``; ``text_for_image[i]`` is a text index that does not match image i.
        image_for_text: ``[B]``; ``image_for_text[j]`` is an image index that does not match text j.
    """

    text_for_image: torch.Tensor
    image_for_text: torch.Tensor


@dataclass
class ITMPairs:
    """Index triples for the ITM batch: first B positives (i, i), then (i, neg text), then (neg image, j)."""

    image_index: torch.Tensor
    text_index: torch.Tensor
    labels: torch.Tensor


@dataclass
class ITMOutput:
    loss: torch.Tensor
    accuracy: torch.Tensor


def _positive_mask(batch: int, image_ids: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    if image_ids is None:
        return torch.eye(batch, dtype=torch.bool, device=device)
    ids = image_ids.to(device)
    return (ids[:, None] == ids[None, :]) | torch.eye(batch, dtype=torch.bool, device=device)


def _sample_rows(
    sim: torch.Tensor, positive: torch.Tensor, generator: torch.Generator | None, what: str
) -> torch.Tensor:
    no_negative = positive.all(dim=1)
    if bool(no_negative.any()):
        row = int(no_negative.nonzero()[0, 0])
        raise LossInputError(
            f"itm: {what} {row} has no valid negative (every candidate in the batch is its positive or "
            "shares its image_id); use a batch with at least two distinct images"
        )
    logits = sim.detach().float().masked_fill(positive, float("-inf"))
    probs = torch.softmax(logits, dim=1)
    # softmax of -inf is exactly 0, so multinomial can never draw a positive.
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def sample_hard_negatives(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor | None = None,
    *,
    image_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> HardNegatives:
    """Draw one hard negative text per image and one hard negative image per text.

    Args:
        sim_i2t: ``[B, B]`` image-to-text similarities, pair i on the diagonal. Pass the *scaled*
            ITC logits (``ITCOutput.logits_per_image``): the sampling distribution is
            ``softmax(sim)`` over the non-positive entries of each row, so the temperature matters.
        sim_t2i: ``[B, B]`` text-to-image similarities; defaults to ``sim_i2t.T``.
        image_ids: optional ``[B]``; entries sharing an image id are never drawn as negatives.
        generator: makes the draw reproducible (must live on ``sim_i2t``'s device).
    """
    check_rank("itm: sim_i2t", sim_i2t, ("batch", "batch"))
    batch = sim_i2t.shape[0]
    if sim_i2t.shape[1] != batch:
        raise LossInputError(
            f"itm: sim_i2t must be square [batch, batch] (pairs on the diagonal), got "
            f"{fmt_shape(tuple(sim_i2t.shape))}"
        )
    if sim_t2i is None:
        sim_t2i = sim_i2t.T
    elif tuple(sim_t2i.shape) != (batch, batch):
        raise LossInputError(
            f"itm: sim_t2i: expected [{batch}, {batch}], got {fmt_shape(tuple(sim_t2i.shape))}"
        )
    if image_ids is not None:
        check_rank("itm: image_ids", image_ids, ("batch",))
        check_same_dim("itm", "image_ids length", image_ids.shape[0], "similarity batch", batch)
    positive = _positive_mask(batch, image_ids, sim_i2t.device)
    return HardNegatives(
        text_for_image=_sample_rows(sim_i2t, positive, generator, "image"),
        image_for_text=_sample_rows(sim_t2i, positive, generator, "text"),
    )


def itm_pairs(negatives: HardNegatives) -> ITMPairs:
    """Lay out the ALBEF ITM batch: B positive pairs, B (image, hard text), B (hard image, text)."""
    batch = negatives.text_for_image.shape[0]
    device = negatives.text_for_image.device
    arange = torch.arange(batch, device=device)
    image_index = torch.cat([arange, arange, negatives.image_for_text])
    text_index = torch.cat([arange, negatives.text_for_image, arange])
    labels = torch.cat(
        [
            torch.ones(batch, dtype=torch.long, device=device),
            torch.zeros(2 * batch, dtype=torch.long, device=device),
        ]
    )
    return ITMPairs(image_index=image_index, text_index=text_index, labels=labels)


def itm_loss(logits: torch.Tensor, labels: torch.Tensor) -> ITMOutput:
    """Match / no-match loss over positive and negative pairs (label 1 = matching pair).

    ``logits`` ``[N, 2]`` (class 1 = match) uses 2-class cross-entropy, as ALBEF/BLIP do;
    ``logits`` ``[N]`` (one match logit) uses binary cross-entropy with logits. Both average over N,
    so with ``itm_pairs`` the negatives weigh twice the positives, as in ALBEF.
    """
    if logits.dim() == 2 and logits.shape[1] == 2:
        check_same_dim("itm", "logits rows", logits.shape[0], "labels length", labels.shape[0])
        loss = F.cross_entropy(logits, labels.long())
        predicted = logits.argmax(dim=1)
    elif logits.dim() == 1:
        check_same_dim("itm", "logits length", logits.shape[0], "labels length", labels.shape[0])
        loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        predicted = (logits > 0).long()
    else:
        raise LossInputError(
            f"itm: logits: expected [N, 2] (two-class) or [N] (one match logit), got "
            f"{fmt_shape(tuple(logits.shape))}"
        )
    with torch.no_grad():
        accuracy = (predicted == labels.long()).float().mean()
    return ITMOutput(loss=loss, accuracy=accuracy)
