"""A classifier's handling of samples that lack a modality (``missing="learned"`` vs zero-filled)."""

from __future__ import annotations

import pytest
import torch

from polymodal.errors import ConfigError
from polymodal.models.classifier import MultimodalClassifier
from polymodal.modules.encoders import build_encoder


def _model(missing: str, stage: str = "hybrid") -> MultimodalClassifier:
    torch.manual_seed(0)
    encoders = {
        m: build_encoder("features", input_dim=d, width=16, depth=1, heads=2, modality=m)
        for m, d in (("text", 6), ("audio", 4), ("video", 5))
    }
    return MultimodalClassifier(encoders, 1, task="regression", stage=stage, fusion="concat", fusion_dim=16, missing=missing).eval()


def _batch(absent_audio: list[bool]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    batch = {
        "text_features": torch.randn(3, 5, 6, generator=g),
        "audio_features": torch.randn(3, 7, 4, generator=g),
        "video_features": torch.randn(3, 4, 5, generator=g),
    }
    batch["audio_present"] = torch.tensor([not a for a in absent_audio])
    return batch


@pytest.mark.parametrize("stage", ["late", "early", "hybrid"])
def test_learned_missing_embedding_replaces_the_absent_modality(stage: str) -> None:
    model = _model("learned", stage)
    batch = _batch([False, True, False])
    out = model(batch).logits
    changed = dict(batch)
    changed["audio_features"] = batch["audio_features"].clone()
    changed["audio_features"][1] += 5.0  # whatever an absent row holds must not matter
    changed["audio_features"][0] += 5.0  # ... but a present row's input does
    again = model(changed).logits
    assert torch.allclose(out[1], again[1])
    assert not torch.allclose(out[0], again[0])
    assert torch.allclose(out[2], again[2])


def test_learned_embedding_is_trained() -> None:
    model = _model("learned").train()
    out = model(_batch([True, True, False]), labels=torch.zeros(3))
    out.loss.backward()
    assert model.missing["audio"].pooled.grad is not None and model.missing["audio"].pooled.grad.abs().sum() > 0
    assert model.missing["audio"].token.grad is not None and model.missing["audio"].token.grad.abs().sum() > 0


def test_zero_policy_encodes_the_zero_filled_input() -> None:
    model = _model("zero")
    batch = _batch([False, True, False])
    changed = dict(batch, audio_features=batch["audio_features"].clone())
    changed["audio_features"][1] += 5.0
    assert not torch.allclose(model(batch).logits[1], model(changed).logits[1])
    assert len(model.missing) == 0


def test_unknown_missing_option_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="missing must be one of"):
        _model("ignore")
