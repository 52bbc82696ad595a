"""MulTFusion ("mult") and the FeatureSequenceEncoder ("features") it is usually fed by."""

from __future__ import annotations

import pytest
import torch

from polymodal.errors import ConfigError
from polymodal.modules.encoders import ENCODERS, FeatureSequenceEncoder, ShapeError, build_encoder
from polymodal.modules.fusion import FUSIONS, FusionInputError, MulTFusion, build_fusion

DIMS = {"text": 12, "audio": 6, "video": 4}


def _inputs(batch: int = 3) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    feats = {
        "text": torch.randn(batch, 5, 12, generator=g),
        "audio": torch.randn(batch, 7, 6, generator=g),
        "video": torch.randn(batch, 4, 4, generator=g),
    }
    masks = {"audio": torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2]).bool()}
    return feats, masks


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_shapes_and_registry(pool: str) -> None:
    fusion = build_fusion("mult", DIMS, 10, width=8, num_heads=2, num_layers=1, pool=pool)
    assert FUSIONS["mult"] is MulTFusion and isinstance(fusion, MulTFusion)
    assert len(fusion.cross) == 6  # every ordered (target, source) pair of three modalities
    feats, masks = _inputs()
    assert fusion(feats, masks).shape == (3, 10)
    assert fusion({"text": torch.randn(3, 12), "audio": torch.randn(3, 6), "video": torch.randn(3, 4)}).shape == (3, 10)


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_padded_tokens_do_not_change_the_output(pool: str) -> None:
    torch.manual_seed(0)
    fusion = MulTFusion(DIMS, 10, width=8, num_heads=2, pool=pool).eval()
    feats, masks = _inputs()
    masks["text"] = torch.tensor([[1] * 5, [1] * 2 + [0] * 3, [1] * 5]).bool()
    out = fusion(feats, masks)
    noisy = {m: x.clone() for m, x in feats.items()}
    noisy["audio"][1, 3:] = 1e3 * torch.randn(4, 6)
    noisy["text"][1, 2:] = -50.0
    torch.testing.assert_close(fusion(noisy, masks), out)
    # and a padded batch equals the unpadded sample on its own
    alone = {"text": feats["text"][1:2, :2], "audio": feats["audio"][1:2, :3], "video": feats["video"][1:2]}
    torch.testing.assert_close(fusion(alone)[0], out[1], atol=1e-5, rtol=1e-5)


def test_modality_order_never_matters() -> None:
    torch.manual_seed(0)
    a = MulTFusion(DIMS, 10, width=8, num_heads=2).eval()
    b = MulTFusion(dict(reversed(list(DIMS.items()))), 10, width=8, num_heads=2).eval()
    b.load_state_dict(a.state_dict())
    feats, masks = _inputs()
    reordered = dict(reversed(list(feats.items())))
    torch.testing.assert_close(a(feats, masks), b(reordered, masks))
    torch.testing.assert_close(a(feats, masks), a(reordered, dict(reversed(list(masks.items())))))


def test_gradients_reach_every_input_and_parameter() -> None:
    fusion = MulTFusion(DIMS, 10, width=8, num_heads=2)
    feats, masks = _inputs()
    for x in feats.values():
        x.requires_grad_(True)
    fusion(feats, masks).pow(2).sum().backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in feats.values())
    missing = [n for n, p in fusion.named_parameters() if p.grad is None]
    assert not missing


def test_mult_errors() -> None:
    with pytest.raises(Exception, match="at least 2"):
        MulTFusion({"text": 4}, 8)
    with pytest.raises(Exception, match="divisible by num_heads"):
        MulTFusion(DIMS, 10, width=9, num_heads=2)
    with pytest.raises(Exception, match="pool 'first' unknown"):
        build_fusion("mult", DIMS, 10, pool="first")
    fusion = MulTFusion(DIMS, 8)
    feats, _ = _inputs()
    with pytest.raises(FusionInputError, match="modality 'audio' has every token masked"):
        fusion(feats, {"audio": torch.zeros(3, 7, dtype=torch.bool)})
    with pytest.raises(FusionInputError, match="modality 'video' missing"):
        fusion({"text": feats["text"], "audio": feats["audio"]})


# -- FeatureSequenceEncoder -------------------------------------------------------------------


def test_feature_encoder_shapes_keys_and_registry() -> None:
    assert ENCODERS["features"] is FeatureSequenceEncoder
    enc = build_encoder("features", input_dim=6, width=8, depth=1, heads=2, output_dim=5, modality="audio")
    assert enc.batch_keys("audio") == ("audio_features", "audio_features_mask")
    out = enc(torch.randn(2, 7, 6), torch.tensor([[1] * 7, [1] * 3 + [0] * 4]))
    assert out.tokens.shape == (2, 7, 8) and out.pooled.shape == (2, 5) and out.mask is not None
    assert enc(torch.randn(2, 7, 6)).mask is None
    assert build_encoder("features", input_dim=6, width=8, depth=0).transformer is None


@pytest.mark.parametrize("depth,kernel", [(0, 1), (1, 3), (2, 5)])
def test_feature_encoder_ignores_padded_frames(depth: int, kernel: int) -> None:
    torch.manual_seed(0)
    enc = FeatureSequenceEncoder(6, width=8, depth=depth, heads=2, kernel_size=kernel).eval()
    x = torch.randn(2, 7, 6)
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4]).bool()
    noisy = x.clone()
    noisy[1, 3:] = 100.0
    a, b = enc(x, mask), enc(noisy, mask)
    torch.testing.assert_close(a.pooled, b.pooled)
    torch.testing.assert_close(a.tokens[1, :3], b.tokens[1, :3])
    torch.testing.assert_close(enc(x[1:, :3]).pooled[0], a.pooled[1], atol=1e-5, rtol=1e-5)


def test_feature_encoder_errors_name_modality_and_input_dim() -> None:
    enc = FeatureSequenceEncoder(74, width=8, heads=2, modality="audio", max_length=4)
    with pytest.raises(ShapeError, match=r"audio encoder 'features': expected features \[batch, frames, 74\] \(input_dim=74"):
        enc(torch.randn(2, 5, 5))
    with pytest.raises(ShapeError, match="mask"):
        enc(torch.randn(2, 5, 74), torch.ones(2, 4, dtype=torch.bool))
    assert enc(torch.randn(2, 9, 74)).tokens.shape == (2, 4, 8)  # max_length truncates
    with pytest.raises(ConfigError, match="divisible by heads"):
        FeatureSequenceEncoder(4, width=10, heads=4)
    with pytest.raises(ConfigError, match="kernel_size"):
        FeatureSequenceEncoder(4, kernel_size=2)
