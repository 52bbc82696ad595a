"""Load a Hugging Face checkpoint folder as a polymodal model with its exact preprocessing.

The architecture is read from ``config.json`` (``model_type`` and ``architectures``); the weights,
tokenizer and image processor load with ``local_files_only=True``. Weights come from safetensors (or
``torch.load(weights_only=True)`` for ``.bin`` files, which ``transformers`` uses): nothing is unpickled.
Every failure names the folder or file and what was expected there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from polymodal.errors import PolymodalError

HF_CONFIG = "config.json"
# transformers 5 builds an *empty* tokenizer when none is on disk, so presence is checked first.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")


class PretrainedLoadError(PolymodalError, OSError):
    """A Hugging Face folder that cannot be loaded: not a checkpoint, unsupported, incomplete or inconsistent."""


@dataclass(frozen=True)
class Architecture:
    """How one Hugging Face architecture becomes a polymodal model."""

    hf_class: str
    model_type: str  # polymodal's: dual_encoder, captioner, vqa, matcher
    task: str | None  # the evaluation task (retrieval, captioning) or None
    max_length: int


# (model_type in config.json, architecture) -> how to load it; the architecture "" is the family's default.
ARCHITECTURES: dict[tuple[str, str], Architecture] = {
    ("clip", ""): Architecture("CLIPModel", "dual_encoder", "retrieval", 77),
    ("siglip", ""): Architecture("SiglipModel", "dual_encoder", "retrieval", 64),
    ("blip", "BlipForConditionalGeneration"): Architecture("BlipForConditionalGeneration", "captioner", "captioning", 40),
    ("blip", "BlipForQuestionAnswering"): Architecture("BlipForQuestionAnswering", "vqa", "vqa", 40),
    ("blip", "BlipForImageTextRetrieval"): Architecture("BlipForImageTextRetrieval", "matcher", "retrieval", 40),
    ("blip", ""): Architecture("BlipForConditionalGeneration", "captioner", "captioning", 40),
    ("vilt", "ViltForQuestionAnswering"): Architecture("ViltForQuestionAnswering", "vqa", "vqa", 40),
    ("vilt", ""): Architecture("ViltForQuestionAnswering", "vqa", "vqa", 40),
}


def is_hf_checkpoint(folder: Path) -> bool:
    """A Hugging Face checkpoint folder (``config.json``), and not a polymodal checkpoint folder."""
    from polymodal.train.checkpoint import CONFIG_FILE

    return (folder / HF_CONFIG).is_file() and not (folder / CONFIG_FILE).is_file()


def architecture_of(folder: Path) -> tuple[str, Architecture]:
    """The config's ``model_type`` and the :class:`Architecture` polymodal loads it as."""
    path = folder / HF_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PretrainedLoadError(f"{path}: not a readable Hugging Face config ({e})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    archs = [a for a in (config.get("architectures") or []) if isinstance(a, str)] if isinstance(config, dict) else []
    for arch in [*archs, ""]:
        found = ARCHITECTURES.get((str(model_type), arch))
        if found is not None:
            return str(model_type), found
    supported = sorted({f"{t} ({a.hf_class})" for (t, _), a in ARCHITECTURES.items()})
    raise PretrainedLoadError(
        f"{path}: model_type {model_type!r} (architectures {archs or 'not given'}) is not supported as a whole model; "
        f"polymodal loads: {', '.join(supported)}. A single text or vision backbone (BERT, MiniLM, ViT, ...) is a "
        f"tower inside a model config instead: text: {{name: hf_text, path: {path.parent}}} or vision: {{name: hf_vision, ...}}"
    )


@dataclass
class HFParts:
    """Everything of a checkpoint folder except the weights: what it is and how it preprocesses."""

    folder: Path
    model_type: str  # config.json's model_type: clip, siglip, blip, vilt
    arch: Architecture
    config: Any  # the transformers config
    tokenizer: Any  # the transformers tokenizer
    image_processor: Any  # the transformers image processor


def open_parts(folder: Path) -> HFParts:
    """Read a checkpoint folder's config, tokenizer and image processor (no weights yet)."""
    from polymodal.modules.encoders.hf import _import_transformers

    transformers = _import_transformers()
    model_type, arch = architecture_of(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise PretrainedLoadError(
            f"{folder}: the tokenizer is missing or unreadable beside the weights (expected one of {', '.join(TOKENIZER_FILES)})"
        )
    tokenizer = _load_part(folder, "tokenizer", lambda: transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True),
                           "tokenizer.json or the vocabulary files (vocab.txt / vocab.json + merges.txt / spiece.model)")
    image_processor = _load_part(folder, "image processor", lambda: transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True, **_slow_image_processor(transformers)),
                                 "preprocessor_config.json")
    config = _load_part(folder, "config", lambda: transformers.AutoConfig.from_pretrained(folder, local_files_only=True), HF_CONFIG)
    return HFParts(folder, model_type, arch, config, tokenizer, image_processor)


def open_config(cfg: Any) -> HFParts:
    """The parts of the checkpoint a ``type: pretrained`` model config names (folder, zoo name or repo id)."""
    from polymodal.hub.zoo import resolve

    return open_parts(resolve(cfg.path, allow_download=cfg.allow_download))


def processors_of(parts: HFParts) -> Any:
    """The checkpoint's own preprocessing as polymodal :class:`~polymodal.api.Processors`."""
    from polymodal.api import Processors
    from polymodal.hub.processors import HFImageProcessor, HFTokenizer

    tokenizer, arch = parts.tokenizer, parts.arch
    return Processors(
        image=HFImageProcessor(parts.image_processor),  # type: ignore[arg-type]
        tokenizer=HFTokenizer(tokenizer, pad_to_max_length=parts.model_type == "siglip"),  # type: ignore[arg-type]
        max_length=min(arch.max_length, int(getattr(tokenizer, "model_max_length", arch.max_length) or arch.max_length)),
        task=arch.task,
        model_type=arch.model_type,
        source=str(parts.folder),
    )


def build_adapter(parts: HFParts, *, weights: bool = True, freeze: Sequence[str] = ()) -> nn.Module:
    """The polymodal adapter around the checkpoint's model, in train mode.

    ``weights=False`` builds the architecture from the config alone (a polymodal checkpoint of a
    fine-tuned model then loads its own weights into it). ``freeze`` locks towers: ``vision``, ``text``.
    """
    from polymodal.hub import adapters
    from polymodal.modules.encoders.hf import _import_transformers

    transformers = _import_transformers()
    hf_class = getattr(transformers, parts.arch.hf_class)
    folder = parts.folder
    if not weights:
        hf_model = hf_class._from_config(parts.config)
    else:
        try:
            hf_model = hf_class.from_pretrained(folder, local_files_only=True)
        except (RuntimeError, ValueError, OSError) as e:
            names = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
            weights_file = names[0].name if names else "no weights file"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PretrainedLoadError(
                f"{folder / weights_file}: the weights do not load into a {parts.arch.hf_class} built from {folder / HF_CONFIG}: {first}"
            ) from None
    hf_model.train()
    arch, tokenizer = parts.arch, parts.tokenizer
    if parts.model_type in ("clip", "siglip"):
        model: nn.Module = adapters.HFDualEncoder(hf_model, parts.model_type)
    elif arch.model_type == "captioner":
        model = adapters.HFCaptioner(hf_model)
    elif arch.hf_class == "BlipForQuestionAnswering":
        model = adapters.HFGenerativeVQA(hf_model, tokenizer)
    elif arch.model_type == "matcher":
        model = adapters.HFMatcher(hf_model)
    else:
        model = adapters.HFAnswerClassifier(hf_model)
    for tower in freeze:
        adapters.freeze_tower(model, tower, where=str(folder))
    return model


def load_pretrained(folder: Path) -> tuple[nn.Module, Any]:
    """``(model, Processors)`` for a Hugging Face checkpoint folder, in eval mode on the CPU."""
    from polymodal.hub.llava import is_llava_folder, load_llava

    if is_llava_folder(folder):  # a LLaVA checkpoint is a polymodal assistant (MultimodalLM), not an adapter
        return load_llava(folder)
    parts = open_parts(folder)
    return build_adapter(parts).eval(), processors_of(parts)


def checkpoint_files(parts: HFParts, prefix: str = "hf/") -> dict[str, bytes]:
    """Config, tokenizer and image-processor files (no weights) to store inside a polymodal checkpoint,
    so a fine-tuned model reloads without the original folder: ``{"hf/config.json": b"...", ...}``."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        parts.config.save_pretrained(tmp)
        parts.tokenizer.save_pretrained(tmp)
        parts.image_processor.save_pretrained(tmp)
        return {prefix + p.relative_to(tmp).as_posix(): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}


def _slow_image_processor(transformers: Any) -> dict[str, Any]:
    """The PIL-based image processor (the one checkpoints were made with; the fast one needs torchvision):
    ``backend="pil"`` in transformers 5, ``use_fast=False`` before."""
    major = int(str(transformers.__version__).split(".")[0])
    return {"backend": "pil"} if major >= 5 else {"use_fast": False}


def _load_part(folder: Path, what: str, load: Any, expected: str) -> Any:
    try:
        return load()
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PretrainedLoadError(f"{folder}: the {what} is missing or unreadable beside the weights (expected {expected}): {first}") from None
