"""Video encoder: any image encoder applied to every frame, then a temporal model over the frames.

Reusing an image tower per frame (rather than 3-D convolutions) lets a video model start from a
pretrained image model and keeps one code path for images and clips; the temporal part only has to
learn how frames relate. Clips of different lengths are padded to a common ``T`` and described by a
``[B, T]`` frame mask, and padding frames never change a clip's result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from polymodal.errors import ConfigError
from polymodal.modules.encoders.base import Encoder, EncoderOutput, ShapeError, masked_mean, shape_error
from polymodal.modules.transformer import Transformer

__all__ = ["VideoEncoder"]



class VideoEncoder(Encoder):
    """``[B, T, 3, H, W]`` clips -> :class:`EncoderOutput`, via a per-frame encoder and a temporal model.

    All ``B * T`` frames go through ``frame_encoder`` as one batch (only the real frames when a mask
    is given). Then, by ``tokens``:

    * ``"frames"``: one token per frame, the frame's pooled vector projected to ``width`` plus a
      learned temporal position; ``tokens`` ``[B, T, width]``, ``mask`` the frame mask.
    * ``"patches"``: every token of every frame plus its frame's temporal position, flattened to
      ``[B, T * N, width]`` (the frame mask repeated per token), for captioning / QA heads that need
      spatial detail.

    ``temporal="transformer"`` runs ``depth`` pre-LN blocks over those tokens (joint space-time
    attention in ``"patches"`` mode) so frames can exchange information; ``"mean"`` leaves them as
    they are. ``pooled`` is the mask-aware mean over frames (of the transformer's outputs, or of the
    per-frame vectors for ``"mean"``), projected to ``output_dim`` when given.

    ``motion=True`` (``"patches"`` only) adds to every token a learned projection of how that token
    changed since the previous frame. A frozen image tower's grid describes each frame on its own; the
    difference says where an object arrived or left at that frame, which "what moved left?" needs and
    which attention over static per-frame tokens has to discover by itself. The projection starts at
    zero, so the option changes nothing until it learns to.

    ``width`` is the frame encoder's token width; ``max_frames`` bounds ``T`` (positions are learned).
    """

    modality = "video"
    name = "video"

    def __init__(
        self,
        frame_encoder: Mapping[str, Any] | Encoder,
        temporal: Literal["mean", "transformer"] = "mean",
        max_frames: int = 32,
        depth: int = 2,
        heads: int = 4,
        tokens: Literal["frames", "patches"] = "frames",
        output_dim: int | None = None,
        dropout: float = 0.0,
        motion: bool = False,
    ) -> None:
        super().__init__()
        if temporal not in ("mean", "transformer"):
            raise ConfigError(f"video: temporal must be 'mean' or 'transformer', got {temporal!r}")
        if tokens not in ("frames", "patches"):
            raise ConfigError(f"video: tokens must be 'frames' or 'patches', got {tokens!r}")
        if motion and tokens != "patches":
            raise ConfigError("video: motion needs tokens: patches (it marks which grid cells changed between frames)")
        if max_frames < 1:
            raise ConfigError(f"video: max_frames must be >= 1, got {max_frames}")
        self.frame_encoder = _build_frame_encoder(frame_encoder)
        self.temporal = temporal
        self.token_mode = tokens
        self.max_frames = max_frames
        self.in_channels = getattr(self.frame_encoder, "in_channels", 3)
        self.width = width = self.frame_encoder.width
        self.output_dim = output_dim or width

        fd = self.frame_encoder.output_dim
        self.frame_proj = nn.Identity() if fd == width else nn.Linear(fd, width)
        self.time_embed = nn.Parameter(0.02 * torch.randn(max_frames, width))
        self.motion_proj = nn.Linear(width, width) if motion else None
        if self.motion_proj is not None:
            nn.init.zeros_(self.motion_proj.weight)
            nn.init.zeros_(self.motion_proj.bias)
        self.transformer = (
            Transformer(width, depth, heads, dropout=dropout) if temporal == "transformer" else None
        )
        self.ln_post = nn.LayerNorm(width) if temporal == "transformer" else nn.Identity()
        self.proj = nn.Linear(width, output_dim, bias=False) if output_dim else None
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=width**-0.5)

    def forward(self, video: Tensor, mask: Tensor | None = None) -> EncoderOutput:
        """``video`` ``[B, T, C, H, W]`` float, ``mask`` ``[B, T]`` (True = real frame) -> :class:`EncoderOutput`."""
        mask = self._check(video, mask)
        b, t = video.shape[:2]
        frame_tokens, frame_pooled, token_mask = self._encode_frames(video, mask)
        per_frame = self.frame_proj(frame_pooled)  # [B, T, width]
        pos = self.time_embed[:t].to(per_frame.dtype)
        if self.token_mode == "frames":
            x, x_mask = per_frame + pos, mask
        else:
            n = frame_tokens.shape[2]
            if self.motion_proj is not None:
                # frame 0 is compared with itself (no change); padding frames come last and are masked out
                previous = torch.cat([frame_tokens[:, :1], frame_tokens[:, :-1]], dim=1)
                frame_tokens = frame_tokens + self.motion_proj(frame_tokens - previous)
            x = (frame_tokens + pos[None, :, None, :]).reshape(b, t * n, self.width)
            x_mask = _patch_mask(mask, token_mask, b, t, n)
        if self.transformer is not None:
            x = self.ln_post(self.transformer(x, mask=x_mask))
            pooled = masked_mean(x, x_mask)
        else:
            pooled = masked_mean(per_frame, mask)
        if self.proj is not None:
            pooled = self.proj(pooled)
        return EncoderOutput(tokens=x, pooled=pooled, mask=x_mask)

    def _check(self, video: Tensor, mask: Tensor | None) -> Tensor | None:
        """Rank, channels, clip length and mask shape, checked here so errors name the video encoder."""
        if video.dim() != 5 or video.shape[2] != self.in_channels or video.shape[1] == 0:
            raise shape_error(
                self.where, "video", ("batch", "frames", self.in_channels, "height", "width"), video
            )
        b, t = video.shape[:2]
        if t > self.max_frames:
            raise ShapeError(
                f"{self.where}: clip has {t} frames, more than max_frames={self.max_frames} "
                "(sample fewer frames or build the encoder with a larger max_frames)"
            )
        if mask is None:
            return None
        if mask.shape != (b, t):
            raise shape_error(self.where, "frame mask", (b, t), mask)
        mask = mask if mask.dtype == torch.bool else mask != 0
        return None if bool(mask.all()) else mask

    def _encode_frames(self, video: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Frame tokens ``[B, T, N, W]``, pooled ``[B, T, D]`` and token mask ``[B, T, N]`` (or None).

        With a mask only the real frames are encoded (padding costs no compute and cannot leak in
        through batch statistics); padding slots are zeros.
        """
        b, t = video.shape[:2]
        flat = video.flatten(0, 1)
        if mask is None:
            out = self.frame_encoder(flat)
            tokens, pooled, tmask = out.tokens, out.pooled, out.mask
        else:
            keep = mask.flatten()
            out = self.frame_encoder(flat[keep])
            tokens = out.tokens.new_zeros((b * t, *out.tokens.shape[1:])).index_put((keep,), out.tokens)
            pooled = out.pooled.new_zeros((b * t, out.pooled.shape[-1])).index_put((keep,), out.pooled)
            tmask = None
            if out.mask is not None:
                tmask = out.mask.new_zeros((b * t, out.mask.shape[-1])).index_put((keep,), out.mask)
        n = tokens.shape[1]
        tmask = None if tmask is None else tmask.reshape(b, t, n).bool()
        return tokens.reshape(b, t, n, -1), pooled.reshape(b, t, -1), tmask


def _patch_mask(
    frame_mask: Tensor | None, token_mask: Tensor | None, b: int, t: int, n: int
) -> Tensor | None:
    """``[B, T * N]``: a token is real when its frame is real and the frame encoder marked it real."""
    if frame_mask is None and token_mask is None:
        return None
    m = torch.ones(
        b, t, n, dtype=torch.bool, device=(frame_mask if frame_mask is not None else token_mask).device
    )
    if frame_mask is not None:
        m = m & frame_mask[:, :, None]
    if token_mask is not None:
        m = m & token_mask
    return m.reshape(b, t * n)


def _build_frame_encoder(spec: Mapping[str, Any] | Encoder) -> Encoder:
    """An Encoder as given, or one built from a config spec like ``{"name": "vit", "image_size": 64, ...}``."""
    if isinstance(spec, Encoder):
        return spec
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(
            f"video: frame_encoder must be an Encoder or a mapping with a 'name' key, got {spec!r}"
        )
    from polymodal.modules.encoders import build_encoder  # lazy: the registry imports this module

    options = {k: v for k, v in spec.items() if k not in ("name", "freeze")}
    if spec["name"] == "video":
        raise ConfigError("video: frame_encoder cannot itself be a video encoder")
    freeze = spec.get("freeze", False)
    if not isinstance(freeze, bool):
        raise ConfigError(f"video: frame_encoder freeze must be true or false, got {freeze!r}")
    encoder = build_encoder(spec["name"], **options)
    # a frozen frame tower (e.g. a pretrained image tower, ``name: run_vision``) leaves only the temporal
    # part and the heads to learn; Encoder.freeze keeps it in eval mode, so batch-norm statistics stay
    return encoder.freeze() if freeze else encoder
