"""CIDEr-D exactly as pycocoevalcap's ``Cider()`` (``cider_scorer.py``).

Reproduced quirks of the reference, all deliberate:

* Document frequency counts, for each n-gram, the number of *images* whose references (all of
  them together) contain it; candidates never contribute. ``idf = log(N) - log(max(1, df))``
  with ``N`` the number of images in *this* corpus, so scores depend on the corpus: a one-image
  corpus always scores 0 (``log(1) = 0``).
* tf is the raw count (not normalised by length); n-gram vectors of order 1..4 are compared
  separately by cosine similarity, with "clipping": each term is ``min(w_cand, w_ref) * w_ref``.
  A zero norm leaves the (zero) numerator undivided instead of dividing by zero.
* Gaussian length penalty ``e ** (-(delta ** 2) / (2 * 6.0 ** 2))`` where ``delta`` is the
  difference of the sentences' *bigram* counts (the reference counts ``length`` on ``n == 1``,
  its 0-based index of bigrams). For non-empty sentences that equals the word-length difference;
  an empty sentence counts as length 0 like a one-word one.
* Per image: mean over the 4 orders of the sum over references, divided by the number of
  references, times 10. The corpus score is the plain mean over images.
* Tokens are ``str.split()`` (any whitespace, U+00A0 included).

One deviation: when no reference of the whole corpus has a single token, pycocoevalcap fails
(``max()`` of an empty document frequency table); here every score is then 0.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from polymodal.metrics._corpus import TokenisedCorpus


def cider_from_corpus(corpus: TokenisedCorpus, sigma: float = 6.0) -> tuple[float, np.ndarray]:
    """Corpus CIDEr-D and the per-image scores (order of the corpus)."""
    t = corpus.table
    n = corpus.n
    num_img, num_refs = corpus.num_images, corpus.num_refs
    G = t.num_grams
    if num_img == 0:
        raise ValueError("CIDEr-D needs at least one image")
    is_ref = t.sentence < num_refs
    is_cand = ~is_ref

    # Document frequency: distinct (image, n-gram) pairs over the references.
    r_img = corpus.ref_image[t.sentence[is_ref]]
    pairs, _ = corpus.ref_gram_max
    df = np.bincount(pairs % G, minlength=G).astype(np.float64)

    ref_len = np.log(float(num_img))
    # tf-idf weight of every (sentence, n-gram) row.
    w = t.count.astype(np.float64) * (ref_len - np.log(np.maximum(1.0, df[t.gram])))
    num_sent = len(t.lengths)
    norm = np.sqrt(
        np.bincount(t.sentence * n + t.order, weights=w * w, minlength=num_sent * n).reshape(num_sent, n)
    )
    # The reference's "length": number of bigrams, i.e. max(0, words - 1).
    length = np.maximum(t.lengths - 1, 0)

    # Candidate rows are sorted by (image, gram), so their keys are already sorted.
    c_key = (t.sentence[is_cand] - num_refs) * G + t.gram[is_cand]
    c_w = w[is_cand]
    r_key = r_img * G + t.gram[is_ref]
    r_w = w[is_ref]
    pos = np.searchsorted(c_key, r_key)
    if len(c_key):
        pos_ok = np.minimum(pos, len(c_key) - 1)
        found = (pos < len(c_key)) & (c_key[pos_ok] == r_key)
        contrib = np.where(found, np.minimum(c_w[pos_ok], r_w) * r_w, 0.0)
    else:
        contrib = np.zeros(len(r_key))
    r_sent = t.sentence[is_ref]
    val = np.bincount(r_sent * n + t.order[is_ref], weights=contrib, minlength=num_refs * n).reshape(num_refs, n)

    norm_ref = norm[:num_refs]
    norm_cand = norm[num_refs:][corpus.ref_image]
    denom = norm_cand * norm_ref
    nz = (norm_cand != 0) & (norm_ref != 0)
    val = np.where(nz, val / np.where(nz, denom, 1.0), val)
    delta = (length[num_refs:][corpus.ref_image] - length[:num_refs]).astype(np.float64)
    val = val * (np.e ** (-(delta**2) / (2 * sigma**2)))[:, None]

    starts = np.zeros(num_img, dtype=np.int64)
    np.cumsum(corpus.refs_per_image[:-1], out=starts[1:])
    per_img = np.add.reduceat(val, starts, axis=0)  # sum over references, per order
    scores = per_img.mean(axis=1) / corpus.refs_per_image * 10.0
    return float(np.mean(scores)), scores


def compute_cider_d(
    gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Any], n: int = 4, sigma: float = 6.0
) -> tuple[float, np.ndarray]:
    """CIDEr-D on tokenised text, like ``pycocoevalcap.cider.Cider().compute_score(gts, res)``.

    Args:
        gts: ``{image_id: [tokenised reference, ...]}``.
        res: ``{image_id: tokenised candidate}`` (or a one-element list).
        n: highest n-gram order (4 in the reference).
        sigma: standard deviation of the Gaussian length penalty (6.0 in the reference).

    Returns:
        ``(corpus_score, per_image)`` with per-image scores in the order of ``gts``.
    """
    return cider_from_corpus(TokenisedCorpus.from_dicts(gts, res, n=n), sigma=sigma)
