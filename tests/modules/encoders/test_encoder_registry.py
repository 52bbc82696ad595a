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


VIT = {"image_size": 32, "patch_size": 8, "width": 16, "depth": 1, "heads": 2}


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("vit", VIT | {"patch_size": 0}, r"option 'patch_size' must be >= 1, got 0"),
        ("vit", VIT | {"width": 0}, r"option 'width' must be >= 1, got 0"),
        ("vit", VIT | {"heads": 0}, r"option 'heads' must be >= 1, got 0"),
        ("vit", VIT | {"width": 16.5}, r"option 'width' = 16.5: Input should be a valid integer"),
        ("vit", VIT | {"dropout": 1.5}, r"option 'dropout' must be in \[0, 1\), got 1.5"),
        ("vit", VIT | {"pool": "max"}, r"option 'pool' = 'max': Input should be 'cls' or 'mean'"),
        ("vit", VIT | {"mlp_ratio": float("nan")}, r"option 'mlp_ratio' must be a finite number"),
        ("cnn", {"image_size": 32, "channels": [0, 8]}, r"option 'channels' must be a list of sizes >= 1"),
        ("cnn", {"image_size": 32, "channels": "32,64"}, r"option 'channels' = '32,64'"),
        ("text_transformer", {"vocab_size": 10, "max_length": 0, "width": 16, "depth": 1, "heads": 2, "causal": False}, "'max_length' must be >= 1"),
        ("text_transformer", {"vocab_size": 10, "max_length": 8, "width": 16, "depth": 1, "heads": 2, "causal": "maybe"}, "'causal' = 'maybe'"),
    ],
)
def test_options_of_the_wrong_type_or_range_name_the_option(name: str, options: dict, message: str) -> None:
    """These used to fail inside torch: ZeroDivisionError, 'not all arguments converted', or not at all."""
    with pytest.raises(ConfigError, match=rf"encoder '{name}': {message}" if message.startswith("option") else message):
        build_encoder(name, **options)


def test_options_that_convert_losslessly_are_converted_and_zero_depth_stays_legal():
    vit = build_encoder("vit", **(VIT | {"image_size": "32"}))  # a quoted YAML number
    assert vit(torch.randn(1, 3, 32, 32)).tokens.shape[1] == 1 + (32 // 8) ** 2
    assert build_encoder("features", input_dim=6, width=8, depth=0).transformer is None
