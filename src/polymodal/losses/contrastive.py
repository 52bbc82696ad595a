"""Image-text contrastive loss (ITC): symmetric InfoNCE with a learnable temperature.

Why the options exist:

* ``gather`` (on by default, active only under ``torch.distributed``): negatives come from every
  rank's batch, not just the local one; the gather keeps gradients (``all_gather_with_grad``) so each
  rank's encoder learns from the whole global similarity matrix.
* ``local_loss``: each rank only scores its *local* rows against all gathered columns, so the logits
  are ``[local_batch, global_batch]`` instead of ``[global_batch, global_batch]`` - memory linear in the
  local batch. With equal rank batches the mean of the per-rank losses equals the full-batch loss, and
  (with DDP's gradient averaging) the gradients equal the full-batch gradients; ranks may hold unequal
  batches, and then each rank's loss weighs its share of the rows (the trainer does this).
* ``image_ids``: several captions of one image may share a batch. Their pairs are *masked*: for the
  pair (image i, text i), every other column j with ``image_ids[j] == image_ids[i]`` is removed from
  the softmax (logit set to -inf), so it is neither a negative nor an extra positive. We chose masking
  over multi-positive soft targets because the loss then reduces exactly to standard InfoNCE when ids
  are unique, labels stay hard indices (so accuracy is well defined), and a duplicated image (identical
  features) is never pushed away from itself.

Gradient convention under distribution: on each rank, the gradient of the local features is
``world_size`` times the gradient of the mean per-rank loss; DDP divides parameter gradients by
``world_size``, so a DDP step equals the single-process full-batch step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from polymodal import distributed as pdist
from polymodal.losses._checks import LossInputError, check_rank, check_same_dim

__all__ = ["ITCLoss", "ITCOutput", "itc_loss"]

DEFAULT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


@dataclass
class ITCOutput:
    """Result of one ITC evaluation.

    Attributes:
        loss: scalar, mean of the image->text and text->image cross-entropies (has grad).
        logits_per_image: ``[rows, columns]`` scaled similarities, image rows against text columns;
            rows are local (``local_loss`` or single process) or global, columns always global.
        logits_per_text: ``[rows, columns]`` text rows against image columns.
        labels: ``[rows]`` column index of each row's positive.
        acc_i2t, acc_t2i: detached top-1 accuracies over the rows, for logging.
        logit_scale: detached scale actually used (``exp`` of the parameter, clamped).
        local_columns: ``(start, stop)``: the columns of this rank's own pairs (all of them in one process).
    """

    loss: torch.Tensor
    logits_per_image: torch.Tensor
    logits_per_text: torch.Tensor
    labels: torch.Tensor
    acc_i2t: torch.Tensor
    acc_t2i: torch.Tensor
    logit_scale: torch.Tensor
    local_columns: tuple[int, int]

    def local_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Image->text and text->image logits among this rank's own pairs: the in-batch similarities that
        ITM hard negatives are drawn from, whose rows and columns line up with the local ``image_ids``."""
        start, stop = self.local_columns
        rows = slice(None) if self.logits_per_image.shape[0] == stop - start else slice(start, stop)
        return self.logits_per_image[rows, start:stop], self.logits_per_text[rows, start:stop]


def _check_features(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    check_rank("itc: image_features", image_features, ("batch", "dim"))
    check_rank("itc: text_features", text_features, ("batch", "dim"))
    check_same_dim(
        "itc", "image_features batch", image_features.shape[0], "text_features batch", text_features.shape[0]
    )
    check_same_dim(
        "itc", "image_features dim", image_features.shape[1], "text_features dim", text_features.shape[1]
    )


def _mask_same_image(
    logits: torch.Tensor, row_ids: torch.Tensor, col_ids: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    same = row_ids[:, None] == col_ids[None, :]
    same[torch.arange(labels.shape[0], device=labels.device), labels] = False
    return logits.masked_fill(same, float("-inf"))


def itc_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    image_ids: torch.Tensor | None = None,
    gather: bool = True,
    local_loss: bool = False,
    normalize: bool = True,
    max_logit_scale: float = MAX_LOGIT_SCALE,
) -> ITCOutput:
    """Symmetric InfoNCE between paired image and text features (pair i = row i of each).

    Args:
        image_features, text_features: ``[batch, dim]``; pair i is (image i, text i).
        logit_scale: *log* of the inverse temperature (CLIP's parametrisation, so the optimiser works
            in log space and the scale stays positive). Clamped at ``log(max_logit_scale)`` inside the
            forward (no gradient above the clamp) so training cannot blow the scale past 100.
        image_ids: optional ``[batch]`` integer ids; same-image pairs are masked (see module doc).
            Under distribution the ids must be globally unique per image.
        gather: gather features from all ranks (with gradient) when ``torch.distributed`` is
            initialised; ignored otherwise.
        local_loss: score only local rows against the gathered columns (see module doc).
        normalize: L2-normalise the features first; turn off only if they already are.
    """
    _check_features(image_features, text_features)
    batch = image_features.shape[0]
    if image_ids is not None:
        check_rank("itc: image_ids", image_ids, ("batch",))
        check_same_dim("itc", "image_ids length", image_ids.shape[0], "features batch", batch)

    if normalize:
        image_features = F.normalize(image_features, dim=-1)
        text_features = F.normalize(text_features, dim=-1)
    log_scale = torch.as_tensor(logit_scale, dtype=image_features.dtype, device=image_features.device).reshape(())
    scale = log_scale.clamp(max=math.log(max_logit_scale)).exp()

    distributed = gather and pdist.world_size() > 1
    sizes = pdist.gather_sizes(batch, image_features.device) if distributed else [batch]
    own = pdist.rank_rows(sizes) if distributed else (0, batch)  # this rank's pairs among all (ranks may differ in size)
    if distributed:
        all_images = pdist.all_gather_with_grad(image_features, sizes)
        all_texts = pdist.all_gather_with_grad(text_features, sizes)
        all_ids = pdist.all_gather_no_grad(image_ids, sizes) if image_ids is not None else None
    else:
        all_images, all_texts, all_ids = image_features, text_features, image_ids

    if local_loss and distributed:
        logits_per_image = scale * image_features @ all_texts.T
        logits_per_text = scale * text_features @ all_images.T
        offset = own[0]
        row_ids = image_ids
    else:  # one B x B product serves both directions: the logits are the largest term at big batches
        logits_per_image = scale * all_images @ all_texts.T
        logits_per_text = logits_per_image.T
        offset = 0
        row_ids = all_ids

    rows = logits_per_image.shape[0]
    labels = torch.arange(rows, device=logits_per_image.device) + offset
    if row_ids is not None and all_ids is not None:
        logits_per_image = _mask_same_image(logits_per_image, row_ids, all_ids, labels)
        logits_per_text = _mask_same_image(logits_per_text, row_ids, all_ids, labels)

    loss = 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))
    with torch.no_grad():
        acc_i2t = (logits_per_image.argmax(dim=1) == labels).float().mean()
        acc_t2i = (logits_per_text.argmax(dim=1) == labels).float().mean()
    return ITCOutput(
        loss=loss,
        logits_per_image=logits_per_image,
        logits_per_text=logits_per_text,
        labels=labels,
        acc_i2t=acc_i2t,
        acc_t2i=acc_t2i,
        logit_scale=scale.detach(),
        local_columns=own,
    )


class ITCLoss(nn.Module):
    """ITC with its own learnable temperature, so the loss (not the model) owns the parameter.

    Remember to give ``logit_scale`` to the optimiser (it is a parameter of this module) and to
    exclude it from weight decay, as CLIP does.
    """

    def __init__(
        self,
        init_temperature: float = DEFAULT_TEMPERATURE,
        *,
        learnable: bool = True,
        max_logit_scale: float = MAX_LOGIT_SCALE,
        gather: bool = True,
        local_loss: bool = False,
    ) -> None:
        super().__init__()
        if init_temperature <= 0:
            raise LossInputError(f"itc: init_temperature must be > 0, got {init_temperature}")
        # shape [1], not a 0-d scalar: FSDP's fully_shard cannot shard 0-d parameters
        value = torch.tensor([math.log(1.0 / init_temperature)])
        if learnable:
            self.logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("logit_scale", value)
        self.max_logit_scale = max_logit_scale
        self.gather = gather
        self.local_loss = local_loss

    @property
    def scale(self) -> float:
        """The inverse temperature currently applied (for logging)."""
        return float(self.logit_scale.detach().clamp(max=math.log(self.max_logit_scale)).exp())

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        image_ids: torch.Tensor | None = None,
        logit_scale: torch.Tensor | None = None,
    ) -> ITCOutput:
        """``logit_scale``: a stand-in for this module's own (a view of it that gradient caching made a
        leaf of; see ``DualEncoder.embed_pairs``); None uses the parameter itself."""
        return itc_loss(
            image_features,
            text_features,
            self.logit_scale if logit_scale is None else logit_scale,
            image_ids=image_ids,
            gather=self.gather,
            local_loss=self.local_loss,
            max_logit_scale=self.max_logit_scale,
        )


def sigmoid_pair_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    image_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss: every (image, text) cell is its own binary match/no-match problem.

    ``logit_scale`` is the *log* scale and ``logit_bias`` the bias, as SigLIP checkpoints store them;
    features are expected L2-normalised. Cells of the same image (``image_ids``) count as matches.
    The sum over cells is divided by the batch size, as in the paper. (Local batch only: SigLIP's
    chunked cross-device variant is not implemented.)
    """
    _check_features(image_features, text_features)
    logits = image_features @ text_features.t() * logit_scale.exp() + logit_bias
    if image_ids is not None:
        labels = (image_ids.view(-1, 1) == image_ids.view(1, -1)).to(logits.dtype) * 2 - 1
    else:
        labels = torch.eye(len(logits), device=logits.device, dtype=logits.dtype) * 2 - 1
    return -F.logsigmoid(labels * logits).sum() / len(logits)
