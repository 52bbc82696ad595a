"""Build a :class:`~polymodal.models.mllm.MultimodalLM` from an ``mllm`` config: LM, tokenizer, stages.

The language model and its tokenizer come from one Hugging Face folder (``model.lm``). The tokenizer
gains the image token (``<image>``) when it lacks one, and the LM's embedding table grows to match;
the new row is never trained or read (image features overwrite it), so this changes no output of the
LM on text.

Order matters for the two-stage recipe: the ``init_from`` weights (stage 1's run) are loaded into
the plain architecture *before* LoRA wraps the LM, since LoRA renames the LM's parameters.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polymodal.errors import ConfigError, PolymodalError
from polymodal.models.configs import MLLMConfig
from polymodal.models.connectors import build_connector
from polymodal.models.mllm import MultimodalLM, VisionFeatures
from polymodal.modules.encoders.hf import _import_transformers

log = logging.getLogger(__name__)


def lm_folder(name_or_path: str) -> Path:
    from polymodal.hub.zoo import resolve

    folder = resolve(name_or_path)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model.lm {name_or_path!r}: {folder} has no config.json; expected a Hugging Face causal LM folder (save_pretrained)")
    return folder


def load_lm_tokenizer(name_or_path: str, image_token: str = "<image>") -> Any:
    """The LM folder's tokenizer with ``image_token`` added (and a pad token: end-of-sequence, if it has none)."""
    transformers = _import_transformers()
    folder = lm_folder(name_or_path)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.lm {name_or_path!r}: cannot load its tokenizer from {folder}: {e}") from None
    if image_token not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [image_token]})
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def context_window(lm: nn.Module) -> int | None:
    cfg = lm.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_lm(name_or_path: str, weights: bool = True) -> nn.Module:
    transformers = _import_transformers()
    folder = lm_folder(name_or_path)
    try:
        if weights:
            return transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        config = transformers.AutoConfig.from_pretrained(str(folder))
        return transformers.AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"model.lm {name_or_path!r}: cannot load a causal language model from {folder}: {e}") from None


def _image_size(encoder: nn.Module) -> tuple[int, int]:
    size = getattr(encoder, "image_size", None)
    if isinstance(size, int):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise ConfigError(f"mllm: cannot tell the image size of the vision tower {type(encoder).__name__}; set image_size in model.vision")


@torch.no_grad()
def vision_tokens(vision: VisionFeatures) -> int:
    """How many tokens one image becomes, from a dry run on a blank image of the tower's size."""
    h, w = _image_size(vision.encoder)
    was = vision.training
    vision.eval()
    n = int(vision(torch.zeros(1, 3, h, w)).shape[1])
    vision.train(was)
    return n


def _init_from(model: nn.Module, path: str) -> None:
    from polymodal.train.checkpoint import CheckpointError, load_checkpoint

    try:
        ckpt = load_checkpoint(path, expect_type="mllm")
        ckpt.load_model_state(model, strict=True)
    except CheckpointError as e:
        raise ConfigError(
            f"model.init_from {path!r}: {e}. It must be a run of the same architecture (the previous stage's run folder)"
        ) from None
    log.info("mllm: weights from %s", ckpt.path)


def _apply_lora(model: MultimodalLM, cfg: MLLMConfig) -> None:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise PolymodalError("model.lora needs peft: pip install 'polymodal[mllm]' (or pip install peft)") from None
    assert cfg.lora is not None
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=cfg.lora.target_modules, bias="none")
    try:
        model.lm = get_peft_model(model.lm, lora)
    except ValueError as e:
        raise ConfigError(f"model.lora: {e}") from None


def build_mllm(cfg: MLLMConfig, vision_encoder: nn.Module, tokenizer: Any, load_weights: bool = True) -> MultimodalLM:
    """The assistant of ``cfg`` (``vision_encoder`` already built from ``cfg.vision``; ``tokenizer`` from
    :func:`load_lm_tokenizer`). ``load_weights=False`` builds the architecture only, for a checkpoint's weights."""
    lm = load_lm(cfg.lm, weights=load_weights and cfg.init_from is None)
    if len(tokenizer) > lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    vision = VisionFeatures(vision_encoder, cfg.feature_layer, cfg.drop_cls)
    lm_width = lm.get_input_embeddings().embedding_dim
    connector = build_connector(cfg.connector.kind, vision.width, lm_width, **cfg.connector.options())
    tokens = connector.tokens_out(vision_tokens(vision))
    window = context_window(lm)
    if cfg.max_length is not None and window is not None and cfg.max_length > window:
        raise ConfigError(f"model.max_length {cfg.max_length} exceeds the language model's context window ({window} positions)")
    max_length = cfg.max_length or window
    image_id = tokenizer.convert_tokens_to_ids(cfg.image_token)
    eos = tokenizer.eos_token_id
    model = MultimodalLM(vision, connector, lm, image_id, tokens, tokenizer.pad_token_id, eos, max_length)
    if cfg.init_from is not None and load_weights:
        _init_from(model, cfg.init_from)
    if "vision" in cfg.freeze:  # Encoder.freeze also keeps it in eval mode: batch-norm statistics stay as trained
        encoder = model.vision.encoder
        encoder.freeze() if hasattr(encoder, "freeze") else encoder.requires_grad_(False)
    if "lm" in cfg.freeze or cfg.lora is not None:
        model.lm.requires_grad_(False)
    if cfg.lora is not None:
        _apply_lora(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("mllm: %d image tokens per image, context %s, %.2fM trainable of %.2fM parameters",
             tokens, max_length, trainable / 1e6, sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def chat_encoder(model: MultimodalLM, tokenizer: Any, system_prompt: str = "", truncation: str = "drop_turns", window: int | None = None) -> Any:
    """The prompt layout of ``model`` (its image token, tokens per image, context window) for ``tokenizer``;
    ``window`` when the model's LM states none (2,048 otherwise)."""
    from polymodal.data.chat import ChatEncoder, ChatFormat

    return ChatEncoder(tokenizer, model.image_token_id, model.tokens_per_image, model.max_length or window or 2048, ChatFormat(system=system_prompt), truncation)
