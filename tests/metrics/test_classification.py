"""Classification metrics against values worked by hand (and sklearn's documented semantics)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from polymodal.metrics import (
    accuracy,
    classification_scores,
    macro_f1,
    mean_absolute_error,
    micro_f1,
    multilabel_f1,
    pearson_r,
    per_class_f1,
)
from polymodal.metrics.errors import MetricInputError


def test_multiclass_hand_worked():
    y = [0, 0, 1, 1, 2, 2]
    p = [0, 1, 1, 1, 0, 2]
    # class 0: tp1 fp1 fn1 -> 2/4; class 1: tp2 fp1 fn0 -> 4/5; class 2: tp1 fp0 fn1 -> 2/3
    assert per_class_f1(y, p) == {0: pytest.approx(0.5), 1: pytest.approx(0.8), 2: pytest.approx(2 / 3)}
    assert macro_f1(y, p) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert accuracy(y, p) == pytest.approx(4 / 6)
    assert micro_f1(y, p) == pytest.approx(4 / 6)  # single-label: micro F1 == accuracy


def test_predicted_class_absent_from_truth_counts():
    # sklearn's labels = union of y_true and y_pred: class 3 is only predicted -> F1 0.
    y = [0, 1, 0, 1]
    p = [0, 1, 3, 1]
    # class 0: tp1 fn1 -> 2/3; class 1: 1; class 3: tp0 fp1 -> 0
    assert macro_f1(y, p) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_zero_division_for_unseen_labels():
    y = ["a", "a", "b"]
    p = ["a", "b", "b"]
    # label "c" neither true nor predicted: 2tp+fp+fn == 0 -> zero_division
    base = [2 / 3, 2 / 3]
    assert macro_f1(y, p, labels=["a", "b", "c"]) == pytest.approx(sum(base) / 3)
    assert macro_f1(y, p, labels=["a", "b", "c"], zero_division=1.0) == pytest.approx((sum(base) + 1) / 3)
    assert macro_f1(y, p, labels=["a", "b", "c"], zero_division=float("nan")) == pytest.approx(sum(base) / 2)
    with pytest.raises(ValueError):
        macro_f1(y, p, zero_division=0.5)


def test_multilabel_hand_worked():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    p = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    # label0: tp2 -> 1; label1: tp1 fn1 -> 2/3; label2: fn1 -> 0
    assert multilabel_f1(y, p, "macro") == pytest.approx((1 + 2 / 3 + 0) / 3)
    # micro: tp3 fp0 fn2 -> 6/8
    assert multilabel_f1(y, p, "micro") == pytest.approx(6 / 8)
    assert accuracy(y, p) == pytest.approx(2 / 4)  # subset accuracy
    s = classification_scores(y, p)
    assert set(s) == {"accuracy", "macro_f1", "micro_f1"} and s["micro_f1"] == pytest.approx(0.75)
    # an all-zero label column: zero_division
    y2 = np.array([[1, 0], [0, 0]])
    p2 = np.array([[1, 0], [0, 0]])
    assert multilabel_f1(y2, p2, "macro") == pytest.approx(0.5)
    assert multilabel_f1(y2, p2, "macro", zero_division=1.0) == pytest.approx(1.0)


def test_single_column_matrix_is_read_as_labels_like_sklearn():
    y = np.array([[1], [0], [1], [1]])
    p = np.array([[1], [1], [0], [1]])
    # classes 0 and 1: class0 tp0 fp1 fn1 -> 0; class1 tp2 fp1 fn1 -> 4/6
    assert macro_f1(y, p) == pytest.approx((0 + 4 / 6) / 2)


def test_regression_metrics():
    assert mean_absolute_error([1, 2, 3], [2, 2, 5]) == pytest.approx(1.0)
    assert pearson_r([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson_r([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    # hand: x=[1,2,3], y=[1,3,2]: cov=1, var_x=2, var_y=2 -> 0.5
    assert pearson_r([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(pearson_r([1, 1, 1], [1, 2, 3]))


def test_input_errors():
    with pytest.raises(MetricInputError, match="shape"):
        accuracy([1, 2], [1])
    with pytest.raises(MetricInputError, match="no samples"):
        macro_f1([], [])
    with pytest.raises(MetricInputError, match="0 and 1"):
        multilabel_f1([[0, 2], [1, 0]], [[0, 1], [1, 0]])


def test_matches_sklearn_when_installed():
    sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is optional; the hand-worked tests cover the rules")
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        y = rng.integers(0, 4, n)
        p = rng.integers(0, 5, n)
        assert macro_f1(y, p) == pytest.approx(sk.f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
        Y = rng.integers(0, 2, (n, 3))
        P = rng.integers(0, 2, (n, 3))
        for av in ("macro", "micro"):
            assert multilabel_f1(Y, P, av) == pytest.approx(sk.f1_score(Y, P, average=av, zero_division=0), abs=1e-12)


def test_confusion_matrix_counts_rows_by_truth_and_leaves_out_unknown_labels() -> None:
    from polymodal.metrics import confusion_matrix

    assert confusion_matrix([0, 0, 1, 1, 1, -100], [0, 1, 1, 1, 0, 1], 2) == [[1, 1], [1, 2]]
