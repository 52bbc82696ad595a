"""``build_model(config)``: task models assembled from YAML, with an explicit registry.

A model config names its type and its towers; sizes that depend on the data (vocabulary size,
special-token ids, the answer vocabulary) come from a :class:`BuildContext` at build time, so the
same YAML works with any tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from polymodal.config import read_yaml
from polymodal.data.tokenizers import TextTokenizer
from polymodal.errors import ConfigError
from polymodal.models.backbone import ImageTextBackbone
from polymodal.models.classifier import MultimodalClassifier
from polymodal.models.configs import (
    CaptionerConfig,
    ClassifierConfig,
    DualEncoderConfig,
    EncoderSpec,
    FusionEncoderConfig,
    MLLMConfig,
    MultiTaskConfig,
    PretrainedModelConfig,
    VQAConfig,
    parse_model_config,
)
from polymodal.models.dual_encoder import DualEncoder
from polymodal.models.fusion_encoder import FusionEncoder
from polymodal.models.object_head import ObjectVocab
from polymodal.models.vqa import AnswerVocab, VQAClassifier
from polymodal.modules.encoders import Encoder, build_encoder

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "models"


@dataclass
class BuildContext:
    """What a model needs from the data: the tokenizer (vocabulary, special ids) and VQA answers."""

    tokenizer: TextTokenizer | None = None
    answer_vocab: AnswerVocab | None = None
    vocab_size: int | None = None  # used when there is no tokenizer (e.g. benchmarks)
    object_vocab: ObjectVocab | None = None  # object attributes, when the data has scene graphs
    hf_parts: Any = None  # a Hugging Face checkpoint's config/tokenizer/processor (hub.loading.HFParts)
    load_weights: bool = True  # False: build the architecture only (the weights come from a checkpoint)
    lm_tokenizer: Any = None  # an mllm's language-model tokenizer (Hugging Face), image token added


def load_model_config(name_or_path: str | Path) -> Any:
    """A path to a YAML file, or the name of a shipped config (``polymodal bench model`` lists them)."""
    path = Path(name_or_path)
    if not path.is_file():
        shipped = MODEL_CONFIG_DIR / f"{name_or_path}.yaml"
        if not shipped.is_file():
            names = ", ".join(list_model_configs())
            raise ConfigError(f"model config {name_or_path!r} is neither a file nor a shipped config; shipped: {names}")
        path = shipped
    return parse_model_config(read_yaml(path), str(path))


def list_model_configs() -> list[str]:
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))


def _vocab(ctx: BuildContext) -> int:
    if ctx.tokenizer is not None:
        return ctx.tokenizer.vocab_size
    if ctx.vocab_size is not None:
        return ctx.vocab_size
    raise ConfigError("building a text model needs a tokenizer (or vocab_size) in the BuildContext")


def _locked(spec: EncoderSpec, encoder: Encoder) -> Encoder:
    """``freeze: true`` in a tower's spec locks it (LiT-style locked-tower tuning)."""
    freeze = spec.options().get("freeze", False)
    if not isinstance(freeze, bool):
        raise ConfigError(f"{encoder.where}: freeze must be true or false, got {freeze!r}")
    return encoder.freeze() if freeze else encoder


def _text_encoder(spec: EncoderSpec, ctx: BuildContext, **forced: Any) -> Encoder:
    opts = spec.options()
    opts.pop("freeze", None)
    if spec.name == "text_transformer":
        opts.setdefault("vocab_size", _vocab(ctx))
        if ctx.tokenizer is not None:
            opts.setdefault("pad_id", ctx.tokenizer.pad_id)
    return _locked(spec, build_encoder(spec.name, **(opts | forced)))


def _vision_encoder(spec: EncoderSpec) -> Encoder:
    opts = spec.options()
    opts.pop("freeze", None)
    return _locked(spec, build_encoder(spec.name, **opts))


def _backbone(cfg: FusionEncoderConfig | VQAConfig | MultiTaskConfig, ctx: BuildContext) -> ImageTextBackbone:
    return ImageTextBackbone(_vision_encoder(cfg.vision), _text_encoder(cfg.text, ctx), cfg.fusion_depth, cfg.fusion_heads)


def _dual_encoder(cfg: DualEncoderConfig, ctx: BuildContext) -> nn.Module:
    return DualEncoder(_vision_encoder(cfg.vision), _text_encoder(cfg.text, ctx), cfg.embed_dim, cfg.init_temperature, local_loss=cfg.local_loss)


def _fusion_encoder_on(backbone: ImageTextBackbone, ctx: BuildContext, embed_dim: int, weights: dict[str, float], mlm_probability: float) -> FusionEncoder:
    tok = ctx.tokenizer
    mask_id = tok.mask_id if tok is not None and tok.mask_id is not None else _vocab(ctx) - 1
    pad_id = tok.pad_id if tok is not None else 0
    specials = tuple(i for i in (tok.cls_id, tok.sep_id, tok.unk_id) if i is not None) if tok is not None else ()
    return FusionEncoder(backbone, _vocab(ctx), mask_id, pad_id, specials, embed_dim, weights, mlm_probability)


def _fusion_encoder(cfg: FusionEncoderConfig, ctx: BuildContext) -> nn.Module:
    return _fusion_encoder_on(_backbone(cfg, ctx), ctx, cfg.embed_dim, cfg.weights, cfg.mlm_probability)


def _multitask(cfg: MultiTaskConfig, ctx: BuildContext) -> nn.Module:
    from polymodal.models.multitask import PRETRAIN_OBJECTIVES, MultiTaskModel, check_weights

    weights = check_weights(cfg.weights)
    if ctx.answer_vocab is None:
        raise ConfigError("building a multitask model needs the answer vocabulary (built from the training answers)")
    backbone = _backbone(cfg, ctx)
    pretrain_weights = {k: v for k, v in weights.items() if k in PRETRAIN_OBJECTIVES and v > 0}
    pretrain = _fusion_encoder_on(backbone, ctx, cfg.embed_dim, pretrain_weights, cfg.mlm_probability)
    captioner = _captioner_on(backbone.image_encoder, cfg.decoder, ctx, cfg.label_smoothing)
    return MultiTaskModel(pretrain, captioner, ctx.answer_vocab, cfg.num_classes, cfg.weights, cfg.dropout, ctx.object_vocab)


def _captioner_on(vision: Encoder, spec: EncoderSpec, ctx: BuildContext, label_smoothing: float) -> nn.Module:
    from polymodal.models.captioner import Captioner

    decoder = _text_encoder(spec, ctx, causal=True, cross_attention=True, context_dim=vision.width)
    tok = ctx.tokenizer
    bos, eos, pad = (tok.cls_id, tok.sep_id, tok.pad_id) if tok is not None else (1, 2, 0)
    return Captioner(vision, decoder, bos_id=bos, eos_id=eos, pad_id=pad, label_smoothing=label_smoothing)


def _captioner(cfg: CaptionerConfig, ctx: BuildContext) -> nn.Module:
    return _captioner_on(_vision_encoder(cfg.vision), cfg.decoder, ctx, cfg.label_smoothing)


def _vqa(cfg: VQAConfig, ctx: BuildContext) -> nn.Module:
    if ctx.answer_vocab is None:
        raise ConfigError("building a VQA model needs the answer vocabulary (built from the training answers)")
    return VQAClassifier(_backbone(cfg, ctx), ctx.answer_vocab, cfg.hidden, dropout=cfg.dropout)


def _classifier(cfg: ClassifierConfig, ctx: BuildContext) -> nn.Module:
    encoders = {m: (_text_encoder(s, ctx) if m == "text" else _vision_encoder(s)) for m, s in cfg.encoders.items()}
    return MultimodalClassifier(
        encoders, cfg.num_outputs, cfg.task, cfg.stage, cfg.fusion, cfg.fusion_dim, cfg.fusion_options, cfg.early_options,
        dropout=cfg.dropout, early_fusion=cfg.early_fusion, missing=cfg.missing,
    )


def _pretrained(cfg: PretrainedModelConfig, ctx: BuildContext) -> nn.Module:
    from polymodal.hub.loading import build_adapter, open_config

    parts = ctx.hf_parts if ctx.hf_parts is not None else open_config(cfg)
    return build_adapter(parts, weights=ctx.load_weights, freeze=cfg.freeze)


def _mllm(cfg: MLLMConfig, ctx: BuildContext) -> nn.Module:
    from polymodal.models.mllm_build import build_mllm, load_lm_tokenizer

    tokenizer = ctx.lm_tokenizer if ctx.lm_tokenizer is not None else load_lm_tokenizer(cfg.lm, cfg.image_token)
    return build_mllm(cfg, _vision_encoder(cfg.vision), tokenizer, ctx.load_weights)


MODELS: dict[str, Callable[[Any, BuildContext], nn.Module]] = {
    "dual_encoder": _dual_encoder,
    "fusion_encoder": _fusion_encoder,
    "captioner": _captioner,
    "vqa": _vqa,
    "classifier": _classifier,
    "multitask": _multitask,
    "pretrained": _pretrained,
    "mllm": _mllm,
}


def build_model(config: Any, ctx: BuildContext | None = None) -> nn.Module:
    """Build from a parsed config, a mapping, or the name/path of a YAML model config."""
    if isinstance(config, (str, Path)):
        config = load_model_config(config)
    elif isinstance(config, dict):
        config = parse_model_config(config)
    return MODELS[config.type](config, ctx or BuildContext())
