"""Image-text retrieval metrics: R@K, median and mean rank, both directions.

Conventions (those of the CLIP / ALBEF / open_clip evaluations):

* Several captions per image; ``text_to_image[j]`` is the image of caption ``j``.
* **Image -> text**: an image is retrieved at rank r when the best-ranked of *its* captions is at
  rank r among all captions (a hit at K when any of its captions is in the top K).
* **Text -> image**: a caption's single image, ranked among all images.
* Ranks are 1-based; ``R@K`` is the fraction (in [0, 1], not percent) of queries with rank <= K;
  median rank is ``floor(median(rank - 1)) + 1`` (the VSE++/SCAN convention, equal to the plain
  median for an odd number of queries); mean rank is the plain mean.

**Ties.** The reference evaluations sort with ``argsort``, so a tie between a positive and a
negative is broken by whatever order the sort happens to leave. Here ties are broken
*pessimistically* and deterministically: ``rank = 1 + #{negatives with score >= the best
positive's score}``. A model that gives every pair the same score therefore gets the worst rank,
never a perfect R@1. (Ties between two positives of the same image do not matter.) Pass
``ties="optimistic"`` to count only strictly greater negatives.

Scores come from float32 matrix products computed in blocks of ``block_size`` queries, so memory
is ``O(block_size * max(N, M))`` and the full ``N x M`` similarity matrix is never held, let alone
in float64. Each direction takes its positive and negative scores from the same block product,
so a positive is always compared with bit-identical numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from polymodal.metrics.errors import MetricInputError

if TYPE_CHECKING:  # torch is imported when a function runs, so `import polymodal.metrics` stays light
    import torch

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def _as_tensor(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    import torch

    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise MetricInputError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    return t.detach().to(device="cpu", dtype=torch.float32)


def _check_index(text_to_image: np.ndarray | torch.Tensor | Sequence[int], num_images: int, num_texts: int) -> torch.Tensor:
    import torch

    idx = torch.as_tensor(np.asarray(text_to_image), dtype=torch.int64).reshape(-1)
    if idx.numel() != num_texts:
        raise MetricInputError(f"text_to_image has {idx.numel()} entries for {num_texts} texts")
    if num_texts and (int(idx.min()) < 0 or int(idx.max()) >= num_images):
        raise MetricInputError(f"text_to_image must index images 0..{num_images - 1}")
    counts = torch.bincount(idx, minlength=num_images)
    if num_images and int(counts.min()) == 0:
        lonely = torch.nonzero(counts == 0).reshape(-1)[:5].tolist()
        raise MetricInputError(f"image(s) {lonely} have no caption; every image needs at least one")
    return idx


def _check_finite(block: torch.Tensor) -> None:
    import torch

    if torch.isnan(block).any():
        raise MetricInputError("similarity scores contain NaN; ranks would be meaningless")


def _ranks_i2t(
    blocks: Iterator[tuple[int, torch.Tensor]], text_to_image: torch.Tensor, ties: str, check: bool = True
) -> torch.Tensor:
    """1-based rank of each image's best caption among all captions (negatives = other images')."""
    import torch

    ranks = []
    for start, sims in blocks:  # sims: [b, M], rows are images start..start+b
        if check:
            _check_finite(sims)
        b = sims.shape[0]
        cols = torch.nonzero((text_to_image >= start) & (text_to_image < start + b)).reshape(-1)
        rows = text_to_image[cols] - start
        pos = sims[rows, cols]
        best = torch.full((b,), -torch.inf, dtype=sims.dtype).scatter_reduce(0, rows, pos, reduce="amax")
        if ties == "pessimistic":
            ahead_all = (sims >= best.unsqueeze(1)).sum(dim=1)
            ahead_pos = torch.bincount(rows[pos >= best[rows]], minlength=b)
        else:
            ahead_all = (sims > best.unsqueeze(1)).sum(dim=1)
            ahead_pos = torch.zeros(b, dtype=torch.int64)  # no positive beats the best positive
        ranks.append(ahead_all - ahead_pos + 1)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int64)


def _ranks_t2i(
    blocks: Iterator[tuple[int, torch.Tensor]], text_to_image: torch.Tensor, ties: str, check: bool = True
) -> torch.Tensor:
    """1-based rank of each caption's image among all images."""
    import torch

    ranks = []
    for start, sims in blocks:  # sims: [b, N], rows are texts start..start+b
        if check:
            _check_finite(sims)
        b = sims.shape[0]
        pos = sims[torch.arange(b), text_to_image[start : start + b]]
        if ties == "pessimistic":
            ahead = (sims >= pos.unsqueeze(1)).sum(dim=1) - 1  # the positive itself is counted once
        else:
            ahead = (sims > pos.unsqueeze(1)).sum(dim=1)
        ranks.append(ahead + 1)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.int64)


def _summary(ranks: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    import torch

    r = ranks.to(torch.float64).numpy()
    out = {f"R@{k}": float(np.mean(r <= k)) for k in ks}
    out["median_rank"] = float(np.floor(np.median(r - 1)) + 1)
    out["mean_rank"] = float(np.mean(r))
    return out


def _result(i2t: torch.Tensor, t2i: torch.Tensor, ks: Sequence[int], return_ranks: bool) -> dict:
    res: dict = {"image_to_text": _summary(i2t, ks), "text_to_image": _summary(t2i, ks)}
    for k in ks:
        res[f"mean_R@{k}"] = (res["image_to_text"][f"R@{k}"] + res["text_to_image"][f"R@{k}"]) / 2
    res["rsum"] = sum(res["image_to_text"][f"R@{k}"] + res["text_to_image"][f"R@{k}"] for k in ks)
    if return_ranks:
        res["ranks"] = {"image_to_text": i2t.numpy(), "text_to_image": t2i.numpy()}
    return res


def _check_ties(ties: str) -> None:
    if ties not in ("pessimistic", "optimistic"):
        raise ValueError(f"ties must be 'pessimistic' or 'optimistic', got {ties!r}")


def retrieval_metrics(
    image_emb: np.ndarray | torch.Tensor,
    text_emb: np.ndarray | torch.Tensor,
    text_to_image: np.ndarray | torch.Tensor | Sequence[int],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    block_size: int = 1024,
    normalize: bool = False,
    ties: str = "pessimistic",
    return_ranks: bool = False,
) -> dict:
    """Retrieval metrics from embeddings, similarity = dot product, computed in float32 blocks.

    Args:
        image_emb: ``[N, d]`` image embeddings.
        text_emb: ``[M, d]`` text embeddings.
        text_to_image: ``[M]`` image index of every text.
        ks: the K of R@K.
        block_size: queries per block (memory ``~ 4 * block_size * max(N, M)`` bytes).
        normalize: L2-normalise both sides first (cosine similarity).
        ties: ``"pessimistic"`` (default) or ``"optimistic"``; see the module docstring.
        return_ranks: also return the per-query ranks under ``"ranks"``.

    Returns:
        ``{"image_to_text": {"R@1", ..., "median_rank", "mean_rank"}, "text_to_image": {...},
        "mean_R@K": ..., "rsum": ...}`` with recalls as fractions.
    """
    import torch

    _check_ties(ties)
    img = _as_tensor(image_emb, "image_emb")
    txt = _as_tensor(text_emb, "text_emb")
    if img.shape[1] != txt.shape[1]:
        raise MetricInputError(f"embedding sizes differ: images {img.shape[1]}, texts {txt.shape[1]}")
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    if normalize:
        img = torch.nn.functional.normalize(img, dim=1)
        txt = torch.nn.functional.normalize(txt, dim=1)
    idx = _check_index(text_to_image, img.shape[0], txt.shape[0])
    for name, t in (("image_emb", img), ("text_emb", txt)):
        if not bool(torch.isfinite(t).all()):
            raise MetricInputError(f"{name} contains NaN or infinite values; ranks would be meaningless")

    def blocks(q: torch.Tensor, k: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        kt = k.t().contiguous()
        for s in range(0, q.shape[0], block_size):
            yield s, q[s : s + block_size] @ kt

    with torch.no_grad():
        i2t = _ranks_i2t(blocks(img, txt), idx, ties, check=False)
        t2i = _ranks_t2i(blocks(txt, img), idx, ties, check=False)
    return _result(i2t, t2i, ks, return_ranks)


def retrieval_metrics_from_similarity(
    similarity: np.ndarray | torch.Tensor,
    text_to_image: np.ndarray | torch.Tensor | Sequence[int],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    block_size: int = 1024,
    ties: str = "pessimistic",
    return_ranks: bool = False,
) -> dict:
    """Retrieval metrics from a precomputed ``[N images, M texts]`` similarity matrix.

    The matrix is read in row blocks (and column blocks for text -> image) in its own dtype, so a
    float64 matrix is compared in float64 and a memory-mapped one is never copied whole.
    """
    import torch

    _check_ties(ties)
    sim = similarity if isinstance(similarity, torch.Tensor) else None
    arr = None if sim is not None else np.asarray(similarity)
    shape = tuple(sim.shape) if sim is not None else arr.shape  # type: ignore[union-attr]
    if len(shape) != 2:
        raise MetricInputError(f"similarity must be 2-D [images, texts], got shape {shape}")
    n, m = shape
    idx = _check_index(text_to_image, n, m)
    if block_size < 1:
        raise ValueError("block_size must be >= 1")

    def rows(s: int, e: int) -> torch.Tensor:
        return sim[s:e].detach().cpu() if sim is not None else torch.from_numpy(np.ascontiguousarray(arr[s:e]))

    def cols(s: int, e: int) -> torch.Tensor:
        if sim is not None:
            return sim[:, s:e].detach().cpu().t().contiguous()
        return torch.from_numpy(np.ascontiguousarray(arr[:, s:e].T))

    with torch.no_grad():
        i2t = _ranks_i2t(((s, rows(s, s + block_size)) for s in range(0, n, block_size)), idx, ties)
        t2i = _ranks_t2i(((s, cols(s, s + block_size)) for s in range(0, m, block_size)), idx, ties)
    return _result(i2t, t2i, ks, return_ranks)
