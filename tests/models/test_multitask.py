"""The multi-task model: every objective from one image encoding, probes that cannot move the towers,
several questions per image, and a small real batch it can fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polymodal.data.check import load_spec
from polymodal.data.formats import read_source
from polymodal.data.processors import ImageProcessor, ImageProcessorConfig
from polymodal.data.tokenizers import train_tokenizer
from polymodal.data.world import WorldConfig, generate_world
from polymodal.errors import ConfigError
from polymodal.models.factory import BuildContext, build_model
from polymodal.models.multitask import MultiTaskModel
from polymodal.models.vqa import AnswerVocab
from polymodal.tasks.multitask import ImageItemCollator, ImageItemDataset, image_items

SIZE = 32
TEXT = {"name": "text_transformer", "max_length": 48, "width": 32, "depth": 1, "heads": 2}


def model_config(**changes: object) -> dict:
    cfg = {
        "type": "multitask",
        "vision": {"name": "cnn", "image_size": SIZE, "channels": [16, 32], "width": 32, "positions": True, "norm": "batch"},
        "text": TEXT | {"causal": False},
        "decoder": TEXT,
        "fusion_depth": 1,
        "embed_dim": 32,
        "dropout": 0.0,
    }
    return cfg | changes


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mt_world")
    generate_world(root, WorldConfig(num_scenes=40, seed=3, image_size=SIZE), workers=1)
    return root


@pytest.fixture(scope="module")
def parts(world: Path):
    samples = [s for name, src in load_spec(world) if name.startswith("train") for s in read_source(src)]
    tok = train_tokenizer([s.text for s in samples if s.text], vocab_size=300)
    vocab = AnswerVocab.build(s.answers for s in samples if s.answers)
    items, incomplete = image_items(samples)
    return tok, vocab, items, incomplete


def make_batch(parts, n: int = 8, questions_per_image: int = 1, seed: int = 0) -> dict:
    tok, _, items, _ = parts
    ds = ImageItemDataset(items[:n], ImageProcessor(ImageProcessorConfig(size=SIZE)), seed=seed, questions_per_image=questions_per_image)
    return ImageItemCollator(tok, 48, {"0": 0, "1": 1})([ds[i] for i in range(n)])


def build(parts, **changes: object) -> MultiTaskModel:
    tok, vocab, _, _ = parts
    torch.manual_seed(0)
    return build_model(model_config(**changes), BuildContext(tokenizer=tok, answer_vocab=vocab))


def run(model: MultiTaskModel, b: dict):
    return model(b["image"], b["caption_ids"], b["caption_mask"], b["question_ids"], b["question_mask"], b["answers"],
                 b["statement_ids"], b["statement_mask"], b["labels"], image_ids=b["image_ids"])


def test_every_world_image_has_all_three_kinds_of_text(parts) -> None:
    _, _, items, incomplete = parts
    assert incomplete == 0 and len(items) > 20
    assert all(it.captions and it.questions and it.statements for it in items)
    assert all(len({s.image_key for s in it.captions + it.questions + it.statements}) == 1 for it in items)


def test_forward_computes_every_objective_from_one_batch(parts) -> None:
    model = build(parts, weights={"itc": 1.0, "itm": 0.5, "mlm": 0.5, "lm": 1.0, "vqa": 1.0, "cls": 1.0})
    out = run(model, make_batch(parts))
    assert set(out.parts) == {"itc", "itm", "mlm", "lm", "vqa", "cls", "probe_image_only", "probe_text_only"}
    assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.parts.values())
    out.loss.backward()
    assert model.backbone.image_encoder.features[0].weight.grad.abs().sum() > 0
    assert model.captioner.decoder.token_embed.weight.grad.abs().sum() > 0


def test_towers_are_shared_not_copied(parts) -> None:
    model = build(parts)
    assert model.captioner.image_encoder is model.backbone.image_encoder
    assert model.vqa.backbone is model.backbone
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("captioner.image_encoder") for n in names)  # counted once, under pretrain


def test_the_ablation_probes_cannot_move_the_towers(parts) -> None:
    """The probes see the towers' features detached: their loss trains the probe heads and nothing else."""
    model = build(parts)
    seen: dict[str, torch.Tensor] = {}
    hooks = [head.register_forward_hook(lambda m, inp, out, name=name: seen.__setitem__(name, inp[0])) for name, head in model.probes.items()]
    out = run(model, make_batch(parts))
    for h in hooks:
        h.remove()
    assert set(seen) == {"image_only", "text_only"}
    assert not any(x.requires_grad for x in seen.values())
    out.loss.backward()
    assert all(p.grad is not None for p in model.probes.parameters())


def test_several_questions_per_image_share_one_image_encoding(parts) -> None:
    model = build(parts)
    b = make_batch(parts, n=4, questions_per_image=3)
    assert b["question_ids"].shape[0] == 12 and len(b["answers"]) == 12
    calls = []
    handle = model.backbone.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    out = run(model, b)
    handle.remove()
    assert len(calls) == 1 and torch.isfinite(out.loss)


def test_rows_that_do_not_fit_the_images_are_named(parts) -> None:
    model = build(parts)
    b = make_batch(parts, n=4)
    with pytest.raises(ValueError, match="statement_ids has 3 rows for 4 images"):
        model(b["image"], b["caption_ids"], b["caption_mask"], b["question_ids"], b["question_mask"], b["answers"],
              b["statement_ids"][:3], b["statement_mask"][:3], b["labels"])
    with pytest.raises(ValueError, match="5 questions and 5 answer lists for 4 images"):
        model(b["image"], b["caption_ids"], b["caption_mask"], b["question_ids"][:3].repeat(2, 1)[:5], b["question_mask"][:3].repeat(2, 1)[:5],
              b["answers"][:1] * 5, b["statement_ids"], b["statement_mask"], b["labels"])


def test_weights_are_checked(parts) -> None:
    with pytest.raises(ConfigError, match=r"weights of \['itc', 'cls'\] must be > 0"):
        build(parts, weights={"lm": 1.0, "vqa": 1.0})
    model = build(parts, weights={"itc": 1.0, "lm": 1.0, "vqa": 1.0, "cls": 1.0})
    assert model.pretrain.itm_head is None and model.pretrain.mlm_head is None  # no untrained heads
    with pytest.raises(ConfigError, match="unknown objectives \\['caption'\\]"):
        build(parts, weights={"itc": 1.0, "caption": 1.0})


def test_fits_a_small_real_batch_on_every_task(parts) -> None:
    """Eight images, 150 steps: every head must beat what it could do without learning."""
    model = build(parts)
    b = make_batch(parts, n=8, questions_per_image=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        out = run(model, b)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        answers = model.answer(b["image"].repeat_interleave(2, 0), b["question_ids"], b["question_mask"])
        probs = model.classify(b["image"], b["statement_ids"], b["statement_mask"])
        sims = model.encode_image(b["image"]) @ model.encode_text(b["caption_ids"], b["caption_mask"]).T
    correct = sum(a in {x.lower() for x in ans} for a, ans in zip(answers, b["answers"]))
    assert correct >= 14  # of 16 questions
    assert (probs["joint"].argmax(-1) == b["labels"]).float().mean() >= 0.875
    assert (sims.argmax(0) == torch.arange(8)).float().mean() >= 0.875
    assert out.parts["lm"] < 1.0
