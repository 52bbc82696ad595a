"""Load a Hugging Face LLaVA checkpoint folder (``LlavaForConditionalGeneration``) as a :class:`MultimodalLM`.

polymodal's assistant has the same three parts as LLaVA - a vision tower read at one hidden layer,
a two-layer MLP projector and a causal LM, with image features written over the image tokens - so a
LLaVA checkpoint needs no adapter: the parts are built from ``config.json``'s ``vision_config`` and
``text_config`` exactly as ``transformers`` builds them, and the safetensors weights are copied in by
renaming their keys. Both key layouts are read: ``transformers`` 5's (``model.vision_tower.*``,
``model.multi_modal_projector.*``, ``model.language_model.*``, ``lm_head.*``) and the layout saved
checkpoints use (``vision_tower[.vision_model].*``, ``multi_modal_projector.*``, ``language_model.model.*``,
``language_model.lm_head.*``). Every tensor of the file must find a home and every parameter must be
filled, otherwise the error names the folder and the keys: a silently random layer would make a
model that loads fine and answers nonsense.

Preprocessing is the checkpoint's own (``preprocessor_config.json`` and its tokenizer, loaded by
``transformers``); prompts use LLaVA-1.5's ``USER: <image>\\n... ASSISTANT:`` layout, which is
:class:`~polymodal.data.chat.ChatFormat`'s default.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from polymodal.hub.loading import (
    HF_CONFIG,
    TOKENIZER_FILES,
    PretrainedLoadError,
    _load_part,
    _slow_image_processor,
)
from polymodal.models.connectors import MLPConnector
from polymodal.models.mllm import MultimodalLM, VisionFeatures

__all__ = ["is_llava_folder", "llava_key_map", "load_llava"]

LLAVA_MODEL_TYPE = "llava"
STRATEGIES = ("default", "full")


def is_llava_folder(path: str | Path) -> bool:
    """A folder whose ``config.json`` says ``model_type: llava`` (unreadable configs are not LLaVA)."""
    config = Path(path) / HF_CONFIG
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("model_type") == LLAVA_MODEL_TYPE


# ---------------------------------------------------------------------------------------------- parts
def _config(folder: Path, transformers: Any) -> Any:
    config = _load_part(folder, "config", lambda: transformers.AutoConfig.from_pretrained(folder, local_files_only=True), HF_CONFIG)
    where = folder / HF_CONFIG
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise PretrainedLoadError(f"{where}: vision_feature_layer {layer!r} concatenates several layers; polymodal reads one layer (an int such as -2)")
    if config.vision_feature_select_strategy not in STRATEGIES:
        raise PretrainedLoadError(f"{where}: vision_feature_select_strategy must be one of {STRATEGIES}, got {config.vision_feature_select_strategy!r}")
    if getattr(config, "tie_word_embeddings", False):  # LlavaConfig may carry the tie at the top level only
        config.text_config.tie_word_embeddings = True
    return config


def _tokenizer(folder: Path, transformers: Any) -> Any:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise PretrainedLoadError(f"{folder}: no tokenizer beside the weights (expected one of {', '.join(TOKENIZER_FILES)})")
    return _load_part(folder, "tokenizer", lambda: transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True),
                      "tokenizer.json or the vocabulary files")


def _image_processor(folder: Path, transformers: Any) -> Any:
    if not (folder / "preprocessor_config.json").is_file():
        raise PretrainedLoadError(f"{folder}: no preprocessor_config.json, which says how images are resized and normalised for this model")
    return _load_part(folder, "image processor",
                      lambda: transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True, **_slow_image_processor(transformers)),
                      "preprocessor_config.json")


def _connector(config: Any, vision_width: int, transformers: Any) -> MLPConnector:
    """LlavaMultiModalProjector's layout: linear_1 -> projector_hidden_act -> linear_2, both to the LM width."""
    lm_width = int(config.text_config.hidden_size)
    connector = MLPConnector(vision_width, lm_width)
    if not getattr(config, "multimodal_projector_bias", True):
        connector.linear_1 = nn.Linear(vision_width, lm_width, bias=False)
        connector.linear_2 = nn.Linear(lm_width, lm_width, bias=False)
    act = str(getattr(config, "projector_hidden_act", "gelu"))
    if act != "gelu":  # nn.GELU() is transformers' "gelu" (exact erf GELU); others come from its table
        from transformers.activations import ACT2FN

        if act not in ACT2FN:
            raise PretrainedLoadError(f"projector_hidden_act {act!r} is not an activation transformers knows")
        connector.act = ACT2FN[act]
    return connector


def _eos_ids(tokenizer: Any, generation: Any, text_config: Any) -> list[int]:
    """Where generation stops: the generation config's end-of-sequence ids and the tokenizer's."""
    ids: set[int] = set()
    for value in (getattr(generation, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if not ids and isinstance(getattr(text_config, "eos_token_id", None), int):
        ids.add(int(text_config.eos_token_id))
    return sorted(ids)


def _generation_config(folder: Path, transformers: Any) -> Any:
    if not (folder / "generation_config.json").is_file():
        return None
    return _load_part(folder, "generation config", lambda: transformers.GenerationConfig.from_pretrained(folder, local_files_only=True),
                      "generation_config.json")


# ---------------------------------------------------------------------------------------------- weights
def read_safetensors(folder: Path) -> dict[str, Tensor]:
    """All tensors of the folder's ``*.safetensors`` files (one file or shards)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise PretrainedLoadError(f"{folder}: no *.safetensors weights (LLaVA checkpoints are loaded from safetensors only)")
    tensors: dict[str, Tensor] = {}
    for path in files:
        try:
            tensors.update(load_file(str(path)))
        except (OSError, RuntimeError, ValueError) as e:
            raise PretrainedLoadError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors


def _vision_name(rest: str, vision_keys: set[str]) -> str:
    """A vision-tower key as the tower built here names it: with or without CLIP's ``vision_model.``."""
    if rest in vision_keys:
        return rest
    inner = "vision_model."
    if rest.startswith(inner) and rest[len(inner):] in vision_keys:
        return rest[len(inner):]
    if inner + rest in vision_keys:
        return inner + rest
    return rest


def llava_key_map(keys: Iterable[str], model: MultimodalLM) -> dict[str, str]:
    """Checkpoint key -> ``model.state_dict()`` key; keys that match no part map to themselves (and are unmatched)."""
    vision_keys = set(model.vision.encoder.model.state_dict().keys())
    base = str(getattr(model.lm, "base_model_prefix", "model") or "model")
    rules = (  # (checkpoint prefix, polymodal prefix); first match wins, transformers 5 layout first
        ("model.vision_tower.", "vision.encoder.model."),
        ("model.multi_modal_projector.", "connector."),
        ("model.language_model.", f"lm.{base}."),
        ("lm_head.", "lm.lm_head."),
        ("vision_tower.", "vision.encoder.model."),
        ("multi_modal_projector.", "connector."),
        ("language_model.model.", f"lm.{base}."),  # the base LM, whatever the causal LM calls it (transformer.* for GPT-2)
        ("language_model.", "lm."),  # older layouts saved the whole causal LM here (lm_head.*, transformer.*)
    )
    mapping: dict[str, str] = {}
    for key in keys:
        mapping[key] = key
        for source, target in rules:
            if key.startswith(source):
                rest = key[len(source):]
                if target.startswith("vision."):
                    rest = _vision_name(rest, vision_keys)
                mapping[key] = target + rest
                break
    return mapping


@torch.no_grad()
def copy_weights(model: MultimodalLM, tensors: dict[str, Tensor], folder: Path) -> None:
    """Copy every checkpoint tensor into ``model``; any unmatched, misshapen or unfilled one is an error naming it."""
    targets = model.state_dict(keep_vars=True)
    mapping = llava_key_map(tensors.keys(), model)
    unexpected = sorted(k for k, name in mapping.items() if name not in targets)
    if unexpected:
        raise PretrainedLoadError(f"{folder}: the weights hold tensors no part of a LLaVA model takes: {_some(unexpected)}")
    filled: set[int] = set()
    for key, name in mapping.items():
        target, value = targets[name], tensors[key]
        if tuple(target.shape) != tuple(value.shape):
            raise PretrainedLoadError(f"{folder}: tensor {key!r} has shape {list(value.shape)}, the config's {name} expects {list(target.shape)}")
        target.copy_(value.to(target.dtype))
        filled.add(id(target))
    missing = sorted(name for name, p in model.named_parameters() if id(p) not in filled)
    if missing:
        raise PretrainedLoadError(f"{folder}: the weights lack tensors for these parameters: {_some(missing)}")


def _some(names: list[str], limit: int = 8) -> str:
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ---------------------------------------------------------------------------------------------- the model
def build_llava(config: Any, tokenizer: Any, generation: Any, transformers: Any) -> MultimodalLM:
    """The architecture of ``config`` with freshly initialised weights (see :func:`copy_weights`)."""
    from polymodal.models.mllm_build import context_window, vision_tokens
    from polymodal.modules.encoders.hf import HFVisionTower

    tower = HFVisionTower(transformers.AutoModel.from_config(config.vision_config))
    vision = VisionFeatures(tower, feature_layer=int(config.vision_feature_layer), drop_cls=config.vision_feature_select_strategy == "default")
    connector = _connector(config, vision.width, transformers)
    lm = transformers.AutoModelForCausalLM.from_config(config.text_config)
    eos = _eos_ids(tokenizer, generation, config.text_config)
    if not eos:
        raise PretrainedLoadError("the LLaVA checkpoint names no end-of-sequence token (tokenizer, generation_config.json or text_config)")
    pad = next((v for v in (getattr(tokenizer, "pad_token_id", None), getattr(generation, "pad_token_id", None)) if isinstance(v, int)), eos[0])
    tokens = vision_tokens(vision)  # (image_size / patch_size)^2, +1 with "full" ([CLS] kept)
    return MultimodalLM(vision, connector, lm, int(config.image_token_id), tokens, int(pad), eos, context_window(lm))


def load_llava(folder: str | Path, device: str | torch.device = "cpu") -> tuple[MultimodalLM, Any]:
    """``(model, Processors)`` for a LLaVA checkpoint folder, in eval mode on ``device``; ``processors.chat``
    lays out prompts (``USER: <image>\\n... ASSISTANT:``) with the right number of image tokens."""
    from polymodal.api import Processors, resolve_device
    from polymodal.hub.processors import HFImageProcessor, HFTokenizer
    from polymodal.models.mllm_build import chat_encoder
    from polymodal.modules.encoders.hf import _import_transformers

    folder = Path(folder)
    if not is_llava_folder(folder):
        raise PretrainedLoadError(f"{folder / HF_CONFIG}: not a LLaVA checkpoint (expected model_type {LLAVA_MODEL_TYPE!r})")
    transformers = _import_transformers()
    config = _config(folder, transformers)
    tokenizer = _tokenizer(folder, transformers)
    image_processor = _image_processor(folder, transformers)
    model = build_llava(config, tokenizer, _generation_config(folder, transformers), transformers)
    copy_weights(model, read_safetensors(folder), folder)
    max_length = model.max_length or int(getattr(tokenizer, "model_max_length", 2048) or 2048)
    processors = Processors(
        image=HFImageProcessor(image_processor),  # type: ignore[arg-type]
        tokenizer=HFTokenizer(tokenizer),  # type: ignore[arg-type]
        max_length=max_length,
        task="mllm",
        model_type="mllm",
        source=str(folder),
    )
    processors.chat = chat_encoder(model, tokenizer, window=max_length)
    return model.eval().to(resolve_device(device)), processors
