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
from polymodal.losses.mlm import IGNORE_INDEX
from polymodal.models.factory import BuildContext, build_model
from polymodal.models.multitask import MultiTaskModel
from polymodal.models.object_head import ObjectVocab, token_grid
from polymodal.models.vqa import AnswerVocab
from polymodal.modules.encoders.base import EncoderOutput
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


@pytest.fixture(scope="module")
def objects(parts) -> ObjectVocab:
    return ObjectVocab.build([o for it in parts[2] for o in it.objects])


def make_batch(parts, n: int = 8, questions_per_image: int = 1, seed: int = 0, objects: ObjectVocab | None = None) -> dict:
    tok, _, items, _ = parts
    ds = ImageItemDataset(items[:n], ImageProcessor(ImageProcessorConfig(size=SIZE)), seed=seed, questions_per_image=questions_per_image)
    return ImageItemCollator(tok, 48, {"0": 0, "1": 1}, objects)([ds[i] for i in range(n)])


def build(parts, objects: ObjectVocab | None = None, **changes: object) -> MultiTaskModel:
    tok, vocab, _, _ = parts
    torch.manual_seed(0)
    return build_model(model_config(**changes), BuildContext(tokenizer=tok, answer_vocab=vocab, object_vocab=objects))


def run(model: MultiTaskModel, b: dict):
    return model(b["image"], b["caption_ids"], b["caption_mask"], b["question_ids"], b["question_mask"], b["answers"],
                 b["statement_ids"], b["statement_mask"], b["labels"], image_ids=b["image_ids"],
                 object_attributes=b.get("object_attributes"), object_xy=b.get("object_xy"), object_annotated=b.get("object_annotated"),
                 grounding=b.get("grounding"), plan=b.get("plan"))


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


def test_the_token_means_are_reported_apart_from_the_per_rank_means(parts) -> None:
    """LM and MLM divide by every rank's tokens under DDP, the other heads by this rank's rows: the
    trainer needs their weighted sum on its own to weigh each kind right (train/accumulation.py)."""
    weights = {"itc": 1.0, "itm": 0.5, "mlm": 0.25, "lm": 2.0, "vqa": 1.0, "cls": 1.0}
    out = run(build(parts, weights=weights), make_batch(parts))
    assert out.loss_over_ranks is not None and out.loss_over_ranks.requires_grad
    expected = 2.0 * out.parts["lm"] + 0.25 * out.parts["mlm"]
    assert out.loss_over_ranks.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.loss_over_ranks.item() < out.loss.item()


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



def test_answer_targets_from_the_loader_train_as_the_answer_strings(parts) -> None:
    """The collator turns the answers into soft targets in the loader (a compiled forward must see tensors
    only): the same targets and loss as the strings, and a wrong shape is named."""
    tok, vocab, items, _ = parts
    ds = ImageItemDataset(items[:4], ImageProcessor(ImageProcessorConfig(size=SIZE)), seed=0, questions_per_image=2)
    b = ImageItemCollator(tok, 48, {"0": 0, "1": 1}, answers=vocab)([ds[i] for i in range(4)])
    assert b["answer_targets"].shape == (8, len(vocab)) and float(b["answer_targets"].sum()) > 0
    torch.testing.assert_close(b["answer_targets"], vocab.targets(b["answers"]))
    model = build(parts)
    with_strings = run(model, b)
    with_targets = run(model, b | {"answers": b["answer_targets"]})
    torch.testing.assert_close(with_targets.parts["vqa"], with_strings.parts["vqa"])
    torch.testing.assert_close(with_targets.loss, with_strings.loss)
    with pytest.raises(ValueError, match=rf"answer targets must be \[questions, answers in the vocabulary\] = \[8, {len(vocab)}\], got \[8, 3\]"):
        run(model, b | {"answers": b["answer_targets"][:, :3]})


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


# ------------------------------------------------------------------ object supervision (scene graphs)
REQUIRED_ONLY = {"itc": 1.0, "lm": 1.0, "vqa": 1.0, "cls": 1.0}
ALL_WITH_OBJ = REQUIRED_ONLY | {"obj": 1.0}


def test_world_scene_graphs_reach_every_training_image(parts, objects: ObjectVocab) -> None:
    items = parts[2]
    assert all(it.objects and 2 <= len(it.objects) <= 5 for it in items)
    assert objects.attributes["material"] == ["metal", "rubber"] and objects.attributes["size"] == ["large", "small"]
    assert len(objects.attributes["color"]) == 8 and len(objects.attributes["shape"]) == 4


def test_object_targets_pad_and_mark_unannotated_images(objects: ObjectVocab) -> None:
    one = [{"x": 0.1, "y": 0.2, "attributes": {"color": "red", "shape": "cube", "size": "small", "material": "metal"}},
           {"x": 0.9, "y": 0.8, "attributes": {"color": "blue", "shape": "teapot"}}]
    attrs, xy, annotated = objects.targets([one, None, []])
    assert attrs.shape == (3, 2, 4) and xy.shape == (3, 2, 2)
    assert annotated.tolist() == [True, False, True]
    names = list(objects.attributes)
    assert attrs[0, 0, names.index("color")] == objects.attributes["color"].index("red")
    assert attrs[0, 1, names.index("shape")] == -100  # a value never seen in training is not a target
    assert attrs[0, 1, names.index("size")] == -100  # nor is an attribute the object does not state
    assert (attrs[1:] == -100).all() and torch.allclose(xy[0], torch.tensor([[0.1, 0.2], [0.9, 0.8]]))


def test_token_grid_reads_square_grids_and_drops_a_cls_token() -> None:
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)
    grid = token_grid(tokens)
    assert grid.shape == (2, 3, 4, 4) and torch.equal(grid[:, :, 0, 1], tokens[:, 2])
    assert token_grid(tokens[:, 1:]).shape == (2, 3, 4, 4)
    with pytest.raises(ConfigError, match="square grid; got 7 tokens"):
        token_grid(tokens[:, :7])


def test_obj_objective_needs_scene_graphs(parts) -> None:
    with pytest.raises(ConfigError, match="'obj' objective needs object annotations"):
        build(parts, weights=ALL_WITH_OBJ)
    assert build(parts).objects is None


def test_obj_objective_trains_the_image_tower_from_the_scene_graph(parts, objects: ObjectVocab) -> None:
    model = build(parts, objects, weights=ALL_WITH_OBJ)
    b = make_batch(parts, n=8, objects=objects)
    assert set(run(model, b).parts) >= {"obj", "itc", "vqa"}
    with pytest.raises(ValueError, match="needs object_attributes"):
        run(model, {k: v for k, v in b.items() if not k.startswith("object_")})
    # the object head alone, on the image tower: it must learn to name what stands at each centre
    params = list(model.backbone.image_encoder.parameters()) + list(model.objects.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    first = None
    for _ in range(80):
        found = model.objects(model.backbone.encode_image(b["image"]).tokens, b["object_attributes"], b["object_xy"], b["object_annotated"])
        first = first if first is not None else found.loss.item()
        opt.zero_grad()
        found.loss.backward()
        opt.step()
    assert found.loss.item() < 0.3 * first and float(found.attribute_accuracy) > 0.95
    model.eval()
    described = model.objects.describe(model.backbone.encode_image(b["image"]).tokens, b["object_xy"])
    truth = [[o["attributes"] for o in it.objects] for it in parts[2][:8]]
    hits = sum(d == t for ds, ts in zip(described, truth) for d, t in zip(ds, ts))
    assert hits >= 0.9 * sum(len(t) for t in truth)


def test_unannotated_images_do_not_teach_objectness(objects: ObjectVocab) -> None:
    from polymodal.losses.objects import object_loss

    attrs, xy, annotated = objects.targets([None, None])
    logits = {name: torch.zeros(2, 1, len(v), requires_grad=True) for name, v in objects.attributes.items()}
    objectness = torch.zeros(2, 4, 4, requires_grad=True)
    out = object_loss(logits, attrs, objectness, xy, annotated)
    out.loss.backward()
    assert float(out.loss) == 0.0 and objectness.grad is not None and float(objectness.grad.abs().sum()) == 0.0



def test_object_loss_masked_means_equal_the_boolean_indexed_ones(objects: ObjectVocab) -> None:
    """The object loss reads nothing back to the host (so it compiles with the model) and still averages
    over the annotated objects and images only: the same value and gradients as boolean-indexed means."""
    import torch.nn.functional as F

    from polymodal.losses.objects import object_loss, objectness_targets

    scenes = [[{"x": 0.1, "y": 0.1, "attributes": {}}, {"x": 0.12, "y": 0.13, "attributes": {}}], None, [{"x": 0.9, "y": 0.6, "attributes": {}}]]
    for j, obj in enumerate([*scenes[0], *scenes[2]]):  # known attribute values, one left unstated
        obj["attributes"] = {name: values[j % len(values)] for name, values in objects.attributes.items()}
    del scenes[0][1]["attributes"][next(iter(objects.attributes))]
    attrs, xy, annotated = objects.targets(scenes)
    g = torch.Generator().manual_seed(0)
    logits = {name: torch.randn(3, attrs.shape[1], len(v), generator=g, requires_grad=True) for name, v in objects.attributes.items()}
    objectness = torch.randn(3, 4, 4, generator=g, requires_grad=True)
    out = object_loss(logits, attrs, objectness, xy, annotated)
    # the reference: each mean over boolean-indexed rows
    valid = (attrs != IGNORE_INDEX).any(-1)
    reference, correct, counted = torch.zeros(()), 0, 0
    for a, name in enumerate(objects.attributes):
        known = attrs[..., a] != IGNORE_INDEX
        reference = reference + F.cross_entropy(logits[name][known], attrs[..., a][known])
        correct += int((logits[name][known].argmax(-1) == attrs[..., a][known]).sum())
        counted += int(known.sum())
    here = objectness_targets(xy, valid, 4, 4)
    assert here[0].sum() == 1 and here[0, 0, 0] == 1  # image 0's two objects share a cell: marked once
    reference = reference + F.binary_cross_entropy_with_logits(objectness[annotated], here[annotated])
    torch.testing.assert_close(out.loss, reference)
    assert float(out.attribute_accuracy) == pytest.approx(correct / counted)
    leaves = [*logits.values(), objectness]
    for mine, theirs in zip(torch.autograd.grad(out.loss, leaves, retain_graph=True), torch.autograd.grad(reference, leaves)):
        torch.testing.assert_close(mine, theirs)


def test_ground_objective_needs_scene_graphs(parts) -> None:
    with pytest.raises(ConfigError, match="'ground' objective needs scene graphs"):
        build(parts, weights=REQUIRED_ONLY | {"ground": 1.0})


def test_grounding_targets_follow_the_fused_rows(parts, objects: ObjectVocab) -> None:
    """Rows are every image's questions (image-major) then every statement, as the model fuses them."""
    b = make_batch(parts, n=3, questions_per_image=2, objects=objects)
    target = b["grounding"]
    assert target.shape == (3 * 2 + 3, b["object_xy"].shape[1])
    items = parts[2]
    ds = ImageItemDataset(items[:3], ImageProcessor(ImageProcessorConfig(size=SIZE)), seed=0, questions_per_image=2)
    loaded = [ds[i] for i in range(3)]
    rows = [(it, k) for it in loaded for k in range(2)] + [(it, 2) for it in loaded]
    for r, (it, k) in enumerate(rows):
        n = len(it.objects)
        assert target[r, :n].tolist() == [float(j in it.grounding[k]) for j in range(n)]
        assert (target[r, n:] == -100).all()  # padding is ignored



def test_a_training_step_reads_the_device_back_only_where_it_must(parts, objects: ObjectVocab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read-back stalls a GPU step (tests/read_backs.py). With the quickstart's objectives, the forward
    and backward read back only: the LM's scored rows (a boolean index, and its gradient), the rows' index
    checks, and whether every image is annotated. It read back 92 times before the object and grounding
    losses took their means over masks and the task's logged values became tensors, read only when logged."""
    from polymodal.modules.transformer import Transformer
    from polymodal.tasks.base import StepOutput
    from polymodal.tasks.multitask import MultiTaskTask
    from tests.read_backs import ReadBacks

    monkeypatch.setattr(Transformer, "_packing", staticmethod(lambda mask, cache: None))  # as on a GPU: nothing packs
    model = build(parts, objects, weights=ALL_WITH_OBJ | {"ground": 1.0})
    b = make_batch(parts, n=8, questions_per_image=2, objects=objects)
    task = MultiTaskTask.__new__(MultiTaskTask)  # the loss alone reads nothing the task was prepared with
    with ReadBacks() as seen:
        out: StepOutput = task.loss(model, b)
        out.loss.backward()
    assert "loss_ground" in out.logs and all(isinstance(v, torch.Tensor) and not v.requires_grad for v in out.logs.values())
    assert seen.total <= 6, dict(seen.sites)


def test_ground_objective_teaches_the_question_to_select_its_objects(parts, objects: ObjectVocab) -> None:
    from polymodal.losses.mlm import IGNORE_INDEX
    from polymodal.models.grounded_readout import GroundedReadout, KnownObjects

    model = build(parts, objects, weights=ALL_WITH_OBJ | {"ground": 1.0})
    b = make_batch(parts, n=8, questions_per_image=2, objects=objects)
    out = run(model, b)
    assert "ground" in out.parts and "ground" in out.accuracy
    with pytest.raises(ValueError, match="grounding targets"):
        run(model, {k: v for k, v in b.items() if k != "grounding"})
    # the readout starts as a no-op: the heads read exactly the fused question
    image = model.backbone.encode_image(b["image"])
    text = model.backbone.encode_text(b["question_ids"][:8:2], b["question_mask"][:8:2])
    fused = model.backbone.fuse(text, EncoderOutput(image.tokens[:4], image.pooled[:4], None))
    torch.testing.assert_close(model.vqa.readout(fused, image.tokens[:4]).pooled, fused.pooled)
    # the grounding loss alone reaches the text tower and the fusion layers, not only the readout
    valid = (b["object_attributes"] != IGNORE_INDEX).any(-1)
    known = KnownObjects(b["object_xy"], valid, torch.ones(8, dtype=torch.bool))
    params = [p for n, p in model.named_parameters() if not n.startswith(("objects.", "probes.", "captioner."))]
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for step in range(80):
        image = model.backbone.encode_image(b["image"])
        _, _, readout = model.fuse_questions_and_statements(image, b["question_ids"], b["question_mask"], b["statement_ids"], b["statement_mask"], known)
        found = GroundedReadout.loss(readout, known, b["grounding"], b["plan"])
        losses.append(found.loss.item())
        opt.zero_grad()
        found.loss.backward()
        if step == 0:
            assert model.backbone.text_encoder.token_embed.weight.grad.abs().sum() > 0
            assert model.vqa.readout.select_query.weight.grad.abs().sum() > 0
        opt.step()
    assert losses[-1] < 0.3 * losses[0], losses
    # slot j is annotated object j: each selection picks the objects its part of the plan names, and only those
    for logits, target in ((readout.first, b["plan"].first), (readout.second, b["plan"].second)):
        annotated = target != IGNORE_INDEX
        p = torch.sigmoid(logits.detach()[:, : target.shape[1]])
        assert float(p[annotated & (target == 1)].mean()) > 0.8 and float(p[annotated & (target == 0)].mean()) < 0.2
    assert float(found.exact) > 0.8
