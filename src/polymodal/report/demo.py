"""A synthetic report with every section filled in, to see what a report looks like without a model.

    python -m polymodal.report.demo /tmp/report_demo
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from polymodal.report.data import (
    CaptionExample,
    ClassificationResult,
    RankedImage,
    ReportData,
    RetrievalExample,
    VQAExample,
)
from polymodal.report.render import write_report

COLORS = {"red": (214, 40, 40), "blue": (31, 119, 180), "green": (44, 160, 44), "yellow": (240, 200, 30)}
SHAPES = ("circle", "square", "triangle")


def draw_scene(path: Path, shape: str, color: str, size: int = 128) -> Path:
    """One object on a plain background, the kind of picture the built-in world has."""
    im = Image.new("RGB", (size, size), (236, 236, 228))
    d = ImageDraw.Draw(im)
    c, r = size // 2, size // 4
    fill = COLORS[color]
    if shape == "circle":
        d.ellipse((c - r, c - r, c + r, c + r), fill=fill)
    elif shape == "square":
        d.rectangle((c - r, c - r, c + r, c + r), fill=fill)
    else:
        d.polygon([(c, c - r), (c + r, c + r), (c - r, c + r)], fill=fill)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def demo_data(image_dir: Path, seed: int = 0) -> ReportData:
    rng = random.Random(seed)
    image_dir = Path(image_dir)
    scenes = [(s, c) for s in SHAPES for c in COLORS]
    paths = {sc: draw_scene(image_dir / f"{sc[1]}_{sc[0]}.png", *sc) for sc in scenes}

    steps = list(range(0, 2001, 50))
    curves = {
        "train/loss": [(s, 2.3 * math.exp(-s / 600) + 0.35 + rng.uniform(-0.05, 0.05)) for s in steps],
        "val/loss": [(s, 2.1 * math.exp(-s / 700) + 0.5) for s in steps[::8]],
        "lr": [(s, 3e-4 * min(1.0, s / 200) * 0.5 * (1 + math.cos(math.pi * s / 2000))) for s in steps],
        "val/i2t_R@1": [(s, 0.78 * (1 - math.exp(-s / 500))) for s in steps[::8]],
        "val/vqa_acc": [(s, 0.25 + 0.6 * (1 - math.exp(-s / 800))) for s in steps[::8]],
    }

    retrieval = []
    for k, (shape, color) in enumerate(scenes[::3][:4]):
        others = [sc for sc in scenes if sc != (shape, color)]
        rng.shuffle(others)
        ranked = [sc for sc in others[:4]]
        if k != 2:  # one query misses
            ranked.insert(k % 3, (shape, color))
        ranked = ranked[:5]
        scores = sorted((rng.uniform(0.2, 0.9) for _ in ranked), reverse=True)
        retrieval.append(RetrievalExample(
            query=f"a {color} {shape} on a plain background",
            results=[RankedImage(paths[sc], s, sc == (shape, color)) for sc, s in zip(ranked, scores)],
            gold_image=paths[(shape, color)],
        ))

    captions = [
        CaptionExample(paths[("circle", "red")], "a red circle in the middle",
                       ["a red circle on a grey background", "one red round shape"], cider=1.42),
        CaptionExample(paths[("square", "blue")], "a blue square <script>alert(1)</script>",
                       ["a blue square", "a square that is blue"], cider=0.87),
        CaptionExample(image_dir / "does_not_exist.png", "a green triangle",
                       ["a green triangle pointing up"], cider=None),
    ]
    vqa = [
        VQAExample(paths[("triangle", "yellow")], "what colour is the shape?", "yellow", ["yellow"],
                   family="color"),
        VQAExample(paths[("circle", "green")], "what shape is it?", "square", ["circle"], family="shape"),
        VQAExample(paths[("square", "red")], "how many shapes are there?", "1", ["1", "one"], family="count"),
    ]
    classes = ["circle", "square", "triangle"]
    confusion = [[46, 3, 1], [4, 41, 5], [2, 6, 42]]
    return ReportData(
        title="clip-tiny + captioner on the built-in world",
        run_info={
            "model": "dual-encoder (clip-tiny) + captioner",
            "checkpoint": "runs/demo/checkpoint-2000.safetensors",
            "data": "built-in world, 2000 scenes, seed 0",
            "date": "2025-01-01 12:00",
            "machine": "2 CPU cores, no GPU",
            "seconds": "312.4",
        },
        metrics={
            "retrieval (test)": {"i2t_R@1": 0.7125, "i2t_R@5": 0.944, "t2i_R@1": 0.6875, "t2i_R@5": 0.9375},
            "captioning (test)": {"CIDEr": 1.0932, "BLEU-4": 0.3811, "METEOR": 0.2874, "ROUGE-L": 0.5933},
            "vqa (test)": {"accuracy": 0.8412, "num_questions": 1200},
            "vqa (held-out)": {"accuracy": 0.6235, "num_questions": 600},
        },
        training_curves=curves,
        vqa_by_family={
            "test": {"color": 0.95, "shape": 0.91, "count": 0.72, "position": 0.78, "exists": 0.88},
            "held-out": {"color": 0.81, "shape": 0.64, "count": 0.45, "position": 0.55, "exists": 0.70},
        },
        retrieval_examples=retrieval,
        caption_examples=captions,
        vqa_examples=vqa,
        classification=ClassificationResult(
            classes, confusion, {"image+text": 0.86, "text only": 0.51, "image only": 0.47}, chance=1 / 3),
        notes=[
            "Held-out VQA uses colour/shape combinations never seen in training.",
            "Scores on the synthetic world are not comparable with COCO numbers.",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "report_demo")
    html, md = write_report(demo_data(out / "images"), out)
    print(f"wrote {html}\n      {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
