"""Typed model configs: which task model, which towers, which sizes. Pure data, no torch.

Kept apart from the factory so the run config can embed a model section without importing models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

MODEL_TYPES: tuple[str, ...] = ("dual_encoder", "fusion_encoder", "captioner", "vqa", "classifier", "multitask", "pretrained", "mllm")


class EncoderSpec(BaseModel):
    """``{name: vit, width: 128, ...}``: the name picks the encoder, the rest are its options."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class _ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# sizes and rates checked here, so that ``embed_dim: 0`` is a config error naming the key and not a
# shape error from inside torch once the model is built
Size = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(ge=0, lt=1)]
Weight = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class DualEncoderConfig(_ModelConfig):
    type: Literal["dual_encoder"]
    vision: EncoderSpec
    text: EncoderSpec
    embed_dim: Size = 128
    init_temperature: float = Field(0.07, gt=0, allow_inf_nan=False)
    local_loss: bool = False


class FusionEncoderConfig(_ModelConfig):
    type: Literal["fusion_encoder"]
    vision: EncoderSpec
    text: EncoderSpec
    fusion_depth: Size = 2
    fusion_heads: Size | None = None
    embed_dim: Size = 128
    weights: dict[str, Weight] = Field(default_factory=lambda: {"itc": 1.0, "itm": 1.0, "mlm": 1.0})
    mlm_probability: float = Field(0.15, gt=0, lt=1)


class CaptionerConfig(_ModelConfig):
    type: Literal["captioner"]
    vision: EncoderSpec
    decoder: EncoderSpec
    label_smoothing: Probability = 0.1


class VQAConfig(_ModelConfig):
    type: Literal["vqa"]
    vision: EncoderSpec
    text: EncoderSpec
    fusion_depth: Size = 2
    fusion_heads: Size | None = None
    hidden: Size | None = None
    max_answers: Size = 3129
    dropout: float = Field(0.1, ge=0, lt=1, description="in the answer head")


class ClassifierConfig(_ModelConfig):
    type: Literal["classifier"]
    encoders: dict[str, EncoderSpec]
    num_outputs: Size = 2
    task: Literal["classification", "regression"] = "classification"
    stage: Literal["late", "early", "hybrid"] = "late"
    fusion: str = "concat"
    fusion_dim: Size = 256
    fusion_options: dict[str, Any] = Field(default_factory=dict)
    early_options: dict[str, Any] = Field(default_factory=dict)
    early_fusion: str = "cross_attention"  # token-level fusion for stage early/hybrid (e.g. "mult")
    missing: Literal["zero", "learned"] = "zero"  # absent modality: encode zeros, or a learned embedding
    dropout: float = Field(0.1, ge=0, lt=1, description="before the classification head")


class MultiTaskConfig(_ModelConfig):
    """One model for retrieval, captioning, VQA and statement classification (see models/multitask.py).

    ``weights`` picks the objectives and their weights among itc, itm, mlm (pretraining), lm
    (captioning), vqa, cls (classification) and obj (object attributes from scene graphs, optional);
    itc, lm, vqa and cls are required, a weight of 0 switches an optional one off.
    """

    type: Literal["multitask"]
    vision: EncoderSpec
    text: EncoderSpec
    decoder: EncoderSpec
    fusion_depth: Size = 2
    fusion_heads: Size | None = None
    embed_dim: Size = 128
    weights: dict[str, Weight] = Field(default_factory=lambda: {"itc": 1.0, "lm": 1.0, "vqa": 1.0, "cls": 1.0})
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    label_smoothing: Probability = 0.0
    max_answers: Size = 3129
    num_classes: int = Field(2, ge=2)
    dropout: Probability = 0.1


class PretrainedModelConfig(_ModelConfig):
    """A Hugging Face checkpoint fine-tuned as it is: CLIP/SigLIP for retrieval, BLIP for captioning.

    ``path`` is a checkpoint folder, a zoo name (``polymodal models``) or a hub repo id found in the
    local cache; the checkpoint's own tokenizer and image processor are used, and saved with every
    polymodal checkpoint so the run reloads without the original folder. ``freeze`` locks towers
    (``[text]`` tunes only the image side, LiT's mirror; ``[vision]`` is LiT).
    """

    type: Literal["pretrained"]
    path: str
    freeze: list[Literal["vision", "text"]] = Field(default_factory=list)
    allow_download: bool = False


class ConnectorSpec(BaseModel):
    """How vision tokens become LM embeddings (see models/connectors.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["linear", "mlp", "qformer"] = "mlp"
    hidden_dim: int | None = Field(None, ge=1, description="mlp: hidden width (default: the LM's width)")
    num_queries: int = Field(16, ge=1, description="qformer: learned queries = tokens per image")
    width: int | None = Field(None, ge=1, description="qformer: width of its layers (default: the LM's width)")
    depth: int = Field(2, ge=1, description="qformer: cross-attention layers")
    heads: int = Field(4, ge=1, description="qformer: attention heads")

    def options(self) -> dict[str, Any]:
        if self.kind == "mlp":
            return {"hidden_dim": self.hidden_dim}
        if self.kind == "qformer":
            return {"num_queries": self.num_queries, "width": self.width, "depth": self.depth, "heads": self.heads}
        return {}


class LoraSpec(BaseModel):
    """LoRA adapters on the language model (through ``peft``); the LM's own weights stay frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear", description="peft's target_modules: 'all-linear' or module names")


class MLLMConfig(_ModelConfig):
    """A LLaVA-style assistant: vision tower + connector + a Hugging Face causal LM (models/mllm.py).

    The two training stages are two configs of this shape: stage 1 (alignment) freezes ``vision`` and
    ``lm`` so only the connector learns; stage 2 (instruction tuning) sets ``init_from`` to the stage-1
    run and unfreezes the LM, or keeps it frozen and trains ``lora`` adapters.
    """

    type: Literal["mllm"]
    vision: EncoderSpec
    lm: str = Field(description="folder of a Hugging Face causal LM (AutoModelForCausalLM) with its tokenizer, or a zoo name")
    connector: ConnectorSpec = Field(default_factory=ConnectorSpec)
    feature_layer: int | None = Field(None, description="Hugging Face vision towers: the hidden layer the connector reads (LLaVA: -2); None: the last")
    drop_cls: bool = Field(False, description="drop the vision tower's first ([CLS]) token, as LLaVA's 'default' feature selection does")
    freeze: list[Literal["vision", "lm"]] = Field(default_factory=lambda: ["vision"])
    lora: LoraSpec | None = None
    init_from: str | None = Field(None, description="a run folder or checkpoint whose weights start this run (stage 2 from stage 1)")
    image_token: str = "<image>"
    max_length: int | None = Field(None, ge=8, description="context window for training and chat (default: the LM's)")
    system_prompt: str = ""
    truncation: Literal["error", "drop_turns"] = Field(
        "drop_turns", description="a conversation longer than max_length: drop its last rounds (logged), or fail"
    )


ModelConfig = Annotated[
    Union[
        DualEncoderConfig, FusionEncoderConfig, CaptionerConfig, VQAConfig, ClassifierConfig, MultiTaskConfig, PretrainedModelConfig,
        MLLMConfig,
    ],
    Field(discriminator="type"),
]


_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelConfig)


def parse_model_config(tree: Any, source: str = "model config") -> Any:
    from polymodal.config import format_validation_error
    from polymodal.errors import ConfigError

    try:
        return _ADAPTER.validate_python(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, root=ModelConfig)) from None


