"""What contrastive accumulation costs and saves: one big batch against K micro-batches, on this machine.

    python benchmarks/bench_accumulation.py [--model dual_encoder-small] [--batch 256] [--splits 2,4,8]
    python benchmarks/bench_accumulation.py --quick        # tiny model, batch 16: checks that it runs

A contrastive batch of B pairs gives every pair B - 1 negatives, and the encoders' activations grow
with B. Three ways to take one optimizer step over B pairs, each timed in a fresh process (so its
peak memory is its own):

* ``full batch``: one forward and backward over all B (the reference: most memory);
* ``cached, K``: ``train.accumulation: K`` as the trainer runs it for a dual encoder
  (``RetrievalTask.accumulated_loss``: gradient caching). The same loss and gradients as the full
  batch (the script checks the loss), one micro-batch of activations at a time, one extra
  no-grad forward;
* ``summed, K``: ``train.contrastive_accumulation: micro_batch``, the plain accumulation most
  trainers do: K separate losses of B / K pairs, so each row sees only B / K - 1 negatives.

Each row reports seconds per optimizer step (median of ``--steps`` after ``--warmup``), the
peak resident memory the steps added on top of the model and its optimizer state (``ru_maxrss``
minus the resident size before the first step), and the negatives each row was scored against.
Inputs are synthetic, made before timing: B random images and B captions with lengths drawn per row.
Writes benchmarks/results/accumulation.json with the machine, the date and the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from provenance import ROOT, cpu_model, git_commit, write_result

RESULT = ROOT / "benchmarks" / "results" / "accumulation.json"


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def measure(model_name: str, batch: int, mode: str, splits: int, steps: int, warmup: int, threads: int) -> dict:
    """One configuration, in this process: timings and the memory its steps added."""
    import torch

    from polymodal.data.sample import Sample
    from polymodal.models.factory import BuildContext, build_model, load_model_config
    from polymodal.tasks.retrieval import RetrievalTask
    from polymodal.train.contrastive_accum import split_micro_batches
    from polymodal.train.schedule import build_adamw

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = load_model_config(model_name)
    model = build_model(config, BuildContext(vocab_size=1000)).train()
    optimizer = build_adamw(model, lr=1e-4, weight_decay=0.05, betas=(0.9, 0.98), eps=1e-6)
    task = RetrievalTask(tokenizer=None, max_length=config.text.max_length)
    g = torch.Generator().manual_seed(1)
    size, length = config.vision.image_size, config.text.max_length

    def make_batch() -> dict:
        lengths = torch.randint(length // 3, length + 1, (batch,), generator=g)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        return {
            "image": torch.randn(batch, 3, size, size, generator=g),
            "text_ids": torch.randint(1, 1000, (batch, length), generator=g) * mask,
            "text_mask": mask,
            "samples": [Sample(sample_id=str(i)) for i in range(batch)],
        }

    batches = [make_batch() for _ in range(warmup + steps)]
    for p in model.parameters():  # AdamW makes its state at the first step: make it now, so "before" holds it
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    before = _rss_kib()
    times, losses = [], []
    for i, b in enumerate(batches):
        start = time.perf_counter()
        if mode == "full":
            loss = task.loss(model, b).loss
            loss.backward()
        elif mode == "cached":
            loss = task.accumulated_loss(model, model, split_micro_batches(b, splits)).loss
        else:
            total = 0.0
            for piece in split_micro_batches(b, splits):
                part = task.loss(model, piece).loss / splits
                part.backward()
                total += float(part)
            loss = torch.tensor(total)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        losses.append(float(loss))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    negatives = batch - 1 if mode != "summed" else batch // splits - 1
    return {
        "mode": mode, "splits": splits, "batch": batch, "seconds_per_step": statistics.median(times), "best_seconds": min(times),
        "added_peak_mib": max(0, peak - before) / 1024, "negatives_per_row": negatives, "first_loss": losses[0],
    }


def _run_one(args: argparse.Namespace, mode: str, splits: int) -> dict:
    """``measure`` in a fresh interpreter, so the peak memory is this configuration's alone."""
    cmd = [sys.executable, __file__, "--one", f"{mode}:{splits}", "--model", args.model, "--batch", str(args.batch),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} with {splits} splits failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _label(row: dict) -> str:
    return "full batch" if row["mode"] == "full" else f"{row['mode']}, {row['splits']} x {row['batch'] // row['splits']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dual_encoder-small", help="a shipped model config (polymodal bench model lists them)")
    parser.add_argument("--batch", type=int, default=256, help="contrastive batch per optimizer step")
    parser.add_argument("--splits", default="2,4,8", help="micro-batches per step to try")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny model, batch 16, 2 steps")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # mode:splits, run in this process (used by the parent)
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.batch, args.splits, args.steps, args.warmup = "dual_encoder-tiny", 16, "2", 2, 1
    if args.one:
        mode, splits = args.one.split(":")
        print(json.dumps(measure(args.model, args.batch, mode, int(splits), args.steps, args.warmup, args.threads)))
        return 0

    splits = [int(k) for k in args.splits.split(",")]
    rows = [_run_one(args, "full", 1)]
    for k in splits:
        rows += [_run_one(args, "cached", k), _run_one(args, "summed", k)]
    full = rows[0]
    for row in rows:
        row["time_vs_full"] = row["seconds_per_step"] / full["seconds_per_step"]
        row["memory_vs_full"] = row["added_peak_mib"] / max(full["added_peak_mib"], 1e-9)
    mismatched = [r for r in rows if r["mode"] == "cached" and abs(r["first_loss"] - full["first_loss"]) > 1e-4 * abs(full["first_loss"])]
    if mismatched:
        raise RuntimeError(f"cached accumulation's first loss differs from the full batch's: {[(r['splits'], r['first_loss']) for r in mismatched]} vs {full['first_loss']}")

    print(f"{args.model}, {args.batch} pairs per optimizer step, {args.threads} threads ({cpu_model()})")
    print(f"{'how':<24}{'s/step':>9}{'vs full':>9}{'added peak MiB':>16}{'vs full':>9}{'negatives/row':>15}")
    for r in rows:
        print(f"{_label(r):<24}{r['seconds_per_step']:>9.3f}{r['time_vs_full']:>8.2f}x{r['added_peak_mib']:>16.0f}{r['memory_vs_full']:>8.2f}x{r['negatives_per_row']:>15}")
    write_result(args.out, {
        "benchmark": "accumulation", "date": date.today().isoformat(), "commit": git_commit(), "cpu": cpu_model(),
        "model": args.model, "batch": args.batch, "threads": args.threads, "steps": args.steps, "rows": rows,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
