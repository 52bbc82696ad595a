"""VQA as multi-label classification over an answer vocabulary with soft scores.

Target convention: an answer given by ``n`` of the human annotators scores ``min(n / 3, 1)`` - the
simplified VQA accuracy (the official metric averages this over the 10 leave-one-out subsets of the
10 answers; the simple form is what most training code, e.g. ViLT, uses as the target). Answers
outside the vocabulary are dropped, so a question whose answers are all out of vocabulary has an
all-zero target.

Loss convention (bottom-up-attention / ViLT): ``BCE-with-logits`` averaged over all
``batch x answers`` elements and then multiplied by the number of answers - equivalently, summed
over answers and averaged over the batch. Without that factor the loss (and its gradient) shrinks
with the vocabulary size, and learning rates stop transferring between vocabularies.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from polymodal.losses._checks import LossInputError, check_rank, fmt_shape

__all__ = ["vqa_bce_loss", "vqa_score", "vqa_soft_scores", "vqa_soft_targets"]


def vqa_score(count: int) -> float:
    """Soft score of an answer given by ``count`` humans: 0, 1/3, 2/3, then 1 from three on."""
    if count < 0:
        raise LossInputError(f"vqa: an answer count cannot be negative, got {count}")
    return min(count / 3.0, 1.0)


def _as_index(answer_vocab: Mapping[str, int] | Sequence[str]) -> Mapping[str, int]:
    if isinstance(answer_vocab, Mapping):
        return answer_vocab
    return {answer: i for i, answer in enumerate(answer_vocab)}


def vqa_soft_scores(
    human_answers: Iterable[str],
    answer_vocab: Mapping[str, int] | Sequence[str],
    *,
    normalize: Callable[[str], str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The ``[num_answers]`` target of one question from its human answers.

    Args:
        human_answers: the annotators' answers (VQA v2: ten), repeats counted.
        answer_vocab: answer -> index mapping, or the list of answers in index order.
        normalize: applied to each human answer before lookup (pass the VQA answer normaliser so
            "Two" and "2" count together); the vocabulary is assumed to be normalised already.
    """
    return vqa_soft_targets([human_answers], answer_vocab, normalize=normalize, dtype=dtype)[0]


def _scored(human_answers: Iterable[str], index: Mapping[str, int], normalize: Callable[[str], str] | None) -> dict[int, float]:
    """Answer index -> soft score of one question's in-vocabulary answers."""
    answers = [normalize(a) if normalize else a for a in human_answers]
    # a single-answer dataset (CLEVR, GQA, JSONL) gives its one answer full credit, as its accuracy does
    counts = Counter(answers) if len(answers) != 1 else Counter({answers[0]: 3})
    return {index[answer]: vqa_score(count) for answer, count in counts.items() if answer in index}


def vqa_soft_targets(
    batch_answers: Sequence[Iterable[str]],
    answer_vocab: Mapping[str, int] | Sequence[str],
    *,
    normalize: Callable[[str], str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``vqa_soft_scores`` of a batch of questions, ``[batch, num_answers]``.

    Built with one indexed write: it runs in the training step, where a tensor write per answer
    (a VQA v2 question has up to ten) cost milliseconds per batch."""
    index = _as_index(answer_vocab)
    rows: list[int] = []
    cols: list[int] = []
    values: list[float] = []
    for row, answers in enumerate(batch_answers):
        for col, value in _scored(answers, index, normalize).items():
            rows.append(row)
            cols.append(col)
            values.append(value)
    target = torch.zeros(len(batch_answers), len(index), dtype=dtype)
    target[rows, cols] = torch.tensor(values, dtype=dtype)
    return target


def vqa_bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits against soft scores, times the number of answers (see module doc)."""
    check_rank("vqa: logits", logits, ("batch", "num_answers"))
    if targets.shape != logits.shape:
        raise LossInputError(
            f"vqa: targets: expected {fmt_shape(tuple(logits.shape))} like logits, got "
            f"{fmt_shape(tuple(targets.shape))}"
        )
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype)) * logits.shape[1]
