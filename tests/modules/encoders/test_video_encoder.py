"""VideoEncoder: shapes in every token / temporal mode, padding-frame invariance, shape errors, and
video through the existing task models (dual-encoder retrieval, the VQA backbone)."""

from __future__ import annotations

import pytest
import torch

from polymodal.errors import ConfigError
from polymodal.models.backbone import ImageTextBackbone
from polymodal.models.dual_encoder import DualEncoder
from polymodal.models.vqa import AnswerVocab, VQAClassifier
from polymodal.modules.encoders import (
    ENCODERS,
    ShapeError,
    TextTransformer,
    VideoEncoder,
    VisionTransformer,
    build_encoder,
)

FRAME = {"name": "vit", "image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "heads": 4}
TOKENS_PER_FRAME = 1 + 16  # CLS + 4x4 patches


def _video(**kw) -> VideoEncoder:
    torch.manual_seed(0)
    args = {"frame_encoder": FRAME, "max_frames": 8, "depth": 1}
    args.update(kw)
    return VideoEncoder(**args).eval()


def _text() -> TextTransformer:
    return TextTransformer(vocab_size=50, max_length=12, width=32, depth=1, heads=4, causal=False)


@pytest.mark.parametrize("temporal", ["mean", "transformer"])
@pytest.mark.parametrize("tokens, length", [("frames", 6), ("patches", 6 * TOKENS_PER_FRAME)])
def test_output_shapes(temporal: str, tokens: str, length: int) -> None:
    enc = _video(temporal=temporal, tokens=tokens, output_dim=24)
    out = enc(torch.randn(2, 6, 3, 32, 32))
    assert out.tokens.shape == (2, length, 32) and out.pooled.shape == (2, 24) and out.mask is None
    assert (enc.width, enc.output_dim) == (32, 24)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    assert enc(torch.randn(2, 6, 3, 32, 32), mask).mask.shape == (2, length)


def test_registry_builds_from_a_yaml_style_spec() -> None:
    assert ENCODERS["video"] is VideoEncoder
    enc = build_encoder("video", frame_encoder=dict(FRAME, output_dim=16), temporal="transformer")
    assert isinstance(enc.frame_encoder, VisionTransformer) and enc.width == 32 and enc.output_dim == 32
    assert VideoEncoder(VisionTransformer(32, 8, 32, 1, 4)).modality == "video"


@pytest.mark.parametrize("temporal", ["mean", "transformer"])
@pytest.mark.parametrize("tokens", ["frames", "patches"])
def test_padding_frames_with_mask_do_not_change_pooled(temporal: str, tokens: str) -> None:
    enc = _video(temporal=temporal, tokens=tokens)
    clip = torch.randn(1, 4, 3, 32, 32)
    padded = torch.cat([clip, torch.randn(1, 3, 3, 32, 32)], dim=1)
    mask = torch.tensor([[True] * 4 + [False] * 3])
    with torch.no_grad():
        torch.testing.assert_close(enc(padded, mask).pooled, enc(clip).pooled, atol=1e-5, rtol=1e-5)


def test_frame_order_matters_with_a_temporal_transformer() -> None:
    enc = _video(temporal="transformer")
    clip = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(enc(clip).pooled, enc(clip.flip(1)).pooled, atol=1e-4)


def test_motion_tokens_start_as_plain_patches_and_see_only_what_changed() -> None:
    """``motion: true`` adds a zero-initialised projection of each token's change since the previous
    frame: at first the encoder equals the plain one; once the projection is non-zero a clip whose
    frames all equal its first frame (nothing moves) still encodes as the plain encoder does, while a
    clip with a changed frame does not."""
    plain, moving = _video(tokens="patches"), _video(tokens="patches", motion=True)
    moving.load_state_dict(plain.state_dict(), strict=False)
    clip = torch.randn(1, 4, 3, 32, 32)
    still = clip[:, :1].expand(1, 4, 3, 32, 32).contiguous()
    with torch.no_grad():
        torch.testing.assert_close(moving(clip).tokens, plain(clip).tokens)
        torch.nn.init.normal_(moving.motion_proj.weight)
        torch.testing.assert_close(moving(still).tokens, plain(still).tokens)
        changed = moving(clip).tokens.reshape(1, 4, TOKENS_PER_FRAME, -1) - plain(clip).tokens.reshape(1, 4, TOKENS_PER_FRAME, -1)
    assert changed[:, 0].abs().max() == 0 and changed[:, 1:].abs().amax(dim=(0, 2, 3)).min() > 0
    with pytest.raises(ConfigError, match="motion needs tokens: patches"):
        VideoEncoder(FRAME, motion=True)


def test_a_frozen_frame_encoder_gets_no_gradient_but_the_temporal_part_does() -> None:
    """``frame_encoder: {..., freeze: true}``: a pretrained image tower stays as it is (weights and
    eval mode) while the time embedding and the temporal transformer learn."""
    enc = build_encoder("video", frame_encoder=dict(FRAME, freeze=True), temporal="transformer", depth=1).train()
    assert enc.frame_encoder.frozen and not enc.frame_encoder.training and enc.transformer.training
    before = {k: v.clone() for k, v in enc.frame_encoder.state_dict().items()}
    enc(torch.randn(2, 4, 3, 32, 32)).pooled.square().sum().backward()
    assert all(p.grad is None for p in enc.frame_encoder.parameters())
    assert enc.time_embed.grad is not None and enc.time_embed.grad.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in enc.frame_encoder.state_dict().items())
    with pytest.raises(ConfigError, match="freeze must be true or false"):
        build_encoder("video", frame_encoder=dict(FRAME, freeze="yes"))
    with pytest.raises(ConfigError, match=r"no run at 'quickstart_out/run'.*polymodal quickstart --out quickstart_out"):
        build_encoder("video", frame_encoder={"name": "run_vision", "path": "quickstart_out/run", "freeze": True})  # not trained yet


@pytest.mark.parametrize(
    "video, mask, match",
    [
        (torch.randn(2, 3, 32, 32), None, r"expected video \[batch, frames, 3, height, width\]"),
        (torch.randn(1, 9, 3, 32, 32), None, "max_frames=8"),
        (torch.randn(2, 4, 3, 32, 32), torch.ones(2, 5, dtype=torch.bool), r"frame mask \[2, 4\]"),
    ],
)
def test_shape_errors_name_the_video_encoder(video, mask, match) -> None:
    with pytest.raises(ShapeError, match=match) as err:
        _video()(video, mask)
    assert "video encoder 'video'" in str(err.value)


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="temporal"):
        VideoEncoder(FRAME, temporal="lstm")
    with pytest.raises(ConfigError, match="tokens"):
        VideoEncoder(FRAME, tokens="pixels")
    with pytest.raises(ConfigError, match="name"):
        VideoEncoder({"image_size": 32})


def test_dual_encoder_retrieval_on_video_trains() -> None:
    torch.manual_seed(0)
    model = DualEncoder(_video(temporal="transformer").train(), _text(), embed_dim=16)
    video = torch.randn(3, 4, 3, 32, 32)
    ids = torch.randint(1, 50, (3, 12))
    out = model(video, ids, torch.ones(3, 12, dtype=torch.bool))
    assert out.image_embeds.shape == (3, 16)
    out.loss.backward()
    assert model.image_encoder.frame_encoder.patch_embed.weight.grad is not None
    assert model.image_encoder.time_embed.grad.abs().sum() > 0


@pytest.mark.parametrize("tokens", ["frames", "patches"])
def test_vqa_on_video(tokens: str) -> None:
    torch.manual_seed(0)
    backbone = ImageTextBackbone(_video(tokens=tokens), _text(), fusion_depth=1, fusion_heads=4)
    video, ids = torch.randn(2, 4, 3, 32, 32), torch.randint(1, 50, (2, 12))
    assert backbone(video, ids).pooled.shape == (2, 32)
    vqa = VQAClassifier(backbone, AnswerVocab(("yes", "no")))
    out = vqa(video, ids, answers=[["yes"], ["no"]])
    assert out.logits.shape == (2, 2)
    out.loss.backward()
