"""The offline assistant demonstration (#10): the two-stage LLaVA recipe on the built-in world, against a blind twin.

Runs, with the shipped configs and the public CLI only (so it is exactly what a user would type):

0. ``polymodal quickstart``: its trained image tower is the pretrained (frozen) vision tower, as CLIP is LLaVA's;
1. ``polymodal data world --seed 1`` (2,000 scenes the tower never saw, conversations included);
2. ``polymodal mllm init-lm``: a tiny Llama trained from scratch on the world's train text;
3. stage 1 (``configs/mllm_world_stage1.yaml``): the connector alone on captions, tower and LM frozen;
4. stage 2 (``configs/mllm_world_stage2.yaml``): instruction tuning, LM unfrozen;
5. the same stage 2 with ``train.blind=true``: every image and marker removed - the text-only assistant.

Both stage-2 runs are evaluated on the same test questions and captions from generated text; the gap
between them is what looking at the image is worth. Prints a table and writes JSON with the machine,
date and commit.

    python benchmarks/bench_mllm_world.py --workdir /tmp/mllm_bench
    python benchmarks/bench_mllm_world.py --quickstart-out quickstart_out --scenes 200 --lm-steps 20 --max-steps 5   # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

from cli_steps import prepare_workdir, run_polymodal
from provenance import ROOT, cpu_model, git_commit, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mllm_bench"))
    ap.add_argument("--scenes", type=int, default=2000)
    ap.add_argument("--lm-steps", type=int, default=400)
    ap.add_argument("--max-steps", type=int, default=None, help="cap each training stage at this many steps (a smoke run; default: the configs' 600 and 900)")
    ap.add_argument("--quickstart-out", type=Path, default=None, help="reuse a finished 'polymodal quickstart --out' folder instead of running it")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mllm_world.json")
    args = ap.parse_args()

    cap = ["--set", f"train.max_steps={args.max_steps}"] if args.max_steps else []
    work, seconds = prepare_workdir(args.workdir, ["mllm_world_stage1.yaml", "mllm_world_stage2.yaml"], args.quickstart_out)
    seconds |= {
        "world": run_polymodal(["data", "world", "--out", "world", "--scenes", str(args.scenes), "--seed", "1"], work, work / "world.log"),
        "init_lm": run_polymodal(["mllm", "init-lm", "--world", "world", "--out", "runs/world_lm", "--steps", str(args.lm_steps), "--context", "256"], work, work / "lm.log"),
        "stage1": run_polymodal(["train", "configs/mllm_world_stage1.yaml", *cap], work, work / "stage1.log"),
        "stage2": run_polymodal(["train", "configs/mllm_world_stage2.yaml", *cap], work, work / "stage2.log"),
        "stage2_blind": run_polymodal(["train", "configs/mllm_world_stage2.yaml", *cap, "--set", "train.blind=true", "--set", "output_dir=runs/mllm_world_stage2_blind"],
                             work, work / "stage2_blind.log"),
    }
    metrics = {name: json.loads((work / "runs" / run / "metrics.json").read_text()) for name, run in
               (("stage1", "mllm_world_stage1"), ("assistant", "mllm_world_stage2"), ("blind", "mllm_world_stage2_blind"))}
    rows = []
    for key in ("vqa_accuracy", "caption_CIDEr", "caption_Bleu_4"):
        a, b = metrics["assistant"]["test"].get(key), metrics["blind"]["test"].get(key)
        rows.append({"metric": key, "assistant": a, "text_only": b})
    families = {
        "assistant": metrics["assistant"].get("test_details", {}).get("vqa", {}).get("by_family", {}),
        "text_only": metrics["blind"].get("test_details", {}).get("vqa", {}).get("by_family", {}),
    }
    print(f"{'metric':<16} {'assistant':>10} {'text-only':>10}")
    for r in rows:
        print(f"{r['metric']:<16} {r['assistant'] or 0:>10.3f} {r['text_only'] or 0:>10.3f}")
    for fam in families["assistant"]:
        print(f"  vqa {fam:<12} {families['assistant'][fam]:>10.3f} {families['text_only'].get(fam, 0):>10.3f}")
    print("seconds:", {k: round(v) for k, v in seconds.items()})
    write_result(args.out, {
        "benchmark": "mllm_world", "date": datetime.date.today().isoformat(), "commit": git_commit(), "cpu": cpu_model(),
        "cores": os.cpu_count(), "scenes": args.scenes, "lm_steps": args.lm_steps, "max_steps": args.max_steps, "rows": rows, "by_family": families,
        "seconds": seconds, "stage1_val": metrics["stage1"].get("history", [{}])[-1].get("val"),
    })


if __name__ == "__main__":
    main()
