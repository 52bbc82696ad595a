"""CPU training throughput of the quickstart model against the same architecture built from `transformers`.

    python benchmarks/bench_train_cpu.py [--steps 8] [--warmup 3] [--repeats 3] [--pool 16 | --fresh] [--threads 2] [--compile]
    python benchmarks/bench_train_cpu.py --quick      # a few steps at batch 16: checks that it runs

Issue #9, target 2: samples/s (images per second through a full forward + backward + optimizer step)
of the quickstart's multi-task model, polymodal's own modules against a *peer* with the same
architecture whose every transformer piece is a `transformers` module. Target: polymodal >= 1.3x.

Both models are built from ``configs/quickstart.yaml`` (the ``model`` section, through
``build_model``), then the peer's four transformer stacks are swapped for `transformers` ones:

* text tower (width 128, 2 layers, 4 heads, MLP 512, 48 positions): ``BertModel`` without its pooler;
* fusion (2 layers, text self-attention + cross-attention to the image tokens + MLP): ``BertEncoder``
  with ``add_cross_attention=True``. `transformers` only builds cross-attention in decoder layers
  (``is_decoder=True``), so the self-attention modules' ``is_causal`` flag is switched off and the
  padding mask comes from ``transformers.masking_utils.create_bidirectional_mask``: bidirectional,
  exactly what polymodal's fusion does;
* caption decoder (1 layer, causal, cross-attention): ``BertModel(is_decoder=True,
  add_cross_attention=True)``, the body of ``BertLMHeadModel``; its LM head stays polymodal's (tied to
  the word embedding, plus a bias) because ``BertLMHeadModel``'s extra dense + LayerNorm transform
  would make the heads differ;
* the grounded readout's layer over [question; object slots] (width 128, 1 layer, 4 heads, MLP 256,
  cross-attention to the fused question's tokens): ``BertEncoder`` as the fusion.

Everything else is the very same code in both: the SmallCNN image tower (plain torch convolutions), the
projection / VQA / classification / probe / object heads, every loss (polymodal's), AdamW (fused, as the Trainer builds it) with the
quickstart's weight-decay groups, gradient clipping at the config's ``grad_clip``, and bf16 autocast as
``train.precision`` says. So the ratio measures the transformer stacks (attention, masks, layer
layout), which is what a user swapping polymodal for `transformers` would change. The one
architectural difference left is the LayerNorm placement: polymodal's blocks are pre-LN, BERT's post-LN
(same number of LayerNorms, same FLOPs); BERT's embeddings add a 2 x 128 token-type table per tower.

Inputs are synthetic and made before timing (data loading is excluded): 64 images of 64 px, one caption
each, ``questions_per_image`` questions and one statement per image, token lengths drawn per row (so
padding masks are realistic), answers (as the soft targets the Trainer's loader makes) and object annotations from
the built-in world's vocabulary.
Token counts change from batch to batch, as in training, and oneDNN builds a kernel for every matrix
size on its first use. So the timed steps cycle through a pool of ``--pool`` (16) batches that each
model has run once in its warm-up: the steady state a training run reaches once it has met its batch
shapes (within its first hundred or so steps), which is what samples/s over a run measures. ``--fresh``
times batches never seen before instead: a run's first steps, still building kernels (2026-11-24,
sixteenth session: polymodal 10% slower that way, the peer 4%, since polymodal's packed token counts
take more distinct sizes than the peer's padded lengths). ``--same-batch`` repeats one batch.
Rows: polymodal as shipped; "polymodal, SDPA attention", the same model with its CPU training
attention switched back to ``F.scaled_dot_product_attention`` (see :func:`sdpa_attention`;
``--no-what-if`` drops it); and
one peer per ``--peer-attn`` implementation: ``sdpa`` (transformers' default) and ``eager`` (faster
on CPU at these sizes). The target is judged against the fastest peer. Models are timed in
interleaved repeats (the order reversed every other repeat) so background load on a shared machine
hits all alike; the table shows the median repeat (best in parentheses).

Run as a script, it re-runs itself with glibc told to keep freed memory (``GLIBC_TUNABLES``, see
``provenance.steady_heap_env``), unless ``GLIBC_TUNABLES`` is set already or ``--glibc-defaults`` is
given. With glibc's defaults, each model timed in this one process page-faults back in the memory
the other's frees returned to the OS, and the peer, whose activations are larger, paid 10% for it:
the ratio read 1.31-1.50x where it is 1.26-1.32x with the heap kept, and 1.28-1.33x with each model
alone in its own process (2026-11-24, fifteenth session).

Writes benchmarks/results/train_cpu.json (machine, library versions, date, commit) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from provenance import cpu_model, git_commit, heap_settings, rerun_with_steady_heap, write_result
from torch import Tensor, nn

from polymodal.data.world.scene import COLORS, MATERIALS, SHAPES, SIZES, VALUES
from polymodal.models.factory import BuildContext, build_model
from polymodal.models.object_head import ObjectVocab
from polymodal.models.vqa import AnswerVocab
from polymodal.modules.encoders.base import EncoderOutput
from polymodal.quickstart import quickstart_config
from polymodal.train.schedule import build_adamw

ROOT = Path(__file__).resolve().parent.parent
RESULT = Path(__file__).parent / "results" / "train_cpu.json"
PAD, BOS, EOS = 0, 1, 2  # the special ids build_model uses when it is given no tokenizer
# Token lengths (incl. [CLS]/[SEP]) per row: (shortest, longest, skew), drawn as shortest + (longest -
# shortest) * u**skew with u uniform, so most texts are short and a few long, as the built-in world's
# are with the quickstart's WordPiece tokenizer (30 training batches, 2026-11-24: captions 9-37 tokens,
# median 21, mean 21.7; questions 7-25, median 11, mean 11.8; statements 7-16, median 9, mean 10.1;
# each batch padded to its longest: captions 32-37, questions 21-25, statements 14-16).
LENGTHS = {"caption": (9, 37, 1.5), "question": (7, 25, 2.0), "statement": (7, 16, 2.0)}
MAX_OBJECTS = 5


# ------------------------------------------------------------------------------------------------
# The peer: the same model with `transformers` stacks
# ------------------------------------------------------------------------------------------------


def bert_config(
    width: int, depth: int, heads: int, vocab: int, positions: int, *, cross: bool, causal: bool, attn: str, mlp_ratio: float = 4.0
) -> Any:
    """A ``BertConfig`` sized like a polymodal tower (no dropout, LayerNorm eps 1e-5, exact GELU, as polymodal)."""
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=int(mlp_ratio * width),
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=positions,
        type_vocab_size=2,
        layer_norm_eps=1e-5,
        is_decoder=cross or causal,  # transformers builds cross-attention only in decoder layers
        add_cross_attention=cross,
        use_cache=False,
        pad_token_id=PAD,
    )
    config._attn_implementation = attn
    return config


class BertText(nn.Module):
    """``BertModel`` behind polymodal's text-encoder interface: the text tower, or (causal, with
    cross-attention) the caption decoder. ``token_embed`` lets the captioner tie its LM head to it."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel(config, add_pooling_layer=False)
        self.width = self.output_dim = config.hidden_size
        self.vocab_size = config.vocab_size
        self.max_length = config.max_position_embeddings

    @property
    def token_embed(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        encoder_tokens: Tensor | None = None,
        encoder_mask: Tensor | None = None,
    ) -> EncoderOutput:
        mask = (input_ids != PAD) if attention_mask is None else attention_mask != 0
        out = self.bert(
            input_ids=input_ids,
            attention_mask=mask.long(),
            encoder_hidden_states=encoder_tokens,
            encoder_attention_mask=encoder_mask,
            use_cache=False,
        )
        tokens = out.last_hidden_state
        return EncoderOutput(tokens=tokens, pooled=tokens[:, 0], mask=mask)


class BertFusion(nn.Module):
    """``BertEncoder`` layers with cross-attention behind polymodal's fusion-stack interface.

    The layers are decoder layers (the only kind `transformers` gives cross-attention), made
    bidirectional: ``is_causal`` off on every self-attention, and an explicit padding mask."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers.models.bert.modeling_bert import BertEncoder

        self.config = config
        self.encoder = BertEncoder(config)
        for layer in self.encoder.layer:
            layer.attention.self.is_causal = False

    def forward(
        self, x: Tensor, *, mask: Tensor | None = None, context: Tensor | None = None, context_mask: Tensor | None = None, context_rows: Tensor | None = None
    ) -> Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        if context is not None and context_rows is not None:  # `transformers` takes one context per row: repeat it
            context = context.index_select(0, context_rows)
            context_mask = None if context_mask is None else context_mask.index_select(0, context_rows)

        attn = create_bidirectional_mask(config=self.config, inputs_embeds=x, attention_mask=None if mask is None else mask.long())
        cross = None
        if context_mask is not None:
            cross = create_bidirectional_mask(config=self.config, inputs_embeds=x, attention_mask=context_mask.long(), encoder_hidden_states=context)
        return self.encoder(x, attention_mask=attn, encoder_hidden_states=context, encoder_attention_mask=cross).last_hidden_state


def to_peer(model: nn.Module, model_cfg: dict[str, Any], vocab: int, attn: str) -> nn.Module:
    """A deep copy of a polymodal multi-task model whose text tower, fusion, decoder and readout layer are
    `transformers` modules."""
    peer = copy.deepcopy(model)
    text, dec = model_cfg["text"], model_cfg["decoder"]
    backbone = peer.pretrain.backbone
    width = backbone.width
    backbone.text_encoder = BertText(bert_config(width, text["depth"], text["heads"], vocab, text["max_length"], cross=False, causal=False, attn=attn))
    heads = model_cfg.get("fusion_heads") or max(1, width // 64)
    backbone.fusion = BertFusion(bert_config(width, model_cfg.get("fusion_depth", 2), heads, vocab, text["max_length"], cross=True, causal=False, attn=attn))
    peer.captioner.decoder = BertText(bert_config(dec["width"], dec["depth"], dec["heads"], vocab, dec["max_length"], cross=True, causal=True, attn=attn))
    readout = peer.vqa.readout
    if readout is not None:  # the grounded readout's layer over [question; slots], reading the question's tokens
        block = readout.reason.blocks[0]
        ratio = block.mlp.fc.out_features / readout.dim
        config = bert_config(readout.dim, len(readout.reason.blocks), block.attn.heads, vocab, text["max_length"], cross=True, causal=False, attn=attn, mlp_ratio=ratio)
        readout.reason = BertFusion(config)
    return peer


# ------------------------------------------------------------------------------------------------
# Models, inputs, one training step
# ------------------------------------------------------------------------------------------------


def world_vocabularies() -> tuple[AnswerVocab, ObjectVocab]:
    """The answers and object attributes the built-in world's questions and scene graphs use."""
    answers = ["yes", "no", *(str(n) for n in range(11)), *COLORS, *SHAPES, *SIZES, *MATERIALS]
    return AnswerVocab(tuple(answers)), ObjectVocab({k: list(v) for k, v in VALUES.items()})


def build_polymodal(model_cfg: dict[str, Any], vocab: int, seed: int) -> nn.Module:
    """The quickstart's multi-task model exactly as ``polymodal quickstart`` builds it (bar the tokenizer)."""
    answers, objects = world_vocabularies()
    torch.manual_seed(seed)
    return build_model(dict(model_cfg), BuildContext(vocab_size=vocab, answer_vocab=answers, object_vocab=objects))


def _ids(rows: int, lengths: tuple[int, int, float], vocab: int, max_length: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    lo, hi, skew = lengths[0], min(lengths[1], max_length), lengths[2]
    n = lo + ((hi - lo + 1) * torch.rand(rows, generator=g) ** skew).long().clamp(max=hi - lo)
    t = int(n.max())
    ids = torch.randint(3, vocab, (rows, t), generator=g)
    ids[:, 0] = BOS
    pos = torch.arange(t)
    ids[pos[None] == (n - 1)[:, None]] = EOS
    mask = pos[None] < n[:, None]
    return ids.masked_fill(~mask, PAD), mask.long()


def make_batch(batch_size: int, per_image: int, vocab: int, max_length: int, image_size: int, seed: int) -> dict[str, Any]:
    """One synthetic multi-task batch with the shapes and padding of a quickstart batch."""
    g = torch.Generator().manual_seed(seed)
    answers, objects = world_vocabularies()
    caption_ids, caption_mask = _ids(batch_size, LENGTHS["caption"], vocab, max_length, g)
    question_ids, question_mask = _ids(batch_size * per_image, LENGTHS["question"], vocab, max_length, g)
    statement_ids, statement_mask = _ids(batch_size, LENGTHS["statement"], vocab, max_length, g)
    picks = torch.randint(len(answers), (batch_size * per_image, 10), generator=g).tolist()
    n_obj = torch.randint(2, MAX_OBJECTS + 1, (batch_size,), generator=g)
    attrs = torch.stack([torch.randint(len(v), (batch_size, MAX_OBJECTS), generator=g) for v in objects.attributes.values()], dim=-1)
    attrs[torch.arange(MAX_OBJECTS)[None] >= n_obj[:, None]] = -100
    # grounding: which objects each question (image-major) and then each statement is about
    row_objects = torch.cat([n_obj.repeat_interleave(per_image), n_obj])
    grounding = (torch.rand(len(row_objects), MAX_OBJECTS, generator=g) < 0.3).float()
    grounding[torch.arange(MAX_OBJECTS)[None] >= row_objects[:, None]] = -100
    return {
        "images": torch.randn(batch_size, 3, image_size, image_size, generator=g),
        "caption_ids": caption_ids,
        "caption_mask": caption_mask,
        "question_ids": question_ids,
        "question_mask": question_mask,
        # 10 annotators per question, as VQA v2; as soft targets, which the Trainer's loader computes (off the step)
        "answers": answers.targets([[answers.answers[i] for i in row] for row in picks]),
        "statement_ids": statement_ids,
        "statement_mask": statement_mask,
        "labels": torch.randint(2, (batch_size,), generator=g),
        "image_ids": torch.arange(batch_size),
        "object_attributes": attrs,
        "object_xy": torch.rand(batch_size, MAX_OBJECTS, 2, generator=g),
        "object_annotated": torch.ones(batch_size, dtype=torch.bool),
        "grounding": grounding,
    }


@dataclass
class Runner:
    """A model with its optimizer and the training step the Trainer runs (autocast, backward, clip, AdamW)."""

    name: str
    model: nn.Module
    forward: Callable[..., Any]
    optimizer: torch.optim.Optimizer
    precision: str
    grad_clip: float
    attention: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext

    def step(self, batch: dict[str, Any]) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with self.attention():
            with torch.autocast("cpu", dtype=dtype, enabled=self.precision in ("bf16", "fp16")):
                loss = self.forward(**batch).loss
            loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return float(loss.item())  # the Trainer reads the loss every step too (finiteness check, logging)


@contextlib.contextmanager
def sdpa_attention() -> Iterator[None]:
    """polymodal's attention as it was before it wrote CPU training attention out by hand: SDPA.

    On CPU, ``F.scaled_dot_product_attention`` picks a flash kernel whose backward is slow at
    polymodal's sizes (head dim 32, 10-50 tokens); ``modules/attention.py`` now runs matmul, softmax,
    matmul when training on CPU. This row puts SDPA back, to show what that choice is worth."""
    from polymodal.modules import attention

    def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, dropout_p: float) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)

    saved = attention._math_attention
    attention._math_attention = sdpa
    try:
        yield
    finally:
        attention._math_attention = saved


def make_runner(
    name: str,
    model: nn.Module,
    cfg: dict[str, Any],
    compile_model: bool = False,
    attention: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Runner:
    """The Trainer's optimizer for ``model`` (fused AdamW, weight-decay groups, the config's lr and clipping)."""
    o = cfg["optim"]
    model.train()
    optimizer = build_adamw(model, lr=o.get("lr", 1e-3), weight_decay=o.get("weight_decay", 0.0))
    forward = torch.compile(model) if compile_model else model
    precision = cfg["train"].get("precision", "fp32")
    return Runner(name, model, forward, optimizer, precision, o.get("grad_clip", 0.0), attention)


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameters in total and per part (shared modules counted once, as ``model.parameters()`` does)."""
    backbone = model.pretrain.backbone

    def n(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    parts = {"image_tower": n(backbone.image_encoder), "text_tower": n(backbone.text_encoder), "fusion": n(backbone.fusion), "decoder": n(model.captioner.decoder)}
    total = n(model)
    return {"total": total, **parts, "heads_and_rest": total - sum(parts.values())}


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare two result files: CPU, cores, threads, load, library versions."""
    import transformers

    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
        "load_average_at_start": list(os.getloadavg()),
    }


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Median repeat per model (best in parentheses); ratios are medians over each peer's median."""
    peers = [r for r in rows if r["model"].startswith("peer")]
    head = " | ".join(f"vs {p['model']}" for p in peers)
    lines = [f"| model | params | samples/s | ms / step | {head} |", "|---|---:|---:|---:|" + "---:|" * len(peers)]
    for r in rows:
        ratios = " | ".join(f"{r['samples_per_s_median'] / p['samples_per_s_median']:.2f}x" for p in peers)
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['samples_per_s_median']:.1f} ({r['samples_per_s_best']:.1f}) "
            f"| {r['ms_per_step_median']:.0f} | {ratios} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=None, help="images per step (default: the quickstart's, 64)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per repeat")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per model before the first repeat")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed repeats per model")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the quickstart machine has 2 cores)")
    ap.add_argument(
        "--peer-attn", nargs="+", choices=("sdpa", "eager"), default=["sdpa", "eager"],
        help="the peers' attention implementations (transformers' default is sdpa; eager is faster on CPU)",
    )
    ap.add_argument(
        "--no-what-if", dest="what_if", action="store_false",
        help="skip the 'polymodal, SDPA attention' row (CPU training attention as it was before)",
    )
    ap.add_argument("--compile", action="store_true", help="also time polymodal under torch.compile (slow to compile on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--pool", type=int, default=16,
        help="timed steps cycle through this many batches, each run once per model in the warm-up (the steady state; see the module doc)",
    )
    ap.add_argument(
        "--fresh", action="store_true",
        help="time batches never seen before instead of the warm-up's pool: a run's first steps, still building kernels for new shapes",
    )
    ap.add_argument("--same-batch", action="store_true", help="time every step on one repeated batch (a pool of 1)")
    ap.add_argument("--quick", action="store_true", help="batch 16, 1 warmup step, 2 repeats of 2 steps, a pool of 2: checks that it runs")
    ap.add_argument(
        "--glibc-defaults", action="store_true",
        help="keep glibc's allocator settings (run as a script, the benchmark otherwise re-runs itself with the heap kept; see the module doc)",
    )
    ap.add_argument("--result", type=Path, default=RESULT)
    args = ap.parse_args(argv)
    if args.quick:
        args.batch_size = args.batch_size or 16
        args.steps, args.warmup, args.repeats, args.pool = min(args.steps, 2), min(args.warmup, 1), min(args.repeats, 2), min(args.pool, 2)
    if args.same_batch:
        args.pool = 1
    if args.pool < 1:
        ap.error(f"--pool must be at least 1, got {args.pool}")
    if args.fresh and args.same_batch:
        ap.error("--fresh and --same-batch exclude each other")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the record it writes (the test reads it)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = quickstart_config()
    model_cfg, train_cfg = cfg["model"], cfg["train"]
    vocab = cfg["tokenizer"]["vocab_size"]
    batch_size = args.batch_size or train_cfg["batch_size"]
    per_image = train_cfg.get("questions_per_image", 1)
    max_length = min(model_cfg["text"]["max_length"], model_cfg["decoder"]["max_length"])
    # Batches whose token counts differ, as in training. Pooled: the warm-up runs every batch of the pool
    # once, so timed steps meet only shapes whose kernels exist; fresh: every timed batch is new.
    # Both sides see the same batches in the same order.
    warmup = max(1, args.warmup) if args.fresh else max(args.warmup, args.pool)
    timed = args.repeats * args.steps
    n_batches = warmup + timed if args.fresh else args.pool
    batches = [make_batch(batch_size, per_image, vocab, max_length, model_cfg["vision"]["image_size"], args.seed + i) for i in range(n_batches)]
    batch = batches[0]

    poly = build_polymodal(model_cfg, vocab, args.seed)
    runners = [make_runner("polymodal", poly, cfg)]
    if args.what_if:
        runners.append(make_runner("polymodal, SDPA attention", copy.deepcopy(poly), cfg, attention=sdpa_attention))
    for attn in args.peer_attn:  # copies: the same CNN and head weights, BERT stacks
        runners.append(make_runner(f"peer ({attn})", to_peer(poly, model_cfg, vocab, attn), cfg))
    if args.compile:
        runners.append(make_runner("polymodal+compile", build_polymodal(model_cfg, vocab, args.seed), cfg, compile_model=True))
    params = {r.name: count_params(r.model) for r in runners}

    warmup_s: dict[str, float] = {}

    def timed_batch(step: int) -> dict[str, Any]:
        return batches[warmup + step] if args.fresh else batches[step % len(batches)]

    for r in runners:  # first steps allocate, build kernels and (with --compile) compile: untimed
        t0 = time.perf_counter()
        for i in range(warmup):
            r.step(batches[i % len(batches)])
        warmup_s[r.name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    losses: dict[str, float] = {}
    for rep in range(args.repeats):
        order = runners if rep % 2 == 0 else runners[::-1]  # alternate who goes first
        for r in order:
            t0 = time.perf_counter()
            for i in range(args.steps):
                losses[r.name] = r.step(timed_batch(rep * args.steps + i))
            times[r.name].append((time.perf_counter() - t0) / args.steps)

    rows = []
    for r in runners:
        per_step = times[r.name]
        rows.append({
            "model": r.name,
            "params": params[r.name]["total"],
            "params_by_part": params[r.name],
            "samples_per_s_median": round(batch_size / statistics.median(per_step), 2),
            "samples_per_s_best": round(batch_size / min(per_step), 2),
            "ms_per_step_median": round(1000 * statistics.median(per_step), 1),
            "ms_per_step_repeats": [round(1000 * t, 1) for t in per_step],
            "warmup_seconds": round(warmup_s[r.name], 2),
            "last_loss": round(losses[r.name], 4),
        })
    peers = [row for row in rows if row["model"].startswith("peer")]
    fastest = max(peers, key=lambda row: row["samples_per_s_median"])
    for row in rows:
        row["ratio_vs_peers"] = {p["model"]: round(row["samples_per_s_median"] / p["samples_per_s_median"], 3) for p in peers}
    p_poly, p_peer = params["polymodal"]["total"], params[peers[0]["model"]]["total"]
    record: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "commit": git_commit(),
        "machine": machine_info(),
        "config": "src/polymodal/configs/quickstart.yaml",
        "batch": {
            "images": batch_size, "questions": batch_size * per_image, "statements": batch_size, "captions": batch_size,
            "caption_tokens": list(batch["caption_ids"].shape), "question_tokens": list(batch["question_ids"].shape),
            "statement_tokens": list(batch["statement_ids"].shape), "lengths": LENGTHS,
        },
        "precision": train_cfg.get("precision", "fp32"),
        "peer_attention": args.peer_attn,
        "steps": args.steps, "warmup": warmup, "repeats": args.repeats, "quick": args.quick,
        "timed_batches": "fresh" if args.fresh else f"pool of {args.pool}, each run in the warm-up",
        "heap": heap_settings(),
        "param_difference_pct": round(100 * (p_peer - p_poly) / p_poly, 3),
        "rows": rows,
        "fastest_peer": fastest["model"],
        "ratio_polymodal_to_fastest_peer": rows[0]["ratio_vs_peers"][fastest["model"]],
        "target_ratio": 1.3,
    }
    write_result(args.result, record)

    print(f"batch {batch_size} images ({batch_size * per_image} questions, {batch_size} statements, {batch_size} captions), "
          f"{record['precision']} autocast, {torch.get_num_threads()} threads, heap: {record['heap']}, "
          f"timed batches: {record['timed_batches']}")
    print(markdown_table(rows))
    print(f"\nparameters by part (peer {record['param_difference_pct']:+.3f}% vs polymodal):")
    for name, parts in params.items():
        print(f"  {name:<18} " + ", ".join(f"{k} {v:,}" for k, v in parts.items()))
    ratio = record["ratio_polymodal_to_fastest_peer"]
    target = "met" if ratio >= 1.3 else "NOT met"
    print(f"polymodal / fastest peer ({fastest['model']}): {ratio}x (target >= 1.3x: {target}); wrote {args.result}")
    return record


if __name__ == "__main__":
    if not parse_args().glibc_defaults:  # argparse's reading of the flag, abbreviations included
        rerun_with_steady_heap(sys.argv)
    main()
