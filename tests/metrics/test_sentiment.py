"""sentiment_scores against scikit-learn / numpy on random data, and hand-checked small cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from polymodal.metrics import SENTIMENT_METRICS, MetricInputError, sentiment_scores


def _reference(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """MMSA's __eval_mosei_regression, written out with sklearn / numpy."""
    nz = t != 0
    return {
        "acc2": accuracy_score(t[nz] > 0, p[nz] > 0),
        "f1": f1_score(t[nz] > 0, p[nz] > 0, average="weighted"),
        "acc2_has0": accuracy_score(t >= 0, p >= 0),
        "f1_has0": f1_score(t >= 0, p >= 0, average="weighted"),
        "acc7": float(np.mean(np.round(np.clip(p, -3, 3)) == np.round(np.clip(t, -3, 3)))),
        "acc5": float(np.mean(np.round(np.clip(p, -2, 2)) == np.round(np.clip(t, -2, 2)))),
        "mae": float(np.mean(np.abs(t - p))),
        "corr": float(np.corrcoef(p, t)[0][1]),
    }


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_and_numpy_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    t = np.round(rng.uniform(-3, 3, n) * 3) / 3  # MOSI scores are averages of 3 ratings
    t[rng.random(n) < 0.1] = 0.0
    p = t + rng.normal(0, 1.2, n) * (seed + 1) / 3
    p[:3] = [0.0, 4.2, -3.7]
    got = sentiment_scores(t, p)
    assert tuple(got) == SENTIMENT_METRICS
    for key, value in _reference(t, p).items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_truth_zero_is_left_out_of_non_zero_acc2() -> None:
    t = [0.0, 0.0, 1.0, -1.0]
    p = [-1.0, 1.0, 0.5, 0.5]
    s = sentiment_scores(t, p)
    assert s["acc2"] == 0.5  # only the last two count: right, wrong
    assert s["acc2_has0"] == 0.5  # 0 >= 0 is non-negative: (-1 wrong), (1 right), right, wrong
    # a prediction of exactly 0 is negative for non-zero acc2 but non-negative for has-zero acc2
    s0 = sentiment_scores([1.0, -1.0], [0.0, 0.0])
    assert s0["acc2"] == 0.5 and s0["acc2_has0"] == 0.5


def test_acc7_clips_to_range_then_rounds() -> None:
    t = [3.0, -3.0, 1.4, 0.5]
    p = [5.0, -9.0, 1.6, 0.4]  # 5 -> 3 and -9 -> -3 match; 1.6 -> 2 != 1; np.round(0.5) == 0 == round(0.4)
    s = sentiment_scores(t, p)
    assert s["acc7"] == 0.75
    assert s["acc5"] == 0.75  # [-2, 2]: 3 and 5 both become 2
    assert s["mae"] == pytest.approx((2 + 6 + 0.2 + 0.1) / 4)  # unclipped


def test_weighted_f1_hand_checked() -> None:
    # truth: 3 positive, 1 negative; predictions all positive
    s = sentiment_scores([1.0, 2.0, 0.4, -1.0], [1.0, 1.0, 1.0, 1.0])
    # F1(pos) = 2*3/(6+1) = 6/7, F1(neg) = 0; weighted = 3/4 * 6/7
    assert s["f1"] == pytest.approx(0.75 * 6 / 7)
    assert s["corr"] != s["corr"]  # constant predictions: nan, as np.corrcoef gives


def test_column_output_and_all_zero_truth() -> None:
    s = sentiment_scores(np.array([[0.0], [0.0]]), np.array([[1.0], [-1.0]]))
    assert np.isnan(s["acc2"]) and np.isnan(s["f1"]) and s["acc2_has0"] == 0.5


def test_errors() -> None:
    with pytest.raises(MetricInputError, match="3 values but y_pred has 2"):
        sentiment_scores([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(MetricInputError, match="no samples"):
        sentiment_scores([], [])
    with pytest.raises(MetricInputError, match=r"y_pred has 1 NaN/inf value\(s\) \(first at index 1\)"):
        sentiment_scores([1.0, 2.0], [0.5, float("nan")])
    with pytest.raises(MetricInputError, match="1-D"):
        sentiment_scores(np.zeros((2, 2)), np.zeros((2, 2)))
