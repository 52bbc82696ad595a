"""The world's ground truth, checked by an interpreter written here independently of the generator."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.data.world import WorldConfig, generate_world
from polymodal.errors import ConfigError
from polymodal.models.relations import RELATIONS, relate, relation_matrices

# ---------------- an independent reading of the program semantics (see programs.py docstring) -------


def _match(o: dict, flt: dict) -> bool:
    return all(o[k] == v for k, v in flt.items())


def _rel(a: dict, rel: str, b: dict) -> bool:
    return {"left": a["x"] < b["x"], "right": a["x"] > b["x"], "above": a["y"] < b["y"], "below": a["y"] > b["y"]}[rel]


def _ref(objs: list[dict], ref: dict) -> dict:
    if "filter" in ref:
        hits = [o for o in objs if _match(o, ref["filter"])]
        assert len(hits) == 1, f"reference {ref} is ambiguous or empty"
        return hits[0]
    anchor = _ref(objs, ref["of"])
    axis = "x" if ref["nearest"] in ("left", "right") else "y"
    cands = [o for o in objs if o is not anchor and _rel(o, ref["nearest"], anchor)]
    assert cands, f"nothing {ref['nearest']} of the anchor"
    return sorted(cands, key=lambda o: abs(o[axis] - anchor[axis]))[0]


def _answer(objs: list[dict], p: dict) -> str:
    yn = lambda b: "yes" if b else "no"  # noqa: E731
    count = lambda f: sum(_match(o, f) for o in objs)  # noqa: E731
    if p["op"] == "exist":
        return yn(count(p["filter"]) > 0)
    if p["op"] == "count":
        return str(count(p["filter"]))
    if p["op"] == "query":
        return _ref(objs, p["ref"])[p["attr"]]
    if p["op"] == "compare_count":
        a, b = count(p["a"]), count(p["b"])
        return yn(a > b if p["cmp"] == "more" else a < b if p["cmp"] == "fewer" else a == b)
    if p["op"] == "same_attr":
        return yn(_ref(objs, p["a"])[p["attr"]] == _ref(objs, p["b"])[p["attr"]])
    if p["op"] == "relate":
        a, b = _ref(objs, p["a"]), _ref(objs, p["b"])
        assert a is not b
        return yn(_rel(a, p["rel"], b))
    if p["op"] == "count_relate":
        anchor = _ref(objs, p["of"])
        return str(sum(o is not anchor and _rel(o, p["rel"], anchor) for o in objs))
    raise AssertionError(p)


def _statement(objs: list[dict], p: dict) -> bool:
    if p["op"] == "exist":
        return any(_match(o, p["filter"]) for o in objs)
    if p["op"] == "count_eq":
        return sum(_match(o, p["filter"]) for o in objs) == p["n"]
    if p["op"] == "relate_exists":
        return any(a is not b and _rel(a, p["rel"], b) for a in objs if _match(a, p["a"]) for b in objs if _match(b, p["b"]))
    raise AssertionError(p)


def _grounding(objs: list[dict], p: dict) -> list[int]:
    """The objects a program's answer is about, as programs.grounding documents it."""
    def pick(flt: dict) -> list[dict]:
        return [o for o in objs if _match(o, flt)]

    op = p["op"]
    if op in ("exist", "count", "count_eq"):
        chosen = pick(p["filter"])
    elif op == "query":
        chosen = [_ref(objs, p["ref"])]
    elif op == "compare_count":
        chosen = pick(p["a"]) + pick(p["b"])
    elif op in ("same_attr", "relate"):
        chosen = [_ref(objs, p["a"]), _ref(objs, p["b"])]
    elif op == "count_relate":
        anchor = _ref(objs, p["of"])
        chosen = [o for o in objs if o is not anchor and _rel(o, p["rel"], anchor)]
    elif op == "relate_exists":
        chosen = [o for a in pick(p["a"]) for b in pick(p["b"]) if a is not b and _rel(a, p["rel"], b) for o in (a, b)]
    else:
        raise AssertionError(p)
    return sorted({next(i for i, o in enumerate(objs) if o is c) for c in chosen})


# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    generate_world(root, WorldConfig(num_scenes=200, seed=3, image_size=64), workers=2)
    return root


def _load(root: Path, rel: str) -> dict:
    return json.loads((root / rel).read_text())


def _scenes(root: Path) -> dict[int, list[dict]]:
    out = {}
    for split in ("train", "val", "test"):
        for s in _load(root, f"scenes/{split}.json")["scenes"]:
            out[s["image_id"]] = s["objects"]
    return out


def test_every_answer_recomputed_from_the_scene_graph(world: Path) -> None:
    scenes = _scenes(world)
    checked = Counter()
    for qs in ("train", "val", "test", "test_heldout"):
        anns = _load(world, f"vqa/annotations_{qs}.json")["annotations"]
        assert anns, f"{qs} has no questions"
        for a in anns:
            expected = _answer(scenes[a["image_id"]], a["program"])
            assert a["multiple_choice_answer"] == expected, a
            assert [x["answer"] for x in a["answers"]] == [expected] * 10
            assert a["grounding"] == _grounding(scenes[a["image_id"]], a["program"]), a
            checked[a["question_type"]] += 1
    assert set(checked) == {"existence", "count", "attribute", "comparison", "spatial", "compositional"}
    assert min(checked.values()) > 50, checked


def _execute_plan(objs: list[dict], plan: dict) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A plan run with the readout's own relation operators on exact 0/1 selections: the first selection
    after its hops, the second, and how many of the first stand in the asked relation to the second."""
    xy = torch.tensor([[[o["x"], o["y"]] for o in objs]])
    matrices = relation_matrices(xy, torch.ones(1, len(objs), dtype=torch.bool))
    one_hot = lambda idx: torch.tensor([[float(i in idx) for i in range(len(objs))]])  # noqa: E731
    relation = lambda name: torch.eye(len(RELATIONS))[RELATIONS.index(name)].unsqueeze(0)  # noqa: E731
    chosen = one_hot(plan["first"])
    for hop in plan["hops"]:
        chosen = relate(chosen, matrices, relation(hop)).round()
    second = one_hot(plan["second"])
    related = float((chosen * relate(second, matrices, relation(plan["relation"]))).sum()) if plan["relation"] else 0.0
    return chosen[0], second[0], related


def test_plans_reproduce_every_answer_with_the_readouts_relations(world: Path) -> None:
    """The plan is what the grounded readout is taught to compute; executed with its relation operators it
    must give every question's answer and every statement's label, or the readout learns a wrong plan."""
    scenes = _scenes(world)
    checked = Counter()
    for qs in ("train", "test", "test_heldout"):
        for a in _load(world, f"vqa/annotations_{qs}.json")["annotations"]:
            objs, p, answer = scenes[a["image_id"]], a["program"], a["multiple_choice_answer"]
            chosen, second, related = _execute_plan(objs, a["plan"])
            count, yes = int(chosen.sum()), answer == "yes"
            if p["op"] in ("count", "count_relate"):
                assert count == int(answer), a
            elif p["op"] == "exist":
                assert (count > 0) == yes, a
            elif p["op"] == "query":
                assert count == 1 and objs[int(chosen.argmax())][p["attr"]] == answer, a
            elif p["op"] == "compare_count":
                other = int(second.sum())
                assert {"more": count > other, "fewer": count < other, "equal": count == other}[p["cmp"]] == yes, a
            elif p["op"] == "same_attr":
                assert count == 1 and int(second.sum()) == 1, a
                assert (objs[int(chosen.argmax())][p["attr"]] == objs[int(second.argmax())][p["attr"]]) == yes, a
            elif p["op"] == "relate":
                assert count == 1 and int(second.sum()) == 1 and (related > 0) == yes, a
            checked[p["op"]] += 1
    for row in (json.loads(line) for line in (world / "classification" / "train.jsonl").read_text().splitlines()):
        chosen, _, related = _execute_plan(scenes[row["image_id"]], row["plan"])
        holds = {"exist": chosen.sum() > 0, "count_eq": chosen.sum() == row["program"].get("n"), "relate_exists": related > 0}[row["program"]["op"]]
        assert bool(holds) == bool(row["label"]), row
        checked["statement " + row["program"]["op"]] += 1
    assert min(checked.values()) > 20 and len(checked) == 10, checked


def test_heldout_templates_and_combos_never_in_training(world: Path) -> None:
    manifest = _load(world, "world.json")
    held_templates = set(manifest["held_out"]["templates"])
    held_combos = {tuple(c) for c in manifest["held_out"]["color_shape_combos"]}

    def filters(node):
        if isinstance(node, dict):
            if node and set(node) <= {"color", "shape", "size", "material"}:
                yield node
            else:
                for v in node.values():
                    yield from filters(v)

    def uses_combo(program) -> bool:
        return any((f.get("color"), f.get("shape")) in held_combos for f in filters(program))

    for qs in ("train", "val"):
        questions = _load(world, f"vqa/questions_{qs}.json")["questions"]
        anns = {a["question_id"]: a for a in _load(world, f"vqa/annotations_{qs}.json")["annotations"]}
        for q in questions:
            assert q["template"] not in held_templates, q
            assert not uses_combo(anns[q["question_id"]]["program"]), q
    heldout_q = _load(world, "vqa/questions_test_heldout.json")["questions"]
    heldout_a = {a["question_id"]: a for a in _load(world, "vqa/annotations_test_heldout.json")["annotations"]}
    assert heldout_q
    for q in heldout_q:
        assert q["template"] in held_templates or uses_combo(heldout_a[q["question_id"]]["program"])
    # and the held-out phrasings really are phrasings training never saw
    train_texts = {q["question"] for q in _load(world, "vqa/questions_train.json")["questions"]}
    assert not train_texts & {q["question"] for q in heldout_q if q["template"] in held_templates}


def test_statement_labels_need_image_and_text(world: Path) -> None:
    scenes = _scenes(world)
    for split in ("train", "val", "test"):
        rows = [json.loads(line) for line in (world / f"classification/{split}.jsonl").read_text().splitlines()]
        per_image: dict[int, list[int]] = {}
        for r in rows:
            assert _statement(scenes[r["image_id"]], r["program"]) == bool(r["label"]), r
            assert r["grounding"] == _grounding(scenes[r["image_id"]], r["program"]), r
            assert bool(r["grounding"]) or not r["label"] or r["program"]["op"] == "count_eq", r  # a true statement is about something
            assert (world / r["image"]).is_file()
            per_image.setdefault(r["image_id"], []).append(r["label"])
        # one true and one false statement per image: an image-only model is at chance by construction
        assert all(sorted(v) == [0, 1] for v in per_image.values())
    # a text-only model cannot read the label off the text: the same statements occur with both labels
    rows = [json.loads(line) for line in (world / "classification/train.jsonl").read_text().splitlines()]
    by_text: dict[str, set[int]] = {}
    for r in rows:
        by_text.setdefault(r["text"], set()).add(r["label"])
    ambiguous = sum(len(v) == 2 for v in by_text.values())
    assert ambiguous >= 0.05 * len(by_text), "false statements should reuse statements that are true elsewhere"


def test_captions_name_every_object(world: Path) -> None:
    scenes = _scenes(world)
    coco = _load(world, "annotations/captions_train.json")
    by_image: dict[int, list[str]] = {}
    for a in coco["annotations"]:
        assert a["caption"].strip()
        by_image.setdefault(a["image_id"], []).append(a["caption"])
    assert {im["id"] for im in coco["images"]} == set(by_image)
    for iid, caps in by_image.items():
        assert len(caps) == 5 and len(set(caps)) == 5  # distinct captions
        for cap in caps:
            words = cap.rstrip(".").replace(",", " ").replace(":", " ").split()
            for o in scenes[iid]:
                assert o["color"] in words, (cap, o)
                assert o["shape"] in words or o["shape"] + "s" in words, (cap, o)
    # variety: several sentence structures across the corpus
    openings = Counter(c.split()[0] for caps in by_image.values() for c in caps)
    assert len(openings) >= 6, openings


def test_images_and_formats_are_consistent(world: Path) -> None:
    manifest = _load(world, "world.json")
    assert manifest["counts"]["images_train"] + manifest["counts"]["images_val"] + manifest["counts"]["images_test"] == 200
    coco = _load(world, "annotations/captions_test.json")
    im = coco["images"][0]
    img = Image.open(world / "images/test" / im["file_name"])
    assert img.size == (64, 64) and img.mode == "RGB"
    assert np.asarray(img).std() > 10  # not a blank canvas
    karpathy = _load(world, "karpathy/dataset_world.json")
    assert {i["split"] for i in karpathy["images"]} == {"train", "val", "test"}
    for entry in karpathy["images"][:20]:
        assert (world / "images" / entry["filepath"] / entry["filename"]).is_file()
    # VQA naming: the image_template of the manifest resolves every question's image
    for qs, split in (("test", "test"), ("test_heldout", "test")):
        q = _load(world, f"vqa/questions_{qs}.json")
        assert q["data_subtype"] == split
        for item in q["questions"][:50]:
            assert (world / "images" / split / manifest["image_template"].format(split=split, image_id=item["image_id"])).is_file()
    paraphrase = _load(world, "annotations/captions_test_paraphrase.json")["annotations"]
    train_vocab = {w for a in _load(world, "annotations/captions_train.json")["annotations"] for w in a["caption"].replace(".", " ").replace(",", " ").split()}
    unseen = {w for a in paraphrase for w in a["caption"].replace(".", " ").replace(",", " ").split()} - train_vocab
    assert {"ball", "block", "huge", "tiny"} <= unseen


def test_same_seed_same_world_whatever_the_workers(tmp_path: Path) -> None:
    cfg = WorldConfig(num_scenes=80, seed=11, image_size=48)
    generate_world(tmp_path / "a", cfg, workers=1)
    generate_world(tmp_path / "b", cfg, workers=2)
    for rel in ("vqa/annotations_train.json", "annotations/captions_val.json", "classification/test.jsonl", "scenes/train.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    some = sorted((tmp_path / "a/images/train").iterdir())[:5]
    for p in some:
        assert p.read_bytes() == (tmp_path / "b/images/train" / p.name).read_bytes()
    generate_world(tmp_path / "c", WorldConfig(num_scenes=80, seed=12, image_size=48), workers=1)
    assert (tmp_path / "a/vqa/annotations_train.json").read_bytes() != (tmp_path / "c/vqa/annotations_train.json").read_bytes()


@pytest.mark.parametrize(
    "kwargs, key",
    [({"num_scenes": 2}, "num_scenes"), ({"min_objects": 4, "max_objects": 2}, "min_objects"), ({"image_size": 16}, "image_size")],
)
def test_bad_world_settings_name_the_setting(tmp_path: Path, kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        generate_world(tmp_path, WorldConfig(**kwargs))


def test_a_smaller_world_in_the_same_folder_removes_the_old_images(tmp_path: Path) -> None:
    """Folder listings (index build, rank-images) must see this world only; a user's own files stay."""
    root = tmp_path / "w"
    generate_world(root, WorldConfig(num_scenes=40, seed=1, image_size=32), workers=1)
    old = {p.relative_to(root) for p in (root / "images").rglob("*.png")}
    (root / "images/test/my_photo.png").write_bytes(b"mine")
    manifest = generate_world(root, WorldConfig(num_scenes=10, seed=2, image_size=32), workers=1)
    captions = {
        s: {im["file_name"] for im in json.loads((root / f"annotations/captions_{s}.json").read_text())["images"]}
        for s in ("train", "val", "test")
    }
    for split, names in captions.items():
        on_disk = {p.name for p in (root / "images" / split).iterdir()} - {"my_photo.png"}
        assert on_disk == names, split
    assert (root / "images/test/my_photo.png").read_bytes() == b"mine"
    new = {Path("images", split, name) for split, names in captions.items() for name in names}
    assert manifest.stale_removed == len(old - new) >= 30
    assert f"{manifest.stale_removed} images of an earlier world removed" in manifest.summary()


def test_a_split_of_one_scene_still_gets_a_false_statement(tmp_path: Path) -> None:
    """Ten scenes leave one test scene, so no other scene can lend the false statement."""
    generate_world(tmp_path, WorldConfig(num_scenes=10, seed=2, image_size=32), workers=1)
    rows = [json.loads(line) for line in (tmp_path / "classification/test.jsonl").read_text().splitlines()]
    assert sorted(r["label"] for r in rows) == [0, 1]
    scene = json.loads((tmp_path / "scenes/test.json").read_text())["scenes"][0]
    false = next(r for r in rows if r["label"] == 0)
    shown = {(o["color"], o["shape"]) for o in scene["objects"]}
    assert false["program"]["op"] != "exist" or tuple(false["program"]["filter"].get(k) for k in ("color", "shape")) not in shown
