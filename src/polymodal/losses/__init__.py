"""Training objectives, kept apart from the models so any model can reuse any of them.

One module per objective: ``contrastive`` (ITC), ``itm`` (matching with hard negatives), ``mlm``,
``captioning`` (LM), ``vqa`` (soft-score BCE), ``multitask`` (weighted sum). Every objective is a plain
function; those with learnable state (ITC's temperature, multi-task weights) also have an nn.Module.
"""

from polymodal.losses._checks import LossInputError
from polymodal.losses.captioning import lm_loss
from polymodal.losses.contrastive import ITCLoss, ITCOutput, itc_loss
from polymodal.losses.itm import (
    HardNegatives,
    ITMOutput,
    ITMPairs,
    itm_loss,
    itm_pairs,
    sample_hard_negatives,
)
from polymodal.losses.mlm import IGNORE_INDEX, MaskedTokens, mask_tokens, mlm_loss
from polymodal.losses.multitask import MultiTaskLoss, MultiTaskOutput
from polymodal.losses.vqa import vqa_bce_loss, vqa_score, vqa_soft_scores, vqa_soft_targets

__all__ = [
    "IGNORE_INDEX",
    "HardNegatives",
    "ITCLoss",
    "ITCOutput",
    "ITMOutput",
    "ITMPairs",
    "LossInputError",
    "MaskedTokens",
    "MultiTaskLoss",
    "MultiTaskOutput",
    "itc_loss",
    "itm_loss",
    "itm_pairs",
    "lm_loss",
    "mask_tokens",
    "mlm_loss",
    "sample_hard_negatives",
    "vqa_bce_loss",
    "vqa_score",
    "vqa_soft_scores",
    "vqa_soft_targets",
]
