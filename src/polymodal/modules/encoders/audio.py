"""Audio encoder: a strided convolutional stem over the log-mel, then a pre-LN transformer.

The input is the :class:`~polymodal.data.audio.AudioProcessor`'s log-mel ``[batch, n_mels, frames]``
(100 frames per second by default). Two stride-2 convolutions cut the frame rate by 4 (Whisper's stem
halves it; attention cost grows with the square of the length, so a 10 s clip gives 250 tokens instead
of 1000) and sinusoidal positions let any clip length through, unlike a learned table.

Padding: clips of different lengths are batched with a frame ``mask`` (True = real frame). Padded
frames are zeroed before each convolution, so the real tokens of a padded clip see exactly the zeros
that the convolution's own padding gives the unpadded clip, and ``pooled`` is the same either way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polymodal.errors import ConfigError
from polymodal.modules.encoders.base import (
    EncoderOutput,
    ShapeError,
    TransformerEncoder,
    masked_mean,
    shape_error,
)
from polymodal.modules.positions import sinusoidal_positions

__all__ = ["AudioEncoder", "sinusoidal_positions"]

# Each stem convolution has stride 2, so the token rate is the frame rate / 2**STEM_LAYERS.
STEM_LAYERS = 2


def downsample_mask(mask: Tensor) -> Tensor:
    """Frame mask ``[B, T]`` -> ``[B, ceil(T / 2)]``: an output position is real if either frame is."""
    if mask.shape[1] % 2:
        mask = nn.functional.pad(mask, (0, 1), value=False)
    return mask.view(mask.shape[0], -1, 2).any(dim=-1)


class AudioEncoder(TransformerEncoder):
    """Log-mel ``[B, n_mels, frames]`` -> tokens ``[B, ceil(frames / 4), width]`` and a pooled vector.

    Stem: two ``Conv1d`` (kernel 3, stride 2) + GELU with the mel bands as channels; then sinusoidal
    positions, pre-LN transformer blocks and a final LayerNorm. ``pooled`` is the mean of the real
    tokens, projected to ``output_dim`` (no bias, as in CLIP) when given.
    """

    modality = "audio"
    name = "audio"

    def __init__(
        self,
        n_mels: int = 64,
        width: int = 256,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        output_dim: int | None = None,
        *,
        norm_eps: float = 1e-5,
        activation: str = "gelu",
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if n_mels < 1 or width < 1:
            raise ConfigError(f"audio encoder: n_mels and width must be >= 1, got {n_mels} and {width}")
        if width % heads != 0:
            raise ConfigError(f"audio encoder: width {width} is not a multiple of heads {heads}")
        self.n_mels = n_mels
        self.width = width
        self.output_dim = output_dim or width
        self.stem = nn.ModuleList(
            nn.Conv1d(n_mels if i == 0 else width, width, kernel_size=3, stride=2, padding=1)
            for i in range(STEM_LAYERS)
        )
        self.act = nn.GELU()
        self._build_body(width, depth, heads, mlp_ratio, dropout, norm_eps, activation, grad_checkpointing, output_dim)

    @staticmethod
    def num_tokens(frames: int) -> int:
        """Tokens a clip of ``frames`` log-mel frames becomes (each stem layer halves, rounding up)."""
        for _ in range(STEM_LAYERS):
            frames = (frames + 1) // 2
        return frames

    def forward(self, mel: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """``mel`` ``[B, n_mels, frames]`` float, ``mask`` ``[B, frames]`` (True = real) -> :class:`EncoderOutput`."""
        mask = self._check_inputs(mel, mask)
        x = mel
        for conv in self.stem:
            if mask is not None:
                x = x * mask[:, None, :].to(x.dtype)  # padded frames read as the conv's zero padding
                mask = downsample_mask(mask)
            x = self.act(conv(x))
        x = x.transpose(1, 2)  # [B, T', width]
        x = x + sinusoidal_positions(x.shape[1], self.width, x.device).to(x.dtype)
        tokens = self.ln_post(self.transformer(x, mask=mask))
        return EncoderOutput(tokens=tokens, pooled=self._project(masked_mean(tokens, mask)), mask=mask)

    def _check_inputs(self, mel: Tensor, mask: Tensor | None) -> Tensor | None:
        """Validate shapes against the config and return the bool frame mask (or None)."""
        if mel.dim() != 3 or mel.shape[1] != self.n_mels or mel.shape[2] == 0:
            raise shape_error(self.where, "log-mel", ("batch", self.n_mels, "frames"), mel)
        if not mel.is_floating_point():
            raise ShapeError(f"{self.where}: expected a floating-point log-mel (from the audio processor), got {mel.dtype}")
        if mask is None:
            return None
        b, _, t = mel.shape
        if mask.shape != (b, t):
            raise shape_error(self.where, "mask (one entry per log-mel frame)", (b, t), mask)
        return mask if mask.dtype == torch.bool else mask != 0
