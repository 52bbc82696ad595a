"""Inference with a loaded model: caption, answer, rank texts or images, classify.

Every function takes the ``(model, processors)`` pair of :func:`polymodal.api.load_model`, so inputs are
preprocessed exactly as in training, and works on batches (images as PIL images, paths or bytes):

    from polymodal.api import load_model
    from polymodal import predict

    model, proc = load_model("quickstart_out/run")  # the quickstart's multi-task model serves every call below
    predict.caption(model, proc, ["a.png", "b.png"])                 # ["a red cube ...", "..."]
    predict.answer(model, proc, ["a.png"], ["what color is the cube?"])  # ["red"]
    predict.rank_texts(model, proc, "a.png", ["a red cube", "two blue spheres"])  # [Ranked, ...] best first
    predict.rank_images(model, proc, "a red cube", ["a.png", "b.png"])
    predict.classify(model, proc, ["a.png"], ["the cube is left of the sphere"])  # [Classification]

A single-task run serves its own calls: ``runs/world_vqa`` (``configs/world_vqa.yaml``) answers,
``runs/world_retrieval`` (``configs/world_retrieval.yaml``) ranks and embeds.
A model of the wrong type for a function raises :class:`WrongModelType`, a missing or corrupt image a
:class:`~polymodal.errors.DataError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from polymodal.api import ImageInput, Processors
from polymodal.errors import DataError, PolymodalError

__all__ = [
    "COMMANDS",
    "Classification",
    "Ranked",
    "WrongModelType",
    "answer",
    "answer_top_k",
    "caption",
    "classify",
    "model_type_of",
    "rank_images",
    "rank_texts",
    "require_model_type",
    "similarity",
    "zero_shot",
]

# predict command -> (model type it needs, what that model is)
COMMANDS: dict[str, tuple[str, str]] = {
    "caption": ("captioner", "an image captioner (a run trained with train.task: captioning)"),
    "answer": ("vqa", "a VQA model (a run trained with train.task: vqa)"),
    "rank-texts": ("dual_encoder", "a dual encoder (a run trained with train.task: retrieval)"),
    "rank-images": ("dual_encoder", "a dual encoder (a run trained with train.task: retrieval)"),
    "zero-shot": ("dual_encoder", "a dual encoder (a retrieval run, or a CLIP / SigLIP checkpoint)"),
    "classify": ("classifier", "a multimodal classifier (a run trained with train.task: classification)"),
    "match": ("matcher", "an image-text matching head (a BLIP ITM checkpoint, or a fusion encoder pretrained with itm)"),
}
MATCHERS = ("matcher", "fusion_encoder")  # the model types with an image-text matching head


class WrongModelType(PolymodalError):
    """The model cannot do what was asked (e.g. captioning with a dual encoder)."""


@dataclass(frozen=True)
class Ranked:
    """One ranked candidate: its position in the input list, the input itself, and its cosine similarity."""

    index: int
    item: Any
    score: float


@dataclass(frozen=True)
class Classification:
    """The predicted class, its probability, and the probability of every class (best first)."""

    label: str
    score: float
    scores: dict[str, float]


def model_type_of(model: nn.Module, processors: Processors | None = None) -> str:
    """``captioner``, ``vqa``, ``dual_encoder``, ``classifier``, ``fusion_encoder`` or the class name."""
    from polymodal.models.captioner import Captioner
    from polymodal.models.classifier import MultimodalClassifier
    from polymodal.models.dual_encoder import DualEncoder
    from polymodal.models.fusion_encoder import FusionEncoder
    from polymodal.models.multitask import MultiTaskModel
    from polymodal.models.vqa import VQAClassifier

    for cls, name in (
        (MultiTaskModel, "multitask"),
        (Captioner, "captioner"),
        (VQAClassifier, "vqa"),
        (DualEncoder, "dual_encoder"),
        (MultimodalClassifier, "classifier"),
        (FusionEncoder, "fusion_encoder"),
    ):
        if isinstance(model, cls):
            return name
    if processors is not None and processors.model_type:
        return processors.model_type
    return type(model).__name__


def require_model_type(model_type: str | None, command: str, source: str = "") -> None:
    """Raise :class:`WrongModelType` (one paragraph) unless ``model_type`` can run ``command``."""
    needed, what = COMMANDS[command]
    if model_type in (needed, "multitask") or (command == "match" and model_type in MATCHERS):  # multi-task does every command
        return
    fits = [c for c, (t, _) in COMMANDS.items() if t == model_type]
    hint = (
        f"; a {model_type} model works with 'polymodal predict {' / '.join(fits)}'"
        if fits
        else f"; no predict command uses a {model_type} model"
    )
    where = f"{source} holds" if source else "this is"
    raise WrongModelType(
        f"'predict {command}' needs {what}, but {where} a {model_type!r} model{hint}. "
        f"Pass --checkpoint with a {needed} run."
    )


def _require(model: nn.Module, processors: Processors, command: str) -> None:
    require_model_type(model_type_of(model, processors), command, processors.source)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _as_list(x: Any, single: tuple[type, ...]) -> list[Any]:
    if x is None:
        return []
    if isinstance(x, single):
        return [x]
    return list(x)


_SINGLE_IMAGE = (str, bytes, bytearray, os.PathLike, Image.Image)


def _images(images: ImageInput | Sequence[ImageInput]) -> list[Any]:
    return _as_list(images, _SINGLE_IMAGE)


def _texts(texts: str | Sequence[str]) -> list[str]:
    out = _as_list(texts, (str,))
    for t in out:
        if not isinstance(t, str):
            raise DataError(f"texts must be strings, got {type(t).__name__}")
    return out


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, max(1, size)):
        yield slice(start, min(n, start + size))


def _pair(images: list[Any], texts: list[str], what: str) -> tuple[list[Any], list[str]]:
    """Broadcast one image to many texts (or one text to many images); otherwise lengths must match."""
    if not images or not texts:
        raise DataError(f"{what}: give at least one image and one text")
    if len(images) == 1 and len(texts) > 1:
        images = images * len(texts)
    elif len(texts) == 1 and len(images) > 1:
        texts = texts * len(images)
    if len(images) != len(texts):
        raise DataError(f"{what}: got {len(images)} images and {len(texts)} texts; give one of each per example, or one image for all")
    return images, texts


# ----------------------------------------------------------------------------------------- captioning


@torch.no_grad()
def caption(
    model: nn.Module,
    processors: Processors,
    images: ImageInput | Sequence[ImageInput],
    *,
    max_length: int = 30,
    method: str = "greedy",
    beam_size: int = 3,
    batch_size: int = 32,
) -> list[str]:
    """One caption per image (the captioning task's evaluation settings by default)."""
    _require(model, processors, "caption")
    items = _images(images)
    if not items:
        raise DataError("caption: no images given")
    if processors.tokenizer is None:
        raise PolymodalError(f"{processors.source}: a captioner checkpoint needs its tokenizer to decode captions")
    device = _device(model)
    out: list[str] = []
    for part in _chunks(len(items), batch_size):
        pixels = processors.images(items[part]).to(device)
        gen = model.generate(pixels, max_length=max_length, method=method, beam_size=beam_size)
        out += [processors.tokenizer.decode(seq) for seq in gen.sequences]
    return out


# ----------------------------------------------------------------------------------------------- VQA


def _vqa_model(model: nn.Module) -> nn.Module:
    """The VQA classifier itself (a multi-task model holds one beside its other heads)."""
    return getattr(model, "vqa", model)


def _pair_batches(model: nn.Module, processors: Processors, images: list[Any], texts: list[str], batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """``(pixels, ids, mask)`` of (image i, text i) pairs, batch by batch, on the model's device."""
    device = _device(model)
    for part in _chunks(len(texts), batch_size):
        ids, mask = processors.texts(texts[part])
        yield processors.images(images[part]).to(device), ids.to(device), mask.to(device)


def _vqa_logits(model: nn.Module, processors: Processors, images: list[Any], questions: list[str], batch_size: int) -> Iterator[torch.Tensor]:
    model = _vqa_model(model)
    for batch in _pair_batches(model, processors, images, questions, batch_size):
        yield model(*batch).logits


@torch.no_grad()
def answer(
    model: nn.Module,
    processors: Processors,
    images: ImageInput | Sequence[ImageInput],
    questions: str | Sequence[str],
    *,
    batch_size: int = 32,
) -> list[str]:
    """The best answer per (image, question); one image may be given for several questions."""
    _require(model, processors, "answer")
    imgs, qs = _pair(_images(images), _texts(questions), "answer")
    out: list[str] = []
    if not hasattr(_vqa_model(model), "vocab"):  # a generative VQA model (BLIP) writes its answers
        for batch in _pair_batches(model, processors, imgs, qs, batch_size):
            out += model.answer(*batch)
        return out
    for logits in _vqa_logits(model, processors, imgs, qs, batch_size):
        out += _vqa_model(model).vocab.decode(logits)
    return out


def has_itm_head(model: nn.Module) -> bool:
    """Whether :func:`match` can score pairs: a fusion encoder or multi-task model trained without the
    'itm' objective has the type but not the head."""
    return hasattr(model, "match") or getattr(getattr(model, "pretrain", model), "itm_head", None) is not None


def _itm_scorer(model: nn.Module, processors: Processors) -> Any:
    """BLIP ITM's ``match``, or the ITM head of a fusion encoder (alone or inside a multi-task model)."""
    if hasattr(model, "match"):
        return model.match
    fusion = getattr(model, "pretrain", model)
    if not has_itm_head(model):
        raise WrongModelType(
            f"'predict match' needs an image-text matching head, but {processors.source or 'this model'} was trained "
            "without the 'itm' objective (add itm to the model's weights, or use a BLIP ITM checkpoint)"
        )
    return fusion.itm_score


@torch.no_grad()
def match(
    model: nn.Module,
    processors: Processors,
    images: ImageInput | Sequence[ImageInput],
    texts: str | Sequence[str],
    *,
    batch_size: int = 32,
) -> list[float]:
    """P(the image and the text match) per pair, from an ITM head; one image may be given for many texts."""
    _require(model, processors, "match")
    imgs, txts = _pair(_images(images), _texts(texts), "match")
    scorer = _itm_scorer(model, processors)
    out: list[float] = []
    for batch in _pair_batches(model, processors, imgs, txts, batch_size):
        out += scorer(*batch).tolist()
    return out


@torch.no_grad()
def answer_top_k(
    model: nn.Module,
    processors: Processors,
    images: ImageInput | Sequence[ImageInput],
    questions: str | Sequence[str],
    k: int = 5,
    *,
    batch_size: int = 32,
) -> list[list[tuple[str, float]]]:
    """The ``k`` best answers per question with their sigmoid scores (the model is trained with BCE)."""
    _require(model, processors, "answer")
    if not hasattr(_vqa_model(model), "vocab"):
        raise WrongModelType(f"{processors.source or 'this model'} generates its answers as text, so it has no ranked answer list; use answer()")
    imgs, qs = _pair(_images(images), _texts(questions), "answer")
    out: list[list[tuple[str, float]]] = []
    vocab = _vqa_model(model).vocab.answers
    for logits in _vqa_logits(model, processors, imgs, qs, batch_size):
        top = torch.sigmoid(logits.float()).topk(min(max(1, k), logits.shape[-1]), dim=-1)
        out += [[(vocab[i], float(v)) for v, i in zip(vals.tolist(), idx.tolist())] for vals, idx in zip(top.values, top.indices)]
    return out


# ----------------------------------------------------------------------------------------- retrieval


@torch.no_grad()
def embed_images(model: nn.Module, processors: Processors, images: list[Any], batch_size: int = 64) -> torch.Tensor:
    """``[N, D]`` normalised image embeddings of a dual encoder (float32, CPU), in batches."""
    device = _device(model)
    return torch.cat([model.encode_image(processors.images(images[p]).to(device)).float().cpu() for p in _chunks(len(images), batch_size)])


@torch.no_grad()
def embed_texts(model: nn.Module, processors: Processors, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """``[N, D]`` normalised text embeddings of a dual encoder (float32, CPU), in batches."""
    device = _device(model)
    chunks = []
    for p in _chunks(len(texts), batch_size):
        ids, mask = processors.texts(texts[p])
        chunks.append(model.encode_text(ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(chunks)


def similarity(
    model: nn.Module,
    processors: Processors,
    images: ImageInput | Sequence[ImageInput],
    texts: str | Sequence[str],
    *,
    batch_size: int = 64,
) -> torch.Tensor:
    """``[num_images, num_texts]`` cosine similarities of a dual encoder's embeddings."""
    _require(model, processors, "rank-texts")
    imgs, txts = _images(images), _texts(texts)
    if not imgs or not txts:
        raise DataError("similarity: give at least one image and one text")
    return embed_images(model, processors, imgs, batch_size) @ embed_texts(model, processors, txts, batch_size).t()


def _ranked(items: list[Any], scores: torch.Tensor, top_k: int | None) -> list[Ranked]:
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    if top_k is not None:
        order = order[: max(0, top_k)]
    return [Ranked(i, items[i], float(scores[i])) for i in order]


def rank_texts(
    model: nn.Module,
    processors: Processors,
    image: ImageInput,
    texts: str | Sequence[str],
    *,
    top_k: int | None = None,
    batch_size: int = 64,
) -> list[Ranked]:
    """The texts ordered by how well they describe ``image``, best first (cosine similarity)."""
    _require(model, processors, "rank-texts")
    imgs, txts = _images(image), _texts(texts)
    if len(imgs) != 1:
        raise DataError(f"rank-texts: give exactly one image, got {len(imgs)}")
    if not txts:
        raise DataError("rank-texts: no texts given")
    return _ranked(txts, similarity(model, processors, imgs, txts, batch_size=batch_size)[0], top_k)


def rank_images(
    model: nn.Module,
    processors: Processors,
    text: str,
    images: ImageInput | Sequence[ImageInput],
    *,
    top_k: int | None = None,
    batch_size: int = 64,
) -> list[Ranked]:
    """The images ordered by how well ``text`` describes them, best first (cosine similarity)."""
    _require(model, processors, "rank-images")
    if not isinstance(text, str):
        raise DataError(f"rank-images: the query must be one text, got {type(text).__name__}")
    imgs = _images(images)
    if not imgs:
        raise DataError("rank-images: no images given")
    return _ranked(imgs, similarity(model, processors, imgs, [text], batch_size=batch_size)[:, 0], top_k)


# ------------------------------------------------------------------------------------ classification


@torch.no_grad()
def classify(
    model: nn.Module,
    processors: Processors,
    images: ImageInput | Sequence[ImageInput] | None = None,
    texts: str | Sequence[str] | None = None,
    *,
    batch_size: int = 32,
) -> list[Classification]:
    """One prediction per example; give the modalities the classifier reads (one image or text is broadcast)."""
    _require(model, processors, "classify")
    multitask = model_type_of(model, processors) == "multitask"
    modalities = ["image", "text"] if multitask else list(getattr(model, "encoders", {}).keys())
    unsupported = [m for m in modalities if m not in ("image", "text")]
    if unsupported:
        raise WrongModelType(f"classify: this classifier reads {', '.join(modalities)}; only image and text inputs are supported here")
    imgs, txts = _images(images), _texts(texts) if texts is not None else []
    missing = [m for m, got in (("image", imgs), ("text", txts)) if m in modalities and not got]
    if missing:
        flags = " and ".join(f"--{m}" for m in missing)
        raise DataError(f"classify: this classifier reads {' and '.join(modalities)}; give {' and '.join(missing)} input ({flags} on the command line)")
    use_img, use_txt = "image" in modalities, "text" in modalities
    if use_img and use_txt:
        imgs, txts = _pair(imgs, txts, "classify")
    n = len(imgs) if use_img else len(txts)
    classes = [str(c) for c in processors.task_state.get("classes", [])]
    device = _device(model)
    out: list[Classification] = []
    for part in _chunks(n, batch_size):
        batch: dict[str, Any] = {}
        if use_img:
            batch["image"] = processors.images(imgs[part]).to(device)
        if use_txt:
            ids, mask = processors.texts(txts[part])
            batch["text_ids"], batch["text_mask"] = ids.to(device), mask.to(device)
        if multitask:  # the joint head already gives probabilities
            probs = model.classify(batch["image"], batch["text_ids"], batch["text_mask"])["joint"].float().cpu()
        else:
            logits = model(batch).logits.float().cpu()
            if getattr(model, "task", "classification") == "regression":
                for row in logits:
                    values = {f"output_{j}" if len(row) > 1 else "value": float(v) for j, v in enumerate(row)}
                    first = next(iter(values.values()))
                    out.append(Classification(label=f"{first:.6g}", score=first, scores=values))
                continue
            probs = logits.softmax(-1)
        names = classes if len(classes) == probs.shape[-1] else [str(j) for j in range(probs.shape[-1])]
        for row in probs:
            order = torch.argsort(row, descending=True, stable=True).tolist()
            scores = {names[j]: float(row[j]) for j in order}
            best = int(row.argmax())
            out.append(Classification(label=names[best], score=float(row[best]), scores=scores))
    return out


# ----------------------------------------------------------------------------------------- zero-shot


@torch.no_grad()
def zero_shot_weights(model: nn.Module, processors: Processors, labels: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
    """``[C, E]`` class embeddings: each label's prompts embedded, normalised, averaged over templates and
    normalised again (CLIP's prompt ensembling), so one odd template cannot dominate a class."""
    from polymodal.models.dual_encoder import DEFAULT_TEMPLATES, prompt_ensemble

    if isinstance(labels, str):  # one string would be read as its letters, one label each
        raise DataError(f"zero-shot: labels must be a list of class names, got the single string {labels!r}; pass [{labels!r}, ...]")
    labels = [str(x).strip() for x in labels]
    if isinstance(templates, str):  # one template given as a string, not a list of one
        templates = [templates]
    if not labels or any(not x for x in labels):
        raise DataError("zero-shot: give at least one label, and no empty ones")
    if len(set(labels)) != len(labels):
        raise DataError(f"zero-shot: labels must be distinct, got {labels}")
    try:
        return prompt_ensemble(lambda prompts: embed_texts(model, processors, prompts, 256), labels, list(templates or DEFAULT_TEMPLATES))
    except ValueError as e:
        raise DataError(str(e)) from None


@torch.no_grad()
def zero_shot(
    model: nn.Module,
    processors: Processors,
    images: ImageInput | Sequence[ImageInput],
    labels: Sequence[str],
    templates: Sequence[str] | None = None,
    *,
    batch_size: int = 64,
) -> list[Classification]:
    """Classify images into ``labels`` with no training: the nearest prompt-ensembled label embedding.

    Scores are a softmax over labels for softmax-trained models (CLIP, polymodal dual encoders) and
    the per-label sigmoid for SigLIP, which was trained to score each pair on its own.
    """
    _require(model, processors, "zero-shot")
    weights = zero_shot_weights(model, processors, labels, templates)
    logits = float(model.logit_scale) * embed_images(model, processors, _images(images), batch_size) @ weights.t()
    if getattr(model, "family", None) == "siglip":
        probs = (logits + float(model.logit_bias)).sigmoid()
    else:
        probs = logits.softmax(-1)
    out = []
    for row in probs.tolist():
        order = sorted(range(len(row)), key=lambda i: -row[i])
        out.append(Classification(str(labels[order[0]]).strip(), row[order[0]], {str(labels[i]).strip(): row[i] for i in order}))
    return out
