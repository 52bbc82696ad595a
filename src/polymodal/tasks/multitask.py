"""Multi-task training on images that carry captions, questions and labelled statements at once.

A training item is one *image* with everything known about it; each time the image is drawn, one of
its captions, one of its questions and one of its statements are picked (seeded by epoch and index,
so a resumed run draws the same ones). The image is decoded and encoded once for all four objectives.
Evaluation splits the samples by kind and hands each kind to its own task's evaluation, so the
numbers are the same ones the single-task models report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from polymodal.data.dataset import open_or_skip
from polymodal.data.processors import CropBox, ImageProcessor, consistent_hflip, swap_left_right
from polymodal.data.sample import Sample
from polymodal.data.tokenizers import TextTokenizer
from polymodal.errors import DataError
from polymodal.losses.mlm import IGNORE_INDEX
from polymodal.metrics import classification_scores, confusion_matrix
from polymodal.models.factory import BuildContext
from polymodal.models.grounded_readout import MAX_HOPS, RELATION_SLOTS, PlanTargets
from polymodal.models.object_head import ObjectVocab
from polymodal.models.relations import RELATIONS
from polymodal.models.vqa import AnswerVocab
from polymodal.tasks.base import (
    EvalResult,
    LoaderFactory,
    StepOutput,
    Task,
    group_by_image,
    image_id_tensor,
    is_caption,
)
from polymodal.tasks.captioning import CaptioningTask
from polymodal.tasks.classification import ClassificationTask
from polymodal.tasks.retrieval import RetrievalTask
from polymodal.tasks.vqa import VQATask

log = logging.getLogger(__name__)

KINDS = ("caption", "question", "statement")
RELATION_INDEX = {name: i for i, name in enumerate(RELATIONS)}
CLASSIFIER_VIEWS = ("joint", "text_only", "image_only")


def kind_of(sample: Sample) -> str | None:
    """caption, question, statement or scene (a scene graph: the image's objects, no text)."""
    if sample.has_image and not sample.text and "objects" in sample.meta:
        return "scene"
    if not sample.has_image or not sample.text:
        return None
    if sample.answers:
        return "question"
    if sample.label is not None:
        return "statement"
    return "caption" if is_caption(sample) else None


@dataclass(frozen=True)
class ImageItem:
    """One training image and all of its texts, by kind."""

    captions: tuple[Sample, ...]
    questions: tuple[Sample, ...]
    statements: tuple[Sample, ...]
    objects: tuple[dict[str, Any], ...] | None = None  # from the image's scene graph, when it has one


@dataclass
class LoadedItem:
    image: torch.Tensor
    caption: Sample
    caption_text: str
    question_texts: list[str]
    answers: list[tuple[str, ...]]  # one tuple per question
    statement_text: str
    label: Any
    objects: list[dict[str, Any]] | None = None
    # per question, then the statement: indices into ``objects`` of what the text is about (None: not annotated)
    grounding: list[tuple[int, ...] | None] | None = None
    # per question, then the statement: the text's reasoning plan (see :func:`plan_targets`; None: not annotated)
    plans: list[Plan | None] | None = None


def image_items(samples: Sequence[Sample]) -> tuple[list[ImageItem], int]:
    """Items for images that have all three kinds of text, and how many images lacked one."""
    items, incomplete = [], 0
    for group in group_by_image(samples).values():
        by_kind: dict[str, list[Sample]] = {k: [] for k in (*KINDS, "scene")}
        for s in group:
            k = kind_of(s)
            if k is not None:
                by_kind[k].append(s)
        if all(by_kind[k] for k in KINDS):
            objects = tuple(by_kind["scene"][0].meta["objects"]) if by_kind["scene"] else None
            items.append(ImageItem(tuple(by_kind["caption"]), tuple(by_kind["question"]), tuple(by_kind["statement"]), objects))
        else:
            incomplete += 1
    return items, incomplete


class ImageItemDataset(Dataset):
    """Decodes each image once per draw and picks one text of each kind with a per-(seed, index) RNG."""

    def __init__(self, items: Sequence[ImageItem], processor: ImageProcessor, flip_prob: float = 0.0, seed: int = 0, questions_per_image: int = 1) -> None:
        self.items, self.processor, self.flip_prob, self.seed = items, processor, flip_prob, seed
        self.questions_per_image = questions_per_image

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> LoadedItem | None:
        item = self.items[index]
        rng = np.random.default_rng([self.seed, index])
        caption = item.captions[int(rng.integers(len(item.captions)))]
        k, n = self.questions_per_image, len(item.questions)
        questions = [item.questions[int(i)] for i in rng.choice(n, size=k, replace=n < k)]
        statement = item.statements[int(rng.integers(len(item.statements)))]
        img = open_or_skip(caption, self.processor)
        if img is None:
            return None
        caption_text, statement_text = caption.text or "", statement.text or ""
        question_texts = [q.text or "" for q in questions]
        answers = [tuple(q.answers) for q in questions]
        objects = None if item.objects is None else list(item.objects)  # records are never mutated: flips and crops make new ones
        grounding = [_grounding_of(t, len(objects)) for t in (*questions, statement)] if objects is not None else None
        plans = [_plan_of(t, len(objects)) for t in (*questions, statement)] if objects is not None else None
        if self.flip_prob > 0 and rng.random() < self.flip_prob:
            img = consistent_hflip(img, None).image
            caption_text, statement_text = swap_left_right(caption_text), swap_left_right(statement_text)
            question_texts = [swap_left_right(t) for t in question_texts]
            answers = [tuple(swap_left_right(a) for a in ans) for ans in answers]
            objects = None if objects is None else [o | {"x": 1.0 - o["x"]} for o in objects]
            plans = None if plans is None else [None if p is None else p.flipped() for p in plans]
        processed = self.processor.process(img, rng)
        if objects is not None and processed.box is not None:
            objects, renumber = _inside(objects, processed.box)
            grounding = [None if g is None else tuple(renumber[i] for i in g if i in renumber) for g in grounding]
            plans = None if plans is None else [None if p is None else p.renumbered(renumber) for p in plans]
        return LoadedItem(processed.pixels, caption, caption_text, question_texts, answers, statement_text, statement.label, objects, grounding, plans)


def _grounding_of(sample: Sample, objects: int) -> tuple[int, ...] | None:
    """The ``grounding`` annotation of a question or statement: indices into its image's scene graph of ``objects`` objects."""
    found = sample.meta.get("grounding")
    if found is None:
        return None
    if not isinstance(found, (list, tuple)) or not all(isinstance(i, int) and i >= 0 for i in found):
        raise DataError(f"{sample.origin}: 'grounding' must be a list of object indices (integers >= 0) into the image's scene graph, got {found!r}")
    if any(i >= objects for i in found):
        raise DataError(f"{sample.origin}: a grounding annotation names object {max(found)} but the image's scene graph has {objects} objects")
    return tuple(found)


@dataclass(frozen=True)
class Plan:
    """A text's reasoning as :func:`polymodal.data.world.programs.reasoning_plan` writes it: the objects its
    words describe (``first``), the relations followed from them (``hops``, names from
    :data:`polymodal.models.relations.RELATIONS`), the other side of a comparison (``second``) and the
    relation asked between the two (``relation``)."""

    first: tuple[int, ...]
    hops: tuple[str, ...]
    second: tuple[int, ...]
    relation: str | None

    def flipped(self) -> Plan:
        """The plan of the mirrored image, whose text says "right" for "left"."""
        return replace(self, hops=tuple(swap_left_right(h) for h in self.hops), relation=None if self.relation is None else swap_left_right(self.relation))

    def renumbered(self, renumber: dict[int, int]) -> Plan:
        """The plan after a crop: objects that left the image are dropped, the rest renumbered."""
        return replace(self, first=tuple(renumber[i] for i in self.first if i in renumber), second=tuple(renumber[i] for i in self.second if i in renumber))


def _plan_of(sample: Sample, objects: int) -> Plan | None:
    """The ``plan`` annotation of a question or statement, checked against its image's ``objects`` objects."""
    found = sample.meta.get("plan")
    if found is None:
        return None
    expected = (
        "an object with 'first' and 'second' (lists of object indices into the image's scene graph), 'hops' (a list of at most "
        f"{MAX_HOPS} relation names) and 'relation' (a relation name or null); relation names: {list(RELATIONS)}"
    )
    if not isinstance(found, dict) or set(found) != {"first", "second", "hops", "relation"} or not all(isinstance(found[k], list) for k in ("first", "second", "hops")):
        raise DataError(f"{sample.origin}: 'plan' must be {expected}, got {found!r}")
    chosen = [*found["first"], *found["second"]]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in chosen):
        raise DataError(f"{sample.origin}: 'plan' must be {expected}, got {found!r}")
    if chosen and max(chosen) >= objects:
        raise DataError(f"{sample.origin}: a plan names object {max(chosen)} but the image's scene graph has {objects} objects")
    names = [*found["hops"], *([] if found["relation"] is None else [found["relation"]])]
    if len(found["hops"]) > MAX_HOPS or any(n not in RELATIONS for n in names):
        raise DataError(f"{sample.origin}: 'plan' must be {expected}, got {found!r}")
    return Plan(tuple(found["first"]), tuple(found["hops"]), tuple(found["second"]), found["relation"])


def _inside(objects: list[dict[str, Any]], box: CropBox) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """The objects whose centres survived the crop, at their positions in the cropped image, and each kept
    object's new index by its old one."""
    kept, renumber = [], {}
    for i, o in enumerate(objects):
        moved = box.point(o["x"], o["y"])
        if moved is not None:
            renumber[i] = len(kept)
            kept.append(o | {"x": moved[0], "y": moved[1]})
    return kept, renumber


class ImageItemCollator:
    def __init__(
        self, tokenizer: TextTokenizer, max_length: int, class_index: dict[str, int], objects: ObjectVocab | None = None, answers: AnswerVocab | None = None
    ) -> None:
        """With ``answers``, batches carry the questions' soft ``answer_targets``: the string work runs in the
        loader (its workers, when there are any), and a compiled model is given tensors only."""
        self.tokenizer, self.max_length, self.class_index = tokenizer, max_length, class_index
        self.objects, self.answers = objects, answers

    def __call__(self, items: list[LoadedItem | None]) -> dict[str, Any]:
        kept = [it for it in items if it is not None]
        batch: dict[str, Any] = {"num_skipped": len(items) - len(kept), "samples": [it.caption for it in kept]}
        if not kept:
            return batch
        batch["image"] = torch.stack([it.image for it in kept])
        for field, texts in (
            ("caption", [it.caption_text for it in kept]),
            ("question", [t for it in kept for t in it.question_texts]),  # image-major
            ("statement", [it.statement_text for it in kept]),
        ):
            enc = self.tokenizer.encode(texts, self.max_length)
            batch[f"{field}_ids"], batch[f"{field}_mask"] = enc.input_ids, enc.attention_mask
        batch["answers"] = [a for it in kept for a in it.answers]
        if self.answers is not None:
            batch["answer_targets"] = self.answers.targets(batch["answers"])
        batch["labels"] = torch.tensor([self.class_index.get(str(it.label), -100) for it in kept])
        batch["image_ids"] = image_id_tensor(batch["samples"])
        if self.objects is not None:
            batch["object_attributes"], batch["object_xy"], batch["object_annotated"] = self.objects.targets([it.objects for it in kept])
            batch["grounding"] = grounding_targets(kept, batch["object_xy"].shape[1])
            if any(it.plans is not None and any(p is not None for p in it.plans) for it in kept):
                batch["plan"] = plan_targets(kept, batch["object_xy"].shape[1])
        return batch


def _text_rows(items: Sequence[LoadedItem]) -> list[tuple[LoadedItem, int]]:
    """(item, text index) in the model's fused order: every image's questions, image-major, then every statement."""
    per_image = len(items[0].question_texts)
    return [(it, q) for it in items for q in range(per_image)] + [(it, per_image) for it in items]


def plan_targets(items: Sequence[LoadedItem], max_objects: int) -> PlanTargets:
    """The rows' plans as targets (rows as :func:`grounding_targets`): ``first``/``second [R, M]`` 1/0 per
    object, ``hops [R]`` how many relations are followed, ``relations [R, RELATION_SLOTS]`` the index in
    RELATIONS of each hop and of the relation asked between the selections; ``IGNORE_INDEX`` where not
    annotated or not used."""
    rows = _text_rows(items)
    # numpy arrays while filling: an element write to a tensor costs microseconds, and a batch has
    # thousands (this runs in the training loop's data path)
    first = np.full((len(rows), max_objects), float(IGNORE_INDEX), dtype=np.float32)
    second = first.copy()
    hops = np.full(len(rows), IGNORE_INDEX, dtype=np.int64)
    relations = np.full((len(rows), RELATION_SLOTS), IGNORE_INDEX, dtype=np.int64)
    for r, (it, k) in enumerate(rows):
        plan = None if it.plans is None else it.plans[k]
        if plan is None:
            continue
        for target, chosen in ((first, plan.first), (second, plan.second)):
            target[r, : len(it.objects)] = 0.0
            target[r, list(chosen)] = 1.0
        hops[r] = len(plan.hops)
        for h, name in enumerate(plan.hops):
            relations[r, h] = RELATION_INDEX[name]
        if plan.relation is not None:
            relations[r, MAX_HOPS] = RELATION_INDEX[plan.relation]
    first, second, hops, relations = (torch.from_numpy(a) for a in (first, second, hops, relations))
    return PlanTargets(first, second, hops, relations)


def grounding_targets(items: Sequence[LoadedItem], max_objects: int) -> Tensor:
    """``[R, M]`` rows in the model's fused order (every image's questions, image-major, then every
    statement): 1 for the objects a text is about, 0 for the image's other objects, ``IGNORE_INDEX``
    for padding and for texts without a grounding annotation."""
    rows = _text_rows(items)
    target = np.full((len(rows), max_objects), float(IGNORE_INDEX), dtype=np.float32)  # numpy: see plan_targets
    for r, (it, k) in enumerate(rows):
        chosen = None if it.grounding is None else it.grounding[k]  # an item has grounding only with its objects
        if chosen is None:
            continue
        target[r, : len(it.objects)] = 0.0
        target[r, list(chosen)] = 1.0
    return torch.from_numpy(target)


class MultiTaskTask(Task):
    name = "multitask"
    model_type = "multitask"
    scores_captions = True

    def __init__(self, tokenizer: Any, max_length: int, max_new_tokens: int = 40, questions_per_image: int = 1) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.questions_per_image = questions_per_image
        self.retrieval = RetrievalTask(tokenizer, max_length)
        self.captioning = CaptioningTask(tokenizer, max_new_tokens=max_new_tokens)
        self.vqa = VQATask()
        self.classification = ClassificationTask()
        self.objects: ObjectVocab | None = None

    def select(self, sample: Sample) -> bool:
        return kind_of(sample) is not None

    def rejection(self, sample: Sample) -> str | None:
        if sample.text and not sample.has_image:
            return "a text without an image"
        return "an image without a text" if sample.has_image else None

    def prepare(self, train: Sequence[Sample]) -> None:
        self.vqa.prepare([s for s in train if kind_of(s) == "question"])
        self.classification.prepare([s for s in train if kind_of(s) == "statement"])
        if self.objects is None:  # kept when loaded (resume, init_from): the object heads were built on it
            objects = [o for s in train if kind_of(s) == "scene" for o in s.meta["objects"]]
            self.objects = ObjectVocab.build(objects) if objects else None

    def targets_known(self, samples: Sequence[Sample]) -> list[tuple[str, bool, str] | None]:
        by_kind = {"question": self.vqa.targets_known(samples), "statement": self.classification.targets_known(samples)}
        return [by_kind[kind][i] if (kind := kind_of(s)) in by_kind else None for i, s in enumerate(samples)]

    def context(self, tokenizer: TextTokenizer) -> BuildContext:
        return BuildContext(tokenizer=tokenizer, answer_vocab=self.vqa.vocab, object_vocab=self.objects)

    def model_overrides(self) -> dict[str, Any]:
        return {"num_classes": len(self.classification.classes)}

    def state(self) -> dict[str, Any]:
        objects = {"object_attributes": self.objects.state()} if self.objects is not None else {}
        return self.vqa.state() | self.classification.state() | objects

    def load_state(self, state: dict[str, Any]) -> None:
        self.vqa.load_state(state)
        self.classification.load_state(state)
        self.objects = ObjectVocab(state["object_attributes"]) if state.get("object_attributes") else None

    # ------------------------------------------------------------------ training data
    def train_items(self, samples: Sequence[Sample]) -> list[ImageItem]:
        items, incomplete = image_items(samples)
        if incomplete:
            log.warning("multitask: %d training image(s) lack a caption, a question or a labelled statement and are not used", incomplete)
        if not items:
            raise DataError(
                "multitask training needs images that each have a caption, a question with answers and a labelled "
                "statement (the built-in world has all three); none of the training images has all of them"
            )
        return items

    def train_dataset(self, items: Sequence[Any], processor: ImageProcessor, flip_prob: float, seed: int) -> tuple[Dataset, Any]:
        index = {c: i for i, c in enumerate(self.classification.classes)}
        dataset = ImageItemDataset(items, processor, flip_prob, seed, self.questions_per_image)
        return dataset, ImageItemCollator(self.tokenizer, self.max_length, index, self.objects, self.vqa.vocab)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        out = model(
            batch["image"], batch["caption_ids"], batch["caption_mask"], batch["question_ids"], batch["question_mask"],
            batch.get("answer_targets", batch["answers"]), batch["statement_ids"], batch["statement_mask"], batch["labels"], image_ids=batch["image_ids"],
            object_attributes=batch.get("object_attributes"), object_xy=batch.get("object_xy"),
            object_annotated=batch.get("object_annotated"), grounding=batch.get("grounding"), plan=batch.get("plan"),
        )
        logs = {f"loss_{k}": v.detach() for k, v in out.parts.items()} | {f"acc_{k}": v.detach() for k, v in out.accuracy.items()}
        return StepOutput(out.loss, logs, loss_over_ranks=out.loss_over_ranks)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate_statements(self, model: nn.Module, samples: Sequence[Sample], make_loader: LoaderFactory, device: torch.device) -> EvalResult:
        """Accuracy of the joint head and of both single-modality probes, with the joint confusion matrix."""
        truth: list[int] = []
        preds: dict[str, list[int]] = {v: [] for v in CLASSIFIER_VIEWS}
        for b in make_loader(samples, True):
            if "image" not in b:
                continue
            probs = model.classify(b["image"].to(device), b["text_ids"].to(device), b["text_mask"].to(device))
            for view in CLASSIFIER_VIEWS:
                preds[view] += probs[view].argmax(-1).tolist()
            truth += self.classification.targets(b["samples"]).tolist()
        if len(truth) != len(samples):
            raise DataError(f"classification evaluation: {len(samples) - len(truth)} statements were skipped (unreadable images); run 'polymodal data check' on the data")
        metrics: dict[str, float] = {}
        for view in CLASSIFIER_VIEWS:
            scores = classification_scores(truth, preds[view], zero_division=0)
            prefix = "" if view == "joint" else f"{view}_"
            metrics[f"{prefix}accuracy"] = scores["accuracy"]
            if view == "joint":
                metrics |= {k: v for k, v in scores.items() if k != "accuracy"}
        confusion = confusion_matrix(truth, preds["joint"], len(self.classification.classes))
        return EvalResult(metrics, {"classes": self.classification.classes, "confusion": confusion, "statements": len(truth)})

    def evaluate(self, model: nn.Module, samples: Sequence[Sample], make_loader: LoaderFactory, device: torch.device) -> EvalResult:
        by_kind: dict[str, list[Sample]] = {k: [] for k in KINDS}
        for s in samples:
            k = kind_of(s)
            if k in by_kind:
                by_kind[k].append(s)
        parts: list[tuple[str, Any, list[Sample]]] = [
            ("retrieval", self.retrieval.evaluate, by_kind["caption"]),
            ("captioning", self.captioning.evaluate, by_kind["caption"]),
            ("vqa", self.vqa.evaluate, by_kind["question"]),
            ("classification", self.evaluate_statements, by_kind["statement"]),
        ]
        metrics: dict[str, float] = {}
        details: dict[str, Any] = {}
        for name, evaluate, kind_samples in parts:
            if not kind_samples:
                continue
            result = evaluate(model, kind_samples, make_loader, device)
            metrics |= {f"{name}/{k}": v for k, v in result.metrics.items()}
            details[name] = result.details
        return EvalResult(metrics, details)
