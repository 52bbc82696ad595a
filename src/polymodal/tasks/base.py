"""What a task owns: which samples it uses, how a batch becomes a loss, how a model is evaluated.

Models never compute metrics and the trainer knows no task: a task adapter sits between them, so
one training loop serves retrieval, captioning, VQA and classification alike.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from polymodal.data.sample import Sample
from polymodal.data.tokenizers import TextTokenizer
from polymodal.models.factory import BuildContext

LoaderFactory = Callable[[Sequence[Sample], bool], DataLoader]  # (samples, with_images) -> loader


@dataclass
class StepOutput:
    loss: Tensor
    # values may be device tensors (detached): the trainer reads them only on the steps it logs, so a step
    # does not wait for the device to report them
    logs: dict[str, float | Tensor] = field(default_factory=dict)
    # how many items ``loss`` is the mean of on this rank (None: the batch's samples). A token-level loss
    # gives its scored tokens: accumulated micro-batches are weighted by it, so that K of them make the
    # step one batch of K times the size would make, whatever their caption lengths (train/accumulation.py)
    weight: float | None = None
    # the part of ``loss`` that divides by the items of every rank, not this rank's: ``loss`` itself for
    # polymodal's token losses, the LM/MLM terms of a multi-task loss whose other heads are per-rank means
    # of VQA, classification, ITM, None when all of it is a mean over this rank's items
    loss_over_ranks: Tensor | None = None


@dataclass
class EvalResult:
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)  # per-family scores, examples for the report


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def batch_device(batch: dict[str, Any]) -> torch.device:
    """The device a batch's tensors are on (any of them: a feature-only batch has no images or ids)."""
    for value in batch.values():
        if isinstance(value, Tensor):
            return value.device
    return torch.device("cpu")


def image_id_tensor(samples: Sequence[Sample]) -> Tensor:
    """Ints equal exactly when two samples show the same image (for ITC masking).

    A stable 63-bit hash of the id, not a per-batch index: under DDP the ids of all ranks are
    gathered together and must mean the same image everywhere (Python's hash() is salted per process).
    """
    def key(s: Sample) -> int:
        digest = hashlib.blake2b(s.image_key.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") >> 1

    return torch.tensor([key(s) for s in samples], dtype=torch.int64)


def is_caption(sample: Sample) -> bool:
    """An image with a caption (not a question, not a labelled statement)."""
    return sample.has_media and bool(sample.text) and not sample.answers and sample.label is None


def caption_rejection(sample: Sample) -> str | None:
    """Why a record that is neither a question nor a labelled statement is no usable caption (None:
    it is one, or it is a record of another kind)."""
    if sample.answers or sample.label is not None:
        return None
    if not sample.text and sample.has_media and "objects" not in sample.meta:  # a scene graph has no text by design
        return "an image without a caption"
    if sample.text and not sample.has_media:
        return "a caption without an image"
    return None


def group_by_image(samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """Samples per distinct image, in first-seen order (evaluation embeds or captions each image once)."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.image_key, []).append(s)
    return groups


class Task:
    name: str = "task"
    model_type: str = ""
    scores_captions: bool = False  # its evaluation runs caption metrics (METEOR's jar is then started early)

    def select(self, sample: Sample) -> bool:
        """Does this task train on this sample? (A world split mixes captions, questions, statements.)"""
        raise NotImplementedError

    def rejection(self, sample: Sample) -> str | None:
        """Why :meth:`select` leaves ``sample`` out, when that points at a broken record rather than at a
        record of another kind (which every task of a mixed source leaves out by design). The reasons are
        counted in the log, so a column of 'n/a' labels or a shard of images without captions does not
        vanish without a word. None: the record is of another kind."""
        return None

    def check_eval_targets(self, samples: Sequence[Sample], where: str) -> None:
        """Raise when ``samples`` cannot be scored meaningfully by this task's model (see classification)."""

    def prepare(self, train: Sequence[Sample]) -> None:
        """Learn what the model's shape depends on (answer vocabulary, class names) from training data."""

    def context(self, tokenizer: TextTokenizer) -> BuildContext:
        return BuildContext(tokenizer=tokenizer)

    def model_overrides(self) -> dict[str, Any]:
        """Model config fields that the training data decides (e.g. the number of classes)."""
        return {}

    def state(self) -> dict[str, Any]:
        """JSON-able state saved with checkpoints (e.g. the answer vocabulary)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def attach(self, model: nn.Module, model_config: Any, eval_processor: Any) -> None:
        """Learn what the built model decides (an assistant's image tokens and context window)."""

    def train_items(self, samples: Sequence[Sample]) -> Sequence[Any]:
        """What one training index draws: a sample by default; a multi-task item groups an image's texts."""
        return samples

    def train_dataset(self, items: Sequence[Any], processor: Any, flip_prob: float, seed: int) -> tuple[Any, Any] | None:
        """``(dataset, collate_fn)`` over :meth:`train_items`, or None for the standard sample loader."""
        return None

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        raise NotImplementedError

    def targets_known(self, samples: Sequence[Sample]) -> list[tuple[str, bool, str] | None]:
        """Per sample, whether the task's answers/classes cover its target, as (what they are, covered,
        the target): what heads inherited from another run can learn. None where a target needs no vocabulary."""
        return [None] * len(samples)

    def keeps_negatives_across(self, model: nn.Module) -> bool:
        """Can :meth:`accumulated_loss` score a whole accumulated batch at once on this (unwrapped)
        model? Contrastive losses need it: summed micro-batch losses only see a micro-batch's negatives."""
        return False

    def accumulated_loss(
        self,
        model: nn.Module,
        core: nn.Module,
        micro_batches: Sequence[dict[str, Any]],
        *,
        scale_loss: Callable[[Tensor], Tensor] | None = None,
        no_sync: Callable[[], Any] | None = None,
    ) -> StepOutput:
        """One optimizer step's loss over all ``micro_batches`` together, its gradients already in
        ``.grad``. ``model`` is what runs forward (DDP/compiled wrapper), ``core`` the module inside."""
        raise NotImplementedError(f"task {self.name!r} accumulates micro-batch losses")

    def evaluate(self, model: nn.Module, samples: Sequence[Sample], make_loader: LoaderFactory, device: torch.device) -> EvalResult:
        raise NotImplementedError
