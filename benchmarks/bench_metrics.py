"""Benchmark: polymodal's BLEU + CIDEr-D against pycocoevalcap's, on a COCO-sized corpus.

Run ``python benchmarks/bench_metrics.py`` (``--images``, ``--refs``, ``--repeats`` to change the
size). It builds a seeded synthetic corpus of caption-like sentences (5,000 images x 5 references
by default, like the COCO Karpathy test split), then times:

* **scoring only**: both libraries score the *same* tokenised captions (pycocoevalcap's
  PTBTokenizer output), ``Bleu(4)`` + ``Cider()`` vs polymodal's BLEU + CIDEr-D sharing one n-gram
  table;
* **end to end**: raw captions in. pycocoevalcap = its Java PTBTokenizer (references and candidates,
  two JVM runs, as ``COCOEvalCap`` does) + the two scorers; polymodal = ``caption_scores`` with the
  pure-Python tokenizer (its token cache emptied before every run), and with the Java tokenizer.

Every timing is the best of ``--repeats`` runs (the machine is shared, the minimum is the least
noisy estimate); medians are recorded too. The script checks that the scores agree to 1e-6 and
writes ``benchmarks/results/metrics.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from provenance import cpu_model, write_result

SUBJECTS = [
    "a man", "a woman", "two dogs", "a cat", "a group of people", "a young boy", "an old lady", "a giraffe",
    "a black and white dog", "three zebras", "a red double decker bus", "a plate of food", "a little girl",
    "a skateboarder", "a large pizza", "a herd of sheep", "some people", "a tennis player", "a brown horse",
    "a baseball player", "a kitchen", "a small bathroom", "a living room", "a train", "an airplane", "a bird",
]
VERBS = [
    "is sitting on", "standing next to", "riding", "holding", "eating", "looking at", "walking down", "laying on",
    "playing with", "flying over", "parked near", "sits in front of", "is shown with", "is covered in",
    "stands beside", "is filled with", "jumping over", "throwing", "catching", "waiting at",
]
OBJECTS = [
    "a bench", "the street", "a wooden table", "a wave", "a surfboard", "a grassy field", "a large clock",
    "the beach", "a snowy hill", "a frisbee", "a cell phone", "an umbrella", "a desk", "a white plate",
    "a city street", "the ocean", "a baseball bat", "some trees", "a red fire hydrant", "a brick wall",
    "a kite", "the water", "a sandwich", "a computer", "a toilet", "a bed", "the tracks", "a runway",
]
TAILS = [
    "", "", "", " in the park", " on a sunny day", " at night", " near the water", " with a smile",
    " while others watch", " in a room", " outside", " next to a building", " during the day", " on the side",
]
ODD = [" (with a hat)", " [left]", ' "big"', " -- really", "...", " etc.", " at 5 p.m.", " with 1/2 cup", " café"]


def _sentence(rng: random.Random) -> str:
    s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}"
    if rng.random() < 0.05:
        s += rng.choice(ODD)
    if rng.random() < 0.7:
        s = s[0].upper() + s[1:]
    if rng.random() < 0.6:
        s += "."
    if rng.random() < 0.05:
        s = s.replace(" a ", " a, ", 1)
    return s


def make_corpus(num_images: int, refs_per_image: int, seed: int = 0) -> tuple[dict, dict]:
    rng = random.Random(seed)
    refs = {i: [_sentence(rng) for _ in range(refs_per_image)] for i in range(num_images)}
    cands = {i: _sentence(rng) for i in range(num_images)}
    return refs, cands


def _best(fn, repeats: int) -> tuple[float, float, object]:
    times = []
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--refs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "metrics.json")
    args = ap.parse_args()

    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError:
        print("pycocoevalcap is needed for the comparison: pip install -e '.[eval]'", file=sys.stderr)
        return 2
    from polymodal.metrics import _ptb_lexer
    from polymodal.metrics._corpus import TokenisedCorpus
    from polymodal.metrics.bleu import bleu_from_corpus
    from polymodal.metrics.caption import caption_scores
    from polymodal.metrics.cider import cider_from_corpus

    refs, cands = make_corpus(args.images, args.refs, args.seed)
    print(f"corpus: {args.images} images x {args.refs} references, seed {args.seed}; best of {args.repeats} runs")

    def coco_tokenize():
        tk = PTBTokenizer()
        gts = tk.tokenize({i: [{"caption": c} for c in rs] for i, rs in refs.items()})
        res = tk.tokenize({i: [{"caption": cands[i]}] for i in refs})
        return gts, res

    def quiet(fn):
        def run():
            with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints progress
                return fn()
        return run

    gts, res = quiet(coco_tokenize)()

    def coco_score(g=None, r=None):
        g = gts if g is None else g
        r = res if r is None else r
        b, _ = Bleu(4).compute_score(g, r, verbose=0)
        c, _ = Cider().compute_score(g, r)
        return list(b) + [float(c)]

    def ours_score():
        corpus = TokenisedCorpus.from_dicts(gts, res)
        b, _ = bleu_from_corpus(corpus)
        c, _ = cider_from_corpus(corpus)
        return list(b) + [c]

    def coco_end_to_end():
        g, r = coco_tokenize()
        return coco_score(g, r)

    def ours_end_to_end(tokenizer):
        def run():
            _ptb_lexer._chunk_cache.clear()  # no warm token cache carried between runs
            s = caption_scores(refs, cands, ["bleu", "cider"], tokenizer=tokenizer)
            return [s["Bleu_1"], s["Bleu_2"], s["Bleu_3"], s["Bleu_4"], s["CIDEr"]]
        return run

    def ours_tokenize_only():
        _ptb_lexer._chunk_cache.clear()
        from polymodal.metrics.caption import tokenize_corpus
        return tokenize_corpus(refs, cands)

    timings = {}
    timings["pycocoevalcap_scoring"] = _best(quiet(coco_score), args.repeats)
    timings["polymodal_scoring"] = _best(ours_score, args.repeats)
    timings["pycocoevalcap_tokenize_java"] = _best(quiet(coco_tokenize), args.repeats)
    timings["polymodal_tokenize_python"] = _best(ours_tokenize_only, args.repeats)
    timings["pycocoevalcap_end_to_end"] = _best(quiet(coco_end_to_end), args.repeats)
    timings["polymodal_end_to_end_python_tok"] = _best(ours_end_to_end("ptb"), args.repeats)
    timings["polymodal_end_to_end_java_tok"] = _best(ours_end_to_end("java"), args.repeats)

    names = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"]
    reference = timings["pycocoevalcap_scoring"][2]
    max_diff = 0.0
    for key in ("polymodal_scoring", "pycocoevalcap_end_to_end", "polymodal_end_to_end_python_tok", "polymodal_end_to_end_java_tok"):
        diff = float(np.max(np.abs(np.array(timings[key][2]) - np.array(reference))))
        max_diff = max(max_diff, diff)
        if diff > 1e-6:
            print(f"MISMATCH {key}: {timings[key][2]} vs {reference}", file=sys.stderr)
            return 1
    ours_tok, _ = timings["polymodal_tokenize_python"][2]  # type: ignore[misc]
    tok_equal = ours_tok == {i: gts[i] for i in refs}

    def row(label, key):
        best, med, _ = timings[key]
        return label, best, med

    rows = [
        row("pycocoevalcap Bleu(4)+Cider, scoring only", "pycocoevalcap_scoring"),
        row("polymodal BLEU+CIDEr-D, scoring only", "polymodal_scoring"),
        row("pycocoevalcap PTBTokenizer (Java, 2 runs)", "pycocoevalcap_tokenize_java"),
        row("polymodal PTB tokenizer (pure Python)", "polymodal_tokenize_python"),
        row("pycocoevalcap end to end", "pycocoevalcap_end_to_end"),
        row("polymodal end to end (Python tokenizer)", "polymodal_end_to_end_python_tok"),
        row("polymodal end to end (Java tokenizer)", "polymodal_end_to_end_java_tok"),
    ]
    speed_scoring = timings["pycocoevalcap_scoring"][0] / timings["polymodal_scoring"][0]
    speed_e2e = timings["pycocoevalcap_end_to_end"][0] / timings["polymodal_end_to_end_python_tok"][0]
    speed_e2e_java = timings["pycocoevalcap_end_to_end"][0] / timings["polymodal_end_to_end_java_tok"][0]
    speed_tok = timings["pycocoevalcap_tokenize_java"][0] / timings["polymodal_tokenize_python"][0]

    w = max(len(r[0]) for r in rows)
    print(f"\n{'':<{w}}  {'best s':>8}  {'median s':>8}")
    for label, best, med in rows:
        print(f"{label:<{w}}  {best:8.3f}  {med:8.3f}")
    print(f"\nspeed-up, scoring only:                 {speed_scoring:6.1f}x")
    print(f"speed-up, tokenizer:                    {speed_tok:6.1f}x")
    print(f"speed-up, end to end (Python tokenizer): {speed_e2e:5.1f}x")
    print(f"speed-up, end to end (Java tokenizer):   {speed_e2e_java:5.1f}x")
    print(f"largest score difference: {max_diff:.2e}; tokenisation identical to pycocoevalcap's: {tok_equal}")
    print("scores:", dict(zip(names, reference)))

    result = {
        "benchmark": "BLEU-1..4 + CIDEr-D, polymodal vs pycocoevalcap",
        "date": _dt.date.today().isoformat(),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "platform": platform.platform(),
        },
        "corpus": {"images": args.images, "refs_per_image": args.refs, "seed": args.seed},
        "repeats": args.repeats,
        "seconds": {k: {"best": v[0], "median": v[1]} for k, v in timings.items()},
        "speedup": {
            "scoring_only": speed_scoring,
            "tokenizer": speed_tok,
            "end_to_end_python_tokenizer": speed_e2e,
            "end_to_end_java_tokenizer": speed_e2e_java,
        },
        "scores": dict(zip(names, reference)),
        "max_abs_score_difference": max_diff,
        "tokenisation_identical": tok_equal,
    }
    write_result(args.out, result)
    print(f"wrote {args.out}")
    return 0 if tok_equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
