"""ROUGE-L exactly as pycocoevalcap's ``Rouge()``.

Reproduced quirks of the reference:

* Tokens are ``str.split(" ")`` (single spaces, not any whitespace): an empty sentence is one
  empty token (length 1), and a token such as ``5\\xa01/2`` stays whole.
* Precision and recall are maximised *separately* over the references (the best precision and the
  best recall may come from different references), then combined as
  ``(1 + b^2) P R / (R + b^2 P)`` with ``b = 1.2``; 0 when either is 0.
* The corpus score is the mean of the per-image scores.

The longest common subsequence is computed with the bit-parallel algorithm of Allison & Dix /
Hyyrö (one Python integer operation per candidate token instead of a quadratic table): it returns
the same length as the reference's dynamic programme.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from polymodal.metrics._corpus import check_corpus


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        m = masks.get(tok)
        if m is None:
            continue
        u = v & m
        v = ((v + u) | (v - u)) & full
    # Each zero bit of v marks one more element of the LCS.
    return len(a) - v.bit_count()


def rouge_l_sentence(candidate: str, references: Sequence[str], beta: float = 1.2) -> float:
    """ROUGE-L of one tokenised candidate against its tokenised references (``Rouge.calc_score``)."""
    if not references:
        raise ValueError("ROUGE-L needs at least one reference")
    token_c = candidate.split(" ")
    prec_max = 0.0
    rec_max = 0.0
    for ref in references:
        token_r = ref.split(" ")
        lcs = lcs_length(token_r, token_c)
        prec_max = max(prec_max, lcs / float(len(token_c)))
        rec_max = max(rec_max, lcs / float(len(token_r)))
    if prec_max != 0 and rec_max != 0:
        return ((1 + beta**2) * prec_max * rec_max) / float(rec_max + beta**2 * prec_max)
    return 0.0


def compute_rouge_l(
    gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Any], beta: float = 1.2
) -> tuple[float, np.ndarray]:
    """ROUGE-L on tokenised text, like ``pycocoevalcap.rouge.Rouge().compute_score(gts, res)``.

    Returns:
        ``(corpus_score, per_image)`` with per-image scores in the order of ``gts``.
    """
    _, refs, cands = check_corpus(gts, res)
    return rouge_l_lists(refs, cands, beta)


def rouge_l_lists(refs: Sequence[Sequence[str]], cands: Sequence[str], beta: float = 1.2) -> tuple[float, np.ndarray]:
    """ROUGE-L for aligned lists of references and candidates (already checked)."""
    scores = np.array([rouge_l_sentence(c, r, beta) for c, r in zip(cands, refs)], dtype=np.float64)
    return float(np.mean(scores)), scores
