"""A locked pretrained text tower (MiniLM) against a text tower trained from scratch (benchmarks/RESULTS.md).

    pip install 'polymodal[minilm]'
    python benchmarks/bench_locked_text.py [--world DIR] [--scenes 10000] [--steps 1200] [--batch-size 64]

Generates the built-in world (unless --world names one), then trains configs/world_locked_text.yaml
(frozen sentence-transformers all-MiniLM-L6-v2, mean-pooled) and configs/world_scratch_text.yaml (a
2-layer text transformer and a WordPiece tokenizer trained on the training captions) with the same
seed, ViT image tower, steps and batch size. Each saved run is reloaded and evaluated on three caption
sets over the same 1,000-image-scale test gallery:

* ``normal``: the test captions (5 per image, every caption structure, training words);
* ``listing``: the normal captions of the listing structure only ("a picture of a red cube and ..."),
  the structure the paraphrases have, in training words: the control for the next row;
* ``paraphrase``: one caption per image in words and openings that no training text uses
  ("visible are a huge violet block and a tiny grey ball").

Writes benchmarks/results/locked_text.json and prints a table, with each model's training samples/s
(measured in the same invocation, so the ratio is meaningful on a shared machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from provenance import git_commit, write_result

from polymodal.config import load_config
from polymodal.data.world import WorldConfig, generate_world
from polymodal.evaluate import evaluate_checkpoint
from polymodal.train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"locked": ROOT / "configs" / "world_locked_text.yaml", "scratch": ROOT / "configs" / "world_scratch_text.yaml"}
LABELS = {"locked": "MiniLM-L6, locked", "scratch": "from scratch"}
CAPTION_SETS = ("normal", "listing", "paraphrase")
RELATIONS = (" left of ", " right of ", " above ", " below ")
METRICS = ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5")


def is_listing(caption: str) -> bool:
    """A caption of the listing structure (an opening, then every object): not counted ('three objects:
    ...'), not ordered ('from left to right: ...'), not relational ('a cube left of a cone, with ...')."""
    c = f" {caption.lower()} "
    return ":" not in c and not c.startswith(" from ") and not any(r in c for r in RELATIONS)


def source(annotations: Path, images: Path) -> dict[str, str]:
    return {"format": "coco_captions", "annotations": str(annotations), "images": str(images)}


def caption_specs(world: Path, out: Path) -> dict[str, Path]:
    """One data-spec YAML per caption set (``polymodal eval --data`` reads the same files)."""
    ann, images = world / "annotations", world / "images" / "test"
    coco = json.loads((ann / "captions_test.json").read_text(encoding="utf-8"))
    listing = dict(coco, annotations=[a for a in coco["annotations"] if is_listing(a["caption"])])
    listing_json = out / "captions_test_listing.json"
    listing_json.write_text(json.dumps(listing), encoding="utf-8")
    files = {"normal": ann / "captions_test.json", "listing": listing_json, "paraphrase": ann / "captions_test_paraphrase.json"}
    specs = {}
    for name, path in files.items():
        specs[name] = out / f"test_{name}.yaml"
        specs[name].write_text(json.dumps(source(path, images)) + "\n", encoding="utf-8")  # JSON is YAML
    return specs


def logged_rates(run_dir: Path) -> list[float]:
    with open(run_dir / "log.csv", newline="", encoding="utf-8") as f:
        return [float(r["value"]) for r in csv.DictReader(f) if r["split"] == "train" and r["name"] == "samples_per_s"]


def train(name: str, world: Path, out: Path, steps: int, batch_size: int, seed: int, extra: list[str]) -> dict[str, Any]:
    data = {split: source(world / "annotations" / f"captions_{split}.json", world / "images" / split) for split in ("train", "val", "test")}
    overrides = [f"data.{split}={json.dumps(spec)}" for split, spec in data.items()]
    overrides += [f"output_dir={out / name}", f"train.max_steps={steps}", f"train.batch_size={batch_size}", f"seed={seed}", *extra]
    cfg = load_config(MODELS[name], overrides)
    trainer = Trainer(cfg, progress=False, overwrite=True)  # a rerun of the benchmark replaces its runs
    t0 = time.perf_counter()
    summary = trainer.fit()
    wall = time.perf_counter() - t0
    model = trainer.model
    rates = logged_rates(out / name)
    return {
        "config": str(MODELS[name].relative_to(ROOT)),
        "run_dir": str(out / name),
        "steps": summary["steps"],
        "batch_size": batch_size,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trained": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "fit_seconds": round(wall, 1),
        "train_samples_per_s": round(statistics.median(rates), 1),  # the median of the logged rates
        "final_logit_scale": round(float(model.logit_scale), 2),
    }


def evaluate(run_dir: Path, specs: dict[str, Path]) -> dict[str, Any]:
    results = {}
    for name, spec in specs.items():
        t0 = time.perf_counter()
        r = evaluate_checkpoint(run_dir, spec, out_dir=run_dir / "eval" / name, device="cpu", batch_size=128, num_workers=0, report=False)
        (split,) = r["splits"]
        details = r["splits"][split]["details"]
        results[name] = {k: round(r["metrics"][split][k], 4) for k in METRICS} | {
            "gallery_images": details["gallery_images"],
            "captions": details["captions"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, default=None, help="a generated world (default: generate --scenes of them)")
    ap.add_argument("--scenes", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="a config override for both models")
    ap.add_argument("--out", type=Path, default=None, help="folder for the world, the runs and the caption specs")
    ap.add_argument("--result", type=Path, default=Path(__file__).parent / "results" / "locked_text.json")
    args = ap.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="pm_locked_text_"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    world = args.world
    world_seconds = 0.0
    if world is None:
        world = out / "world"
        t0 = time.perf_counter()
        generate_world(world, WorldConfig(num_scenes=args.scenes), workers=os.cpu_count() or 1)
        world_seconds = time.perf_counter() - t0
    world = world.resolve()
    specs = caption_specs(world, out)
    models: dict[str, Any] = {}
    for name in args.models:
        print(f"training {name} ({MODELS[name].name}) ...", flush=True)
        models[name] = train(name, world, out, args.steps, args.batch_size, args.seed, args.overrides)
        models[name]["eval"] = evaluate(out / name, specs)
    commit = git_commit()
    manifest = json.loads((world / "world.json").read_text(encoding="utf-8"))
    record: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "load_average_before": load_before},
        "world": {"path": str(world), "scenes": manifest["config"]["num_scenes"], "counts": manifest["counts"], "seconds": round(world_seconds, 1)},
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "overrides": args.overrides,
        "models": models,
    }
    if {"locked", "scratch"} <= set(models):
        record["samples_per_s_ratio_locked_to_scratch"] = round(models["locked"]["train_samples_per_s"] / models["scratch"]["train_samples_per_s"], 3)
    record["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    write_result(args.result, record)

    print(f"\n{'text tower':<18} {'captions':<11} {'t2i R@1':>8} {'t2i R@5':>8} {'i2t R@1':>8} {'gallery':>8} {'queries':>8}")
    for name, m in models.items():
        for cs in CAPTION_SETS:
            e = m["eval"][cs]
            print(f"{LABELS[name]:<18} {cs:<11} {e['t2i_R@1']:>8.3f} {e['t2i_R@5']:>8.3f} {e['i2t_R@1']:>8.3f} {e['gallery_images']:>8} {e['captions']:>8}")
    print(f"\n{'text tower':<18} {'trained':>10} {'total':>11} {'samples/s':>10} {'fit s':>7}")
    for name, m in models.items():
        print(f"{LABELS[name]:<18} {m['params_trained']:>10,} {m['params_total']:>11,} {m['train_samples_per_s']:>10} {m['fit_seconds']:>7}")
    if "samples_per_s_ratio_locked_to_scratch" in record:
        print(f"training speed, locked / scratch: {record['samples_per_s_ratio_locked_to_scratch']}x")
    print(f"wall {record['wall_seconds']} s; wrote {args.result}")


if __name__ == "__main__":
    main()
