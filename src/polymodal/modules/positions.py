"""Fixed sinusoidal positions, shared by the encoders whose inputs have no fixed length (audio, features)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["sinusoidal_positions"]


def sinusoidal_positions(length: int, width: int, device: torch.device | None = None) -> Tensor:
    """``[length, width]`` sin / cos positions (Vaswani et al.): defined for any length, nothing to learn,
    which matters because audio and feature frame counts differ per dataset and per extractor."""
    half = width // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / max(half, 1))
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * freqs[None, :]
    pos = torch.cat([angles.sin(), angles.cos()], dim=1)
    return nn.functional.pad(pos, (0, width - 2 * half))  # odd width: one zero column
