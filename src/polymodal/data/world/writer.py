"""Generate the world on disk in the formats users already have (COCO, VQA v2, Karpathy, JSONL).

The world is a *producer of standard files*, not a private format: every loader that reads a user's
COCO or VQA data reads the world too, so the quickstart exercises the same code paths as real data.
Scenes are rendered and described in worker processes; each scene's randomness is seeded from
(seed, image_id), so the output is identical whatever the number of workers.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from polymodal.atomic import write_text
from polymodal.data.world.captions import generate_captions, generate_paraphrase_caption
from polymodal.data.world.conversations import conversations_for_scene, count_turns
from polymodal.data.world.lexicon import UNSEEN_LEXICON
from polymodal.data.world.programs import grounding, reasoning_plan
from polymodal.data.world.questions import FAMILIES, HELD_OUT_COMBOS, HELD_OUT_TEMPLATES, generate_question
from polymodal.data.world.render import render_scene
from polymodal.data.world.scene import Scene, sample_scene
from polymodal.data.world.stale import remove_stale_media
from polymodal.data.world.statements import false_statement, true_statement
from polymodal.errors import ConfigError

IMAGE_TEMPLATE = "{split}_{image_id:06d}.png"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class WorldConfig:
    num_scenes: int = 2000
    seed: int = 0
    image_size: int = 64
    min_objects: int = 2
    max_objects: int = 5
    captions_per_image: int = 5
    questions_per_family: int = 2  # per train/val scene
    test_questions_per_family: int = 4  # test scenes also feed the held-out split, so they get more
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def validate(self) -> None:
        if self.num_scenes < 3:
            raise ConfigError(f"world: num_scenes must be >= 3 (one per split), got {self.num_scenes}")
        if not 1 <= self.min_objects <= self.max_objects <= 10:
            raise ConfigError(
                f"world: need 1 <= min_objects <= max_objects <= 10, got {self.min_objects}..{self.max_objects}"
            )
        if self.image_size < 32:
            raise ConfigError(f"world: image_size must be >= 32 pixels, got {self.image_size}")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ConfigError("world: val_fraction and test_fraction must be in (0, 1) and sum to less than 1")


@dataclass
class WorldManifest:
    root: Path
    config: WorldConfig
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    stale_removed: int = 0  # images of an earlier world in the same folder, deleted

    def summary(self) -> str:
        c = self.counts
        lines = [
            f"world written to {self.root} in {self.seconds:.1f}s"
            + (f" ({self.stale_removed} images of an earlier world removed)" if self.stale_removed else ""),
            (
                f"  images:     train {c['images_train']}, val {c['images_val']}, test {c['images_test']}"
                f" ({self.config.image_size}x{self.config.image_size} px)"
            ),
            f"  captions:   {c['captions']} ({self.config.captions_per_image} per image)",
            (
                f"  questions:  train {c['questions_train']}, val {c['questions_val']}, test {c['questions_test']},"
                f" held-out {c['questions_test_heldout']}"
            ),
            f"  statements: {c['statements']} (one true and one false per image)",
            f"  conversations: {c['conversations']} ({c['conversation_turns']} question-answer turns, LLaVA layout)",
            f"  manifest:   {self.root / 'world.json'}",
        ]
        return "\n".join(lines)


def _answer_type(answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    return "number" if answer.isdigit() else "other"


# --- worker side ----------------------------------------------------------------------------------
_STATE: dict[str, Any] = {}


def _init_worker(root: str, cfg: WorldConfig, scenes_by_split: dict[str, list[Scene]]) -> None:
    _STATE.update(root=Path(root), cfg=cfg, scenes=scenes_by_split)


def _build(job: tuple[str, int]) -> dict[str, Any]:
    """Render one scene and write its texts: everything about one image, from its own seed."""
    split, index = job
    cfg: WorldConfig = _STATE["cfg"]
    scene: Scene = _STATE["scenes"][split][index]
    rng = np.random.default_rng([cfg.seed, scene.image_id, 7])
    name = IMAGE_TEMPLATE.format(split=split, image_id=scene.image_id)
    img = render_scene(scene, cfg.image_size, noise_seed=int(rng.integers(2**31)))
    img.save(_STATE["root"] / "images" / split / name, compress_level=1)

    captions = generate_captions(scene, cfg.captions_per_image, rng)
    per_family = cfg.test_questions_per_family if split == "test" else cfg.questions_per_family
    questions, seen = [], set()
    for family in FAMILIES:
        for _ in range(per_family):
            q = generate_question(scene, family, rng, allow_held_out=(split == "test"))
            if q is not None and q.text not in seen:
                seen.add(q.text)
                questions.append(q)
    statements = [(true_statement(scene, rng), 1), (false_statement(scene, _STATE["scenes"][split], rng), 0)]
    order = rng.permutation(2)
    record = {
        "split": split,
        "scene": scene.to_json(),
        "file_name": name,
        "captions": captions,
        # programs are freshly built per question, so no deep copy (dataclasses.asdict) is needed
        "questions": [
            {"text": q.text, "answer": q.answer, "family": q.family, "template": q.template, "program": q.program, "held_out": q.held_out,
             "grounding": grounding(scene, q.program), "plan": reasoning_plan(scene, q.program)}
            for q in questions
        ],
        "statements": [
            {"text": statements[i][0].text, "program": statements[i][0].program, "label": statements[i][1], "grounding": grounding(scene, statements[i][0].program), "plan": reasoning_plan(scene, statements[i][0].program)}
            for i in order
        ],
    }
    if split == "test":
        record["paraphrase"] = generate_paraphrase_caption(scene, rng, UNSEEN_LEXICON)
    # a stream of its own (constant 29), so adding conversations changed no other output
    talk_rng = np.random.default_rng([cfg.seed, scene.image_id, 29])
    record["conversations"] = conversations_for_scene(
        scene, captions, talk_rng, image=f"images/{split}/{name}", id_prefix=name.rsplit(".", 1)[0]
    )
    return record


# --- writing --------------------------------------------------------------------------------------
def _write_json(path: Path, obj: Any) -> None:
    """Written atomically: a killed run never leaves a half-written annotation file behind."""
    # json.dumps uses the C encoder; json.dump streams through the pure-Python one (5x slower here)
    write_text(path, json.dumps(obj, separators=(",", ":")))


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows))


def _info(cfg: WorldConfig, split: str) -> dict[str, Any]:
    return {"description": "polymodal built-in scene world", "version": "1", "seed": cfg.seed, "split": split}


def _coco_captions(cfg: WorldConfig, split: str, records: list[dict[str, Any]], key: str = "captions") -> dict[str, Any]:
    images, anns = [], []
    for r in records:
        iid = r["scene"]["image_id"]
        images.append({"id": iid, "file_name": r["file_name"], "width": cfg.image_size, "height": cfg.image_size})
        texts = r[key] if isinstance(r[key], list) else [r[key]]
        for k, text in enumerate(texts):
            anns.append({"id": iid * 100 + k, "image_id": iid, "caption": text})
    return {"info": _info(cfg, split), "licenses": [], "type": "captions", "images": images, "annotations": anns}


def _vqa_files(cfg: WorldConfig, image_split: str, qsplit: str, items: list[tuple[int, int, dict[str, Any]]]):
    questions, annotations = [], []
    for iid, k, q in items:
        qid = iid * 1000 + k
        questions.append(
            {"image_id": iid, "question": q["text"], "question_id": qid, "family": q["family"], "template": q["template"], "held_out": q["held_out"]}
        )
        annotations.append(
            {
                "question_id": qid,
                "image_id": iid,
                "question_type": q["family"],
                "answer_type": _answer_type(q["answer"]),
                "multiple_choice_answer": q["answer"],
                # ground truth is exact, so all ten 'human' answers agree
                "answers": [{"answer": q["answer"], "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)],
                "program": q["program"],
                "grounding": q["grounding"],  # indices into the scene graph's objects (scenes/<split>.json)
                "plan": q["plan"],  # the program as two selections and relations (programs.reasoning_plan)
            }
        )
    header = {"info": _info(cfg, qsplit), "license": {}, "data_type": "world", "data_subtype": image_split}
    return header | {"task_type": "Open-Ended", "questions": questions}, header | {"annotations": annotations}


def _sources(split_files: dict[str, dict[str, str]]) -> dict[str, list[dict[str, Any]]]:
    sources: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        f = split_files[split]
        sources[split] = [
            {"format": "coco_captions", "annotations": f["captions"], "images": f"images/{split}"},
            {"format": "vqa_v2", "questions": f["questions"], "annotations": f["annotations"], "images": f"images/{split}", "image_template": IMAGE_TEMPLATE},
            {"format": "jsonl", "path": f["classification"], "root": ".", "id_field": "id"},
            {"format": "scenes", "path": f["scenes"], "images": f"images/{split}"},
        ]
    h = split_files["test_heldout"]
    sources["test_heldout"] = [
        {"format": "vqa_v2", "questions": h["questions"], "annotations": h["annotations"], "images": "images/test", "image_template": IMAGE_TEMPLATE}
    ]
    # one caption per test image in words no training text uses (zero-shot paraphrase retrieval)
    sources["test_paraphrase"] = [{"format": "coco_captions", "annotations": split_files["test"]["paraphrase_captions"], "images": "images/test"}]
    return sources


def generate_world(out: str | Path, cfg: WorldConfig | None = None, workers: int | None = None, progress: bool = False) -> WorldManifest:
    """Write a complete world into ``out`` and return its manifest (also saved as ``world.json``)."""
    cfg = cfg or WorldConfig()
    cfg.validate()
    t0 = time.perf_counter()
    root = Path(out).resolve()
    for sub in ("annotations", "vqa", "karpathy", "classification", "scenes", "conversations", *(f"images/{s}" for s in SPLITS)):
        (root / sub).mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(cfg.seed)
    scenes = [sample_scene(rng, i, cfg.min_objects, cfg.max_objects) for i in range(cfg.num_scenes)]
    order = rng.permutation(cfg.num_scenes)
    n_test = max(1, round(cfg.num_scenes * cfg.test_fraction))
    n_val = max(1, round(cfg.num_scenes * cfg.val_fraction))
    split_ids = {"test": sorted(order[:n_test]), "val": sorted(order[n_test : n_test + n_val]), "train": sorted(order[n_test + n_val :])}
    scenes_by_split = {s: [scenes[i] for i in ids] for s, ids in split_ids.items()}
    jobs = [(s, k) for s in SPLITS for k in range(len(scenes_by_split[s]))]

    n_workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(jobs), desc="rendering world", unit="scene", disable=not progress)
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    if n_workers == 1 or len(jobs) < 64:
        _init_worker(str(root), cfg, scenes_by_split)
        for job in jobs:
            r = _build(job)
            records[r["split"]].append(r)
            bar.update()
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(n_workers, initializer=_init_worker, initargs=(str(root), cfg, scenes_by_split)) as pool:
            for r in pool.imap(_build, jobs, chunksize=32):
                records[r["split"]].append(r)
                bar.update()
    bar.close()
    stale = sum(
        remove_stale_media(root / "images" / split, r"(train|val|test)_\d{6}\.png", {r["file_name"] for r in records[split]})
        for split in SPLITS
    )

    counts: Counter = Counter()
    split_files: dict[str, dict[str, str]] = {}
    karpathy_images = []
    for split in SPLITS:
        recs = records[split]
        counts[f"images_{split}"] = len(recs)
        f = split_files[split] = {
            "captions": f"annotations/captions_{split}.json",
            "questions": f"vqa/questions_{split}.json",
            "annotations": f"vqa/annotations_{split}.json",
            "classification": f"classification/{split}.jsonl",
            "scenes": f"scenes/{split}.json",
            "conversations": f"conversations/{split}.json",
        }
        _write_json(root / f["captions"], _coco_captions(cfg, split, recs))
        counts["captions"] += sum(len(r["captions"]) for r in recs)
        main_items, heldout_items = [], []
        for r in recs:
            for k, q in enumerate(r["questions"]):
                (heldout_items if q["held_out"] else main_items).append((r["scene"]["image_id"], k, q))
        qs, ann = _vqa_files(cfg, split, split, main_items)
        _write_json(root / f["questions"], qs)
        _write_json(root / f["annotations"], ann)
        counts[f"questions_{split}"] = len(main_items)
        if split == "test":
            split_files["test_heldout"] = {"questions": "vqa/questions_test_heldout.json", "annotations": "vqa/annotations_test_heldout.json"}
            qs, ann = _vqa_files(cfg, split, "test_heldout", heldout_items)
            _write_json(root / split_files["test_heldout"]["questions"], qs)
            _write_json(root / split_files["test_heldout"]["annotations"], ann)
            counts["questions_test_heldout"] = len(heldout_items)
            split_files["test"]["paraphrase_captions"] = "annotations/captions_test_paraphrase.json"
            _write_json(root / split_files["test"]["paraphrase_captions"], _coco_captions(cfg, split, recs, key="paraphrase"))
        rows = []
        for r in recs:
            iid = r["scene"]["image_id"]
            for k, st in enumerate(r["statements"]):
                rows.append({"id": f"{iid}_{k}", "image": f"images/{split}/{r['file_name']}", "text": st["text"], "label": st["label"], "image_id": iid, "program": st["program"], "grounding": st["grounding"], "plan": st["plan"]})
        _write_jsonl(root / f["classification"], rows)
        counts["statements"] += len(rows)
        _write_json(
            root / f["scenes"],
            {"info": _info(cfg, split), "scenes": [r["scene"] | {"image_filename": r["file_name"], "split": split} for r in recs]},
        )
        conversations = [c for r in recs for c in r["conversations"]]
        _write_json(root / f["conversations"], conversations)
        counts["conversations"] += len(conversations)
        counts["conversation_turns"] += count_turns(conversations)
        for r in recs:
            iid = r["scene"]["image_id"]
            karpathy_images.append(
                {
                    "filepath": split,
                    "filename": r["file_name"],
                    "imgid": iid,
                    "cocoid": iid,
                    "split": split,
                    "sentids": [iid * 100 + k for k in range(len(r["captions"]))],
                    "sentences": [
                        {"raw": c, "tokens": c.rstrip(".").replace(",", " ,").replace(":", " :").split(), "imgid": iid, "sentid": iid * 100 + k}
                        for k, c in enumerate(r["captions"])
                    ],
                }
            )
    _write_json(root / "karpathy" / "dataset_world.json", {"dataset": "world", "images": sorted(karpathy_images, key=lambda d: d["imgid"])})

    manifest = WorldManifest(root=root, config=cfg, counts=dict(counts), seconds=time.perf_counter() - t0, stale_removed=stale)
    _write_json(
        root / "world.json",
        {
            "name": "polymodal-world",
            "version": 1,
            "config": asdict(cfg),
            "counts": manifest.counts,
            "image_template": IMAGE_TEMPLATE,
            "held_out": {"templates": sorted(HELD_OUT_TEMPLATES), "color_shape_combos": sorted(map(list, HELD_OUT_COMBOS))},
            "files": split_files,
            "karpathy": {"format": "karpathy", "path": "karpathy/dataset_world.json", "images": "images"},
            "sources": _sources(split_files),
            # instruction-tuning conversations: one data source per split, for the 'llava' reader
            "conversations": {s: {"format": "llava", "path": split_files[s]["conversations"], "images": "."} for s in SPLITS},
        },
    )
    return manifest
