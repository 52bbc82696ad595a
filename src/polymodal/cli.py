"""The ``polymodal`` command line. Each later capability fills its own command here.

Errors a user can fix (:class:`PolymodalError`) end in one paragraph on stderr and exit code 2, never a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from polymodal.errors import PolymodalError

if TYPE_CHECKING:
    from polymodal.index import AddReport, SearchIndex

app = typer.Typer(
    name="polymodal",
    help="Multimodal learning that works offline: train, evaluate and serve image-text models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Generate, check and describe datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("world")
def data_world(
    out: Path = typer.Option(..., "--out", help="Folder to write the world into."),
    scenes: int = typer.Option(2000, "--scenes", min=3, help="Number of scenes (images)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same files."),
    size: int = typer.Option(64, "--size", min=32, max=1024, help="Canvas side in pixels."),
    min_objects: int = typer.Option(2, "--min-objects", min=1),
    max_objects: int = typer.Option(5, "--max-objects", min=1, max=10),
    captions_per_image: int = typer.Option(5, "--captions-per-image", min=1, max=20),
    workers: int = typer.Option(0, "--workers", min=0, help="Render processes (0: one per core)."),
) -> None:
    """Generate the built-in procedural scene world: images, captions, questions, labels and splits.

    Example:  polymodal data world --out world --scenes 10000 --seed 0
    """
    from polymodal.data.world import WorldConfig, generate_world

    cfg = WorldConfig(
        num_scenes=scenes,
        seed=seed,
        image_size=size,
        min_objects=min_objects,
        max_objects=max_objects,
        captions_per_image=captions_per_image,
    )
    manifest = generate_world(out, cfg, workers=workers or None, progress=True)
    typer.echo(manifest.summary())


@data_app.command("av-world")
def data_av_world(
    out: Path = typer.Option(..., "--out", help="Folder to write the audio-visual world into."),
    clips: int = typer.Option(1000, "--clips", min=3, help="Number of clips."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same files."),
    frames: int = typer.Option(8, "--frames", min=6, max=64, help="Frames per clip (8 fps)."),
    size: int = typer.Option(64, "--size", min=32, max=512, help="Frame side in pixels (even)."),
    workers: int = typer.Option(0, "--workers", min=0, help="Render processes (0: one per core)."),
) -> None:
    """Generate audio-visual clips: moving objects (MP4), their sounds (WAV), captions, questions, statements.

    Writes DIR/data.yaml, a data spec for run configs and `polymodal eval --data`. Rerunning with the
    same seed, frames and size reuses the clips already written.

    Example:  polymodal data av-world --out av_world --clips 2000 --seed 0
    """
    from polymodal.data.world.av_writer import write_av_world

    summary = write_av_world(out, clips, seed, frames=frames, size=size, progress=True, workers=workers or None)
    typer.echo(summary.summary())


@data_app.command("check")
def data_check(
    spec: Path = typer.Argument(..., help="A run config (YAML), a data-source YAML, or a world folder."),
    verify_images: bool = typer.Option(True, "--verify-images/--no-verify-images", help="Decode every image."),
) -> None:
    """Report counts and problems per source: missing/corrupt images, empty captions, orphans.

    Exit code 1 when any problem is found, so it can guard a pipeline.

    Example:  polymodal data check world
    """
    from polymodal.data.check import check_spec

    reports = check_spec(spec, verify_images=verify_images)
    for r in reports:
        typer.echo(r.format())
    failing = [r for r in reports if r.num_problems]
    if failing:
        typer.echo(f"{len(failing)} of {len(reports)} sources have problems: " + ", ".join(r.source.split(":")[0] for r in failing))
        raise typer.Exit(code=1)
    typer.echo(f"all {len(reports)} sources checked: no problems")


@data_app.command("stats")
def data_stats(
    spec: Path = typer.Argument(..., help="A run config (YAML), a data-source YAML, or a world folder."),
) -> None:
    """Describe the sources: samples, images, text lengths, answer and label distributions.

    Example:  polymodal data stats world
    """
    from polymodal.data.check import stats_spec

    for block in stats_spec(spec):
        typer.echo(block)


mllm_app = typer.Typer(help="Multimodal LLM assistants: prepare a language model, then train with task 'mllm'.", no_args_is_help=True)
app.add_typer(mllm_app, name="mllm")


@mllm_app.command("init-lm")
def mllm_init_lm(
    out: Path = typer.Option(..., "--out", help="Folder to write the language model and its tokenizer to (save_pretrained layout)."),
    world: Optional[Path] = typer.Option(None, "--world", help="Train on the text of this built-in world's train split (captions, questions, conversations)."),
    texts: Optional[Path] = typer.Option(None, "--texts", help="Or train on this UTF-8 file, one text per line."),
    arch: str = typer.Option("llama", "--arch", help="llama or gpt2."),
    width: int = typer.Option(128, "--width"),
    depth: int = typer.Option(4, "--depth"),
    heads: int = typer.Option(4, "--heads"),
    context: int = typer.Option(512, "--context", help="Context window (positions)."),
    vocab_size: int = typer.Option(1024, "--vocab-size"),
    steps: int = typer.Option(300, "--steps", help="Next-token training steps (0: random weights)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train a tiny causal LM from scratch on a corpus (offline stand-in for SmolLM/Qwen in the assistant recipe).

    Example:  polymodal mllm init-lm --world world --out runs/world_lm --steps 300
    """
    from polymodal.errors import ConfigError
    from polymodal.models.tiny_lm import build_tiny_lm, world_corpus

    if (world is None) == (texts is None):
        raise ConfigError("mllm init-lm: give exactly one of --world DIR or --texts FILE")
    if world is not None:
        corpus = world_corpus(world)
    else:
        assert texts is not None
        if not texts.is_file():
            raise ConfigError(f"mllm init-lm: --texts file not found: {texts}")
        corpus = [line.strip() for line in texts.read_text(encoding="utf-8").splitlines() if line.strip()]
    folder, losses = build_tiny_lm(corpus, out, arch=arch, width=width, depth=depth, heads=heads, context=context,  # type: ignore[arg-type]
                                   vocab_size=vocab_size, steps=steps, batch_size=batch_size, seed=seed)
    if losses:
        typer.echo(f"trained on {len(corpus)} texts: loss {losses[0]:.3f} -> {sum(losses[-10:]) / len(losses[-10:]):.3f} (last 10 steps)")
    typer.echo(f"language model written to {folder}; use it as model.lm in an mllm run config")


@app.command()
def chat(
    model: str = typer.Option(..., "--model", "-m", help="An assistant (mllm) run folder, its checkpoints/ or one step_* folder."),
    image: Optional[list[Path]] = typer.Option(None, "--image", "-i", help="Image for the first message (repeatable)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Answer this one message and exit (no interactive session)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Most tokens per answer."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0: greedy (deterministic); higher: more varied."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (with --temperature > 0)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for sampling, for repeatable answers."),
    device: str = typer.Option("cpu", "--device", help="'cpu', 'cuda', 'cuda:N' or 'auto'."),
) -> None:
    """Chat with an assistant (a run trained with train.task: mllm) about images, answers streamed as they come.

    Each <image> marker in a message takes one image, in order. When --image is given and the first
    message has no marker, "<image>\\n" is put before it (a note says so once).

    In the interactive session: /image PATH attaches an image to the next message, /reset starts a new
    conversation, /quit (or Ctrl-D) exits.

    Example:  polymodal chat --model runs/assistant --image scene.png --prompt "What is in the picture?"

    Example:  polymodal chat --model runs/assistant --image scene.png
    """
    from polymodal.api import load_model
    from polymodal.chat import IMAGE_MARKER, ChatSession

    images = list(image or [])
    for path in images:  # before reading any weights
        if not path.is_file():
            raise PolymodalError(f"chat: --image {path} is not a file")
    loaded, proc = load_model(model, device)
    session = ChatSession(loaded, proc, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    noted = False

    def with_markers(text: str, attached: list[Path]) -> str:
        nonlocal noted
        if not attached or IMAGE_MARKER in text:
            return text
        if not noted:
            typer.echo(f"note: the message has no {IMAGE_MARKER} marker, so the image goes before the text", err=True)
            noted = True
        return f"{IMAGE_MARKER}\n" * len(attached) + text

    def answer(text: str, attached: list[Path]) -> None:
        for delta in session.ask(with_markers(text, attached), [str(p) for p in attached]):
            typer.echo(delta, nl=False)
            sys.stdout.flush()
        typer.echo("")

    if prompt is not None:
        answer(prompt, images)
        return
    typer.echo(f"chatting with {proc.source or model} (/image PATH attaches an image, /reset starts over, /quit or Ctrl-D exits)", err=True)
    pending = images
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            typer.echo("", err=True)
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            session.reset()
            pending = []
            typer.echo("(new conversation)", err=True)
            continue
        if line.startswith("/image"):
            path = Path(line[len("/image"):].strip())
            if not path.is_file():
                typer.echo(f"error: /image {path}: not a file", err=True)
                continue
            pending = [*pending, path]
            typer.echo(f"(attached {path}; it goes with your next message)", err=True)
            continue
        if line.startswith("/"):
            typer.echo(f"error: unknown command {line.split()[0]}; use /image PATH, /reset or /quit", err=True)
            continue
        try:
            typer.echo("assistant> ", nl=False)
            answer(line, pending)
            pending = []
        except PolymodalError as e:  # a bad message or image: say so and keep the conversation going
            typer.echo("", err=False)
            typer.echo(f"error: {e}", err=True)


@app.command()
def quickstart(
    out: Path = typer.Option(Path("quickstart_out"), "--out", help="Folder for the world, the run and the report."),
    scenes: int = typer.Option(10000, "--scenes", min=10, help="Scenes in the generated world (images)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Training steps (default: configs/quickstart.yaml)."),
    test_images: int = typer.Option(1000, "--test-images", min=3, help="Images in the test split (the retrieval gallery)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """The first thing to run: generate the built-in world, train one multi-task model, evaluate, report.

    Takes about 5 minutes on a 2-core CPU with the defaults; --scenes 300 --steps 5 is a smoke test.

    Example:  polymodal quickstart --out quickstart_out
    """
    from polymodal.quickstart import run_quickstart

    run_quickstart(out, scenes=scenes, seed=seed, steps=steps, test_images=test_images)


@app.command()
def score(
    task: str = typer.Argument(..., help="'caption' (COCO results JSON) or 'vqa' (VQA results JSON)."),
    predictions: Path = typer.Argument(..., help="Results file: [{image_id, caption}] or [{question_id, answer}]."),
    annotations: Path = typer.Argument(..., help="COCO captions JSON, or VQA v2 annotations JSON."),
    questions: Optional[Path] = typer.Option(None, "--questions", help="VQA v2 questions JSON (VQA only)."),
    metrics: Optional[list[str]] = typer.Option(None, "--metric", help="Caption metrics to compute (repeat); default all."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Score only the items that have a prediction."),
    percent: bool = typer.Option(False, "--percent", help="Print x100, as the official tools do."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the scores to this JSON file."),
) -> None:
    """Score a predictions file against annotations in the official tools' formats.

    Example:  polymodal score caption captions_val2014_results.json captions_val2014.json
    Example:  polymodal score vqa results.json v2_mscoco_val2014_annotations.json --questions v2_OpenEnded_mscoco_val2014_questions.json
    """
    import json

    from polymodal.metrics import format_table, score_file

    if json_out is not None:  # before the scoring: a bad --json path must not cost the work
        try:
            json_out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PolymodalError(f"--json {json_out}: cannot make its folder ({e.strerror or e})") from None
    scores = score_file(task, predictions, annotations, questions, allow_missing=allow_missing, metrics=metrics)
    typer.echo(format_table(scores, percent=percent))
    if json_out is not None:
        from polymodal.atomic import write_text

        try:
            write_text(json_out, json.dumps(scores, indent=1))
        except OSError as e:
            raise PolymodalError(f"--json {json_out}: cannot write it ({e.strerror or e}); the scores are printed above") from None


@app.command()
def train(
    config: Path = typer.Argument(..., help="Run config YAML (data, model, tokenizer, image, optim, train)."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override a config key: --set train.epochs=3 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in output_dir from its latest checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in an output_dir that holds an earlier run, removing its checkpoints and logs."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Run folder (default: output_dir in the config)."),
) -> None:
    """Train or fine-tune a model from a YAML config; checkpoints, logs and metrics go to the run folder.

    Example:  polymodal train configs/world_vqa.yaml --set train.epochs=3 --set optim.lr=5e-4
    Example:  polymodal train configs/world_vqa.yaml --resume
    """
    import json
    import logging

    from polymodal.config import load_config
    from polymodal.train.trainer import Trainer

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sets = list(overrides or [])
    if output_dir is not None:
        sets.append(f"output_dir={output_dir}")
    if resume and overwrite:
        from polymodal.errors import ConfigError

        raise ConfigError("--resume continues the run in output_dir and --overwrite replaces it: give one of them")
    cfg = load_config(config, sets)
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
    is_main = trainer.is_main
    try:
        summary = trainer.fit()
    finally:
        import gc

        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
            # A Gloo worker thread may still be freeing the last collectives, whose Python tensors need the GIL
            # to be released; freeing the process group below holds the GIL and joins that thread. A rank that
            # leaves its last barrier and reaches that join first deadlocks (seen in CI: rank 1 stuck in
            # ~ProcessGroupGloo's thread join, its worker waiting for the GIL). Sleeping lets the worker finish.
            import time

            time.sleep(0.2)
        # Free the model now, with the process-group handles DDP/FSDP keep in it: left to the interpreter's
        # shutdown, Gloo's worker threads can be torn down mid-finalisation (SIGABRT, "terminate called
        # without an active exception", seen once on a rank that had finished; pytorch/pytorch#179291).
        del trainer
        gc.collect()
    if not is_main:
        return
    typer.echo(json.dumps({k: v for k, v in summary.items() if k in ("steps", "epochs", "test")}, indent=1, default=float))
    typer.echo(f"run folder: {cfg.output_dir}")


@app.command(name="eval")
def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Run folder, its checkpoints/ folder or one step_* folder; or a Hugging Face folder or zoo name."),
    data: Path = typer.Option(..., "--data", "-d", help="Data spec: a run config, a data-source YAML or a world folder."),
    splits: Optional[list[str]] = typer.Option(None, "--split", help="Split to evaluate (repeatable); default: every split except train."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for eval.json, report.html and report.md (default: RUN/eval)."),
    max_samples: Optional[int] = typer.Option(None, "--max-samples", min=1, help="Evaluate at most this many samples per split."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per batch."),
    workers: int = typer.Option(2, "--workers", min=0, help="Data-loader processes decoding images (0: in the main process)."),
    device: str = typer.Option("auto", "--device", help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."),
    robustness: bool = typer.Option(False, "--robustness", help="Also measure the metric as each modality is corrupted or dropped at increasing levels (curves in eval.json and the report)."),
    robustness_levels: Optional[str] = typer.Option(None, "--robustness-levels", help="Corruption levels in [0, 1], comma-separated (default 0,0.2,0.4,0.6,0.8,1); needs --robustness."),
) -> None:
    """Evaluate a checkpoint on every split of a data spec; print the metrics, write eval.json and a report.

    The checkpoint's task picks the samples it uses (a world split mixes captions, questions and statements).

    Example:  polymodal eval --checkpoint runs/world_vqa --data world/

    Example:  polymodal eval --checkpoint runs/world_vqa --data world/ --split test --split test_heldout --out vqa_eval

    Example:  polymodal eval --checkpoint runs/world_retrieval/checkpoints/step_00000100 --data world/ --max-samples 500

    Example:  polymodal eval --checkpoint clip-vit-base-patch32 --data coco_val.yaml --out clip_eval

    Example:  polymodal eval --checkpoint runs/world_vqa --data world/ --split test --robustness --robustness-levels 0,0.25,0.5,1
    """
    import logging

    from polymodal.evaluate import evaluate_checkpoint, format_metrics

    if robustness_levels is not None and not robustness:
        raise PolymodalError("--robustness-levels needs --robustness")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = evaluate_checkpoint(
        checkpoint, data, out_dir=out, splits=splits or None, max_samples=max_samples,
        device=device, batch_size=batch_size, num_workers=workers,
        robustness=robustness, robustness_levels=robustness_levels, progress=robustness and sys.stderr.isatty(),
    )
    step = f"step {result['global_step']}" if result["global_step"] is not None else "pretrained"
    typer.echo(f"{result['model_type']} model, {result['task']} task, {step}: {result['checkpoint']}")
    typer.echo(format_metrics(result["metrics"], {s: r["samples"] for s, r in result["splits"].items()}))
    for split, why in result["skipped_splits"].items():
        typer.echo(f"skipped split {split}: {why}")
    for split, run in (result.get("robustness") or {}).items():
        typer.echo(f"robustness ({split}, {run['headline']} at levels {', '.join(f'{v:g}' for v in run['levels'])}):")
        for modality, kinds in run["curves"].items():
            for kind, curve in kinds.items():
                values = "  ".join("n/a" if v is None else f"{v:.3f}" for v in curve["headline"])
                typer.echo(f"  {modality:<10} {kind:<13} {values}")
        for what, why in run["skipped"].items():
            typer.echo(f"  not corrupted: {what}: {why}")
    typer.echo(f"wrote {result['eval_json']}")
    for key in ("report_html", "report_md"):
        if key in result:
            typer.echo(f"wrote {result[key]}")


class PredictAction(str, Enum):
    caption = "caption"
    answer = "answer"
    rank_texts = "rank-texts"
    rank_images = "rank-images"
    classify = "classify"
    zero_shot = "zero-shot"
    match = "match"


def _read_texts(values: list[str]) -> list[str]:
    """Texts as given; a value naming an existing .txt file is replaced by its non-empty lines."""
    out: list[str] = []
    for v in values:
        p = Path(v)
        if p.suffix.lower() == ".txt" and " " not in v:  # a file name, not a sentence that ends in ".txt"
            if not p.is_file():
                raise PolymodalError(f"texts file not found: {p} (a value ending in .txt is read as a file of one text per line)")
            try:
                out += [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError) as e:
                raise PolymodalError(f"cannot read the texts file {p}: {e}") from None
        else:
            out.append(v)
    return out


@app.command()
def predict(
    action: PredictAction = typer.Argument(..., help="caption | answer | rank-texts | rank-images | classify | zero-shot | match"),
    inputs: Optional[list[str]] = typer.Argument(None, help="Images (caption, rank-images, zero-shot) or texts (rank-texts)."),
    checkpoint: str = typer.Option(..., "--checkpoint", "-c", help="Run folder, checkpoints/ or step_* folder, a Hugging Face folder, or a zoo name ('polymodal models')."),
    image: Optional[list[Path]] = typer.Option(None, "--image", "-i", help="Image for answer, rank-texts, match and classify (repeatable for classify)."),
    question: Optional[list[str]] = typer.Option(None, "--question", "-q", help="Question for answer (repeatable)."),
    text: Optional[list[str]] = typer.Option(None, "--text", "-t", help="Query for rank-images; statement for classify; text to match (repeatable)."),
    texts: Optional[list[str]] = typer.Option(None, "--texts", help="Candidates for rank-texts: texts, or a .txt file with one per line."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many results to show (answers, ranked texts or images)."),
    method: str = typer.Option("greedy", "--method", help="Caption decoding: greedy, beam or nucleus."),
    beam_size: int = typer.Option(3, "--beam-size", min=1, help="Beams for --method beam."),
    max_length: int = typer.Option(30, "--max-length", min=1, help="Most tokens per caption."),
    labels: Optional[list[str]] = typer.Option(None, "--labels", help="Class names for zero-shot (repeatable), or a .txt file with one per line."),
    template: Optional[list[str]] = typer.Option(None, "--template", help="Prompt template with '{}' for zero-shot (repeatable; averaged)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    device: str = typer.Option("cpu", "--device", help="'cpu', 'cuda', 'cuda:N' or 'auto'."),
) -> None:
    """Caption, answer, rank, classify or zero-shot classify with a trained or pretrained model.

    Example:  polymodal predict caption --checkpoint quickstart_out/run img1.png img2.png

    Example:  polymodal predict answer --checkpoint runs/world_vqa --image x.png --question "what color is the cube?"

    Example:  polymodal predict rank-texts --checkpoint runs/world_retrieval --image x.png --texts "a red cube" "two blue spheres"

    Example:  polymodal predict rank-texts --checkpoint runs/world_retrieval --image x.png --texts captions.txt

    Example:  polymodal predict rank-images --checkpoint runs/world_retrieval --text "a red cube" img*.png

    Example:  polymodal predict classify --checkpoint quickstart_out/run --image x.png --text "the cube is left of the sphere"

    Example:  polymodal predict zero-shot --checkpoint clip-vit-base-patch32 --labels cat --labels dog --template "a photo of a {}." img.png

    Example:  polymodal predict match --checkpoint blip-itm-base-coco --image x.png --text "a red cube" --text "two spheres"
    """
    import json

    from polymodal import predict as P
    from polymodal.api import load_model

    act = action.value
    rest = list(inputs or [])
    images, questions, queries = list(image or []), list(question or []), list(text or [])
    # check the request before reading any weights
    for option, values in (("--question", questions), ("--text", queries), ("--texts", texts or []), ("--labels", labels or []), ("--template", template or [])):
        if any(not v.strip() for v in values):  # an empty question was answered, an empty candidate ranked
            raise PolymodalError(f"predict {act}: {option} was given an empty text; give some words")
    if act == "caption" and method not in ("greedy", "beam", "nucleus"):
        raise PolymodalError(f"predict caption: --method {method!r}: choose greedy, beam or nucleus")
    class_names = _read_texts(list(labels or []))
    if act == "zero-shot" and not class_names:
        raise PolymodalError("predict zero-shot: give the class names with --labels cat --labels dog (or --labels classes.txt)")
    if act != "zero-shot" and (class_names or template):
        raise PolymodalError(f"predict {act}: --labels/--template apply to zero-shot only")
    if act in ("caption", "rank-images", "zero-shot") and not rest:
        raise PolymodalError(f"predict {act}: give the image files after the options, e.g. 'polymodal predict {act} --checkpoint RUN img1.png img2.png'")
    if act in ("answer", "rank-texts", "match") and len(images) != 1:
        raise PolymodalError(f"predict {act}: give exactly one --image (got {len(images)})")
    if act == "match" and (not queries or rest or questions):
        raise PolymodalError("predict match: give one --image and the texts to score with --text \"...\" (repeatable)")
    if act == "answer" and not questions:
        raise PolymodalError("predict answer: give at least one --question \"...\"")
    if act == "rank-texts":
        candidates = _read_texts(list(texts or []) + rest)
        if not candidates:
            raise PolymodalError("predict rank-texts: give candidate texts with --texts \"t1\" \"t2\" or --texts file.txt")
    if act == "rank-images" and len(queries) != 1:
        raise PolymodalError(f"predict rank-images: give exactly one --text query (got {len(queries)})")
    if act in ("caption", "answer", "rank-texts") and (queries or (act != "answer" and questions)):
        raise PolymodalError(f"predict {act}: --text/--question do not apply here; see 'polymodal predict --help'")
    if act != "rank-texts" and texts:
        raise PolymodalError(f"predict {act}: --texts applies to rank-texts only")
    if act in ("answer", "classify") and rest:
        raise PolymodalError(f"predict {act}: unexpected arguments {' '.join(rest)}; pass the image with --image")

    model, proc = load_model(checkpoint, device)
    P.require_model_type(P.model_type_of(model, proc), act, proc.source)

    results: list[dict] = []
    if act == "caption":
        captions = P.caption(model, proc, rest, max_length=max_length, method=method, beam_size=beam_size)
        results = [{"image": p, "caption": c} for p, c in zip(rest, captions)]
        lines = [f"{p}\t{c}" for p, c in zip(rest, captions)]
    elif act == "answer" and not hasattr(getattr(model, "vqa", model), "vocab"):  # generated answers (BLIP)
        answers = P.answer(model, proc, images[0], questions)
        results = [{"question": q, "answer": a} for q, a in zip(questions, answers)]
        lines = [f"Q: {q}\nA: {a}" for q, a in zip(questions, answers)]
    elif act == "answer":
        ranked = P.answer_top_k(model, proc, images[0], questions, k=top_k)
        results = [{"question": q, "answer": r[0][0], "top": [{"answer": a, "score": s} for a, s in r]} for q, r in zip(questions, ranked)]
        lines = []
        for q, r in zip(questions, ranked):
            lines.append(f"Q: {q}\nA: {r[0][0]}  ({r[0][1]:.3f})")
            if len(r) > 1:
                lines.append("   also: " + ", ".join(f"{a} ({s:.3f})" for a, s in r[1:]))
    elif act == "rank-texts":
        ranked_items = P.rank_texts(model, proc, images[0], candidates, top_k=top_k)
        results = [{"rank": n, "text": r.item, "score": r.score} for n, r in enumerate(ranked_items, 1)]
        lines = [f"{n:>3}. {r.score:+.4f}  {r.item}" for n, r in enumerate(ranked_items, 1)]
    elif act == "zero-shot":
        preds = P.zero_shot(model, proc, rest, class_names, template or None)
        results = [{"image": p, "label": c.label, "score": c.score, "scores": c.scores} for p, c in zip(rest, preds)]
        lines = [f"{p}\t{c.label}  ({', '.join(f'{k} {v:.3f}' for k, v in list(c.scores.items())[:top_k])})" for p, c in zip(rest, preds)]
    elif act == "match":
        probs = P.match(model, proc, images[0], queries)
        results = [{"text": t, "match": p} for t, p in zip(queries, probs)]
        lines = [f"{p:.4f}  {t}" for t, p in zip(queries, probs)]
    elif act == "rank-images":
        ranked_items = P.rank_images(model, proc, queries[0], rest, top_k=top_k)
        results = [{"rank": n, "image": r.item, "score": r.score} for n, r in enumerate(ranked_items, 1)]
        lines = [f"{n:>3}. {r.score:+.4f}  {r.item}" for n, r in enumerate(ranked_items, 1)]
    else:
        preds = P.classify(model, proc, images or None, queries or None)
        n = max(len(images), len(queries))
        pairs = list(zip((images * n if len(images) == 1 else images) or [None] * n, (queries * n if len(queries) == 1 else queries) or [None] * n))
        results = [
            {"image": str(i) if i is not None else None, "text": t, "label": c.label, "score": c.score, "scores": c.scores}
            for (i, t), c in zip(pairs, preds)
        ]
        lines = []
        for (i, t), c in zip(pairs, preds):
            what = " | ".join(str(x) for x in (i, t) if x is not None)
            others = ", ".join(f"{k} {v:.3f}" for k, v in list(c.scores.items())[:top_k])
            lines.append(f"{what}\n  -> {c.label}  ({c.score:.3f}; {others})")
    typer.echo(json.dumps(results, indent=1) if as_json else "\n".join(lines))


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print the zoo as JSON.")) -> None:
    """The model zoo: short names for Hugging Face checkpoints, and which are on disk (offline: the local cache).

    Example:  polymodal models
    """
    import json

    from polymodal.hub.zoo import hub_cache_dir, zoo_status

    rows = zoo_status()
    if as_json:
        typer.echo(json.dumps([{"name": e.name, "repo_id": e.repo_id, "family": e.family, "tasks": list(e.tasks), "path": str(p) if p else None} for e, p in rows], indent=1))
        return
    typer.echo(f"{'name':<30} {'hub repo':<40} {'tasks':<20} on disk")
    for e, p in rows:
        typer.echo(f"{e.name:<30} {e.repo_id:<40} {', '.join(e.tasks):<20} {p if p else 'no'}")
    typer.echo(f"\nlooked in {hub_cache_dir()}; get one with `hf download REPO` (huggingface_hub's CLI), or load a local folder by path")


class OnnxExporter(str, Enum):
    auto = "auto"
    dynamo = "dynamo"
    torchscript = "torchscript"


@app.command()
def export(
    onnx: str = typer.Option(..., "--onnx", help="Dual encoder to export: run folder, checkpoints/ or step_* folder, a CLIP/SigLIP folder, or a zoo name."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write image_encoder.onnx, text_encoder.onnx, export.json and the tokenizer into."),  # noqa: B008
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (default: the exporter's, 20); below 18 uses the TorchScript exporter."),
    check: bool = typer.Option(True, "--check/--no-check", help="Run the files with onnxruntime and compare them to PyTorch."),
    atol: float = typer.Option(1e-4, "--atol", help="Largest accepted |onnx - torch| on the normalised embeddings."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out when it exists and is not empty."),
    exporter: OnnxExporter = typer.Option(OnnxExporter.auto, "--exporter", help="auto (torch.export-based; TorchScript as fallback), dynamo or torchscript."),  # noqa: B008
) -> None:
    """Export a dual encoder's image and text towers to ONNX, checked against PyTorch with onnxruntime.

    The batch axis (and the text's sequence axis) is dynamic; export.json holds the inputs, outputs,
    embedding size, logit scale and preprocessing, and the tokenizer is saved beside the graphs.

    Example:  polymodal export --onnx runs/world_retrieval --out retrieval_onnx

    Example:  polymodal export --onnx clip-vit-base-patch32 --out clip_onnx --opset 17 --overwrite
    """
    from polymodal.export import export_onnx

    result = export_onnx(onnx, out, opset=opset, check=check, atol=atol, overwrite=overwrite, exporter=exporter.value)
    typer.echo(result.summary())


index_app = typer.Typer(
    help=(
        "Build, update and inspect cross-modal search indexes (FAISS vectors + SQLite metadata).\n\n"
        "Example:  polymodal index build --model runs/world_retrieval --images world/images/test --out idx"
    ),
    no_args_is_help=True,
)
app.add_typer(index_app, name="index")


class IndexKind(str, Enum):
    auto = "auto"
    flat = "flat"
    ivf = "ivf"
    hnsw = "hnsw"


class SearchTarget(str, Enum):
    image = "image"
    text = "text"
    all = "all"


def _captions_by_path(named: dict[str, str], images: list[Path], source: Path) -> dict[str, str]:
    """``{absolute image path: caption}``: each name taken relative to the first --images folder (or an
    image file's folder) that holds it. Names that match nothing are left to the index's count; when
    none matches, the names are relative to something else, and that is said before any embedding."""
    import os

    bases = list(dict.fromkeys(os.path.abspath(p if p.is_dir() else p.parent) for p in images))
    out: dict[str, str] = {}
    for name, caption in named.items():
        found = next((os.path.join(b, name) for b in bases if os.path.isfile(os.path.join(b, name))), None)
        out[found or os.path.join(bases[0], name)] = caption
    if named and not any(os.path.isfile(p) for p in out):
        raise PolymodalError(
            f"--captions {source}: none of its {len(named)} image names (e.g. {next(iter(named))!r}) is a file under "
            f"{' or '.join(bases)}; the names must be relative to the --images folder"
        )
    return out


def _index_add(index: SearchIndex, images: list[Path], texts: Path | None, captions: Path | None, batch_size: int, progress: bool) -> list[AddReport]:
    """Add images, then texts, to an open index; the reports, printed as they finish."""
    from polymodal.index.paths import read_captions_file, read_texts_file

    text_items = read_texts_file(texts) if texts is not None else []  # a bad texts file fails before any embedding
    caps: dict[str, str] = {}
    if captions is not None:
        if not images:
            raise PolymodalError(f"--captions {captions}: captions are stored with the images they name; give those images with --images")
        caps = _captions_by_path(read_captions_file(captions), images, captions)
    reports: list[AddReport] = []
    if images:
        reports.append(index.add_images(images, captions=caps, batch_size=batch_size, progress=progress))
        typer.echo(reports[-1].summary())
    if text_items:
        reports.append(index.add_texts(text_items, batch_size=max(batch_size, 64), progress=progress))
        typer.echo(reports[-1].summary())
    return reports


@index_app.command("build")
def index_build(
    model: str = typer.Option(..., "--model", "-m", help="Dual encoder: a run folder, a checkpoint folder, a CLIP/SigLIP folder or a zoo name."),
    images: list[Path] | None = typer.Option(None, "--images", help="Folder of images (walked recursively) or an image file; repeatable."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to create (or to resume, if a killed build left it)."),
    texts: Path | None = typer.Option(None, "--texts", help="Texts to index: .txt (one per line), .json (list or COCO captions) or .jsonl."),
    captions: Path | None = typer.Option(None, "--captions", help="Captions kept with the images: COCO captions JSON or {file: caption}, names relative to --images."),
    root: Path | None = typer.Option(None, "--root", help="Collection root: every indexed image must lie under it (default: --images)."),
    kind: IndexKind = typer.Option(IndexKind.auto, "--kind", help="FAISS index: auto (flat up to 10,000 vectors, then IVF), flat, ivf or hnsw."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images embedded per batch (each batch is committed on its own)."),
    device: str = typer.Option("cpu", "--device", help="'cpu', 'cuda', 'cuda:N' or 'auto'."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Create a search index: embed a folder of images (and texts) with a model, batch by batch.

    Re-running the same command after a kill resumes it: entries already there are skipped, so nothing is
    duplicated. Unreadable images are skipped and listed.

    Example:  polymodal index build --model runs/world_retrieval --images world/images/test --texts world/annotations/captions_test.json --out idx
    """
    import os

    from polymodal.index import SearchIndex
    from polymodal.index.paths import require_images

    dirs = list(images or [])
    if not dirs and texts is None:
        raise PolymodalError("index build: give --images FOLDER and/or --texts FILE to index")
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:  # before anything is created
        raise PolymodalError(f"index build: --images {', '.join(missing)} not found")
    for folder in dirs:
        if folder.is_dir():
            require_images(folder)
    if root is None:
        if not dirs:
            raise PolymodalError("index build: give --root (the collection folder) when indexing only --texts")
        absolute = [os.path.abspath(d) for d in dirs]
        root = Path(absolute[0] if len(absolute) == 1 and Path(absolute[0]).is_dir() else os.path.commonpath([os.path.dirname(a) if not Path(a).is_dir() else a for a in absolute]))
    existed = (out / "index.json").is_file()
    index = SearchIndex.create(out, model, root=root, kind=kind.value, device=device, exist_ok=True)
    with index:
        if existed:
            typer.echo(f"resuming index {index.path}: {len(index)} entries already there are skipped")
        _index_add(index, dirs, texts, captions, batch_size, progress)
        stats = index.stats()
    typer.echo(f"index {stats.path}: {stats.images} images, {stats.texts} texts ({stats.vectors['image']['kind']})")


@index_app.command("add")
def index_add(
    index_path: Path = typer.Argument(..., help="The index folder."),
    images: list[Path] | None = typer.Option(None, "--images", help="Folder of images or an image file under the index's root; repeatable."),
    texts: Path | None = typer.Option(None, "--texts", help="Texts to add: .txt (one per line), .json (list or COCO captions) or .jsonl."),
    captions: Path | None = typer.Option(None, "--captions", help="Captions kept with the images: COCO captions JSON or {file: caption}, names relative to --images."),
    model: str | None = typer.Option(None, "--model", "-m", help="The index's model, if it moved since the build (checked against the index)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images embedded per batch."),
    device: str = typer.Option("cpu", "--device", help="'cpu', 'cuda', 'cuda:N' or 'auto'."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Add images and texts to an index; unchanged files already in it are skipped, changed ones re-embedded.

    Example:  polymodal index add idx --images world/images/val --texts more_captions.txt
    """
    from polymodal.index import SearchIndex

    if not images and texts is None:
        raise PolymodalError("index add: give --images FOLDER and/or --texts FILE to add")
    with SearchIndex.open(index_path, model=model, device=device) as index:
        _index_add(index, list(images or []), texts, captions, batch_size, progress)
        typer.echo(f"index {index.path}: {index.store.count('image')} images, {index.store.count('text')} texts")


@index_app.command("delete")
def index_delete(
    index_path: Path = typer.Argument(..., help="The index folder."),
    items: list[str] = typer.Argument(..., help="Entry ids (as search prints them) or image paths relative to the collection root."),
) -> None:
    """Delete entries by id or image path (a file named only with digits: write it as ./123.png).

    Example:  polymodal index delete idx test_000031.png 17
    """
    from polymodal.index import SearchIndex

    with SearchIndex.open(index_path) as index:
        # ids; paths as search shows them (relative to the root); a path that exists from here is taken as such
        n = index.delete([int(i) if i.isdigit() else str(Path(i).absolute()) if Path(i).exists() else i for i in items])
        typer.echo(f"deleted {n} {'entry' if n == 1 else 'entries'}; index {index.path} now holds {index.store.count('image')} images, {index.store.count('text')} texts")


@index_app.command("info")
def index_info(
    index_path: Path = typer.Argument(..., help="The index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
) -> None:
    """Describe an index: its model and fingerprint, collection root, entries, FAISS kind and size.

    Example:  polymodal index info idx --json
    """
    import json

    from polymodal.index import SearchIndex

    with SearchIndex.open(index_path) as index:
        stats = index.stats()
        for line in index.repairs:
            typer.echo(f"repaired: {line}", err=True)
    typer.echo(json.dumps(stats.to_dict(), indent=1, ensure_ascii=False) if as_json else stats.format())


@app.command()
def search(
    index_path: Path = typer.Argument(..., help="The index folder."),
    query: str | None = typer.Argument(None, help="The text to search for (or give --image)."),
    image: Path | None = typer.Option(None, "--image", "-i", help="Search by this image instead of a text."),
    k: int = typer.Option(10, "-k", "--top-k", help="How many results (more than the index holds: all of them)."),
    target: SearchTarget = typer.Option(SearchTarget.image, "--target", help="What to return: image, text or all entries."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    model: str | None = typer.Option(None, "--model", "-m", help="The index's model, if it moved since the build (checked against the index)."),
    device: str = typer.Option("cpu", "--device", help="'cpu', 'cuda', 'cuda:N' or 'auto'."),
    nprobe: int | None = typer.Option(None, "--nprobe", help="IVF index: clusters to scan (more: slower, higher recall; default: the index's own)."),
    ef_search: int | None = typer.Option(None, "--ef-search", help="HNSW index: candidates to keep (more: slower, higher recall; default: the index's own)."),
) -> None:
    """Search an index by text or by image; prints rank, cosine score, id and the image path or text.

    Example:  polymodal search idx "a red cube left of a sphere" -k 10

    Example:  polymodal search idx --image query.png -k 5 --target text --json
    """
    import json

    from polymodal.index import SearchIndex

    if (query is None) == (image is None):
        raise PolymodalError('search: give either a text query (polymodal search IDX "a red cube") or --image FILE, not both')
    with SearchIndex.open(index_path, model=model, device=device) as index:
        kind = index.stats().vectors[target.value]["kind"] if nprobe is not None or ef_search is not None else None
        for option, value, applies in (("--nprobe", nprobe, "ivf"), ("--ef-search", ef_search, "hnsw")):
            if value is not None and kind != applies:  # said, not silently dropped: the user expects it to matter
                typer.echo(f"note: {option} applies to {applies} indexes; this index's {target.value}s are searched "
                           f"by a {kind} index, so it is ignored (polymodal index info {index_path})", err=True)
        effort = {"target": target.value, "nprobe": nprobe, "ef_search": ef_search}
        hits = index.search_text(query, k, **effort) if query is not None else index.search_image(image, k, **effort)  # type: ignore[arg-type]
        rows = []
        for rank, h in enumerate(hits, 1):
            row = {"rank": rank} | h.to_dict()
            if h.path is not None:
                row["file"] = str(index.file_path(h.path))
            rows.append(row)
    if as_json:
        typer.echo(json.dumps(rows, indent=1, ensure_ascii=False))
        return
    if not rows:
        typer.echo(f"no {target.value} entries in {index_path}")
    for r in rows:
        what = r["path"] if r["kind"] == "image" else r["text"]
        cap = f"  ({r['caption']})" if r.get("caption") else ""
        typer.echo(f"{r['rank']:>3}. {r['score']:+.4f}  {r['kind']:<5} #{r['id']:<6} {what}{cap}")


@app.command()
def serve(
    model: str = typer.Option(..., "--model", "-m", help="A run folder, Hugging Face folder or zoo name."),
    index_path: Path | None = typer.Option(None, "--index", help="A search index built with this model (enables /v1/search)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; the default serves this machine only."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="Name of an environment variable holding the API key clients must send in X-API-Key."),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", min=0.001, help="Largest request body, in MB (413 past it)."),
    batch_ms: float = typer.Option(5.0, "--batch-ms", min=0.0, help="How long the micro-batcher gathers concurrent requests, in ms."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Most requests in one forward pass."),
    timeout_s: float = typer.Option(30.0, "--timeout", min=0.001, help="Seconds a request may wait for its result (504 past it)."),
    device: str = typer.Option("cpu", "--device", help="'cpu', 'cuda', 'cuda:N' or 'auto'."),
) -> None:
    """Serve a model over HTTP (FastAPI + uvicorn): /v1/embed, search, caption, answer, classify, match.

    The OpenAPI schema is at /openapi.json and interactive docs at /docs.

    Example:  polymodal serve --model runs/quickstart --index idx --port 8000
    """
    import os

    try:
        import uvicorn

        from polymodal.serve import ServeSettings, create_app
    except ImportError as e:
        raise PolymodalError(f"serving needs the serve extra ({e.name} is missing): pip install 'polymodal[serve]'") from None
    from polymodal.api import load_model

    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise PolymodalError(f"--api-key-env {api_key_env}: that environment variable is not set or empty")
    settings = ServeSettings(api_key=api_key, max_upload_bytes=int(max_upload_mb * 1024 * 1024), batch_ms=batch_ms,
                             max_batch=max_batch, timeout_s=timeout_s)
    loaded = load_model(model, device)
    index = None
    if index_path is not None:
        from polymodal.index import SearchIndex

        index = SearchIndex.open(index_path, model=loaded, device=device)  # refuses a model with other weights
    application = create_app(*loaded, index=index, settings=settings, name=model)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        typer.echo(f"warning: serving on {host} without an API key (--api-key-env); anyone who can reach it can use it", err=True)
    uvicorn.run(application, host=host, port=port, log_level="info")


convert_app = typer.Typer(help="Turn pretrained checkpoints into polymodal's own (faster) models.", no_args_is_help=True)
app.add_typer(convert_app, name="convert")


@convert_app.command("clip")
def convert_clip_command(
    source: str = typer.Argument(..., help="A Hugging Face CLIP folder (save_pretrained, with tokenizer.json) or zoo name."),
    out: Path = typer.Option(..., "--out", help="Run folder to write (every polymodal command takes it)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
) -> None:
    """Convert CLIP weights into polymodal's own dual encoder, checked against transformers' embeddings.

    The converted model computes the same embeddings with polymodal's towers, which are faster on CPU
    than transformers' CLIPModel (benchmarks/RESULTS.md); predict, eval, index build and serve take it.

    Example:  polymodal convert clip ~/models/clip-vit-base-patch32 --out runs/clip_b32
    """
    from polymodal.hub.native_clip import convert_clip

    path = convert_clip(source, out, overwrite=overwrite)
    typer.echo(f"wrote {path}: a polymodal dual encoder with the CLIP weights of {source} (embeddings checked against transformers')")
    typer.echo(f"  search:  polymodal index build --model {out} --images PHOTOS --out IDX")
    typer.echo(f"  fine-tune: a train config with 'init_from: {out}' (model, tokenizer and preprocessing come with it)")


bench_app = typer.Typer(help="Measure models: parameters, FLOPs and latency.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("model")
def bench_model(
    names: list[str] = typer.Argument(None, help="Shipped model configs (e.g. vqa-tiny) or YAML paths; none: all shipped."),
    batch: int = typer.Option(8, "--batch", min=1, help="Samples per dummy batch (per-sample numbers divide by it)."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed forward passes; latency is their median."),
    device: str = typer.Option("cpu", "--device", help="'cpu', 'cuda' or 'cuda:N' ('auto': CUDA when available)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the table as JSON to this file."),
) -> None:
    """Parameters, forward FLOPs per sample, peak forward memory and latency per sample of model configs.

    Dummy inputs follow each config's encoders (images, token ids, log-mels, video clips, feature
    sequences). Peak memory is what one forward of the whole batch allocates above the weights and inputs.

    Example:  polymodal bench model dual_encoder-tiny captioner-small --batch 16

    Example:  polymodal bench model --json costs.json
    """
    import json

    from polymodal.api import resolve_device
    from polymodal.models.cost import ModelCost, measure
    from polymodal.models.factory import list_model_configs

    dev = resolve_device(device)
    costs = []
    typer.echo(ModelCost.HEADER)
    for name in names or list_model_configs():
        cost = measure(name, batch=batch, repeats=repeats, device=dev)
        costs.append(cost)
        typer.echo(cost.format())
    typer.echo(f"batch {batch}, {dev}; peak MiB: one forward pass of the batch, above weights and inputs")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps([c.to_dict() for c in costs], indent=1) + "\n", encoding="utf-8")
        typer.echo(f"wrote {json_path}")


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: user-fixable errors print one paragraph and exit 2."""
    try:
        # without standalone mode click *returns* the code of typer.Exit instead of exiting
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except PolymodalError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C: a training run resumes from its last checkpoint with --resume
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as e:  # click usage errors come here in standalone_mode=False
        # click's, or the copy newer typer versions vendor as typer._click: both show() and carry exit_code
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()  # type: ignore[attr-defined]
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        raise


if __name__ == "__main__":
    main()
