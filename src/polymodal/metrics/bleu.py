"""BLEU-1..4 exactly as pycocoevalcap's ``Bleu(4)`` (David Chiang's ``bleu_scorer.py``).

Reproduced quirks of the reference, all deliberate:

* Effective reference length is ``"closest"``: per image, the reference length nearest to the
  candidate length, ties going to the *shorter* reference (``min((abs(l - c), l))``).
* Corpus BLEU sums clipped matches, guesses, candidate lengths and effective reference lengths
  over all images first (it is *not* the mean of per-image BLEU).
* Precision of order k is ``(correct + 1e-15) / (guess + 1e-9)`` (the reference's ``tiny`` and
  ``small``), so an order with no n-grams is not a division by zero; the geometric mean is
  cumulative: ``BLEU_k = (prod_{j<=k} p_j) ** (1/k)``.
* Brevity penalty ``exp(1 - 1/ratio)`` with ``ratio = (c + 1e-15) / (r + 1e-9)``, applied only
  when ``ratio < 1`` (per image for the per-image scores, over the corpus for the corpus scores).
* Tokens are ``str.split()`` (any whitespace, U+00A0 included).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from polymodal.metrics._corpus import TokenisedCorpus

_TINY = 1e-15
_SMALL = 1e-9


def _segment_starts(counts: np.ndarray) -> np.ndarray:
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


def bleu_from_corpus(corpus: TokenisedCorpus, n: int = 4) -> tuple[list[float], np.ndarray]:
    """Corpus BLEU-1..n and the per-image scores (shape ``[num_images, n]``)."""
    if n > corpus.n:
        raise ValueError(f"BLEU-{n} needs an n-gram table of order >= {n}, got {corpus.n}")
    t = corpus.table
    num_img, num_refs = corpus.num_images, corpus.num_refs
    G = t.num_grams
    keep = t.order < n
    is_cand = (t.sentence >= num_refs) & keep

    # Largest count of each n-gram in any reference of the image ("maxcounts" in cook_refs).
    u_key, u_max = corpus.ref_gram_max
    # Clipped matches of the candidate's n-grams.
    c_img = t.sentence[is_cand] - num_refs
    c_key = c_img * G + t.gram[is_cand]
    pos = np.searchsorted(u_key, c_key)
    pos_ok = np.minimum(pos, max(len(u_key) - 1, 0))
    found = (pos < len(u_key)) & (u_key[pos_ok] == c_key) if len(u_key) else np.zeros(len(c_key), dtype=bool)
    clipped = np.where(found, np.minimum(t.count[is_cand], u_max[pos_ok] if len(u_key) else 0), 0)
    correct = np.bincount(
        c_img * n + t.order[is_cand].astype(np.int64), weights=clipped, minlength=num_img * n
    ).reshape(num_img, n)

    testlen = t.lengths[num_refs:]
    guess = np.maximum(0, testlen[:, None] - np.arange(n)[None, :])

    # "closest" effective reference length, ties to the shorter one.
    ref_len = t.lengths[:num_refs]
    big = int(ref_len.max(initial=0)) + int(testlen.max(initial=0)) + 1
    dist_key = np.abs(ref_len - testlen[corpus.ref_image]) * big + ref_len
    reflen = np.minimum.reduceat(dist_key, _segment_starts(corpus.refs_per_image)) % big if num_img else dist_key

    # Per-image scores, with the reference's operation order (cumulative product, then root).
    per_image = np.empty((num_img, n), dtype=np.float64)
    acc = np.ones(num_img, dtype=np.float64)
    for k in range(n):
        acc = acc * ((correct[:, k].astype(np.float64) + _TINY) / (guess[:, k].astype(np.float64) + _SMALL))
        per_image[:, k] = acc ** (1.0 / (k + 1))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    short = ratio < 1
    if short.any():
        per_image[short] *= np.exp(1 - 1 / ratio[short])[:, None]

    # Corpus scores: integer totals, then the same formula in Python floats.
    tot_correct = [int(x) for x in correct.sum(axis=0)]
    tot_guess = [int(x) for x in guess.sum(axis=0)]
    tot_test = int(testlen.sum())
    tot_ref = int(reflen.sum())
    scores: list[float] = []
    b = 1.0
    for k in range(n):
        b *= float(tot_correct[k] + _TINY) / (tot_guess[k] + _SMALL)
        scores.append(b ** (1.0 / (k + 1)))
    r = (tot_test + _TINY) / (tot_ref + _SMALL)
    if r < 1:
        scores = [s * math.exp(1 - 1 / r) for s in scores]
    return scores, per_image


def compute_bleu(
    gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Any], n: int = 4
) -> tuple[list[float], np.ndarray]:
    """BLEU-1..n on tokenised text, like ``pycocoevalcap.bleu.Bleu(n).compute_score(gts, res)``.

    Args:
        gts: ``{image_id: [tokenised reference, ...]}``.
        res: ``{image_id: tokenised candidate}`` (or a one-element list, pycocoevalcap's form).
        n: highest order.

    Returns:
        ``(corpus_scores, per_image)``: a list of n floats, and an array ``[num_images, n]`` in the
        order of ``gts``.
    """
    return bleu_from_corpus(TokenisedCorpus.from_dicts(gts, res, n=n), n=n)
