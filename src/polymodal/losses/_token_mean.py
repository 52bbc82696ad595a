"""Token-averaged cross-entropy that means the same under DDP/FSDP as in one process.

Ranks hold different numbers of scored tokens (captions differ in length, MLM masks at random). A
per-rank mean, averaged by the gradient sync, would weight a token on a rank with few tokens more than
one on a rank with many. Dividing each rank's *sum* by the global token count (times the world size,
since the sync averages) gives exactly the single-process mean over the same global batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _distributed_world() -> int:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def token_mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """``logits`` ``[N, V]``, ``labels`` ``[N]`` (-100 ignored) -> mean loss per scored token.

    Under a process group, while gradients are being recorded (training: every rank calls this), the
    mean is over the scored tokens of all ranks. Without grad (rank-0 evaluation) it stays local. Nothing
    scored gives a zero that still carries the graph, so every rank's gradient sync goes on.
    """
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing, reduction="sum")
    count = (labels != IGNORE_INDEX).sum()
    world = _distributed_world() if torch.is_grad_enabled() else 1
    if world > 1:
        import torch.distributed as dist

        count = count.clone()
        dist.all_reduce(count)
        return total * world / count.clamp(min=1)
    return total / count.clamp(min=1)


def scored_rows_cross_entropy(
    hidden: torch.Tensor, labels: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], label_smoothing: float = 0.0
) -> torch.Tensor:
    """:func:`token_mean_cross_entropy` of ``head(hidden)`` (``hidden`` ``[..., width]``, ``labels``
    ``[...]``, -100 ignored), running the head only on the scored rows.

    A vocabulary head over every position of a padded caption batch (~40% padding) or an MLM batch
    (~15% scored) computes logits nobody reads; with a 30k-word vocabulary that projection is most of
    a small decoder's step (649 -> 388 ms a captioner step, benchmarks/RESULTS.md). The loss and its
    gradients are the same. A compiled graph keeps static shapes, so under ``torch.compile`` every
    position goes through the head and the ignored ones are dropped by the loss, as before.
    """
    if torch.compiler.is_compiling():
        logits = head(hidden)
        return token_mean_cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), label_smoothing)
    scored = labels != IGNORE_INDEX
    return token_mean_cross_entropy(head(hidden[scored]), labels[scored], label_smoothing)
