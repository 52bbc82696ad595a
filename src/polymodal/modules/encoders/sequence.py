"""Encoder for pre-extracted feature sequences (GloVe/BERT word vectors, COVAREP audio, Facet video).

CMU-MOSI/MOSEI and similar affect datasets ship features, not raw media, so the encoder's job is what
MulT's front end does: a temporal Conv1d projection of the frames to a common width, sinusoidal
positions, then (optionally) a few pre-LN transformer blocks. ``depth=0`` keeps the projection only,
which is what an honest early-fusion baseline wants (modalities meet before any deep per-modality
processing).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from polymodal.errors import ConfigError
from polymodal.modules.encoders.base import Encoder, EncoderOutput, ShapeError, format_shape, masked_mean
from polymodal.modules.positions import sinusoidal_positions
from polymodal.modules.transformer import Transformer

__all__ = ["FeatureSequenceEncoder"]


class FeatureSequenceEncoder(Encoder):
    """``[B, T, input_dim]`` features (+ ``[B, T]`` mask, True = real frame) -> :class:`EncoderOutput`.

    Args:
        input_dim: feature size of the frames (must match the data, e.g. 74 for COVAREP audio).
        width: token width after the projection.
        depth: transformer blocks after the projection (0 = projection + positions only).
        heads: attention heads (``width`` must be divisible by it when ``depth > 0``).
        dropout: dropout on the embedded frames and inside the blocks.
        output_dim: size of ``pooled`` (a linear projection of the mask-aware mean); default ``width``.
        modality: the modality this instance encodes, used in error messages and batch keys.
        max_length: frames beyond this are cut (long MOSEI audio costs quadratic attention).
        kernel_size: temporal width of the Conv1d projection (MulT uses 1-5); odd, so the output
            keeps the input's length and frame ``i`` stays at position ``i``.
    """

    name = "features"

    def __init__(
        self,
        input_dim: int,
        width: int = 128,
        depth: int = 1,
        heads: int = 4,
        dropout: float = 0.0,
        output_dim: int | None = None,
        modality: str = "features",
        max_length: int | None = None,
        kernel_size: int = 1,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        where = f"{modality} encoder '{self.name}'"
        if input_dim <= 0 or width <= 0:
            raise ConfigError(f"{where}: input_dim and width must be positive, got {input_dim} and {width}")
        if depth < 0:
            raise ConfigError(f"{where}: depth must be >= 0 (0 = projection only), got {depth}")
        if depth > 0 and (heads <= 0 or width % heads):
            raise ConfigError(f"{where}: width={width} must be divisible by heads={heads}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"{where}: kernel_size must be a positive odd number, got {kernel_size}")
        if max_length is not None and max_length <= 0:
            raise ConfigError(f"{where}: max_length must be positive, got {max_length}")
        self.modality = modality  # type: ignore[misc]  # per instance: one class serves text/audio/video
        self.input_dim = input_dim
        self.width = width
        self.depth = depth
        self.max_length = max_length
        self.output_dim = output_dim or width
        self.proj = nn.Conv1d(input_dim, width, kernel_size, padding=kernel_size // 2, bias=False)
        self.scale = math.sqrt(width)  # MulT scales the embedded frames before adding positions
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.transformer = (
            Transformer(width, depth, heads, mlp_ratio, dropout=dropout) if depth > 0 else None
        )
        self.ln_final = nn.LayerNorm(width)
        self.head = nn.Linear(width, output_dim) if output_dim else None

    def batch_keys(self, modality: str) -> tuple[str, str]:
        return f"{modality}_features", f"{modality}_features_mask"

    def forward(self, features: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        x, mask = self._check(features, mask)
        if mask is not None:
            # Zero the padded frames so a conv kernel > 1 never mixes padding into real frames.
            x = x * mask[:, :, None].to(x.dtype)
        h = self.proj(x.transpose(1, 2)).transpose(1, 2) * self.scale
        h = self.drop(h + sinusoidal_positions(h.shape[1], self.width, h.device).to(h.dtype))
        if self.transformer is not None:
            h = self.transformer(h, mask=mask)
        tokens = self.ln_final(h)
        pooled = masked_mean(tokens, mask)
        if self.head is not None:
            pooled = self.head(pooled)
        return EncoderOutput(tokens=tokens, pooled=pooled, mask=mask)

    def _check(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        where = self.where
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.input_dim:
            got = format_shape(x) if isinstance(x, Tensor) else type(x).__name__
            raise ShapeError(
                f"{where}: expected features [batch, frames, {self.input_dim}] (input_dim={self.input_dim}; "
                f"set it to the feature size of the data), got {got}"
            )
        if not x.is_floating_point():
            raise ShapeError(f"{where}: expected floating-point features, got dtype {x.dtype}")
        if mask is not None:
            if tuple(mask.shape) != tuple(x.shape[:2]):
                raise ShapeError(
                    f"{where}: expected mask {format_shape(x.shape[:2])} ([batch, frames], True = real frame), "
                    f"got {format_shape(mask)}"
                )
            mask = mask if mask.dtype == torch.bool else mask != 0
        if self.max_length is not None and x.shape[1] > self.max_length:
            x = x[:, : self.max_length]
            mask = mask[:, : self.max_length] if mask is not None else None
        if mask is not None and bool(mask.all()):
            mask = None  # nothing padded: skip the masking work
        return x, mask
