"""Evaluation metrics that reproduce the official evaluation code, and run faster.

* Captions (:func:`caption_scores`): BLEU-1..4, METEOR, ROUGE-L, CIDEr-D as pycocoevalcap computes
  them, including its PTB tokenisation (pure Python by default, the Java jar on request).
* VQA (:func:`vqa_accuracy`, :func:`vqa_scores`): the official VQA v2 accuracy with its answer
  normalisation.
* Retrieval (:func:`retrieval_metrics`): R@K, median and mean rank in both directions, computed in
  blocks.
* Classification (:func:`accuracy`, :func:`macro_f1`, ...): sklearn-compatible F1, MAE, Pearson r.
* Sentiment (:func:`sentiment_scores`): CMU-MOSI/MOSEI Acc-2 / F1 (non-zero and has-zero), Acc-7,
  Acc-5, MAE and correlation as MMSA reports them.
* Files (:func:`score_file`): COCO caption results and VQA results against the official formats.

Fractions are returned in [0, 1]; the official tools print percentages, see each module.
"""

from polymodal.metrics.bleu import compute_bleu
from polymodal.metrics.caption import ALL_METRICS as CAPTION_METRICS
from polymodal.metrics.caption import caption_scores, tokenize_corpus
from polymodal.metrics.cider import compute_cider_d
from polymodal.metrics.classification import (
    accuracy,
    classification_scores,
    confusion_matrix,
    macro_f1,
    mean_absolute_error,
    micro_f1,
    multilabel_f1,
    pearson_r,
    per_class_f1,
)
from polymodal.metrics.errors import MetricInputError, MetricUnavailableError
from polymodal.metrics.meteor import MeteorScorer, compute_meteor, meteor_available
from polymodal.metrics.ptb_tokenizer import ptb_tokenize
from polymodal.metrics.retrieval import retrieval_metrics, retrieval_metrics_from_similarity
from polymodal.metrics.rouge import compute_rouge_l
from polymodal.metrics.score_files import format_table, score_file
from polymodal.metrics.sentiment import SENTIMENT_METRICS, sentiment_scores
from polymodal.metrics.vqa import answer_accuracy, normalize_answer, official_percent, vqa_accuracy, vqa_scores

__all__ = [
    "CAPTION_METRICS",
    "SENTIMENT_METRICS",
    "MeteorScorer",
    "MetricInputError",
    "MetricUnavailableError",
    "accuracy",
    "caption_scores",
    "classification_scores",
    "compute_bleu",
    "compute_cider_d",
    "compute_meteor",
    "compute_rouge_l",
    "confusion_matrix",
    "format_table",
    "macro_f1",
    "mean_absolute_error",
    "meteor_available",
    "micro_f1",
    "multilabel_f1",
    "normalize_answer",
    "official_percent",
    "pearson_r",
    "per_class_f1",
    "ptb_tokenize",
    "retrieval_metrics",
    "retrieval_metrics_from_similarity",
    "score_file",
    "sentiment_scores",
    "tokenize_corpus",
    "vqa_accuracy",
    "answer_accuracy",
    "vqa_scores",
]
