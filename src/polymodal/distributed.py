"""Process-group helpers that degrade to single-process no-ops.

Losses call these unconditionally, so the same code path runs on a laptop and under torchrun: when
``torch.distributed`` is not initialised, ``rank() == 0``, ``world_size() == 1`` and the gathers
return their input unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

__all__ = ["all_gather_no_grad", "all_gather_with_grad", "average_gradients", "gather_sizes", "is_dist", "rank", "rank_rows", "world_size"]


def is_dist() -> bool:
    """True only when a default process group exists (so collectives would not raise)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group, 0 when not distributed."""
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    """Number of processes in the default group, 1 when not distributed."""
    return dist.get_world_size() if is_dist() else 1


def gather_sizes(local: int, device: torch.device) -> list[int]:
    """Every rank's size along dim 0 (a collective): ranks may hold different numbers of rows, e.g. when
    some of a batch's images could not be read on one rank only."""
    if not is_dist() or world_size() == 1:
        return [local]
    size = torch.tensor([local], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in torch.cat(sizes).tolist()]


def rank_rows(sizes: list[int]) -> tuple[int, int]:
    """``(start, stop)``: this rank's rows in the concatenation of every rank's ``sizes``."""
    r = rank()
    return sum(sizes[:r]), sum(sizes[: r + 1])


def _gather(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """``all_gather`` needs equal buffers: shorter ranks pad to the longest, and the padding is cut off."""
    tensor = tensor.contiguous()
    longest = max(sizes)
    if tensor.shape[0] < longest:
        tensor = torch.cat([tensor, tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))])
    parts = [torch.empty_like(tensor) for _ in sizes]
    dist.all_gather(parts, tensor)
    if all(n == longest for n in sizes):
        return torch.cat(parts, dim=0)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands every rank the gradient of *all* ranks' losses for its slice.

    Each rank uses the gathered tensor in its own loss, so the gradient that belongs to rank r's slice
    is spread over every rank's graph. Summing the incoming gradients across ranks (all_reduce) and
    keeping this rank's slice recovers d(sum of all ranks' losses)/d(local input). DDP then averages
    parameter gradients over ranks, which turns that sum into the gradient of the mean loss.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:  # type: ignore[override]
        ctx.start, ctx.stop = rank_rows(sizes)
        return _gather(tensor, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop], None


def all_gather_with_grad(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping the autograd graph.

    Ranks may pass different numbers of rows; ``sizes`` (from :func:`gather_sizes`) saves asking for
    them again when several tensors of one batch are gathered. Returns ``tensor`` itself when not
    distributed.
    """
    if not is_dist() or world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor, sizes if sizes is not None else gather_sizes(tensor.shape[0], tensor.device))


def all_gather_no_grad(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 without gradient (ids, labels, metrics);
    ``sizes`` as in :func:`all_gather_with_grad`."""
    if not is_dist() or world_size() == 1:
        return tensor
    with torch.no_grad():
        return _gather(tensor.detach(), sizes if sizes is not None else gather_sizes(tensor.shape[0], tensor.device))


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over ranks in place, for parameters that DDP does not manage.

    The learnable temperature of ``ITCLoss`` lives outside the DDP-wrapped model; with
    ``local_loss=True`` each rank computes a different part of the loss, so its gradient differs
    per rank and must be averaged before the optimiser step (without ``local_loss`` every rank
    already holds the same value and this is a harmless no-op in effect). No-op when not distributed.
    """
    if not is_dist() or world_size() == 1:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad /= world_size()
