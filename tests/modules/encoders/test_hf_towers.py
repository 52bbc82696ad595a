"""Hugging Face towers: tiny random configs saved to disk, loaded offline, compared to HF's own outputs."""

from __future__ import annotations

import pytest
import torch

from polymodal.errors import PolymodalError
from polymodal.modules.encoders import EncoderOutput, ShapeError
from polymodal.modules.encoders.hf import HFLoadError, HFTextTower, HFVisionTower

transformers = pytest.importorskip("transformers")


def _clip_vision():
    torch.manual_seed(0)
    config = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    return transformers.CLIPVisionModel(config).eval()


def _bert(add_pooling_layer=True):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=24,
    )
    return transformers.BertModel(config, add_pooling_layer=add_pooling_layer).eval()


def _assert_same(a, b):
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_clip_vision_tower_round_trip(tmp_path):
    hf = _clip_vision()
    hf.save_pretrained(tmp_path)
    tower = HFVisionTower.from_pretrained(tmp_path, local_files_only=True)
    images = torch.randn(2, 3, 32, 32)
    out = tower(images)
    with torch.no_grad():
        ref = hf(pixel_values=images)
    assert isinstance(out, EncoderOutput) and out.mask is None
    assert out.tokens.shape == (2, 17, 32) and tower.width == 32 and tower.output_dim == 32
    _assert_same(out.tokens, ref.last_hidden_state)
    _assert_same(out.pooled, ref.pooler_output)


def test_vit_without_pooler_falls_back_to_cls_or_mean():
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    hf = transformers.ViTModel(config, add_pooling_layer=False).eval()
    images = torch.randn(2, 3, 32, 32)
    cls_out = HFVisionTower(hf)(images)
    _assert_same(cls_out.pooled, cls_out.tokens[:, 0])
    mean_out = HFVisionTower(hf, pool="mean")(images)
    _assert_same(mean_out.pooled, mean_out.tokens.mean(1))
    with pytest.raises(PolymodalError, match="pooler_output"):
        HFVisionTower(hf, pool="pooler")(images)


def test_siglip_vision_tower_uses_its_attention_pooling_head():
    torch.manual_seed(0)
    config = transformers.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    hf = transformers.SiglipVisionModel(config).eval()
    images = torch.randn(2, 3, 32, 32)
    out = HFVisionTower(hf)(images)
    with torch.no_grad():
        ref = hf(pixel_values=images)
    assert out.tokens.shape == (2, 16, 32)  # SigLIP has no class token
    _assert_same(out.tokens, ref.last_hidden_state)
    _assert_same(out.pooled, ref.pooler_output)


def test_clip_text_tower_pools_the_end_of_text_token():
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=64,
        max_position_embeddings=16,
        bos_token_id=1,
        eos_token_id=2,
    )
    hf = transformers.CLIPTextModel(config).eval()
    ids = torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 8, 9, 10, 2]])
    mask = (ids != 0).long()
    out = HFTextTower(hf)(ids, attention_mask=mask)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask)
    _assert_same(out.pooled, ref.pooler_output)
    _assert_same(out.tokens, ref.last_hidden_state)


def test_composite_clip_model_gives_its_vision_and_text_towers():
    config = transformers.CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 64,
            "max_position_embeddings": 16,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        vision_config={
            "hidden_size": 48,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    clip = transformers.CLIPModel(config).eval()
    vision, text = HFVisionTower(clip), HFTextTower(clip)
    assert vision.width == 48 and text.width == 32 and text.max_length == 16
    assert vision.model is clip.vision_model and text.model is clip.text_model


def test_vision_tower_shape_error_names_expected_shape():
    tower = HFVisionTower(_clip_vision())
    with pytest.raises(ShapeError) as info:
        tower(torch.randn(8, 1, 32, 32))
    assert (
        str(info.value) == "image encoder 'hf_vision': expected images [batch, 3, 32, 32], got [8, 1, 32, 32]"
    )


def test_bert_text_tower_round_trip_with_mask(tmp_path):
    hf = _bert()
    hf.save_pretrained(tmp_path)
    tower = HFTextTower.from_pretrained(tmp_path, local_files_only=True)
    ids = torch.randint(1, 64, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    out = tower(ids, attention_mask=mask)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask)
    _assert_same(out.tokens, ref.last_hidden_state)
    _assert_same(out.pooled, ref.pooler_output)
    assert out.mask.dtype == torch.bool and out.mask.tolist() == mask.bool().tolist()


def test_minilm_style_mean_pooling_uses_the_mask():
    tower = HFTextTower(_bert(add_pooling_layer=False), pool="mean")
    ids = torch.randint(1, 64, (2, 6))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6])
    out = tower(ids, attention_mask=mask)
    _assert_same(out.pooled[0], out.tokens[0, :3].mean(0))
    _assert_same(out.pooled[1], out.tokens[1].mean(0))


def test_text_tower_too_long_names_max_length():
    tower = HFTextTower(_bert())
    with pytest.raises(ShapeError, match=r"max_length=24.*\[1, 30\]"):
        tower(torch.ones(1, 30, dtype=torch.long))


def test_freeze_stops_gradients_and_keeps_dropout_off():
    tower = HFTextTower(_bert()).freeze()
    head = torch.nn.Linear(32, 2)
    parent = torch.nn.ModuleDict({"tower": tower, "head": head}).train()
    assert not tower.training and not tower.model.training
    ids = torch.randint(1, 64, (2, 5))
    a = tower(ids).pooled
    b = tower(ids).pooled
    _assert_same(a, b)  # no dropout
    assert not a.requires_grad
    head(a).sum().backward()
    assert head.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in tower.parameters())
    assert parent.training and head.training


def test_missing_checkpoint_is_a_clear_offline_error(tmp_path):
    with pytest.raises(HFLoadError, match="local_files_only=True"):
        HFVisionTower.from_pretrained(tmp_path / "nope")
