"""Classification and regression metrics: accuracy, F1 (sklearn semantics), MAE, Pearson r.

F1 follows ``sklearn.metrics.f1_score`` (scikit-learn >= 1.3):

* The labels are the sorted union of the labels in ``y_true`` and ``y_pred`` unless ``labels`` is
  given. Per label, ``F1 = 2 TP / (2 TP + FP + FN)``.
* ``zero_division`` is used when ``2 TP + FP + FN == 0`` (a label that is neither true nor
  predicted anywhere, only possible with explicit ``labels`` or an all-zero multi-label column).
  It may be 0.0, 1.0 or ``nan``; sklearn's default ``"warn"`` behaves like 0.0. A ``nan`` label is
  left out of the macro average, as sklearn does.
* Macro = unweighted mean over labels; micro = F1 of the summed TP, FP, FN.

Multi-label inputs are binary indicator matrices ``[n_samples, n_labels]`` with at least two
columns (like sklearn, an ``[n, 1]`` array is read as a column of class labels); every column is a
label (so an all-zero column counts, with ``zero_division``), and subset accuracy is the fraction
of rows predicted exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from polymodal.metrics.errors import MetricInputError

ZeroDivision = float | str


def _zero_division_value(zero_division: ZeroDivision) -> float:
    if zero_division == "warn":
        return 0.0
    if isinstance(zero_division, str):
        # sklearn raises ValueError for a bad zero_division too
        raise ValueError(f"zero_division must be 'warn', 0.0, 1.0 or nan, got {zero_division!r}")  # noqa: TRY004
    z = float(zero_division)
    if not (z in (0.0, 1.0) or math.isnan(z)):
        raise ValueError(f"zero_division must be 'warn', 0.0, 1.0 or nan, got {zero_division!r}")
    return z


def _pair(y_true: Sequence | np.ndarray, y_pred: Sequence | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.shape != p.shape:
        raise MetricInputError(f"y_true has shape {t.shape} but y_pred has shape {p.shape}")
    if t.size == 0:
        raise MetricInputError("no samples to score")
    if t.ndim == 2 and t.shape[1] == 1:
        # sklearn reads an [n, 1] array as a column of class labels, not as multi-label input.
        t, p = t[:, 0], p[:, 0]
    return t, p


def accuracy(y_true: Sequence | np.ndarray, y_pred: Sequence | np.ndarray) -> float:
    """Fraction of samples predicted exactly (for multi-label matrices: subset accuracy)."""
    t, p = _pair(y_true, y_pred)
    if t.ndim == 1:
        return float(np.mean(t == p))
    if t.ndim == 2:
        return float(np.mean(np.all(t == p, axis=1)))
    raise MetricInputError(f"expected 1-D labels or a 2-D indicator matrix, got {t.ndim}-D")


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, zero_division: ZeroDivision) -> np.ndarray:
    denom = 2 * tp + fp + fn
    z = _zero_division_value(zero_division)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), z)
    return f.astype(np.float64)


def _mean_ignoring_nan(values: np.ndarray) -> float:
    kept = values[~np.isnan(values)]
    return float(np.mean(kept)) if kept.size else float("nan")


def per_class_f1(
    y_true: Sequence | np.ndarray,
    y_pred: Sequence | np.ndarray,
    labels: Sequence | None = None,
    zero_division: ZeroDivision = "warn",
) -> dict:
    """F1 of every label of a multi-class problem, ``{label: f1}`` in label order."""
    t, p = _pair(y_true, y_pred)
    if t.ndim != 1:
        raise MetricInputError("per_class_f1 takes 1-D multi-class labels; use multilabel_f1 for indicator matrices")
    labs = np.unique(np.concatenate([t, p])) if labels is None else np.asarray(labels)
    tp = np.array([np.sum((t == c) & (p == c)) for c in labs], dtype=np.float64)
    fp = np.array([np.sum((t != c) & (p == c)) for c in labs], dtype=np.float64)
    fn = np.array([np.sum((t == c) & (p != c)) for c in labs], dtype=np.float64)
    f = _f1_from_counts(tp, fp, fn, zero_division)
    return {lab.item() if hasattr(lab, "item") else lab: float(v) for lab, v in zip(labs, f)}


def macro_f1(
    y_true: Sequence | np.ndarray,
    y_pred: Sequence | np.ndarray,
    labels: Sequence | None = None,
    zero_division: ZeroDivision = "warn",
) -> float:
    """Macro F1, like ``sklearn.metrics.f1_score(average="macro")``.

    1-D inputs are multi-class labels; 2-D inputs are multi-label indicator matrices.
    """
    t, _ = _pair(y_true, y_pred)
    if t.ndim == 2:
        return multilabel_f1(y_true, y_pred, average="macro", zero_division=zero_division)
    f = np.array(list(per_class_f1(y_true, y_pred, labels, zero_division).values()), dtype=np.float64)
    return _mean_ignoring_nan(f)


def micro_f1(
    y_true: Sequence | np.ndarray,
    y_pred: Sequence | np.ndarray,
    labels: Sequence | None = None,
    zero_division: ZeroDivision = "warn",
) -> float:
    """Micro F1 (for single-label multi-class over all labels this equals accuracy)."""
    t, p = _pair(y_true, y_pred)
    if t.ndim == 2:
        return multilabel_f1(y_true, y_pred, average="micro", zero_division=zero_division)
    labs = np.unique(np.concatenate([t, p])) if labels is None else np.asarray(labels)
    tp = sum(float(np.sum((t == c) & (p == c))) for c in labs)
    fp = sum(float(np.sum((t != c) & (p == c))) for c in labs)
    fn = sum(float(np.sum((t == c) & (p != c))) for c in labs)
    return float(_f1_from_counts(np.array([tp]), np.array([fp]), np.array([fn]), zero_division)[0])


def multilabel_f1(
    y_true: Sequence | np.ndarray,
    y_pred: Sequence | np.ndarray,
    average: str = "macro",
    zero_division: ZeroDivision = "warn",
) -> float:
    """F1 of binary indicator matrices ``[n_samples, n_labels]``; ``average`` is "macro" or "micro"."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim != 2 or t.shape != p.shape or t.size == 0:
        raise MetricInputError(
            f"multi-label F1 needs two non-empty 2-D indicator matrices of one shape, got {t.shape} and {p.shape}"
        )
    for name, a in (("y_true", t), ("y_pred", p)):
        if not np.isin(a, (0, 1)).all():
            raise MetricInputError(f"{name} must contain only 0 and 1 (a binary indicator matrix)")
    t = t.astype(bool)
    p = p.astype(bool)
    tp = np.sum(t & p, axis=0).astype(np.float64)
    fp = np.sum(~t & p, axis=0).astype(np.float64)
    fn = np.sum(t & ~p, axis=0).astype(np.float64)
    if average == "macro":
        return _mean_ignoring_nan(_f1_from_counts(tp, fp, fn, zero_division))
    if average == "micro":
        return float(_f1_from_counts(tp.sum(keepdims=True), fp.sum(keepdims=True), fn.sum(keepdims=True), zero_division)[0])
    raise ValueError(f"average must be 'macro' or 'micro', got {average!r}")


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> list[list[int]]:
    """``counts[t][p]``: examples of true class ``t`` predicted as ``p`` (rows: truth).

    Truth outside ``[0, num_classes)`` (an unknown label mapped to -100) is left out, as the report
    shows only the known classes.
    """
    counts = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(y_true, y_pred):
        if 0 <= t < num_classes:
            counts[t][p] += 1
    return counts


def mean_absolute_error(y_true: Sequence | np.ndarray, y_pred: Sequence | np.ndarray) -> float:
    """Mean of ``|y_true - y_pred|``."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t.astype(np.float64) - p.astype(np.float64))))


def pearson_r(x: Sequence | np.ndarray, y: Sequence | np.ndarray) -> float:
    """Pearson correlation coefficient (``nan`` when either input is constant, as scipy returns)."""
    a, b = _pair(x, y)
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    if a.size < 2:
        raise MetricInputError("Pearson correlation needs at least 2 samples")
    da = a - a.mean()
    db = b - b.mean()
    denom = math.sqrt(float(np.dot(da, da))) * math.sqrt(float(np.dot(db, db)))
    if denom == 0:
        return float("nan")
    r = float(np.dot(da, db)) / denom
    return max(-1.0, min(1.0, r))


def classification_scores(
    y_true: Sequence | np.ndarray, y_pred: Sequence | np.ndarray, zero_division: ZeroDivision = "warn"
) -> dict[str, float]:
    """The usual summary: multi-class ``{accuracy, macro_f1}``; multi-label adds ``micro_f1``
    and reports subset accuracy as ``accuracy``."""
    t, _ = _pair(y_true, y_pred)
    out = {"accuracy": accuracy(y_true, y_pred), "macro_f1": macro_f1(y_true, y_pred, zero_division=zero_division)}
    if t.ndim == 2:
        out["micro_f1"] = micro_f1(y_true, y_pred, zero_division=zero_division)
    return out
