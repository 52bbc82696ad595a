"""BLEU, CIDEr-D and ROUGE-L on tokenised text against pycocoevalcap's own scorers (pure Python)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from polymodal.metrics import compute_bleu as bleu
from polymodal.metrics import compute_cider_d as cider_d
from polymodal.metrics import compute_rouge_l as rouge_l
from polymodal.metrics.errors import MetricInputError
from polymodal.metrics.rouge import lcs_length

from ._synth import tokenised_corpus

TOL = 1e-6


def _reference(pycoco, gts, res):
    r = {i: [c] for i, c in res.items()}
    b, bp = pycoco["Bleu"](4).compute_score(gts, r, verbose=0)
    c, cp = pycoco["Cider"]().compute_score(gts, r)
    rl, rlp = pycoco["Rouge"]().compute_score(gts, r)
    return {"bleu": (b, np.array(bp).T), "cider": (c, np.asarray(cp)), "rouge": (rl, np.asarray(rlp))}


def _assert_same(pycoco, gts, res):
    ref = _reference(pycoco, gts, res)
    b, bp = bleu(gts, res)
    assert np.allclose(b, ref["bleu"][0], atol=TOL, rtol=0), (b, ref["bleu"][0])
    assert np.allclose(bp, ref["bleu"][1], atol=TOL, rtol=0)
    c, cp = cider_d(gts, res)
    assert abs(c - ref["cider"][0]) <= TOL, (c, ref["cider"][0])
    assert np.allclose(cp, ref["cider"][1], atol=TOL, rtol=0)
    r, rp = rouge_l(gts, res)
    assert abs(r - ref["rouge"][0]) <= TOL
    assert np.allclose(rp, ref["rouge"][1], atol=TOL, rtol=0)
    return ref


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_corpora_match_pycocoevalcap(pycoco, seed):
    gts, res = tokenised_corpus(300, refs_per_image=5, seed=seed, vary_refs=True)
    ref = _assert_same(pycoco, gts, res)
    # Not a degenerate corpus: the scores are spread out.
    assert 0.05 < ref["bleu"][0][0] < 0.95 and ref["cider"][1].std() > 0.01


def test_one_image_corpus(pycoco):
    gts = {"img": ["a man riding a horse", "a person on a horse"]}
    res = {"img": "a man riding a horse"}
    ref = _assert_same(pycoco, gts, res)
    # CIDEr-D's idf is log(1) - log(df) = 0 for a one-image corpus: always 0.
    assert cider_d(gts, res)[0] == 0.0
    assert ref["bleu"][0][3] == pytest.approx(bleu(gts, res)[0][3])
    assert bleu(gts, res)[0][0] == pytest.approx(1.0)


def test_candidate_sharing_nothing(pycoco):
    gts = {1: ["a cat on a mat", "the cat sleeps"], 2: ["two dogs run", "dogs running in a park"]}
    res = {1: "zebra xylophone quartz", 2: "two dogs run"}
    _assert_same(pycoco, gts, res)
    _, bp = bleu(gts, res)
    assert bp[0, 0] < 1e-6  # no overlap: only the epsilon terms remain
    assert cider_d(gts, res)[1][0] == 0.0
    assert rouge_l(gts, res)[1][0] == 0.0


def test_empty_and_tiny_candidates(pycoco):
    gts = {1: ["a cat on a mat"], 2: ["a dog", ""], 3: ["x y z", "y z"], 4: ["one two three four"]}
    res = {1: "", 2: "", 3: "z", 4: "one"}
    _assert_same(pycoco, gts, res)
    # ROUGE-L quirk: "".split(" ") is one empty token, so an empty candidate matches an empty reference.
    assert rouge_l(gts, res)[1][1] == pytest.approx(1.0)


def test_clipping_and_closest_length_ties(pycoco):
    gts = {
        1: ["the cat is on the mat", "there is a cat on the mat"],
        2: ["a b c d", "a b c d e f"],  # candidate of length 5: refs 4 and 6 tie, the shorter wins
        3: ["a a", "b"],
    }
    res = {1: "the the the the the the the", 2: "a b c d e", 3: "a a a a"}
    _assert_same(pycoco, gts, res)
    _, bp = bleu(gts, res)
    # clipped unigram precision of image 1: "the" counts at most twice
    assert bp[0, 0] == pytest.approx(2 / 7, abs=1e-6)


def test_nbsp_tokens_split_differently(pycoco):
    # BLEU/CIDEr use str.split() (splits U+00A0), ROUGE-L split(" ") (keeps it): both as the reference.
    gts = {1: ["add 5\xa01/2 cups of flour", "add flour"], 2: ["a phone -lrb-800-rrb-\xa0555-1212"]}
    res = {1: "add 5 1/2 cups", 2: "a phone -lrb-800-rrb-\xa0555-1212"}
    _assert_same(pycoco, gts, res)


def test_shared_ngram_everywhere_has_zero_idf(pycoco):
    gts = {i: [f"a photo of thing{i}", "a photo"] for i in range(4)}
    res = {i: "a photo" for i in range(4)}
    _assert_same(pycoco, gts, res)
    assert cider_d(gts, res)[0] == 0.0  # "a photo" occurs in every image's references


def test_pycocoevalcap_list_form_and_order():
    gts = {"b": ["x y"], "a": ["y z"]}
    s1, p1 = cider_d(gts, {"a": ["y z"], "b": ["x y"]})
    s2, p2 = cider_d(gts, {"a": "y z", "b": "x y"})
    assert s1 == s2 and list(p1) == list(p2)
    assert len(p1) == 2


def test_mismatched_ids_are_reported():
    with pytest.raises(MetricInputError, match="no candidate caption"):
        bleu({1: ["a"], 2: ["b"]}, {1: "a"})
    with pytest.raises(MetricInputError, match="without references"):
        cider_d({1: ["a"]}, {1: "a", 3: "c"})
    with pytest.raises(MetricInputError, match="no reference"):
        rouge_l({1: []}, {1: "a"})
    with pytest.raises(MetricInputError, match="one string"):
        bleu({1: ["a"]}, {1: ["a", "b"]})
    with pytest.raises(MetricInputError, match="no image"):
        cider_d({}, {})


def test_all_sentences_empty(pycoco):
    gts = {1: [""], 2: ["", ""]}
    res = {1: "", 2: ""}
    r = {i: [c] for i, c in res.items()}
    b, _ = pycoco["Bleu"](4).compute_score(gts, r, verbose=0)
    assert np.allclose(bleu(gts, res)[0], b, atol=TOL, rtol=0)
    assert rouge_l(gts, res)[0] == pytest.approx(pycoco["Rouge"]().compute_score(gts, r)[0])
    # pycocoevalcap's CIDEr crashes on a corpus without a single n-gram (max() of an empty
    # document frequency); 0 is the only sensible value and is what we return.
    with pytest.raises(ValueError):
        pycoco["Cider"]().compute_score(gts, r)
    assert cider_d(gts, res)[0] == 0.0


def _lcs_dp(a, b):
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            t[i][j] = t[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(t[i - 1][j], t[i][j - 1])
    return t[-1][-1]


def test_bit_parallel_lcs_equals_dynamic_programme():
    rng = random.Random(7)
    for _ in range(500):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 40))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 40))]
        assert lcs_length(a, b) == _lcs_dp(a, b)
    assert lcs_length(["a", "b", "c", "d"], ["a", "c", "d"]) == 3
    assert lcs_length([], ["a"]) == 0
