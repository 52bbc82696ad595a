"""Retrieval metrics against a brute-force numpy computation on the full similarity matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polymodal.metrics import retrieval_metrics, retrieval_metrics_from_similarity
from polymodal.metrics.errors import MetricInputError


def brute_force(sim: np.ndarray, t2i: np.ndarray, ks=(1, 5, 10), ties="pessimistic"):
    n, m = sim.shape
    i2t, t2i_r = [], []
    for i in range(n):
        pos = np.flatnonzero(t2i == i)
        best = sim[i, pos].max()
        neg = np.ones(m, bool)
        neg[pos] = False
        ahead = (sim[i] >= best) if ties == "pessimistic" else (sim[i] > best)
        i2t.append(int((ahead & neg).sum()) + 1)
    for j in range(m):
        s = sim[:, j]
        neg = np.ones(n, bool)
        neg[t2i[j]] = False
        ahead = (s >= s[t2i[j]]) if ties == "pessimistic" else (s > s[t2i[j]])
        t2i_r.append(int((ahead & neg).sum()) + 1)
    out = {}
    for name, r in (("image_to_text", np.array(i2t)), ("text_to_image", np.array(t2i_r))):
        d = {f"R@{k}": float(np.mean(r <= k)) for k in ks}
        d["median_rank"] = float(np.floor(np.median(r - 1)) + 1)
        d["mean_rank"] = float(r.mean())
        out[name] = (d, r)
    return out


def _check(res, bf):
    for name in ("image_to_text", "text_to_image"):
        exp, ranks = bf[name]
        for k, v in exp.items():
            assert res[name][k] == pytest.approx(v, abs=1e-12), (name, k)
        np.testing.assert_array_equal(res["ranks"][name], ranks)


@pytest.mark.parametrize("block_size", [1, 7, 1024])
def test_embeddings_match_brute_force(block_size):
    rng = np.random.default_rng(0)
    n, caps, d = 60, 5, 16
    img = rng.normal(size=(n, d)).astype(np.float32)
    t2i = np.repeat(np.arange(n), caps)
    txt = (img[t2i] + 1.5 * rng.normal(size=(n * caps, d))).astype(np.float32)
    res = retrieval_metrics(img, txt, t2i, block_size=block_size, return_ranks=True)
    sim = (torch.from_numpy(img) @ torch.from_numpy(txt).t()).numpy()
    _check(res, brute_force(sim, t2i))
    # informative data: neither perfect nor hopeless
    assert 0.1 < res["image_to_text"]["R@1"] < 1.0
    assert res["image_to_text"]["R@1"] <= res["image_to_text"]["R@5"] <= res["image_to_text"]["R@10"]
    assert res["rsum"] == pytest.approx(sum(res[d][f"R@{k}"] for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)))


def test_uneven_captions_and_ties_from_integer_embeddings():
    rng = np.random.default_rng(1)
    n, d = 40, 4
    img = rng.integers(-2, 3, size=(n, d)).astype(np.float32)  # small integers: many exact ties
    t2i = np.concatenate([np.arange(n), rng.integers(0, n, size=70)])
    txt = rng.integers(-2, 3, size=(len(t2i), d)).astype(np.float32)
    sim = img @ txt.T  # exact in float32
    for ties in ("pessimistic", "optimistic"):
        res = retrieval_metrics(img, txt, t2i, block_size=9, ties=ties, return_ranks=True)
        _check(res, brute_force(sim, t2i, ties=ties))
    pess = retrieval_metrics(img, txt, t2i, return_ranks=True)["ranks"]["text_to_image"]
    opt = retrieval_metrics(img, txt, t2i, ties="optimistic", return_ranks=True)["ranks"]["text_to_image"]
    assert (pess >= opt).all() and (pess > opt).any()


def test_constant_scores_get_the_worst_rank():
    img = np.ones((5, 3), np.float32)
    txt = np.ones((10, 3), np.float32)
    t2i = np.repeat(np.arange(5), 2)
    res = retrieval_metrics(img, txt, t2i)
    assert res["image_to_text"]["R@1"] == 0.0
    assert res["text_to_image"]["median_rank"] == 5.0  # behind all 4 tied negatives


def test_similarity_matrix_form_float64_and_blocks():
    rng = np.random.default_rng(2)
    sim = rng.normal(size=(30, 75))
    t2i = rng.permutation(np.concatenate([np.arange(30), rng.integers(0, 30, 45)]))
    res = retrieval_metrics_from_similarity(sim, t2i, block_size=4, return_ranks=True, ks=(1, 2, 5))
    _check(res, brute_force(sim, t2i, ks=(1, 2, 5)))
    res_t = retrieval_metrics_from_similarity(torch.from_numpy(sim), t2i, block_size=8, return_ranks=True, ks=(1, 2, 5))
    _check(res_t, brute_force(sim, t2i, ks=(1, 2, 5)))


def test_normalize_option_is_cosine():
    rng = np.random.default_rng(3)
    img = rng.normal(size=(20, 8)).astype(np.float32) * rng.uniform(0.1, 10, size=(20, 1)).astype(np.float32)
    t2i = np.arange(20)
    txt = img + rng.normal(size=(20, 8)).astype(np.float32)
    a = retrieval_metrics(img, txt, t2i, normalize=True, return_ranks=True)
    ni = img / np.linalg.norm(img, axis=1, keepdims=True)
    nt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    b = retrieval_metrics(ni, nt, t2i, return_ranks=True)
    np.testing.assert_array_equal(a["ranks"]["text_to_image"], b["ranks"]["text_to_image"])


def test_hand_worked_example():
    # 2 images, 3 captions: caption 0,1 -> image 0; caption 2 -> image 1.
    sim = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]])
    res = retrieval_metrics_from_similarity(sim, [0, 0, 1], ks=(1, 2), return_ranks=True)
    # image 0: best positive 0.9 is first -> rank 1. image 1: caption 2 (0.7) behind caption 1 (0.8) -> 2.
    assert list(res["ranks"]["image_to_text"]) == [1, 2]
    # caption 0: 0.9 vs 0.2 -> 1; caption 1: 0.1 vs 0.8 -> 2; caption 2: 0.7 vs 0.5 -> 1.
    assert list(res["ranks"]["text_to_image"]) == [1, 2, 1]
    assert res["image_to_text"]["R@1"] == 0.5 and res["text_to_image"]["mean_rank"] == pytest.approx(4 / 3)
    assert res["text_to_image"]["median_rank"] == 1.0


def test_input_errors():
    with pytest.raises(MetricInputError, match="no caption"):
        retrieval_metrics(np.zeros((3, 2)), np.zeros((2, 2)), [0, 1])
    with pytest.raises(MetricInputError, match="entries"):
        retrieval_metrics(np.zeros((2, 2)), np.zeros((2, 2)), [0, 1, 1])
    with pytest.raises(MetricInputError, match="sizes differ"):
        retrieval_metrics(np.zeros((2, 2)), np.zeros((2, 3)), [0, 1])
    with pytest.raises(MetricInputError, match="NaN"):
        retrieval_metrics_from_similarity(np.array([[np.nan, 0.0], [0.0, 1.0]]), [0, 1])
    with pytest.raises(MetricInputError, match="NaN or infinite"):
        retrieval_metrics(np.array([[np.inf, 0.0], [0.0, 1.0]]), np.eye(2), [0, 1])
