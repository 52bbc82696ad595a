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
exact across ranks; they need ``n_world / N``. A multi-task loss holds both kinds (LM and MLM token means
beside per-rank means of VQA, classification, ITM): each part takes its own share, which with one
micro-batch a step makes both parts exact on any number of ranks (a per-rank mean over something other
than the loss's count, such as the multitask ``obj`` head's objects, stays weighed by that count). Across accumulated micro-batches both
parts are weighed by the loss's one count (a multi-task model's images), so the token means there are
weighed by images, not by tokens: exact for micro-batches of like caption lengths, close otherwise.

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
        per_rank, over_ranks = self.shares(items, items_all_ranks)
        return over_ranks if mean_over_ranks else per_rank

    def weigh(self, loss: torch.Tensor, items: float, items_all_ranks: float, over_ranks: torch.Tensor | None = None) -> torch.Tensor:
        """``loss`` times its micro-batch's share. ``over_ranks`` is the part of ``loss`` that already
        divides by every rank's items (``loss`` itself when all of it does; a multi-task loss adds LM or
        MLM token means to per-rank means), which takes the other share; the rest is a mean over this
        rank's ``items``. With one micro-batch a step both parts are exact, whatever the ranks hold."""
        per_rank, over = self.shares(items, items_all_ranks)
        if over_ranks is None:
            return loss * per_rank
        if over_ranks is loss or over == per_rank:  # all of one kind, or one process: one share serves
            return loss * over
        return loss * per_rank + over_ranks * (over - per_rank)

    def shares(self, items: float, items_all_ranks: float) -> tuple[float, float]:
        """Records one micro-batch of the step and gives its two factors: for a loss that is a mean over
        this rank's ``items``, and for one that divides by ``items_all_ranks``, the items of every rank."""
        if items < 0:
            raise ValueError(f"a micro-batch's loss weight must be >= 0 (the items its loss averages over), got {items}")
        if self.accumulation == 1:  # one micro-batch is the whole step: its total is known, no guess needed
            if self.world == 1 or not items_all_ranks:
                return 1.0, 1.0  # the loss as it is
            return items * self.world / items_all_ranks, 1.0  # 1.0 both when every rank holds as many items
        self._total += items_all_ranks
        self._counted += bool(items_all_ranks)
        if not self._unit:
            self._unit = items_all_ranks
        if not self._unit:
            return 0.0, 0.0
        guessed = self._unit * self.accumulation
        return items * self.world / guessed, items_all_ranks / guessed

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
        # per-rank part x items, items, over-ranks part x its weight, that weight, plain loss sum, losses
        self._sums = [0.0] * 6

    def add(self, loss: float, items: float, *, over_ranks: float = 0.0, items_all_ranks: float = 0.0) -> None:
        """``items``: what this rank's loss is a mean of (1 for a whole-step loss). ``over_ranks``: the
        part of ``loss`` that divides by the items of every rank instead (all of it for a token loss), of
        which ``items_all_ranks`` is the sum; every rank weighs that part alike."""
        shared = items_all_ranks / self.world
        for i, value in enumerate(((loss - over_ranks) * items, items, over_ranks * shared, shared, loss, 1.0)):
            self._sums[i] += value

    def mean(self, device: torch.device) -> float:
        """The window's mean loss, and a fresh window. With several ranks this is a collective."""
        sums, self._sums = self._sums, [0.0] * 6
        if self.world > 1:
            import torch.distributed as dist

            totals = torch.tensor(sums, dtype=torch.float64, device=device)
            dist.all_reduce(totals)
            sums = totals.tolist()
        own, items, shared, shared_items, plain, count = sums
        if items or shared_items:
            return (own / items if items else 0.0) + (shared / shared_items if shared_items else 0.0)
        return plain / count if count else float("nan")
