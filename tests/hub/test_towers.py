"""Hugging Face backbones (ViT, BERT) as towers of native models: their preprocessing comes with them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from polymodal.api import load_model
from polymodal.config import load_config
from polymodal.data.world import WorldConfig, generate_world
from polymodal.hub.towers import image_settings_of, tower_paths
from polymodal.models.configs import parse_model_config
from polymodal.train.trainer import Trainer

from .conftest import TINY, VOCAB, save_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    vit = transformers.ViTModel(transformers.ViTConfig(image_size=24, patch_size=8, **TINY))
    vit.save_pretrained(root / "vit")
    transformers.ViTImageProcessor(size={"height": 24, "width": 24}, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]).save_pretrained(root / "vit")
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=len(VOCAB), max_position_embeddings=40, **TINY))
    bert.save_pretrained(root / "bert")
    save_tokenizer(root / "bert")
    world = root / "world"
    generate_world(world, WorldConfig(num_scenes=20, seed=4, image_size=32), workers=1)
    return {"vit": root / "vit", "bert": root / "bert", "world": world}


def test_a_vision_towers_preprocessing_is_read_from_its_folder(towers: dict[str, Path]) -> None:
    assert image_settings_of(str(towers["vit"])) == {"size": 24, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    cfg = parse_model_config({"type": "dual_encoder", "vision": {"name": "hf_vision", "path": "v"}, "text": {"name": "hf_text", "path": "t", "pool": "mean"}})
    assert tower_paths(cfg) == {"vision": "v", "text": "t"}


def test_vit_and_bert_towers_train_as_a_dual_encoder_with_their_own_preprocessing(tmp_path: Path, towers: dict[str, Path]) -> None:
    world = towers["world"]

    def caps(split: str) -> dict:
        return {"format": "coco_captions", "annotations": str(world / f"annotations/captions_{split}.json"), "images": str(world / f"images/{split}")}

    cfg = {
        "output_dir": str(tmp_path / "run"),
        "data": {"train": caps("train"), "test": caps("test")},
        "model": {"type": "dual_encoder", "embed_dim": 16, "vision": {"name": "hf_vision", "path": str(towers["vit"])},
                  "text": {"name": "hf_text", "path": str(towers["bert"]), "pool": "mean", "freeze": True}},
        "train": {"task": "retrieval", "max_steps": 2, "batch_size": 8, "num_workers": 0, "log_every": 1},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    trainer = Trainer(load_config(tmp_path / "run.yaml"), progress=False)
    summary = trainer.fit()  # a 64-px default image size would fail the 24-px ViT: the tower's settings were used
    assert summary["steps"] == 2 and "t2i_R@1" in summary["test"]
    assert trainer.tokenizer.vocab_size == len(VOCAB)  # the BERT folder's tokenizer, not one trained on the captions
    model, proc = load_model(tmp_path / "run")
    assert proc.image.config.size == 24 and tuple(proc.image.config.mean) == (0.5, 0.4, 0.3)
    bert = transformers.BertModel.from_pretrained(towers["bert"])
    assert all(torch.equal(p, bert.state_dict()[k]) for k, p in model.text_encoder.model.state_dict().items())  # frozen
