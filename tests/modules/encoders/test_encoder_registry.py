"""The explicit encoder registry."""

from __future__ import annotations

import pytest
import torch

from polymodal.errors import ConfigError
from polymodal.modules.encoders import ENCODERS, SmallCNN, TextTransformer, VisionTransformer, build_encoder


def test_registry_names_map_to_classes():
    assert ENCODERS["vit"] is VisionTransformer
    assert ENCODERS["cnn"] is SmallCNN
    assert ENCODERS["text_transformer"] is TextTransformer


def test_build_encoder_builds_by_name():
    vit = build_encoder("vit", image_size=16, patch_size=8, width=16, depth=1, heads=2, output_dim=4)
    assert isinstance(vit, VisionTransformer) and vit(torch.randn(1, 3, 16, 16)).pooled.shape == (1, 4)
    text = build_encoder(
        "text_transformer", vocab_size=10, max_length=8, width=16, depth=1, heads=2, causal=False
    )
    assert isinstance(text, TextTransformer) and not text.causal


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ConfigError) as info:
        build_encoder("resnet")
    msg = str(info.value)
    assert "'resnet'" in msg and "cnn" in msg and "text_transformer" in msg and "vit" in msg


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match="colour"):
        build_encoder("cnn", image_size=32, colour="red")
