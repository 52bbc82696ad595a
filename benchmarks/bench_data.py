"""Benchmark: the image data pipeline, per core against a plain PIL loop, and whether training waits on it.

    python benchmarks/bench_data.py [--quick] [--images 400] [--repeats 3] [--steps 40] [--workers 0 2]

Part 1, **decode + augment throughput** (one process, ``torch.set_num_threads(1)``, so images/s is per
core). polymodal's per-image training path, exactly what a DataLoader worker runs (``SampleDataset``:
``open_image`` -> cross-modal flip -> ``ImageProcessor``: random resized crop, brightness, contrast,
normalise), against a plain PIL loop doing the same work the way a user script would
(``Image.open().convert('RGB')``, crop + resize, flip, ``ImageEnhance``, ``np.asarray`` -> torch,
normalise). Two image sets: the built-in world's 64 px PNGs (kept at 64 px) and photo-like 640x480
JPEGs (smooth gradients + blobs + noise, quality 90) resized to 224, the COCO-style case. Each is
timed in ``eval`` mode (resize + centre crop) and ``train`` mode (augmentation on), plus a
decode-only floor. Every timing is the best of ``--repeats`` passes (the minimum is the least noisy
estimate on a shared machine); the implementations are interleaved within each repeat. In eval mode
both paths compute the same pixels, which the script checks. cProfile of polymodal's train path
says where its time goes.

Part 2, **does the trainer wait on data**: short real runs of the quickstart model on a small world
(64 px PNGs), and of a retrieval dual encoder on the 224 px JPEGs, with each ``--workers`` value. The
trainer logs, per optimizer step, ``data_seconds`` (blocked in the loader) and ``step_seconds``
(forward, backward, optimizer) to the run's ``log.csv``; the script reports the first step of each
epoch apart (an empty prefetch queue, and in the first epoch the workers' start-up; the workers
persist from epoch to epoch), the steady state without those steps, and the share of wall time
spent waiting.

Writes ``benchmarks/results/data.json``. ``--quick`` is a smoke run (seconds), not a measurement.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import datetime as _dt
import io
import json
import math
import os
import platform
import pstats
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
import yaml
from PIL import Image, ImageEnhance
from provenance import git_commit, write_result

# The augmentation both paths apply in train mode: what a captioning/retrieval run would configure.
CROP_SCALE = (0.5, 1.0)
BRIGHTNESS = 0.2
CONTRAST = 0.2
FLIP_PROB = 0.5
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
CAPTIONS = ["a photo of something", "a blurry picture", "colours fading left to right", "noise on a gradient"]


# ----------------------------------------------------------------------------- image sets
def make_world(root: Path, scenes: int, seed: int = 0) -> Path:
    """A built-in world (64 px PNGs + annotations): Part 1's PNG set and Part 2's training data."""
    from polymodal.data.world import WorldConfig, generate_world

    generate_world(root, WorldConfig(num_scenes=scenes, seed=seed, image_size=64), workers=1)
    return root


def make_jpegs(root: Path, count: int, width: int = 640, height: int = 480, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: smooth colour gradients, soft blobs and sensor noise.

    Pure noise would make decoding unrealistically slow (every DCT coefficient is busy) and flat colour
    unrealistically fast; this mix gives files of ~60-120 KB, about what a 640x480 COCO photo weighs.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(count):
        a, b, c = rng.uniform(-1, 1, size=(3, 3))
        base = 128 + 60 * (a[:, None, None] * xx / width + b[:, None, None] * yy / height) + 20 * c[:, None, None]
        low = rng.uniform(0, 255, size=(3, 12, 16)).astype(np.uint8)
        blobs = np.stack([np.asarray(Image.fromarray(ch).resize((width, height), Image.BICUBIC), dtype=np.float32) for ch in low])
        img = 0.5 * base + 0.5 * blobs + rng.normal(0, 6, size=(3, height, width))
        arr = np.clip(img, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        path = root / f"{i:06d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(path)
    return paths


def write_coco_captions(paths: Sequence[Path], out: Path) -> Path:
    """A COCO captions file over ``paths`` so the JPEG set trains through the ordinary ``coco_captions`` reader."""
    rng = random.Random(0)
    images = [{"id": i, "file_name": p.name, "width": 640, "height": 480} for i, p in enumerate(paths)]
    anns = [{"id": i, "image_id": i, "caption": rng.choice(CAPTIONS)} for i in range(len(paths))]
    out.write_text(json.dumps({"images": images, "annotations": anns}))
    return out


# ----------------------------------------------------------------------------- Part 1: per-core throughput
def polymodal_loader(paths: Sequence[Path], size: int, train: bool, jpeg_draft: bool = False) -> Callable[[int], torch.Tensor]:
    """The trainer's own per-image path: a ``SampleDataset`` item, as a DataLoader worker fetches it."""
    from polymodal.config import ImageSettings
    from polymodal.data.dataset import SampleDataset
    from polymodal.data.sample import Sample
    from polymodal.train.data import image_processor

    settings = ImageSettings(
        size=size, mean=MEAN, std=STD, random_resized_crop=CROP_SCALE, brightness=BRIGHTNESS, contrast=CONTRAST, jpeg_draft=jpeg_draft,
    )
    samples = [Sample(sample_id=str(i), origin=str(p), image_path=p, text="a cube left of a ball") for i, p in enumerate(paths)]
    dataset = SampleDataset(samples, image_processor(settings, train=train), flip_prob=FLIP_PROB if train else 0.0)

    def load(i: int) -> torch.Tensor:
        return dataset[i].image  # type: ignore[union-attr,return-value]

    return load


def plain_loader(paths: Sequence[Path], size: int, train: bool, seed: int = 0) -> Callable[[int], torch.Tensor]:
    """A typical hand-written loader: PIL for the geometry and colour, numpy -> torch for the rest."""
    rng = random.Random(seed)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)

    def load(i: int) -> torch.Tensor:
        img = Image.open(paths[i]).convert("RGB")
        w, h = img.size
        if train:
            area = w * h * rng.uniform(*CROP_SCALE)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = min(w, round(math.sqrt(area * ratio))), min(h, round(math.sqrt(area / ratio)))
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            img = img.crop((x, y, x + cw, y + ch)).resize((size, size), Image.BICUBIC)
            if rng.random() < FLIP_PROB:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            img = ImageEnhance.Brightness(img).enhance(1 + rng.uniform(-BRIGHTNESS, BRIGHTNESS))
            img = ImageEnhance.Contrast(img).enhance(1 + rng.uniform(-CONTRAST, CONTRAST))
        else:
            img = _plain_center_crop(img, size)
        return _plain_to_tensor(img, mean, std)

    return load


def _plain_center_crop(img: Image.Image, size: int) -> Image.Image:
    """The plain loop's eval geometry: shortest side to ``size``, then the centre square."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def _plain_to_tensor(img: Image.Image, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - mean) / std


def draft_loader(paths: Sequence[Path], size: int) -> Callable[[int], torch.Tensor]:
    """The plain eval loop with JPEG DCT scaling (``Image.draft``): libjpeg decodes at 1/2, 1/4 or 1/8
    scale, never below what the resize needs. Measures what polymodal would gain from it (a proposal)."""
    plain = plain_loader(paths, size, False)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)

    def load(i: int) -> torch.Tensor:
        img = Image.open(paths[i])
        w, h = img.size
        if img.format != "JPEG":
            return plain(i)
        img.draft("RGB", (math.ceil(w * size / min(w, h)), math.ceil(h * size / min(w, h))))
        return _plain_to_tensor(_plain_center_crop(img.convert("RGB"), size), mean, std)

    return load


def decode_only(paths: Sequence[Path]) -> Callable[[int], Any]:
    """The floor: decoding to RGB and nothing else."""

    def load(i: int) -> Any:
        return Image.open(paths[i]).convert("RGB")

    return load


def _pass(load: Callable[[int], Any], n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        load(i)
    return time.perf_counter() - t


def profile_top(load: Callable[[int], Any], n: int, top: int = 10) -> list[dict[str, Any]]:
    """The functions polymodal's path spends its own time in (cProfile tottime), largest first."""
    prof = cProfile.Profile()
    prof.enable()
    for i in range(n):
        load(i)
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    out = []
    for (file, line, func), (_cc, ncalls, tottime, cumtime, _callers) in rows:
        where = f"{Path(file).name}:{line}({func})" if line else func
        out.append({"function": where, "calls": ncalls, "tottime_s": tottime, "cumtime_s": cumtime, "share": tottime / total if total else 0.0})
    return out


def throughput(sets: dict[str, tuple[list[Path], int]], repeats: int, profile_images: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Images/s per core for each image set x mode x implementation, and polymodal's train-path profile."""
    rows: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    for set_name, (paths, size) in sets.items():
        n = len(paths)
        impls: dict[str, Callable[[int], Any]] = {"decode only (PIL open + convert)": decode_only(paths)}
        for mode in ("eval", "train"):
            impls[f"plain PIL loop, {mode}"] = plain_loader(paths, size, mode == "train")
            impls[f"polymodal, {mode}"] = polymodal_loader(paths, size, mode == "train")
        if paths[0].suffix.lower() in (".jpg", ".jpeg"):
            impls["plain PIL loop + JPEG draft, eval"] = draft_loader(paths, size)
            for mode in ("eval", "train"):  # the image setting jpeg_draft: true
                impls[f"polymodal, jpeg_draft, {mode}"] = polymodal_loader(paths, size, mode == "train", jpeg_draft=True)
        for load in impls.values():  # warm-up: imports, page cache, lazy tables
            _pass(load, min(n, 8))
        times: dict[str, list[float]] = {k: [] for k in impls}
        for _ in range(repeats):
            for name, load in impls.items():
                times[name].append(_pass(load, n))
        max_diff = max(float((plain_loader(paths, size, False)(i) - polymodal_loader(paths, size, False)(i)).abs().max()) for i in range(min(n, 16)))
        for name, ts in times.items():
            rows.append({
                "images": set_name, "size": size, "impl": name, "n": n,
                "images_per_s": n / min(ts), "median_images_per_s": n / statistics.median(ts), "ms_per_image": 1000 * min(ts) / n,
            })
        for mode in ("eval", "train"):
            ours = next(r for r in rows if r["images"] == set_name and r["impl"] == f"polymodal, {mode}")
            plain = next(r for r in rows if r["images"] == set_name and r["impl"] == f"plain PIL loop, {mode}")
            ours["vs_plain"] = ours["images_per_s"] / plain["images_per_s"]
            drafted = next((r for r in rows if r["images"] == set_name and r["impl"] == f"polymodal, jpeg_draft, {mode}"), None)
            if drafted is not None:
                drafted["vs_plain"] = drafted["images_per_s"] / plain["images_per_s"]
        profiles[set_name] = {
            "eval_max_abs_diff_vs_plain": max_diff,
            "polymodal_train_top": profile_top(polymodal_loader(paths, size, True), min(n, profile_images)),
        }
    return rows, profiles


# ----------------------------------------------------------------------------- Part 2: data wait in training
def world_run_config(world: Path, run_dir: Path, steps: int, workers: int, batch: int) -> dict[str, Any]:
    """The quickstart's model and recipe on ``world``, logging every step, no checkpoints on the way."""
    from polymodal.quickstart import build_run_config

    tree = build_run_config(world, run_dir, steps, seed=0)
    tree["train"] |= {"num_workers": workers, "log_every": 1, "checkpoint_every": 10**6, "batch_size": batch}
    return tree


def jpeg_run_config(captions: Path, images: Path, run_dir: Path, steps: int, workers: int, batch: int) -> dict[str, Any]:
    """A COCO-style retrieval run: 640x480 JPEGs, random resized crop to 224, colour jitter, a small CNN."""
    text = {"name": "text_transformer", "max_length": 16, "width": 128, "depth": 2, "heads": 4, "causal": True}
    return {
        "seed": 0,
        "output_dir": str(run_dir),
        "data": {"train": {"format": "coco_captions", "annotations": str(captions), "images": str(images)}},
        "model": {"type": "dual_encoder", "vision": {"name": "cnn", "image_size": 224, "channels": [32, 64, 128], "width": 128},
                  "text": text, "embed_dim": 128},
        "tokenizer": {"vocab_size": 200, "max_length": 16},
        "image": {"size": 224, "mean": list(MEAN), "std": list(STD), "random_resized_crop": list(CROP_SCALE),
                  "brightness": BRIGHTNESS, "contrast": CONTRAST, "flip_prob": FLIP_PROB},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"task": "retrieval", "epochs": 1000, "max_steps": steps, "batch_size": batch, "num_workers": workers,
                  "log_every": 1, "checkpoint_every": 10**6, "precision": "bf16"},
    }


def step_times(log_csv: Path) -> dict[str, Any]:
    """Per-step data wait and compute from a run's log.csv, summarised.

    The first step of each epoch is reported apart: with workers it waits for an empty prefetch queue
    (and, in the first epoch, for the workers to start), whatever the steady state is.
    """
    data: dict[int, float] = {}
    step: dict[int, float] = {}
    epoch_of: dict[int, int] = {}
    with open(log_csv, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["split"] == "train" and r["name"] in ("data_seconds", "step_seconds"):
                (data if r["name"] == "data_seconds" else step)[int(r["step"])] = float(r["value"])
                epoch_of[int(r["step"])] = int(r["epoch"])
    if not data:
        raise RuntimeError(f"{log_csv} has no data_seconds rows: this polymodal's trainer does not record data wait")
    steps = sorted(data)
    starts = {min(k for k in steps if epoch_of[k] == e) for e in set(epoch_of.values())}
    rest = [k for k in steps if k not in starts] or steps
    rest_d, rest_s = [data[k] for k in rest], [step[k] for k in rest]
    return {
        "steps": len(steps),
        "epochs": len(starts),
        "mean_data_s": statistics.fmean(data.values()),
        "mean_step_s": statistics.fmean(step.values()),
        "epoch_start_data_s": statistics.fmean(data[k] for k in starts),
        "mean_data_s_steady": statistics.fmean(rest_d),
        "median_data_s_steady": statistics.median(rest_d),
        "max_data_s_steady": max(rest_d),
        "mean_step_s_steady": statistics.fmean(rest_s),
        "data_share_steady": sum(rest_d) / (sum(rest_d) + sum(rest_s)),
        "data_share_all": sum(data.values()) / (sum(data.values()) + sum(step.values())),
    }


def train_once(tree: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """One real ``Trainer.fit`` on ``tree``; returns its per-step timing summary and its throughput."""
    from polymodal.config import load_config
    from polymodal.train.trainer import Trainer

    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(tree))
    t = time.perf_counter()
    summary = Trainer(load_config(path), progress=False).fit()
    out = step_times(Path(tree["output_dir"]) / "log.csv")
    out["fit_seconds"] = time.perf_counter() - t
    out["train_seconds"] = summary["train_seconds"]
    return out


# ----------------------------------------------------------------------------- reporting
def _cpu() -> tuple[str, int | None]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Model name")), "")
        return model or platform.processor() or "unknown", os.cpu_count()
    except OSError:
        return platform.processor() or "unknown", os.cpu_count()


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def print_tables(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> None:
    print("\n### Decode + augment, 1 process, 1 torch thread (images/s per core, best of repeats)\n")
    print("| images | impl | images/s | ms/image | vs plain PIL |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        ratio = f"{r['vs_plain']:.2f}x" if "vs_plain" in r else ""
        print(f"| {r['images']} | {r['impl']} | {r['images_per_s']:.0f} | {r['ms_per_image']:.2f} | {ratio} |")
    if runs:
        print("\n### Data wait vs compute per optimizer step (real Trainer.fit)\n")
        print("| run | workers | steps (epochs) | epoch-start data s | data s/step, steady | max | compute s/step | data share steady / all |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in runs:
            print(f"| {r['run']} | {r['num_workers']} | {r['steps']} ({r['epochs']}) | {r['epoch_start_data_s']:.3f} | "
                  f"{r['mean_data_s_steady']:.4f} | {r['max_data_s_steady']:.4f} | {r['mean_step_s_steady']:.3f} | "
                  f"{100 * r['data_share_steady']:.1f}% / {100 * r['data_share_all']:.1f}% |")

def main(argv: Sequence[str] | None = None) -> int:
    """Run both parts and write the JSON; ``argv`` lets a test run it small into a temporary folder."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: a few images and steps; the numbers mean nothing")
    ap.add_argument("--images", type=int, default=400, help="images per set in Part 1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scenes", type=int, default=2000, help="world size for Part 2's quickstart run")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per Part 2 run")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--runs", nargs="*", default=["world", "jpeg"], choices=["world", "jpeg"], help="Part 2 runs (none: skip Part 2)")
    ap.add_argument("--profile-images", type=int, default=200)
    ap.add_argument("--tmp", type=Path, default=None, help="where the generated images and runs go (default: a new temp folder, removed after)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "data.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.repeats, args.scenes, args.steps, args.batch, args.profile_images = 16, 1, 60, 3, 8, 16

    tmp = args.tmp or Path(tempfile.mkdtemp(prefix="pm_bench_data_"))
    tmp.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    try:
        t = time.perf_counter()
        world = make_world(tmp / "world", max(args.scenes, args.images))
        pngs = sorted((world / "images").rglob("*.png"))[: args.images]
        jpegs = make_jpegs(tmp / "jpeg", max(args.images, args.batch * 4))
        print(f"generated {len(pngs)} PNGs (64 px) and {len(jpegs)} JPEGs (640x480) in {time.perf_counter() - t:.1f} s")

        torch.set_num_threads(1)
        rows, profiles = throughput({"world PNG 64px -> 64": (pngs, 64), "JPEG 640x480 -> 224": (jpegs[: args.images], 224)}, args.repeats, args.profile_images)
        torch.set_num_threads(threads)  # Part 2 trains the way a user would: torch's default threads

        runs: list[dict[str, Any]] = []
        captions = write_coco_captions(jpegs, tmp / "captions_train.json")
        for run in args.runs:
            for workers in args.workers:
                run_dir = tmp / f"run_{run}_{workers}"
                shutil.rmtree(run_dir, ignore_errors=True)
                tree = (world_run_config(world, run_dir, args.steps, workers, args.batch) if run == "world"
                        else jpeg_run_config(captions, tmp / "jpeg", run_dir, args.steps, workers, args.batch))
                label = "quickstart model, world PNG 64px" if run == "world" else "retrieval CNN, JPEG 640x480 -> 224"
                print(f"training: {label}, num_workers={workers}, {args.steps} steps of {args.batch}")
                runs.append({"run": label, "num_workers": workers, "batch_size": args.batch} | train_once(tree, tmp))
    finally:
        if args.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)

    print_tables(rows, runs)
    for name, p in profiles.items():
        print(f"\npolymodal train path, {name}: where the time goes (cProfile tottime)")
        for r in p["polymodal_train_top"][:8]:
            print(f"  {100 * r['share']:5.1f}%  {r['function']}")
        print(f"  eval mode, max |polymodal - plain| over 16 images: {p['eval_max_abs_diff_vs_plain']:.2e}")

    cpu, cores = _cpu()
    result = {
        "benchmark": "image decode + augment per core vs a plain PIL loop; trainer data wait vs compute",
        "quick": args.quick,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": {"cpu": cpu, "cores": cores, "load_average_at_end": _load_average(), "platform": platform.platform()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__, "pillow": PIL.__version__},
        "settings": {"images": args.images, "repeats": args.repeats, "scenes": args.scenes, "steps": args.steps, "batch": args.batch,
                     "workers": args.workers, "torch_threads_part2": threads, "crop_scale": CROP_SCALE, "brightness": BRIGHTNESS,
                     "contrast": CONTRAST, "flip_prob": FLIP_PROB},
        "throughput": rows,
        "profiles": profiles,
        "training": runs,
    }
    write_result(args.out, result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
