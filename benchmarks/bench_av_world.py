"""Video QA on the built-in audio-visual world (#8), against the answer prior of each question text.

The audio-visual world's clips are drawn by the image world's renderer, so the quickstart's image
tower - whose grid cells learned objects from the image world's scene graphs - already sees every
frame's objects. This benchmark runs, with the shipped configs and the public CLI only:

0. ``polymodal quickstart`` (or reuses a finished one: ``--quickstart-out``): the frozen frame tower;
1. ``polymodal data av-world --clips 2000``;
2. ``polymodal train configs/av_world_vqa.yaml``: video QA, the pretrained frame tower frozen, every
   frame's grid tokens plus motion tokens (what changed since the previous frame) for the fusion to read.

A VQA model that does not look at the clip can at best answer each question text with its most
frequent training answer; that *question prior* is computed here from the same train and test
files, family by family, and printed beside the model's accuracy. The gap is what watching the clip
is worth. Writes JSON with the machine, date and commit.

    python benchmarks/bench_av_world.py --workdir /tmp/av_bench [--quickstart-out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

from cli_steps import prepare_workdir, run_polymodal
from provenance import ROOT, cpu_model, git_commit, write_result

from polymodal.metrics import answer_accuracy


def _questions(path: Path) -> list[dict]:
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return [r for r in rows if r.get("answers")]


def question_prior(world: Path) -> dict[str, float]:
    """Official VQA accuracy, per family and overall, of answering each test question text with its
    most frequent training answer (the overall most frequent answer for texts never seen in training)."""
    by_text: dict[str, Counter] = defaultdict(Counter)
    for row in _questions(world / "train.jsonl"):
        by_text[row["text"]].update(row["answers"][:1])
    overall = Counter()
    for counts in by_text.values():
        overall.update(counts)
    scores: dict[str, list[float]] = defaultdict(list)
    for row in _questions(world / "test.jsonl"):
        guess = (by_text.get(row["text"]) or overall).most_common(1)[0][0]
        scores[row["family"]].append(answer_accuracy(guess, row["answers"]))
    every = [s for family in scores.values() for s in family]
    return {"accuracy": sum(every) / len(every)} | {f: sum(v) / len(v) for f, v in sorted(scores.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/av_bench"))
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--quickstart-out", type=Path, default=None, help="reuse a finished 'polymodal quickstart --out' folder instead of running it")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra --set KEY=VALUE for the training run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "av_world.json")
    args = ap.parse_args()

    work, seconds = prepare_workdir(args.workdir, ["av_world_vqa.yaml"], args.quickstart_out)
    seconds["av_world"] = run_polymodal(["data", "av-world", "--out", "av_world", "--clips", str(args.clips)], work, work / "av_world.log")
    extra = [a for kv in args.overrides for a in ("--set", kv)]
    seconds["train_vqa"] = run_polymodal(["train", "configs/av_world_vqa.yaml", *extra], work, work / "vqa.log")

    metrics = json.loads((work / "runs" / "av_world_vqa" / "metrics.json").read_text())
    model = {"accuracy": metrics["test"]["accuracy"]} | metrics.get("test_details", {}).get("by_family", {})
    prior = question_prior(work / "av_world")
    print(f"{'test split':<14} {'video QA':>9} {'question prior':>15}")
    for key in prior:
        print(f"{key:<14} {model.get(key, float('nan')):>9.3f} {prior[key]:>15.3f}")
    print("seconds:", {k: round(v) for k, v in seconds.items()})
    write_result(args.out, {
        "benchmark": "av_world", "date": datetime.date.today().isoformat(), "commit": git_commit(), "cpu": cpu_model(),
        "cores": os.cpu_count(), "clips": args.clips, "overrides": args.overrides, "steps": metrics.get("steps"),
        "video_qa": model, "question_prior": prior, "seconds": seconds,
    })


if __name__ == "__main__":
    main()
