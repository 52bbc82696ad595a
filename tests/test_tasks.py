from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from polymodal.data.processors import ImageProcessor, ImageProcessorConfig
from polymodal.data.sample import Sample
from polymodal.data.tokenizers import train_tokenizer
from polymodal.errors import DataError
from polymodal.models.dual_encoder import DualEncoder
from polymodal.modules.encoders import TextTransformer, VisionTransformer
from polymodal.tasks.base import group_by_image
from polymodal.tasks.retrieval import RetrievalTask
from polymodal.train.data import make_loader


def test_group_by_image_keeps_first_seen_order() -> None:
    s = [Sample("a", image_id="2"), Sample("b", image_id="1"), Sample("c", image_id="2"), Sample("d")]
    groups = group_by_image(s)
    assert list(groups) == ["2", "1", "d"] and [x.sample_id for x in groups["2"]] == ["a", "c"]


def test_retrieval_hands_a_fusion_encoders_token_part_to_the_trainer() -> None:
    """A fusion encoder's MLM is a mean over every rank's tokens inside a loss of per-rank means: the
    trainer weighs that part apart (train/accumulation.py), so the task must pass it on."""
    from types import SimpleNamespace

    itc = SimpleNamespace(acc_i2t=torch.tensor(0.5), logit_scale=torch.tensor(10.0))
    out = SimpleNamespace(loss=torch.tensor(3.0), loss_over_ranks=torch.tensor(1.25), itc=itc)
    batch = {"image": torch.zeros(2, 3, 4, 4), "text_ids": torch.ones(2, 3, dtype=torch.long), "text_mask": torch.ones(2, 3),
             "samples": [Sample("a", image_id="1"), Sample("b", image_id="2")]}
    step = RetrievalTask(tokenizer=None, max_length=8).loss(lambda *args, **kwargs: out, batch)
    assert step.loss is out.loss and step.loss_over_ranks is out.loss_over_ranks
    dual = SimpleNamespace(loss=torch.tensor(3.0), itc=itc)  # a dual encoder's output has no such part
    assert RetrievalTask(tokenizer=None, max_length=8).loss(lambda *args, **kwargs: dual, batch).loss_over_ranks is None


def test_retrieval_evaluation_refuses_a_gallery_with_unreadable_images(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (16, 16), (i * 80, 0, 0)).save(p)
        paths.append(p)
    paths[1].write_bytes(b"broken")
    samples = [Sample(str(i), image_path=p, image_id=str(i), text=f"image {i}") for i, p in enumerate(paths)]
    tok = train_tokenizer([s.text for s in samples], vocab_size=40)
    model = DualEncoder(
        VisionTransformer(image_size=16, patch_size=8, width=16, depth=1, heads=2),
        TextTransformer(vocab_size=tok.vocab_size, max_length=8, width=16, depth=1, heads=2, causal=True),
        embed_dim=8,
    )
    proc = ImageProcessor(ImageProcessorConfig(size=16))
    task = RetrievalTask(tok, 8)
    with pytest.raises(DataError, match="1 gallery image.*1.png"):
        task.evaluate(model, samples, lambda ss, img=True: make_loader(ss, proc, tok, 8, 2, 0), torch.device("cpu"))


# ------------------------------------------------------------------------------------------ multitask


def _mt_samples(tmp_path: Path) -> list[Sample]:
    img = tmp_path / "a.png"
    Image.new("RGB", (16, 16), (200, 0, 0)).save(img)
    img2 = tmp_path / "b.png"
    Image.new("RGB", (16, 16), (0, 0, 200)).save(img2)
    return [
        Sample("c1", image_path=img, image_id="a", text="a red cube left of a ball."),
        Sample("c2", image_path=img, image_id="a", text="a red cube."),
        Sample("q1", image_path=img, image_id="a", text="what is left of the ball?", answers=("cube",) * 10),
        Sample("q2", image_path=img, image_id="a", text="is the cube to the right of the ball?", answers=("no",) * 10),
        Sample("s1", image_path=img, image_id="a", text="the cube is left of the ball.", label=1),
        Sample("c3", image_path=img2, image_id="b", text="a blue cube."),  # no question, no statement
        Sample("scene:a", image_path=img, image_id="a", meta={"objects": (
            {"x": 0.25, "y": 0.5, "attributes": {"shape": "cube", "color": "red"}},
            {"x": 0.75, "y": 0.5, "attributes": {"shape": "sphere", "color": "red"}},
        )}),
    ]


def test_multitask_items_group_by_image_and_count_incomplete_images(tmp_path: Path) -> None:
    from polymodal.tasks.multitask import image_items, kind_of

    samples = _mt_samples(tmp_path)
    assert [kind_of(s) for s in samples] == ["caption", "caption", "question", "question", "statement", "caption", "scene"]
    items, incomplete = image_items(samples)
    assert incomplete == 1 and len(items) == 1
    assert [s.sample_id for s in items[0].captions] == ["c1", "c2"] and len(items[0].questions) == 2
    assert [o["attributes"]["shape"] for o in items[0].objects] == ["cube", "sphere"]
    assert image_items(samples[:-1])[0][0].objects is None  # no scene graph: nothing to supervise objects with


def test_multitask_draws_are_seeded_by_epoch_and_index(tmp_path: Path) -> None:
    from polymodal.tasks.multitask import ImageItemDataset, image_items

    items, _ = image_items(_mt_samples(tmp_path))
    proc = ImageProcessor(ImageProcessorConfig(size=16))
    draws = lambda seed: [(it.caption_text, tuple(it.question_texts)) for it in (ImageItemDataset(items, proc, seed=seed, questions_per_image=2)[0] for _ in range(3))]
    assert draws(5) == draws(5)  # a resumed run draws the very same texts
    assert len({d for seed in range(12) for d in draws(seed)}) > 1  # and other epochs draw others


def test_multitask_flip_keeps_every_text_true(tmp_path: Path) -> None:
    from polymodal.tasks.multitask import ImageItemDataset, image_items

    items, _ = image_items(_mt_samples(tmp_path))
    proc = ImageProcessor(ImageProcessorConfig(size=16))
    plain = ImageItemDataset(items, proc, flip_prob=0.0, seed=1, questions_per_image=2)[0]
    flipped = ImageItemDataset(items, proc, flip_prob=1.0, seed=1, questions_per_image=2)[0]
    assert torch.equal(flipped.image, plain.image.flip(-1))
    assert flipped.statement_text == "the cube is right of the ball."
    assert [q.replace("right", "LEFT").replace("left", "right").replace("LEFT", "left") for q in plain.question_texts] == flipped.question_texts
    assert flipped.caption_text == plain.caption_text.replace("left", "right")
    # the scene graph is mirrored with the pixels: the cube now stands on the right
    assert [(o["x"], o["attributes"]["shape"]) for o in plain.objects] == [(0.25, "cube"), (0.75, "sphere")]
    assert [(o["x"], o["attributes"]["shape"]) for o in flipped.objects] == [(0.75, "cube"), (0.25, "sphere")]


def test_multitask_task_keeps_the_object_attributes_with_its_state(tmp_path: Path) -> None:
    from polymodal.tasks.multitask import MultiTaskTask

    samples = _mt_samples(tmp_path) + [Sample("s2", image_path=tmp_path / "a.png", image_id="a", text="there is a blue cube.", label=0)]
    task = MultiTaskTask(None, 16)
    task.prepare(samples)
    assert task.objects is not None and task.objects.attributes == {"color": ["red"], "shape": ["cube", "sphere"]}
    assert task.context(None).object_vocab is task.objects
    again = MultiTaskTask(None, 16)
    again.load_state(task.state())
    assert again.objects.attributes == task.objects.attributes
    plain = MultiTaskTask(None, 16)
    plain.prepare([s for s in samples if s.sample_id != "scene:a"])
    assert plain.objects is None and "object_attributes" not in plain.state()


def test_multitask_training_needs_complete_images(tmp_path: Path) -> None:
    from polymodal.tasks.multitask import MultiTaskTask

    samples = [s for s in _mt_samples(tmp_path) if s.label is None]
    with pytest.raises(DataError, match="a caption, a question with answers and a labelled statement"):
        MultiTaskTask(None, 16).train_items(samples)


def test_multitask_objects_follow_the_crop(tmp_path: Path) -> None:
    """A centre crop of a wide image keeps its middle half: object centres move with it, cut-off ones go."""
    from polymodal.tasks.multitask import ImageItemDataset, image_items

    wide = tmp_path / "wide.png"
    Image.new("RGB", (32, 16), (90, 90, 90)).save(wide)
    samples = [s for s in _mt_samples(tmp_path) if s.image_id == "a"]
    samples = [Sample(s.sample_id, image_path=wide, image_id="a", text=s.text, answers=s.answers, label=s.label, meta=s.meta) for s in samples]
    items, _ = image_items(samples)
    loaded = ImageItemDataset(items, ImageProcessor(ImageProcessorConfig(size=16)), seed=0)[0]
    assert loaded.image.shape == (3, 16, 16)
    assert [(o["x"], o["attributes"]["shape"]) for o in loaded.objects] == [(0.0, "cube"), (1.0, "sphere")]
    items = [type(items[0])(items[0].captions, items[0].questions, items[0].statements, ({"x": 0.1, "y": 0.5, "attributes": {"shape": "cone"}},))]
    assert ImageItemDataset(items, ImageProcessor(ImageProcessorConfig(size=16)), seed=0)[0].objects == []


def _wide_image_with_three_objects(tmp_path: Path) -> tuple[Path, tuple[dict, ...]]:
    """A 32 x 16 image whose centre crop cuts off the first of its three objects."""
    wide = tmp_path / "wide.png"
    Image.new("RGB", (32, 16), (90, 90, 90)).save(wide)
    objs = (
        {"x": 0.1, "y": 0.5, "attributes": {"shape": "cone"}},  # outside the centre crop
        {"x": 0.3, "y": 0.5, "attributes": {"shape": "cube"}},
        {"x": 0.7, "y": 0.5, "attributes": {"shape": "sphere"}},
    )
    return wide, objs


def test_multitask_grounding_is_renumbered_by_the_crop_and_checked(tmp_path: Path) -> None:
    """A question's grounding indexes its image's objects: when the crop cuts one off, the rest move up."""
    from polymodal.tasks.multitask import ImageItemCollator, ImageItemDataset, image_items

    wide, objs = _wide_image_with_three_objects(tmp_path)
    samples = [
        Sample("c", image_path=wide, image_id="a", text="a cube and a sphere."),
        Sample("q", image_path=wide, image_id="a", text="what is left of the sphere?", answers=("cube",) * 10, meta={"grounding": [1]}),
        Sample("s", image_path=wide, image_id="a", text="there is a cone.", label=1, meta={"grounding": [0, 2]}),
        Sample("scene:a", image_path=wide, image_id="a", meta={"objects": objs}),
    ]
    items, _ = image_items(samples)
    loaded = ImageItemDataset(items, ImageProcessor(ImageProcessorConfig(size=16)), seed=0)[0]
    assert [o["attributes"]["shape"] for o in loaded.objects] == ["cube", "sphere"]
    assert loaded.grounding == [(0,), (1,)]
    tok = train_tokenizer([s.text for s in samples if s.text], vocab_size=40)
    from polymodal.models.object_head import ObjectVocab

    batch = ImageItemCollator(tok, 16, {"0": 0, "1": 1}, ObjectVocab.build(objs))([loaded])
    assert batch["grounding"].tolist() == [[1.0, 0.0], [0.0, 1.0]]

    bad = [s if s.sample_id != "q" else Sample("q", image_path=wide, image_id="a", text=s.text, answers=s.answers, meta={"grounding": ["x"]}) for s in samples]
    with pytest.raises(DataError, match="'grounding' must be a list of object indices"):
        ImageItemDataset(image_items(bad)[0], ImageProcessor(ImageProcessorConfig(size=16)), seed=0)[0]
    beyond = [s if s.sample_id != "q" else Sample("q", image_path=wide, image_id="a", text=s.text, answers=s.answers, meta={"grounding": [3]}) for s in samples]
    with pytest.raises(DataError, match="names object 3 but the image's scene graph has 3 objects"):
        ImageItemDataset(image_items(beyond)[0], ImageProcessor(ImageProcessorConfig(size=16)), seed=0)[0]


def test_multitask_plan_is_renumbered_by_the_crop_mirrored_by_the_flip_and_checked(tmp_path: Path) -> None:
    """A text's plan indexes its image's objects and names relations: a crop drops and renumbers its
    objects as it does the grounding, a horizontal flip turns its "left" into "right" as it does the text."""
    from polymodal.models.object_head import ObjectVocab
    from polymodal.models.relations import RELATIONS
    from polymodal.tasks.multitask import ImageItemCollator, ImageItemDataset, image_items

    wide, objs = _wide_image_with_three_objects(tmp_path)
    plan = {"first": [2], "hops": ["directly left"], "second": [], "relation": None}
    pair = {"first": [0, 1], "hops": [], "second": [2], "relation": "left"}

    def samples_with(question_plan: object) -> list[Sample]:
        return [
            Sample("c", image_path=wide, image_id="a", text="a cube and a sphere."),
            Sample("q", image_path=wide, image_id="a", text="what is directly left of the sphere?", answers=("cube",) * 10, meta={"plan": question_plan}),
            Sample("s", image_path=wide, image_id="a", text="a cone is left of a sphere.", label=1, meta={"plan": pair}),
            Sample("scene:a", image_path=wide, image_id="a", meta={"objects": objs}),
        ]

    items, _ = image_items(samples_with(plan))
    loaded = ImageItemDataset(items, ImageProcessor(ImageProcessorConfig(size=16)), seed=0)[0]
    assert [(p.first, p.hops, p.second, p.relation) for p in loaded.plans] == [((1,), ("directly left",), (), None), ((0,), (), (1,), "left")]
    flipped = ImageItemDataset(items, ImageProcessor(ImageProcessorConfig(size=16)), flip_prob=1.0, seed=0)[0]
    assert flipped.question_texts == ["what is directly right of the sphere?"]
    assert [(p.hops, p.relation) for p in flipped.plans] == [(("directly right",), None), ((), "right")]

    tok = train_tokenizer(["a cube and a sphere.", "what is directly left of the sphere?", "a cone is left of a sphere."], vocab_size=40)
    batch = ImageItemCollator(tok, 16, {"0": 0, "1": 1}, ObjectVocab.build(objs))([loaded])
    targets = batch["plan"]  # rows: the question, then the statement
    assert targets.first.tolist() == [[0.0, 1.0], [1.0, 0.0]] and targets.second.tolist() == [[0.0, 0.0], [0.0, 1.0]]
    assert targets.hops.tolist() == [1, 0]
    assert targets.relations.tolist() == [[RELATIONS.index("directly left"), -100, -100], [-100, -100, RELATIONS.index("left")]]

    for bad, message in (
        ({"first": [0], "hops": ["near"], "second": [], "relation": None}, "'plan' must be an object with 'first'"),
        ({"first": [0], "hops": [], "second": []}, "'plan' must be an object with 'first'"),
        ({"first": 0, "hops": [], "second": [], "relation": None}, "'plan' must be an object with 'first'"),
        ({"first": [5], "hops": [], "second": [], "relation": None}, "a plan names object 5 but the image's scene graph has 3 objects"),
        ({"first": [0], "hops": ["left", "left", "left"], "second": [], "relation": None}, "at most 2 relation names"),
    ):
        with pytest.raises(DataError, match=message):
            ImageItemDataset(image_items(samples_with(bad))[0], ImageProcessor(ImageProcessorConfig(size=16)), seed=0)[0]
