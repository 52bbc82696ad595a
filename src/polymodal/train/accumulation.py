"""How the micro-batches of one optimizer step are weighed, so that K of them make the step one batch
of all their items would make, on one process or many.

A micro-batch's loss is a mean over its items: samples, or scored tokens for a captioning or language
model loss. The step's gradient must be the mean over every item of the step on every rank,
``sum n grad(loss) / N``, not the mean of the K micro-batch means, which over-weighs the items of a short
micro-batch (the epoch's last, one thinned by unreadable samples) and, for token losses, the tokens of
short captions.

Two kinds of mean meet here. Most losses are means over this rank's items, and DDP then averages the
ranks' gradients; such a loss needs the share ``W n_rank / N`` (``W`` ranks). polymodal's token losses
divide by the tokens of every rank instead (``losses/_token_mean.py``), so that one micro-batch is already
exact across ranks; they need ``n_world / N``.

``N`` is known only after the last micro-batch, and that micro-batch's gradient must already be in
``.grad`` by then, so each backward pass takes a provisional share against a unit (the mean items per
micro-batch of the previous step; of the first micro-batch in a run's, or a resumed run's, first step), and the summed gradient
is rescaled once, before clipping, by the ratio of the guess to the true total. A unit from the previous
step keeps every share near ``1/K``: with fp16 loss scaling, a share far above 1 (a tiny first
micro-batch as the unit) would overflow the scaled gradients and skip the step.
"""

from __future__ import annotations

import torch


class MicroBatchWeights:
    """Shares for one optimizer step's micro-batches; :meth:`correction` closes the step."""

    def __init__(self, accumulation: int, world: int = 1) -> None:
        self.accumulation = accumulation
        self.world = world
        self._unit = 0.0  # items of a typical micro-batch, summed over ranks: the provisional shares' unit
        self._total = 0.0  # items of the step so far, summed over ranks
        self._counted = 0  # micro-batches of the step that had items

    def share(self, items: float, items_all_ranks: float, *, mean_over_ranks: bool = False) -> float:
        """The factor for a micro-batch loss that is a mean over ``items`` on this rank (``items_all_ranks``
        summed over every rank; ``mean_over_ranks``: the loss already divides by that sum)."""
        if items < 0:
            raise ValueError(f"a micro-batch's loss weight must be >= 0 (the items its loss averages over), got {items}")
        if self.accumulation == 1:  # one micro-batch is the whole step: its total is known, no guess needed
            if mean_over_ranks or self.world == 1 or not items_all_ranks:
                return 1.0  # the loss as it is
            return items * self.world / items_all_ranks  # exactly 1.0 when every rank holds as many items
        self._total += items_all_ranks
        self._counted += bool(items_all_ranks)
        if not self._unit:
            self._unit = items_all_ranks
        if not self._unit:
            return 0.0
        mine = items_all_ranks if mean_over_ranks else items * self.world
        return mine / (self._unit * self.accumulation)

    def correction(self) -> float:
        """The factor for the step's summed gradient, ``unit K / N``; resets for the next step."""
        guessed, total, counted = self._unit * self.accumulation, self._total, self._counted
        self._total, self._counted = 0.0, 0
        if self.accumulation == 1 or not total:
            return 1.0
        if counted == self.accumulation:  # a full step: an epoch's short last one would make the unit too small
            self._unit = total / counted  # the next step's unit
        return guessed / total


class LossWindow:
    """The training losses since the last log line, averaged as the steps weigh them: over every item
    (sample or token) of every rank, so the logged loss is the one a single process would log."""

    def __init__(self, world: int = 1) -> None:
        self.world = world
        self._sums = [0.0, 0.0, 0.0, 0.0]  # loss x items, items, plain loss sum, losses

    def add(self, loss: float, items: float) -> None:
        """``items``: what this rank's loss stands for: its own items for a mean over this rank, the
        items of every rank divided by the ranks for a mean over every rank, 1 for a whole-step loss."""
        for i, value in enumerate((loss * items, items, loss, 1.0)):
            self._sums[i] += value

    def mean(self, device: torch.device) -> float:
        """The window's mean loss, and a fresh window. With several ranks this is a collective."""
        sums, self._sums = self._sums, [0.0, 0.0, 0.0, 0.0]
        if self.world > 1:
            import torch.distributed as dist

            totals = torch.tensor(sums, dtype=torch.float64, device=device)
            dist.all_reduce(totals)
            sums = totals.tolist()
        weighted, items, plain, count = sums
        if items:
            return weighted / items
        return plain / count if count else float("nan")
