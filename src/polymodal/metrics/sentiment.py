"""Sentiment-regression scores as the CMU-MOSI / MOSEI literature reports them.

Follows MMSA's ``MetricsTop.__eval_mosei_regression`` (``src/MMSA/utils/metricsTop.py``), which is also
what MulT, MISA, Self-MM and MultiBench's ``posneg-classification`` report, so numbers are comparable:

* ``acc2`` / ``f1`` ("non-zero", the usual headline Acc-2): utterances whose truth is exactly 0 are
  left out; positive = score > 0 for truth and prediction (a prediction of exactly 0 is negative).
* ``acc2_has0`` / ``f1_has0`` ("has-zero"): all utterances; negative (< 0) vs non-negative (>= 0).
* F1 is the *weighted* F1 (``sklearn.metrics.f1_score(average="weighted")``): per-class F1 weighted
  by the class's support in the truth.
* ``acc7``: truth and prediction clipped to [-3, 3] then rounded to the nearest integer (numpy's
  round-half-to-even, as MMSA's ``np.round``); ``acc5`` the same with [-2, 2].
* ``mae``: mean absolute error of the *unclipped* values; ``corr``: Pearson correlation.

Fractions are in [0, 1] (the papers print percentages). ``acc2`` / ``f1`` are ``nan`` when every
truth is 0, and ``corr`` is ``nan`` when either side is constant (MMSA's ``np.corrcoef`` gives nan).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from polymodal.metrics.classification import pearson_r
from polymodal.metrics.errors import MetricInputError

__all__ = ["SENTIMENT_METRICS", "sentiment_scores", "weighted_f1"]

SENTIMENT_METRICS: tuple[str, ...] = ("acc2", "f1", "acc2_has0", "f1_has0", "acc7", "acc5", "mae", "corr")


def _scores(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]  # a model's [N, 1] regression output
    if a.ndim != 1:
        raise MetricInputError(f"sentiment scores: {name} should be 1-D (or [N, 1]), got shape {a.shape}")
    return a


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """``f1_score(y_true, y_pred, average="weighted")`` for 1-D label arrays (sklearn's semantics:
    labels = union of both sides, weight = support in ``y_true``, undefined F1 counts as 0)."""
    labels = np.unique(np.concatenate([y_true, y_pred]))
    support = np.array([np.sum(y_true == c) for c in labels], dtype=np.float64)
    if support.sum() == 0:
        return 0.0
    f1 = np.empty(len(labels))
    for k, c in enumerate(labels):
        tp = np.sum((y_true == c) & (y_pred == c))
        denom = 2 * tp + np.sum((y_true != c) & (y_pred == c)) + np.sum((y_true == c) & (y_pred != c))
        f1[k] = 2 * tp / denom if denom else 0.0
    return float(np.dot(f1, support) / support.sum())


def _class_accuracy(t: np.ndarray, p: np.ndarray, bound: float) -> float:
    return float(np.mean(np.round(np.clip(p, -bound, bound)) == np.round(np.clip(t, -bound, bound))))


def sentiment_scores(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Acc-2 / F1 (non-zero and has-zero), Acc-7, Acc-5, MAE and Pearson r of sentiment scores.

    Raises :class:`MetricInputError` for empty input, different lengths, or a NaN / inf on either
    side (a NaN prediction would otherwise silently count as "negative").
    """
    t, p = _scores(y_true, "y_true"), _scores(y_pred, "y_pred")
    if t.shape != p.shape:
        raise MetricInputError(f"sentiment scores: y_true has {t.shape[0]} values but y_pred has {p.shape[0]}")
    if t.size == 0:
        raise MetricInputError("sentiment scores: no samples to score")
    for name, a in (("y_true", t), ("y_pred", p)):
        bad = ~np.isfinite(a)
        if bad.any():
            raise MetricInputError(
                f"sentiment scores: {name} has {int(bad.sum())} NaN/inf value(s) (first at index "
                f"{int(np.flatnonzero(bad)[0])})"
            )
    nonzero = t != 0
    if nonzero.any():
        tb, pb = t[nonzero] > 0, p[nonzero] > 0
        acc2, f1 = float(np.mean(tb == pb)), weighted_f1(tb, pb)
    else:
        acc2 = f1 = float("nan")
    tb0, pb0 = t >= 0, p >= 0
    corr = pearson_r(t, p) if t.size >= 2 else float("nan")
    return {
        "acc2": acc2,
        "f1": f1,
        "acc2_has0": float(np.mean(tb0 == pb0)),
        "f1_has0": weighted_f1(tb0, pb0),
        "acc7": _class_accuracy(t, p, 3.0),
        "acc5": _class_accuracy(t, p, 2.0),
        "mae": float(np.mean(np.abs(t - p))),
        "corr": corr,
    }
