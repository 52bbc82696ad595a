"""Load a Hugging Face checkpoint folder as a polymodal model with its exact preprocessing.

The architecture is read from ``config.json`` (``model_type`` and ``architectures``); the weights,
tokenizer and image processor load with ``local_files_only=True``. Weights come from safetensors (or
``torch.load(weights_only=True)`` for ``.bin`` files, which ``transformers`` uses): nothing is unpickled.
Every failure names the folder or file and what was expected there.
"""

from __future__ import annotations

import json
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
    ("blip", "BlipForQuestionAnswering"): Architecture("BlipForQuestionAnswering", "vqa", None, 40),
    ("blip", "BlipForImageTextRetrieval"): Architecture("BlipForImageTextRetrieval", "matcher", None, 40),
    ("blip", ""): Architecture("BlipForConditionalGeneration", "captioner", "captioning", 40),
    ("vilt", "ViltForQuestionAnswering"): Architecture("ViltForQuestionAnswering", "vqa", None, 40),
    ("vilt", ""): Architecture("ViltForQuestionAnswering", "vqa", None, 40),
}


def is_hf_checkpoint(folder: Path) -> bool:
    return (folder / HF_CONFIG).is_file()


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
        f"{path}: model_type {model_type!r} (architectures {archs or 'not given'}) is not supported; "
        f"polymodal loads: {', '.join(supported)}"
    )


def load_pretrained(folder: Path) -> tuple[nn.Module, Any]:
    """``(model, Processors)`` for a Hugging Face checkpoint folder, in eval mode on the CPU."""
    from polymodal.api import Processors
    from polymodal.hub import adapters
    from polymodal.hub.processors import HFImageProcessor, HFTokenizer
    from polymodal.modules.encoders.hf import _import_transformers

    transformers = _import_transformers()
    model_type, arch = architecture_of(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise PretrainedLoadError(
            f"{folder}: the tokenizer is missing or unreadable beside the weights (expected one of {', '.join(TOKENIZER_FILES)})"
        )
    tokenizer = _load_part(folder, "tokenizer", lambda: transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True),
                           "tokenizer.json or the vocabulary files (vocab.txt / vocab.json + merges.txt / spiece.model)")
    image_processor = _load_part(folder, "image processor", lambda: transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True, use_fast=False),
                                 "preprocessor_config.json")
    hf_class = getattr(transformers, arch.hf_class)
    try:
        hf_model = hf_class.from_pretrained(folder, local_files_only=True)
    except (RuntimeError, ValueError, OSError) as e:
        weights = next((p.name for p in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))), "no weights file")
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PretrainedLoadError(
            f"{folder / weights}: the weights do not load into a {arch.hf_class} built from {folder / HF_CONFIG}: {first}"
        ) from None
    hf_model.eval()
    if model_type in ("clip", "siglip"):
        model: nn.Module = adapters.HFDualEncoder(hf_model, model_type)
    elif arch.model_type == "captioner":
        model = adapters.HFCaptioner(hf_model)
    elif arch.hf_class == "BlipForQuestionAnswering":
        model = adapters.HFGenerativeVQA(hf_model, lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    elif arch.model_type == "matcher":
        model = adapters.HFMatcher(hf_model)
    else:
        model = adapters.HFAnswerClassifier(hf_model)
    processors = Processors(
        image=HFImageProcessor(image_processor),  # type: ignore[arg-type]
        tokenizer=HFTokenizer(tokenizer, pad_to_max_length=model_type == "siglip"),  # type: ignore[arg-type]
        max_length=min(arch.max_length, int(getattr(tokenizer, "model_max_length", arch.max_length) or arch.max_length)),
        task=arch.task,
        model_type=arch.model_type,
        source=str(folder),
    )
    return model.eval(), processors


def _load_part(folder: Path, what: str, load: Any, expected: str) -> Any:
    try:
        return load()
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PretrainedLoadError(f"{folder}: the {what} is missing or unreadable beside the weights (expected {expected}): {first}") from None
