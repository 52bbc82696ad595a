"""Evaluate a checkpoint on every split of a data spec: ``eval.json``, ``report.html`` and ``report.md``.

    from polymodal.evaluate import evaluate_checkpoint, format_metrics

    result = evaluate_checkpoint("runs/world_vqa", "world/", splits=["test", "test_heldout"])
    print(format_metrics(result["metrics"]))

The data spec is anything ``polymodal data check`` reads (a run config, a data-source YAML, a world
folder). Each split keeps the samples the checkpoint's task uses (a world split mixes captions,
questions and statements) and is evaluated by that task, in batches: sample records are read up front,
images are decoded batch by batch in the data loader and never held all at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from polymodal.atomic import write_text
from polymodal.data.sample import Sample
from polymodal.data.selection import select_samples
from polymodal.data.world.overlap import TrainingWorld
from polymodal.errors import ConfigError, DataError
from polymodal.metrics.meteor import meteor_session

log = logging.getLogger(__name__)

__all__ = ["EVAL_FILE", "default_out_dir", "evaluate_checkpoint", "format_metrics", "read_splits", "run_dir_of"]

EVAL_FILE = "eval.json"
PARTIAL_EVAL_FILE = "eval.partial.json"  # the splits finished before one failed
_INDEXED = re.compile(r"^(?P<split>.+)\[\d+\]$")
_MAX_LIST = 1000  # longer lists in the details are summarised in eval.json, not written out


def read_splits(data_spec: str | os.PathLike[str]) -> dict[str, list[Any]]:
    """``{split: [source, ...]}`` from a spec, in the spec's order (``test[0]``, ``test[1]`` -> ``test``)."""
    from polymodal.data.check import load_spec

    groups: dict[str, list[Any]] = {}
    for name, source in load_spec(data_spec):
        m = _INDEXED.match(name)
        groups.setdefault(m["split"] if m else name, []).append(source)
    return groups


def _pick_splits(groups: Mapping[str, list[Any]], splits: Sequence[str] | None, spec: Any) -> list[str]:
    if splits:
        unknown = [s for s in splits if s not in groups]
        if unknown:
            raise ConfigError(
                f"{spec}: no split named {', '.join(map(repr, unknown))}; the spec has {', '.join(groups)}"
            )
        return list(dict.fromkeys(splits))
    chosen = [s for s in groups if s != "train"]
    return chosen or list(groups)


def run_dir_of(checkpoint_dir: Path) -> Path | None:
    """The run folder of ``RUN/checkpoints/step_X``, or None for a checkpoint living elsewhere."""
    parent = checkpoint_dir.parent
    return parent.parent if parent.name == "checkpoints" else None


def default_out_dir(checkpoint_dir: Path) -> Path:
    run = run_dir_of(checkpoint_dir)
    return (run if run is not None else checkpoint_dir) / "eval"


def _hf_name(name_or_path: str | Path) -> str:
    """A folder name for a Hugging Face checkpoint's evaluation: the zoo name, or the folder's own."""
    path = Path(name_or_path)
    return path.name if path.exists() else str(name_or_path).replace("/", "--")


def _compact(obj: Any) -> Any:
    """JSON-ready details: tensors to lists, huge lists summarised, non-finite floats to None."""
    if isinstance(obj, torch.Tensor):
        obj = obj.tolist() if obj.numel() <= _MAX_LIST else {"omitted": f"tensor of shape {list(obj.shape)}"}
    if isinstance(obj, Mapping):
        return {str(k): _compact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if len(obj) > _MAX_LIST:
            return {"omitted": f"list of {len(obj)} items"}
        return [_compact(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy scalars
        return _compact(obj.item())
    return str(obj)


def format_metrics(metrics: Mapping[str, Mapping[str, float]], counts: Mapping[str, int] | None = None) -> str:
    """A text table: one row per metric, one column per split."""
    from polymodal.report import format_value

    splits = list(metrics)
    if not splits:
        return "(no metrics)"
    names: list[str] = list(dict.fromkeys(k for m in metrics.values() for k in m))
    rows = [["metric", *splits]]
    if counts:
        rows.append(["samples", *(str(counts.get(s, "")) for s in splits)])
    rows += [[n, *(format_value(metrics[s].get(n)) for s in splits)] for n in names]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    data_spec: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    splits: Sequence[str] | None = None,
    max_samples: int | None = None,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 64,
    num_workers: int = 0,
    report: bool = True,
    progress: bool = False,
    robustness: bool = False,
    robustness_levels: Sequence[float] | str | None = None,
    robustness_seed: int = 0,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the splits of ``data_spec`` and write ``eval.json`` and the report.

    ``splits`` defaults to every split of the spec except ``train`` (for a world folder: val, test and
    test_heldout); ``max_samples`` caps the samples per split. ``out_dir`` defaults to ``<run>/eval/``.
    Returns what ``eval.json`` holds (``metrics`` per split, ``splits`` with details) plus the paths written.

    ``robustness=True`` then re-evaluates each split with every corruption of :mod:`polymodal.robustness`
    at ``robustness_levels`` (default 0, .2, .4, .6, .8, 1) and stores the curves under ``"robustness"``
    (per split); the report plots them.
    """
    from polymodal.api import model_from_checkpoint, resolve_device
    from polymodal.hub.loading import is_hf_checkpoint, load_pretrained
    from polymodal.hub.zoo import locate
    from polymodal.train.checkpoint import load_checkpoint
    from polymodal.train.data import make_loader

    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be at least 1, got {max_samples}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if robustness:
        from polymodal.robustness import parse_levels

        levels = parse_levels(robustness_levels)  # a bad --robustness-levels fails before any work
    dev = resolve_device(device)
    folder = locate(checkpoint)  # a polymodal run or checkpoint, a Hugging Face folder, a zoo name
    ckpt = None if is_hf_checkpoint(folder) else load_checkpoint(folder)
    groups = read_splits(data_spec)  # read the spec before the weights: a typo fails fast
    chosen = _pick_splits(groups, splits, data_spec)
    if ckpt is None:
        model, proc = load_pretrained(folder)
        model = model.to(dev)
    else:
        model, proc = model_from_checkpoint(ckpt, dev)
    task = proc.build_task()
    source = ckpt.path if ckpt is not None else folder
    # a Hugging Face folder may be a read-only hub cache: its evaluation goes under ./eval/<name>
    out = Path(out_dir) if out_dir is not None else default_out_dir(source) if ckpt is not None else Path("eval").resolve() / _hf_name(checkpoint)
    try:  # now, not after every split has been evaluated
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write the evaluation to {out} (the --out folder): {e.strerror or e}") from None

    dropped: Counter[str] = Counter()  # per split: samples skipped (unreadable) and inputs zero-filled (missing)

    def counted(batches: Any) -> Any:
        for b in batches:
            dropped["skipped"] += b["num_skipped"]
            dropped.update({f"filled/{k}": v for k, v in (b.get("num_missing") or {}).items()})
            yield b

    def plain_loader(samples: Sequence[Sample], with_images: bool = True) -> Any:
        """Batches as the checkpoint's processors make them (no bar, no counting)."""
        return make_loader(
            samples, proc.image if with_images else None, proc.tokenizer, proc.max_length, batch_size, num_workers,  # type: ignore[arg-type]
            media=proc.media if with_images else None, missing_image=proc.missing_image if with_images else None,
        )

    def loader(samples: Sequence[Sample], with_images: bool = True) -> Any:
        batches = plain_loader(samples, with_images)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"eval {split}", unit="batch", dynamic_ncols=True, leave=False)  # the split being evaluated
        return counted(batches)

    results: dict[str, dict[str, Any]] = {}
    samples_of: dict[str, list[Sample]] = {}
    training_world = TrainingWorld.of_run(run_dir_of(source)) if ckpt is not None else None  # same-seed worlds share items
    skipped: dict[str, str] = {}

    def _summary() -> dict[str, Any]:
        return {
            "checkpoint": str(source),
            "model_type": proc.model_type,
            "task": task.name,
            "global_step": ckpt.global_step if ckpt is not None else None,
            "data": str(data_spec),
            "device": str(dev),
            "max_samples": max_samples,
            "metrics": {s: r["metrics"] for s, r in results.items()},
            "splits": results,
            "skipped_splits": skipped,
        }

    def _keep_finished_splits(failed: str, error: Exception) -> None:
        """A split that fails must not throw away the ones evaluated before it (hours, for COCO captioning).
        They go beside eval.json, which may hold an earlier complete evaluation that its report matches."""
        if not results:
            return
        partial = out / PARTIAL_EVAL_FILE
        _write_json(partial, _summary() | {"failed_split": {failed: str(error)}})
        log.error("%s failed; the splits evaluated before it (%s) are in %s", failed, ", ".join(results), partial)

    def _evaluate_split(split: str) -> None:
        samples, problems = select_samples(groups[split], task, split, max_samples)
        if not samples:
            skipped[split] = f"no samples for the {task.name} task"
            log.debug("%s: no %s samples, skipped", split, task.name)  # said once, in the summary
            return
        task.check_eval_targets(samples, split)
        log.info("%s: evaluating %d %s samples", split, len(samples), task.name)
        seen = training_world.seen_in(samples) if training_world is not None else None
        if seen is not None and seen.shared:
            log.warning("%s", seen.message(split))
        started = time.perf_counter()
        dropped.clear()
        with torch.no_grad():
            result = task.evaluate(model, samples, loader, dev)
        losses = {k: v for k, v in dropped.items() if v}
        if losses:
            log.warning("%s: %s (unreadable inputs skipped / missing modalities filled; see the warnings above)", split, losses)
        results[split] = {
            "samples": len(samples),
            "problem_records": problems,
            "dropped": losses,
            "seconds": round(time.perf_counter() - started, 3),
            "metrics": {k: float(v) for k, v in result.metrics.items()},
            "details": _compact(result.details),
        }
        if seen is not None and seen.shared:
            results[split]["seen_in_training"] = seen.to_dict()
        samples_of[split] = samples

    # caption metrics: METEOR's jar (about 5 s to start) starts now, while the model works, and serves every split
    with meteor_session() if task.scores_captions else contextlib.nullcontext():
        for split in chosen:
            try:
                _evaluate_split(split)
            except Exception as e:
                _keep_finished_splits(split, e)
                raise

    if not results:
        raise DataError(
            f"{data_spec}: none of the splits {', '.join(chosen)} has samples for the {task.name} task of "
            f"{source} ({proc.model_type} model); check that the data holds "
            f"{'captions' if task.name in ('retrieval', 'captioning') else 'questions with answers' if task.name == 'vqa' else 'labelled rows'}"
        )

    curves: dict[str, Any] = {}
    if robustness:
        from polymodal.data.processors import CLIP_MEAN, CLIP_STD
        from polymodal.robustness import robustness_curves

        image_config = getattr(proc.image, "config", None)
        for split, split_samples in samples_of.items():
            log.info("%s: robustness curves at levels %s", split, ", ".join(f"{v:g}" for v in levels))
            curves[split] = robustness_curves(
                task, model, split_samples, plain_loader, dev, levels=levels, seed=robustness_seed,  # one bar over the points
                tokenizer=proc.tokenizer, max_length=proc.max_length, progress=progress,
                image_mean=getattr(image_config, "mean", CLIP_MEAN), image_std=getattr(image_config, "std", CLIP_STD),
            )
    summary: dict[str, Any] = _summary()
    if robustness:
        summary["robustness"] = _compact(curves)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / EVAL_FILE, summary)
    paths: dict[str, str] = {"out_dir": str(out), "eval_json": str(out / EVAL_FILE)}
    if report:
        from polymodal.report import write_report

        html, md = write_report(_report_data(summary, samples_of, source), out)
        paths |= {"report_html": str(html), "report_md": str(md)}
    return summary | paths


# ------------------------------------------------------------------------------------------ report


def _report_data(summary: dict[str, Any], samples_of: dict[str, list[Sample]], ckpt_path: Path) -> Any:
    from polymodal.report import (
        CaptionExample,
        ClassificationResult,
        ReportData,
        RetrievalExample,
        VQAExample,
    )

    splits: dict[str, dict[str, Any]] = summary["splits"]
    task = summary["task"]
    primary = "test" if "test" in splits else next(iter(splits))
    run = run_dir_of(ckpt_path)
    log_csv = run / "log.csv" if run is not None else None
    name = run.name if run is not None else ckpt_path.name
    notes: list[str] = []
    data = ReportData(
        title=f"{name}: {summary['model_type']} evaluated on {Path(summary['data']).name}",
        run_info={
            "checkpoint": summary["checkpoint"],
            "model type": str(summary["model_type"]),
            "task": task,
            "step": str(summary["global_step"]),
            "data": summary["data"],
            "splits": ", ".join(f"{s} ({r['samples']} samples)" for s, r in splits.items()),
            "device": summary["device"],
        },
        metrics={s: r["metrics"] for s, r in splits.items()},
        training_curves=str(log_csv) if log_csv is not None and log_csv.is_file() else None,
        notes=notes,
    )
    if summary["max_samples"]:
        notes.append(f"At most {summary['max_samples']} samples per split were evaluated.")
    for s, why in summary["skipped_splits"].items():
        notes.append(f"Split '{s}' was not evaluated: {why}.")
    for s, r in splits.items():
        seen = r.get("seen_in_training")
        if seen:
            notes.append(
                f"Split '{s}': {seen['shared']} of its {seen['of']} items were training items of this checkpoint (the same "
                f"seed-{seen['seed']} built-in world stream as {seen['train_world']}), so its scores are inflated."
            )
    if summary.get("robustness"):
        data.robustness = summary["robustness"]
        first = next(iter(summary["robustness"].values()))
        for what, why in (first.get("skipped") or {}).items():
            notes.append(f"Robustness: {what} is not corrupted: {why}.")
    # a multi-task evaluation nests each task's details under its name; a single task's are at the top
    def section(split: str, name: str) -> dict[str, Any]:
        details = splits[split]["details"]
        return (details.get(name) or {}) if task in ("multitask", "mllm") else (details if task == name else {})

    def metrics_of(split: str, name: str) -> dict[str, float]:
        m = splits[split]["metrics"]
        if task != "multitask":
            return m if task == name else {}
        return {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith(name + "/")}

    families = {s: section(s, "vqa")["by_family"] for s in splits if section(s, "vqa").get("by_family")}
    if families:
        data.vqa_by_family = families
        data.vqa_examples = []
        for s in splits:
            questions = {x.text: x for x in samples_of[s] if x.answers}
            for ex in section(s, "vqa").get("examples") or []:
                sample = questions.get(ex.get("question"))
                fam = sample.meta.get("family") if sample is not None else None
                label = f"{fam} ({s})" if fam and len(splits) > 1 else (fam or (s if len(splits) > 1 else None))
                data.vqa_examples.append(
                    VQAExample(ex["image"], ex["question"], ex["predicted"], list(ex.get("answers") or []), bool(ex.get("correct")), label)
                )
    retrieval = section(primary, "retrieval").get("examples") or []
    if retrieval:
        data.retrieval_examples = [
            RetrievalExample(ex["query"], [tuple(t) for t in ex.get("top") or []], gold_image=ex.get("gold")) for ex in retrieval
        ]
        notes.append(f"Retrieval examples are text-to-image queries from the '{primary}' split.")
    captions = section(primary, "captioning").get("examples") or []
    if captions:
        data.caption_examples = [CaptionExample(ex["image"], ex["caption"], list(ex.get("references") or [])) for ex in captions]
        notes.append(f"Caption examples are from the '{primary}' split.")
    cls = section(primary, "classification")
    classes, confusion = cls.get("classes"), cls.get("confusion")
    if classes and isinstance(confusion, list):
        m = metrics_of(primary, "classification")
        views = {"joint (image + text)": m.get("accuracy"), "text only": m.get("text_only_accuracy"), "image only": m.get("image_only_accuracy")}
        accuracies = {k: v for k, v in views.items() if v is not None}
        if task != "multitask" and "accuracy" in m:
            accuracies = {"model": m["accuracy"]}
        data.classification = ClassificationResult(classes, confusion, accuracies)
        notes.append(f"The confusion matrix is from the '{primary}' split.")
    return data
