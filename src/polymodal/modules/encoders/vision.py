"""Image encoders: a Vision Transformer and a small CNN for low-resolution images.

Both return :class:`EncoderOutput` with ``tokens`` for fusion / captioning and ``pooled`` for
contrastive or classification heads, and reject images of the wrong shape with a :class:`ShapeError`
naming the expected ``[batch, channels, size, size]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from polymodal.errors import ConfigError
from polymodal.modules.encoders.base import (
    Encoder,
    EncoderOutput,
    ShapeError,
    TransformerEncoder,
    shape_error,
)
from polymodal.modules.hooks import has_forward_hooks

__all__ = ["SmallCNN", "VisionTransformer"]


def _check_images(where: str, images: Tensor, channels: int, size: int, weights: Tensor | None = None) -> None:
    """Shape and dtype of an image batch; ``weights`` (the first layer's): outside autocast the images must
    share its dtype (float64 from numpy into a float32 model fails inside a matmul otherwise)."""
    if not isinstance(images, Tensor):
        raise ShapeError(
            f"{where}: expected images as a torch.Tensor [batch, {channels}, {size}, {size}] "
            f"(processors.images(...) makes one from files or PIL images), got {type(images).__name__}"
        )
    expected = ("batch", channels, size, size)
    if images.dim() != 4 or images.shape[1] != channels or images.shape[2] != size or images.shape[3] != size:
        raise shape_error(where, "images", expected, images)
    if not images.is_floating_point():
        raise ShapeError(
            f"{where}: expected floating-point images (normalised by the image processor), got {images.dtype}"
        )
    autocast = torch.is_autocast_enabled(images.device.type) and images.dtype != torch.float64  # autocast leaves float64 alone
    if weights is not None and images.dtype != weights.dtype and not autocast:
        raise ShapeError(
            f"{where}: expected {weights.dtype} images, the dtype of the model's weights, got {images.dtype}; "
            f"convert them with images.to({weights.dtype})"
        )


class VisionTransformer(TransformerEncoder):
    """ViT: patch embedding, class token, learned positions, pre-LN blocks, final LayerNorm.

    ``tokens`` are ``[B, 1 + num_patches, width]`` with the class token at position 0. ``pooled`` is
    the class token (``pool='cls'``) or the mean of the patch tokens (``pool='mean'``), projected to
    ``output_dim`` when given (no bias, as in CLIP), so ``encoder.output_dim`` is its size.
    """

    modality = "image"
    name = "vit"

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        output_dim: int | None = None,
        pool: Literal["cls", "mean"] = "cls",
        grad_checkpointing: bool = False,
        *,
        in_channels: int = 3,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
        ln_pre: bool = False,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if image_size % patch_size != 0:
            raise ConfigError(f"vit: image_size {image_size} is not a multiple of patch_size {patch_size}")
        if pool not in ("cls", "mean"):
            raise ConfigError(f"vit: pool must be 'cls' or 'mean', got {pool!r}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.grid = image_size // patch_size
        self.num_tokens = 1 + self.grid**2
        self.pool = pool
        self.width = width
        self.output_dim = output_dim or width

        # A strided conv is exactly a linear map of each non-overlapping patch; the weight keeps the
        # conv's shape (checkpoints, CLIP's layout) but runs as one matmul (see _embed_patches).
        self.patch_embed = nn.Conv2d(
            in_channels, width, kernel_size=patch_size, stride=patch_size, bias=False
        )
        scale = width**-0.5
        self.cls_token = nn.Parameter(scale * torch.randn(width))
        self.pos_embed = nn.Parameter(scale * torch.randn(self.num_tokens, width))
        self.ln_pre = nn.LayerNorm(width, eps=norm_eps) if ln_pre else nn.Identity()
        self._build_body(width, depth, heads, mlp_ratio, dropout, norm_eps, activation, grad_checkpointing, output_dim)

    def forward(self, images: Tensor) -> EncoderOutput:
        """``images`` ``[B, in_channels, image_size, image_size]`` float -> :class:`EncoderOutput`."""
        tokens = self.ln_post(self.transformer(self._input_tokens(images)))
        pooled = tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)
        return EncoderOutput(tokens=tokens, pooled=self._project(pooled), mask=None)

    def forward_pooled(self, images: Tensor) -> Tensor:
        """``forward(images).pooled``; with ``pool='cls'`` the last block runs for the class token only."""
        if self.pool != "cls" or type(self).forward is not VisionTransformer.forward:  # a subclass's forward rules
            return super().forward_pooled(images)
        x = self._input_tokens(images)
        cls = self.transformer(x, positions=torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        return self._project(self.ln_post(cls[:, 0]))

    def _input_tokens(self, images: Tensor) -> Tensor:
        """Checked images -> the stack's input: class token + patch embeddings + positions, ``ln_pre``."""
        _check_images(self.where, images, self.in_channels, self.image_size, self.patch_embed.weight)
        x = self._embed_patches(images)  # [B, N, width]
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)
        return self.ln_pre(torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype))

    def _embed_patches(self, images: Tensor) -> Tensor:
        """The patch embedding as a matmul of the flattened patches: the same map as ``patch_embed``'s conv.

        cuDNN has no good kernel for a convolution whose stride is its kernel: on an H100, training
        ViT-B/32 at batch 256 spent 5.6 of its 45.6 ms a step in that conv (its weight gradient
        alone 3.0 ms), for 0.5% of the FLOPs. Laid out as ``[B, patches, C * p * p]`` the same
        product is a small GEMM (benchmarks/RESULTS.md, GPU training).
        """
        if has_forward_hooks(self.patch_embed):  # hooks expect the conv to be called
            return self.patch_embed(images).flatten(2).transpose(1, 2)
        b, c, p, g = images.shape[0], self.in_channels, self.patch_size, self.grid
        patches = images.reshape(b, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)
        return F.linear(patches, self.patch_embed.weight.reshape(self.width, -1), self.patch_embed.bias)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = math.gcd(channels, 8)  # <= 8 groups that divide the channels; stable at batch size 1
        return nn.GroupNorm(groups, channels)
    raise ConfigError(f"cnn: norm must be 'group' or 'batch', got {kind!r}")


class SmallCNN(Encoder):
    """A few conv-norm-ReLU stages for 32-64 px images, where a ViT has too few patches to shine.

    Each stage halves the resolution (a stride-2 3x3 conv) and refines it (a 3x3 conv). The final
    feature map is flattened into ``tokens`` ``[B, H*W, width]`` (``H = image_size / 2**stages``)
    and mean-pooled into ``pooled`` (projected to ``output_dim`` when given). Group norm by default
    so results don't depend on the batch size (contrastive batches, batch-1 inference).

    ``positions=True`` adds a learned embedding per grid cell to the tokens: convolutions are nearly
    translation-invariant, and a question like "what is left of the cube?" needs to know where.
    """

    modality = "image"
    name = "cnn"

    def __init__(
        self,
        image_size: int,
        channels: Sequence[int] = (32, 64, 128),
        width: int = 128,
        output_dim: int | None = None,
        *,
        in_channels: int = 3,
        norm: Literal["group", "batch"] = "group",
        positions: bool = False,
    ) -> None:
        super().__init__()
        if not channels:
            raise ConfigError("cnn: channels must name at least one stage")
        if image_size % (2 ** len(channels)) != 0:
            raise ConfigError(
                f"cnn: image_size {image_size} must be divisible by 2**{len(channels)} (one halving per stage)"
            )
        self.image_size = image_size
        self.in_channels = in_channels
        self.width = width
        self.output_dim = output_dim or width
        self.grid = image_size // 2 ** len(channels)
        self.num_tokens = self.grid**2

        layers: list[nn.Module] = []
        prev = in_channels
        for c in channels:
            layers += [
                nn.Conv2d(prev, c, 3, stride=2, padding=1, bias=False),
                _norm(norm, c),
                nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                _norm(norm, c),
                nn.ReLU(inplace=True),
            ]
            prev = c
        self.features = nn.Sequential(*layers)
        self.to_tokens = nn.Linear(prev, width)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(self.num_tokens, width)) if positions else None
        self.proj = nn.Linear(width, output_dim, bias=False) if output_dim else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> EncoderOutput:
        """``images`` ``[B, in_channels, image_size, image_size]`` float -> :class:`EncoderOutput`."""
        _check_images(self.where, images, self.in_channels, self.image_size, next(self.features.parameters()))  # the first conv's weight
        # Channels-last (NHWC) is the layout oneDNN's and cuDNN's convolutions run natively; from
        # NCHW every conv reorders its input and output. Training the quickstart's CNN (batch norm,
        # bf16) took 34 ms a step instead of 46 on CPU; group norm is unchanged. The feature map, when
        # it stays channels-last, then flattens into tokens without a copy.
        fmap = self.features(images.contiguous(memory_format=torch.channels_last))  # [B, C, g, g]
        tokens = self.to_tokens(fmap.flatten(2).transpose(1, 2))  # [B, g*g, width]
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed.to(tokens.dtype)
        pooled = tokens.mean(dim=1)
        if self.proj is not None:
            pooled = self.proj(pooled)
        return EncoderOutput(tokens=tokens, pooled=pooled, mask=None)
