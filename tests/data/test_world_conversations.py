"""The world's instruction-tuning conversations: LLaVA layout, exact answers, no held-out leakage."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from polymodal.data.world import WorldConfig, generate_world
from polymodal.data.world.questions import HELD_OUT_COMBOS, HELD_OUT_TEMPLATES, TEMPLATES
from tests.data.test_world import _answer  # the independent program interpreter

SPLITS = ("train", "val", "test")
# every surface form of an attribute value the training lexicon uses (lexicon.py, TRAIN_LEXICON)
SURFACE = {"large": ("large", "big"), "metal": ("metal", "shiny"), "rubber": ("rubber", "matte")}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    manifest = generate_world(root, WorldConfig(num_scenes=60, seed=4, image_size=32), workers=1)
    assert "conversations:" in manifest.summary()
    return root


def _load(root: Path, rel: str):
    return json.loads((root / rel).read_text())


def _conversations(root: Path, split: str) -> list[dict]:
    return _load(root, f"conversations/{split}.json")


def _scenes(root: Path, split: str) -> dict[int, dict]:
    return {s["image_id"]: s for s in _load(root, f"scenes/{split}.json")["scenes"]}


def _image_id(conv: dict) -> int:
    return int(re.fullmatch(r"(train|val|test)_(\d{6})_c\d+", conv["id"]).group(2))


def _question(text: str) -> str:
    """A human turn without its image marker."""
    return text.replace("<image>", "").strip()


def test_files_and_manifest_describe_llava_sources(world: Path) -> None:
    manifest = _load(world, "world.json")
    total = turns = 0
    for split in SPLITS:
        spec = manifest["conversations"][split]
        assert spec == {"format": "llava", "path": f"conversations/{split}.json", "images": "."}
        assert manifest["files"][split]["conversations"] == spec["path"]
        convs = _conversations(world, split)
        assert isinstance(convs, list) and convs
        ids = [c["id"] for c in convs]
        assert len(ids) == len(set(ids))
        for c in convs:
            assert {"id", "image", "conversations"} <= set(c)
            assert all(set(t) == {"from", "value"} and isinstance(t["value"], str) for t in c["conversations"])
            # the image path is relative to the folder the spec names, and is this image's file
            assert (world / spec["images"] / c["image"]).is_file(), c["image"]
            assert c["image"] == f"images/{split}/{split}_{_image_id(c):06d}.png"
        total += len(convs)
        turns += sum(len(c["conversations"]) // 2 for c in convs)
    assert manifest["counts"]["conversations"] == total
    assert manifest["counts"]["conversation_turns"] == turns
    assert "conversations" not in json.dumps(manifest["sources"])  # the VQA/caption sources are untouched


def test_turns_alternate_and_the_image_marker_opens_the_conversation(world: Path) -> None:
    image_first = Counter()
    for split in SPLITS:
        for c in _conversations(world, split):
            msgs = c["conversations"]
            assert len(msgs) >= 2 and len(msgs) % 2 == 0, c
            assert [m["from"] for m in msgs] == ["human", "gpt"] * (len(msgs) // 2), c
            assert sum(m["value"].count("<image>") for m in msgs) == 1, c
            first = msgs[0]["value"]
            assert first.startswith("<image>\n") or first.endswith("\n<image>"), c
            assert _question(first), c
            image_first[first.startswith("<image>")] += 1
            assert all(m["value"].strip() for m in msgs)
    # mostly before the text, sometimes after
    share = image_first[True] / sum(image_first.values())
    assert 0.6 <= share < 1.0, image_first


def test_three_kinds_per_image(world: Path) -> None:
    for split in SPLITS:
        scenes = _scenes(world, split)
        by_image: dict[int, list[dict]] = {}
        for c in _conversations(world, split):
            by_image.setdefault(_image_id(c), []).append(c)
        assert set(by_image) == set(scenes)
        for iid, convs in by_image.items():
            assert [c["kind"] for c in convs] == ["describe", "qa", "follow-up"], iid
            rounds = [len(c["conversations"]) // 2 for c in convs]
            assert rounds[0] == 1 and 2 <= rounds[1] <= 3 and rounds[2] == 2, (iid, rounds)


def test_every_answer_is_recomputed_from_the_scene_graph(world: Path) -> None:
    checked = Counter()
    for split in SPLITS:
        scenes = _scenes(world, split)
        captions: dict[int, set[str]] = {}
        for a in _load(world, f"annotations/captions_{split}.json")["annotations"]:
            captions.setdefault(a["image_id"], set()).add(a["caption"])
        for c in _conversations(world, split):
            iid = _image_id(c)
            answers = [m["value"] for m in c["conversations"][1::2]]
            assert len(c["programs"]) == len(answers)
            for program, answer in zip(c["programs"], answers):
                if program is None:  # a description: one of the image's own captions
                    assert c["kind"] == "describe" and answer in captions[iid], c
                else:
                    assert answer == _answer(scenes[iid]["objects"], program), c
                    assert re.fullmatch(r"[a-z]+|\d+", answer), answer  # short, VQA-style
                checked[c["kind"]] += 1
    assert min(checked[k] for k in ("describe", "qa", "follow-up")) >= 60, checked


def test_question_turns_agree_with_the_vqa_files(world: Path) -> None:
    """A qa turn asked in the VQA files too (same image, same text) has the VQA answer."""
    agreed = 0
    for split in SPLITS:
        questions = _load(world, f"vqa/questions_{split}.json")["questions"]
        anns = {a["question_id"]: a for a in _load(world, f"vqa/annotations_{split}.json")["annotations"]}
        vqa = {(q["image_id"], q["question"]): anns[q["question_id"]]["multiple_choice_answer"] for q in questions}
        for c in _conversations(world, split):
            msgs = c["conversations"]
            for human, gpt in zip(msgs[::2], msgs[1::2]):
                key = (_image_id(c), _question(human["value"]).lower())
                if key in vqa:
                    assert gpt["value"] == vqa[key], (c["id"], key)
                    agreed += 1
    assert agreed > 0, agreed  # conversations draw questions from their own stream: overlap is incidental


def test_programs_say_what_the_text_asks(world: Path) -> None:
    """Every value an answer depends on is named in the conversation so far; queried attributes are asked."""

    def values(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("color", "shape", "size", "material"):
                    yield v
                else:
                    yield from values(v)

    for split in SPLITS:
        for c in _conversations(world, split):
            said = ""
            for program, human in zip(c["programs"], c["conversations"][::2]):
                said += " " + _question(human["value"]).lower()
                if program is None:
                    continue
                words = set(re.findall(r"[a-z]+", said))
                for v in values(program):
                    forms = SURFACE.get(v, (v,))
                    assert any(f in words or f + "s" in words for f in forms), (c["id"], v, said)
                if program["op"] == "query":
                    assert program["attr"] in set(re.findall(r"[a-z]+", _question(human["value"]).lower())), c["id"]


def _held_out_patterns() -> list[re.Pattern[str]]:
    out = []
    for template_id in HELD_OUT_TEMPLATES:
        family, index = template_id.split("/")
        text = TEMPLATES[family][int(index)]
        parts = re.split(r"\{[a-z_0-9]+\}", text)
        out.append(re.compile(".+".join(re.escape(p) for p in parts)))
    return out


def test_no_held_out_phrasing_or_combination_in_conversations(world: Path) -> None:
    patterns = _held_out_patterns()
    # the patterns do recognise held-out questions (else this test could not fail)
    heldout = _load(world, "vqa/questions_test_heldout.json")["questions"]
    templated = [q["question"] for q in heldout if q["template"] in HELD_OUT_TEMPLATES]
    assert templated and all(any(p.fullmatch(t) for p in patterns) for t in templated)

    def combos(node):
        if isinstance(node, dict):
            if "color" in node and "shape" in node:
                yield node["color"], node["shape"]
            for v in node.values():
                yield from combos(v)

    for split in ("train", "val"):
        for c in _conversations(world, split):
            for human in c["conversations"][::2]:
                text = _question(human["value"]).lower()
                assert not any(p.fullmatch(text) for p in patterns), (c["id"], text)
            for program in c["programs"]:
                assert not set(combos(program)) & HELD_OUT_COMBOS, (c["id"], program)


def test_same_seed_same_conversations_whatever_the_workers(tmp_path: Path) -> None:
    cfg = WorldConfig(num_scenes=70, seed=9, image_size=32)  # >= 64 jobs: the pool path is taken
    generate_world(tmp_path / "a", cfg, workers=1)
    generate_world(tmp_path / "b", cfg, workers=2)
    for split in SPLITS:
        rel = f"conversations/{split}.json"
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    generate_world(tmp_path / "c", WorldConfig(num_scenes=70, seed=10, image_size=32), workers=1)
    rel = "conversations/train.json"
    assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes()
