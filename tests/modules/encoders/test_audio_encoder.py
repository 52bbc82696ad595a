"""AudioEncoder: shapes, padding invariance, gradients, registry and shape errors."""

from __future__ import annotations

import pytest
import torch

from polymodal.errors import ConfigError
from polymodal.modules.encoders import ENCODERS, AudioEncoder, EncoderOutput, ShapeError, build_encoder
from polymodal.modules.encoders.audio import downsample_mask, sinusoidal_positions


def _encoder(**kwargs) -> AudioEncoder:
    torch.manual_seed(0)
    options = {"n_mels": 16, "width": 32, "depth": 2, "heads": 4}
    return AudioEncoder(**{**options, **kwargs}).eval()


@pytest.mark.parametrize(("frames", "tokens"), [(100, 25), (101, 26), (7, 2), (1, 1)])
def test_output_shapes_downsample_time_by_four(frames, tokens):
    enc = _encoder(output_dim=12)
    out = enc(torch.randn(3, 16, frames))
    assert isinstance(out, EncoderOutput)
    assert out.tokens.shape == (3, tokens, 32)
    assert out.pooled.shape == (3, 12)
    assert out.mask is None
    assert AudioEncoder.num_tokens(frames) == tokens
    assert (enc.width, enc.output_dim) == (32, 12)


def test_pooled_without_projection_is_mean_of_tokens():
    enc = _encoder()
    out = enc(torch.randn(2, 16, 40))
    assert enc.output_dim == 32
    torch.testing.assert_close(out.pooled, out.tokens.mean(dim=1))


def test_mask_is_downsampled_with_time():
    mask = torch.tensor([[True] * 9 + [False] * 3, [True] * 12, [True] + [False] * 11])
    assert downsample_mask(mask).tolist() == [[True] * 5 + [False], [True] * 6, [True] + [False] * 5]
    out = _encoder()(torch.randn(3, 16, 12), mask)
    # 9 real frames -> 5 -> 3 tokens; 12 -> 3; 1 -> 1
    assert out.mask is not None and out.mask.tolist() == [[True, True, True], [True, True, True], [True, False, False]]


@pytest.mark.parametrize("real", [37, 40, 41, 64])
def test_padding_with_garbage_and_mask_leaves_pooled_unchanged(real):
    enc = _encoder(output_dim=8)
    torch.manual_seed(1)
    clip = torch.randn(1, 16, real)
    garbage = 100 * torch.randn(1, 16, 80 - real)
    padded = torch.cat([clip, garbage], dim=2)
    mask = torch.zeros(1, 80, dtype=torch.bool)
    mask[:, :real] = True
    alone = enc(clip)
    batched = enc(torch.cat([padded, torch.randn(1, 16, 80)]), torch.cat([mask, torch.ones_like(mask)]))
    torch.testing.assert_close(batched.pooled[:1], alone.pooled, atol=1e-5, rtol=1e-4)
    n = alone.tokens.shape[1]
    torch.testing.assert_close(batched.tokens[:1, :n], alone.tokens, atol=1e-5, rtol=1e-4)
    # the garbage really reaches the encoder: without the mask the result differs
    assert not torch.allclose(enc(padded).pooled, alone.pooled, atol=1e-3)


def test_padding_invariance_holds_in_training_mode_too():
    enc = _encoder()
    enc.train()  # CPU training packs the real tokens; the result must not change
    clip = torch.randn(1, 16, 30)
    padded = torch.cat([clip, torch.randn(1, 16, 70)], dim=2)
    mask = torch.arange(100)[None] < 30
    torch.testing.assert_close(enc(padded, mask).pooled, enc(clip).pooled, atol=1e-5, rtol=1e-4)


def test_gradients_reach_every_parameter_and_the_input():
    enc = _encoder(output_dim=8)
    enc.train()
    mel = torch.randn(2, 16, 50, requires_grad=True)
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[1, 30:] = False
    enc(mel, mask).pooled.square().sum().backward()
    missing = [name for name, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert mel.grad is not None and mel.grad[0].abs().sum() > 0
    assert torch.all(mel.grad[1, :, 30:] == 0) and mel.grad[1, :, :30].abs().sum() > 0  # padded frames: no influence


def test_sinusoidal_positions_make_tokens_position_aware():
    pos = sinusoidal_positions(10, 7)
    assert pos.shape == (10, 7)
    assert torch.allclose(pos[0, :3], torch.zeros(3)) and torch.allclose(pos[0, 3:6], torch.ones(3))
    enc = _encoder()
    same = torch.randn(1, 16, 1).expand(1, 16, 40)  # identical frames: only positions tell tokens apart
    tokens = enc(same.contiguous()).tokens[0]
    assert not torch.allclose(tokens[5], tokens[6], atol=1e-3)


def test_registry_and_build_from_config():
    assert ENCODERS["audio"] is AudioEncoder
    enc = build_encoder("audio", n_mels=16, width=32, depth=1, heads=2, output_dim=8)
    assert isinstance(enc, AudioEncoder) and enc.modality == "audio" and enc.output_dim == 8
    with pytest.raises(ConfigError, match="audio"):
        build_encoder("audio", n_mel=16)
    with pytest.raises(ConfigError, match="heads"):
        AudioEncoder(width=30, heads=4)


def test_wrong_rank_names_encoder_and_expected_shape():
    enc = _encoder()
    with pytest.raises(ShapeError) as info:
        enc(torch.randn(16, 40))
    assert str(info.value) == "audio encoder 'audio': expected log-mel [batch, 16, frames], got [16, 40]"


def test_wrong_n_mels_is_a_shape_error():
    with pytest.raises(ShapeError, match=r"audio encoder 'audio': expected log-mel \[batch, 16, frames\], got \[2, 64, 40\]"):
        _encoder()(torch.randn(2, 64, 40))


def test_mask_shape_mismatch_is_a_shape_error():
    with pytest.raises(ShapeError, match=r"audio encoder 'audio': expected mask .*\[2, 40\], got \[2, 39\]"):
        _encoder()(torch.randn(2, 16, 40), torch.ones(2, 39, dtype=torch.bool))


def test_integer_input_is_rejected():
    with pytest.raises(ShapeError, match="floating-point log-mel"):
        _encoder()(torch.zeros(1, 16, 40, dtype=torch.long))
