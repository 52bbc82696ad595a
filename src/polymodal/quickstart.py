"""``polymodal quickstart``: the first command a new user runs, and the library's main job end to end.

It generates the built-in world, trains one multi-task model on it (retrieval, captioning, VQA and
statement classification share the towers), evaluates it on the test split and on the held-out
question templates, writes the report, and prints where everything is and what to run next. The
settings live in ``configs/quickstart.yaml`` (shipped with the package), sized for a 2-core CPU.

The targets below are the ones the quickstart is measured against (benchmarks/RESULTS.md); the
summary prints each with the value reached, so a miss is never silent.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from polymodal.data.world import WorldConfig, generate_world

# (split, metric key, threshold, direction, label)
TARGETS: tuple[tuple[str, str, float, str, str], ...] = (
    ("test", "retrieval/t2i_R@1", 0.60, ">=", "text-to-image R@1"),
    ("test", "vqa/accuracy", 0.85, ">=", "VQA accuracy"),
    ("test", "captioning/CIDEr", 1.0, ">=", "captioning CIDEr-D"),  # pycocoevalcap names CIDEr-D "CIDEr"
    ("test", "classification/accuracy", 0.90, ">=", "statement classifier accuracy"),
    ("test", "classification/text_only_accuracy", 0.60, "<=", "text-only ablation (near chance)"),
    ("test", "classification/image_only_accuracy", 0.60, "<=", "image-only ablation (near chance)"),
)


def quickstart_config() -> dict[str, Any]:
    """The shipped quickstart run config (model, optimiser, schedule), before data paths are filled in."""
    text = resources.files("polymodal").joinpath("configs/quickstart.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _existing_world(root: Path, cfg: WorldConfig) -> bool:
    """Reuse a world that was generated with the same settings (generation is seeded, so it is identical)."""
    manifest = root / "world.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text())["config"] == asdict(cfg)
    except (ValueError, KeyError):
        return False


def world_config(scenes: int, seed: int, test_images: int) -> WorldConfig:
    """A world whose test split has ``test_images`` images (the retrieval gallery) when it can."""
    test_fraction = min(0.3, max(0.05, test_images / scenes))
    return WorldConfig(num_scenes=scenes, seed=seed, val_fraction=0.02, test_fraction=test_fraction)


def build_run_config(world_dir: Path, run_dir: Path, steps: int | None, seed: int) -> dict[str, Any]:
    tree = quickstart_config()
    manifest = json.loads((world_dir / "world.json").read_text())
    train_sources = manifest["sources"]["train"]
    for src in train_sources:  # make the paths absolute: the run config lives in the run folder
        for key in ("annotations", "questions", "images", "path", "root"):
            if key in src:
                src[key] = str((world_dir / src[key]).resolve())
    tree["data"] = {"train": train_sources}
    tree["output_dir"] = str(run_dir)
    tree["seed"] = seed
    if steps is not None:
        tree["train"]["max_steps"] = steps
    return tree


def _check(value: float | None, threshold: float, direction: str) -> str:
    if value is None:
        return "not measured"
    ok = value >= threshold if direction == ">=" else value <= threshold
    return "met" if ok else "MISSED"


def target_table(metrics: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    rows = []
    for split, key, threshold, direction, label in TARGETS:
        value = metrics.get(split, {}).get(key)
        rows.append({"target": label, "metric": f"{split}:{key}", "value": value, "threshold": f"{direction} {threshold:g}", "status": _check(value, threshold, direction)})
    return rows


def run_quickstart(
    out: Path,
    scenes: int = 10000,
    seed: int = 0,
    steps: int | None = None,
    test_images: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate, train, evaluate, report. Returns the summary written to ``out/quickstart.json``."""
    from polymodal.config import RunConfig, validate
    from polymodal.evaluate import evaluate_checkpoint, format_metrics
    from polymodal.train.trainer import Trainer

    started = time.perf_counter()
    out = Path(out)
    world_dir, run_dir = out / "world", out / "run"
    wcfg = world_config(scenes, seed, test_images)
    print(f"[1/3] built-in world: {scenes} scenes, seed {seed}", flush=True)
    if _existing_world(world_dir, wcfg):
        print(f"      reusing {world_dir} (same settings)")
    else:
        print(generate_world(world_dir, wcfg, progress=progress).summary(), flush=True)
    world_seconds = time.perf_counter() - started

    tree = build_run_config(world_dir, run_dir, steps, seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quickstart.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    cfg = validate(RunConfig, tree, str(out / "quickstart.yaml"))
    print(f"[2/3] training one multi-task model (retrieval + captioning + VQA + classification) -> {run_dir}", flush=True)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, progress=progress, overwrite=True)  # a rerun of the quickstart starts its run afresh
    trainer.fit()
    train_seconds = time.perf_counter() - t0

    print("[3/3] evaluating on the test split and the held-out question templates; writing the report", flush=True)
    t0 = time.perf_counter()
    result = evaluate_checkpoint(run_dir, world_dir, splits=["test", "test_heldout"], out_dir=run_dir / "eval", batch_size=256, progress=progress)
    eval_seconds = time.perf_counter() - t0
    total = time.perf_counter() - started

    targets = target_table(result["metrics"])
    summary = {
        "seconds": {"world": round(world_seconds, 1), "train": round(train_seconds, 1), "eval": round(eval_seconds, 1), "total": round(total, 1)},
        "steps": trainer.state.global_step,
        "metrics": result["metrics"],
        "targets": targets,
        "run": str(run_dir),
        "report": result.get("report_html"),
    }
    (out / "quickstart.json").write_text(json.dumps(summary, indent=1))
    print()
    print(format_metrics(result["metrics"]))
    print()
    width = max(len(r["target"]) for r in targets)
    for r in targets:
        value = "-" if r["value"] is None else f"{r['value']:.3f}"
        print(f"  {r['target'].ljust(width)}  {value:>6}  (target {r['threshold']})  {r['status']}")
    print()
    print(f"Done in {total / 60:.1f} min (world {world_seconds:.0f}s, training {train_seconds:.0f}s, evaluation {eval_seconds:.0f}s).")
    print(f"  report:      {result.get('report_html')}")
    print(f"  model:       {run_dir}  (load it with polymodal.api.load_model('{run_dir}'))")
    image = next(iter(sorted((world_dir / "images" / "test").glob("*.png"))), None)
    print(f"  caption:     polymodal predict caption --checkpoint {run_dir} {image}")
    print(f"  ask:         polymodal predict answer --checkpoint {run_dir} --image {image} --question 'how many spheres are there?'")
    print(f"  verify:      polymodal predict classify --checkpoint {run_dir} --image {image} --text 'there is a red cube.'")
    print(f"  rank:        polymodal predict rank-images --checkpoint {run_dir} --text 'a red cube and a blue sphere' {world_dir / 'images' / 'test'}/*.png")
    print(f"  evaluate:    polymodal eval --checkpoint {run_dir} --data {world_dir}")
    print(f"  index:       polymodal index build --model {run_dir} --images {world_dir / 'images' / 'test'} --out {out / 'index'}")
    print(f"  search:      polymodal search {out / 'index'} 'a red cube left of a blue sphere' -k 5")
    print(f"  serve:       polymodal serve --model {run_dir} --index {out / 'index'}   (REST API + web page on http://127.0.0.1:8000/)")
    return summary
