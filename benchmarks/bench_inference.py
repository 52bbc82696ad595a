"""Benchmark: inference speed of polymodal models against Hugging Face models of the same shapes.

    python benchmarks/bench_inference.py                      # CPU-friendly shapes, fp32
    python benchmarks/bench_inference.py --preset vit-b-32 --device cuda --dtype bf16
    python benchmarks/bench_inference.py --quick              # tiny shapes, a smoke test

Why a same-shape peer: a throughput number alone says little, but the same architecture built by
another library on the same machine and in the same process says whether polymodal's own layers
(fused projections, shared masks, its KV cache and search loop) cost anything. Weights are random:
speed does not depend on them, and no download is needed.

Two comparisons:

* **Embedding** (samples/s): a polymodal ``dual_encoder`` (ViT image tower with a pre-LN, causal
  text tower, QuickGELU, bias-free projections) against ``transformers.CLIPModel`` with the same
  widths, depths, heads, patch size, context length and vocabulary. Image embeds/s from
  ``encode_image`` vs ``get_image_features``, text embeds/s from ``encode_text`` vs
  ``get_text_features`` (padded texts with an attention mask, as a tokenizer gives them).
* **Captioning** (generated tokens/s, greedy, KV cache): a polymodal ``captioner`` (ViT + causal
  decoder cross-attending to the image tokens, tied LM head) against a
  ``VisionEncoderDecoderModel`` (``ViTModel`` + ``GPT2LMHeadModel`` with cross-attention, same
  widths / depths / heads / vocabulary) through ``generate(use_cache=True)``. Both generate exactly
  ``--new-tokens`` tokens per image: the end token is banned until then (polymodal's
  ``min_length``, Hugging Face's ``min_new_tokens``). Both sides are also timed without a KV cache
  (``use_cache=False``: the whole prefix recomputed every step), to show what the cache buys.

Every timing is a warm-up, then ``--repeats`` runs of each side *interleaved* (polymodal, peer,
polymodal, ...) so that load changes on a shared machine hit both; the best run is the headline
(least noisy), the median is recorded too. ``ratio`` = polymodal / peer throughput (> 1: polymodal
is faster). Parameter counts of both sides are printed and recorded; they agree to well under 1%.
The table is printed as Markdown and ``--out`` (default ``benchmarks/results/inference.json``)
receives the numbers with the machine, versions, date and commit.

Run as a script, it re-runs itself with glibc told to keep freed memory (``GLIBC_TUNABLES``, see
``provenance.steady_heap_env``), unless ``GLIBC_TUNABLES`` is set already or ``--glibc-defaults`` is
given: with glibc's defaults the peer's image embedding page-faulted back in the memory the other
side's freed blocks had returned to the OS, and ran about 10% slower than with the heap kept (image
embedding ratio 1.40-1.43x with glibc's defaults, 1.26-1.34x with the heap kept, three runs each;
text embedding and captioning did not move; 2-core Xeon, 2026-11-24, sixteenth session).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from provenance import cpu_model, ensure_polymodal_importable, git_commit, heap_settings, rerun_with_steady_heap, write_result
from torch import Tensor, nn
from torch.nn import functional as F

ensure_polymodal_importable()  # a GPU machine may have the checkout but no install

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "inference.json"
BOS, EOS, PAD = 1, 2, 0  # special ids of both captioners (the vocabulary is random anyway)


@dataclass(frozen=True)
class Shapes:
    """The architecture both sides are built with; one set of numbers so they cannot drift apart."""

    image_size: int = 128
    patch_size: int = 16
    vision_width: int = 256
    vision_depth: int = 6
    vision_heads: int = 4
    text_width: int = 256
    text_depth: int = 6
    text_heads: int = 4
    context_length: int = 32
    vocab_size: int = 8192
    embed_dim: int = 256
    decoder_positions: int = 64  # captioning decoder's position table (prompt + generated tokens)


PRESETS: dict[str, Shapes] = {
    # A CPU-friendly default: 64 patches + CLS, two 6-layer towers of width 256.
    "cpu": Shapes(),
    # OpenAI CLIP ViT-B/32's shapes (for a GPU run); the captioner uses the same towers.
    "vit-b-32": Shapes(
        image_size=224,
        patch_size=32,
        vision_width=768,
        vision_depth=12,
        vision_heads=12,
        text_width=512,
        text_depth=12,
        text_heads=8,
        context_length=77,
        vocab_size=49408,
        embed_dim=512,
        decoder_positions=128,
    ),
    # Tiny shapes for --quick and the test: seconds, not minutes.
    "tiny": Shapes(
        image_size=32,
        patch_size=8,
        vision_width=64,
        vision_depth=2,
        vision_heads=2,
        text_width=64,
        text_depth=2,
        text_heads=2,
        context_length=16,
        vocab_size=512,
        embed_dim=32,
        decoder_positions=32,
    ),
}


# ------------------------------------------------------------------------------------------------
# Models: polymodal and its Hugging Face peer, from one Shapes
# ------------------------------------------------------------------------------------------------


def build_polymodal_dual_encoder(s: Shapes) -> nn.Module:
    """A CLIP-architecture dual encoder (pre-LN ViT with ``ln_pre``, causal text tower, QuickGELU).

    The towers own their bias-free projections (``output_dim``), as CLIP's do, so the projection
    exists even when ``embed_dim`` equals a tower's width (``DualEncoder`` would skip it then).
    """
    from polymodal.models.factory import BuildContext, build_model

    cfg = {
        "type": "dual_encoder",
        "embed_dim": s.embed_dim,
        "vision": {
            "name": "vit",
            "image_size": s.image_size,
            "patch_size": s.patch_size,
            "width": s.vision_width,
            "depth": s.vision_depth,
            "heads": s.vision_heads,
            "ln_pre": True,
            "activation": "quick_gelu",
            "output_dim": s.embed_dim,
        },
        "text": {
            "name": "text_transformer",
            "max_length": s.context_length,
            "width": s.text_width,
            "depth": s.text_depth,
            "heads": s.text_heads,
            "causal": True,
            "pad_id": PAD,
            "activation": "quick_gelu",
            "output_dim": s.embed_dim,
        },
    }
    return build_model(cfg, BuildContext(vocab_size=s.vocab_size))


def build_hf_clip(s: Shapes) -> nn.Module:
    """``transformers.CLIPModel`` with the same shapes, SDPA attention, random weights."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config={
            "vocab_size": s.vocab_size,
            "hidden_size": s.text_width,
            "intermediate_size": 4 * s.text_width,
            "num_hidden_layers": s.text_depth,
            "num_attention_heads": s.text_heads,
            "max_position_embeddings": s.context_length,
            "hidden_act": "quick_gelu",
            "pad_token_id": PAD,
            "bos_token_id": BOS,
            "eos_token_id": EOS,
        },
        vision_config={
            "hidden_size": s.vision_width,
            "intermediate_size": 4 * s.vision_width,
            "num_hidden_layers": s.vision_depth,
            "num_attention_heads": s.vision_heads,
            "image_size": s.image_size,
            "patch_size": s.patch_size,
            "hidden_act": "quick_gelu",
        },
        projection_dim=s.embed_dim,
    )
    cfg._attn_implementation = "sdpa"
    return CLIPModel(cfg)


def build_polymodal_captioner(s: Shapes) -> nn.Module:
    """ViT (no ``ln_pre``, exact GELU, like ``ViTModel``) + causal cross-attending decoder (tanh GELU,
    like GPT-2), both at the vision width so the decoder reads the image tokens without a projection."""
    from polymodal.models.factory import BuildContext, build_model

    cfg = {
        "type": "captioner",
        "vision": {
            "name": "vit",
            "image_size": s.image_size,
            "patch_size": s.patch_size,
            "width": s.vision_width,
            "depth": s.vision_depth,
            "heads": s.vision_heads,
        },
        "decoder": {
            "name": "text_transformer",
            "max_length": s.decoder_positions,
            "width": s.vision_width,
            "depth": s.text_depth,
            "heads": s.vision_heads,
            "pad_id": PAD,
            "activation": "gelu_tanh",
        },
    }
    return build_model(cfg, BuildContext(vocab_size=s.vocab_size))


def build_hf_captioner(s: Shapes) -> nn.Module:
    """``VisionEncoderDecoderModel``: ``ViTModel`` (no pooler) + ``GPT2LMHeadModel`` with cross-attention."""
    from transformers import GPT2Config, GPT2LMHeadModel, VisionEncoderDecoderModel, ViTConfig, ViTModel

    vit = ViTConfig(
        hidden_size=s.vision_width,
        num_hidden_layers=s.vision_depth,
        num_attention_heads=s.vision_heads,
        intermediate_size=4 * s.vision_width,
        image_size=s.image_size,
        patch_size=s.patch_size,
        layer_norm_eps=1e-5,
    )
    gpt2 = GPT2Config(
        vocab_size=s.vocab_size,
        n_positions=s.decoder_positions,
        n_embd=s.vision_width,
        n_layer=s.text_depth,
        n_head=s.vision_heads,
        add_cross_attention=True,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        is_decoder=True,
    )
    vit._attn_implementation = "sdpa"
    gpt2._attn_implementation = "sdpa"
    model = VisionEncoderDecoderModel(
        encoder=ViTModel(vit, add_pooling_layer=False), decoder=GPT2LMHeadModel(gpt2)
    )
    model.config.decoder_start_token_id = BOS
    model.config.pad_token_id = PAD
    model.config.eos_token_id = EOS
    model.generation_config.decoder_start_token_id = BOS
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = EOS
    return model


def count_params(model: nn.Module) -> int:
    """Distinct parameters (tied weights once), the way both libraries report model size."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def time_interleaved(
    fns: dict[str, Callable[[], Any]], device: torch.device, dtype: str, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call of each function, run in turn ``repeats`` times after ``warmup`` calls each.

    Interleaving (a, b, a, b, ...) instead of all a then all b: on a shared machine a load spike then
    slows both sides, not just whichever happened to be running.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode(), _autocast(device, dtype):
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        _sync(device)
        for _ in range(repeats):
            for name, fn in fns.items():
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
    return times


def _row(
    task: str, unit: str, work: float, times: dict[str, list[float]], extra: dict[str, Any]
) -> dict[str, Any]:
    """A result row: throughput (best and median run) of both sides and their ratio."""
    best = {k: work / min(v) for k, v in times.items()}
    median = {k: work / statistics.median(v) for k, v in times.items()}
    row: dict[str, Any] = {"task": task, "unit": unit, "work_per_call": work}
    for k, seconds in times.items():
        row[k] = {"best": best[k], "median": median[k], "seconds": seconds}
    row["ratio"] = best["polymodal"] / best["peer"]
    row["ratio_median"] = median["polymodal"] / median["peer"]
    row.update(extra)
    print(
        f"  {task}: polymodal {best['polymodal']:,.1f} {unit}, peer {best['peer']:,.1f} {unit} "
        f"(ratio {row['ratio']:.2f})",
        flush=True,
    )
    return row


# ------------------------------------------------------------------------------------------------
# The two benchmarks
# ------------------------------------------------------------------------------------------------


def _texts(s: Shapes, batch: int, device: torch.device, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random ids padded to the context length: real lengths between half and all of it, each ending
    in the end-of-text token, which is the vocabulary's last id as in OpenAI's CLIP: CLIPModel configs
    of that lineage (eos_token_id 2) pool at the largest id, polymodal at the last real token."""
    lengths = torch.randint(s.context_length // 2, s.context_length + 1, (batch,), generator=gen)
    ids = torch.randint(3, s.vocab_size - 1, (batch, s.context_length), generator=gen)
    pos = torch.arange(s.context_length)[None, :]
    mask = pos < lengths[:, None]
    ids[torch.arange(batch), lengths - 1] = s.vocab_size - 1
    ids = ids.masked_fill(~mask, PAD)
    return ids.to(device), mask.long().to(device)


def _contestants(
    build_ours: Callable[[Shapes], nn.Module], build_peer: Callable[[Shapes], nn.Module], peer_class: str,
    s: Shapes, batch: int, device: torch.device,
) -> tuple[nn.Module, nn.Module, dict[str, Any], torch.Generator, Tensor]:
    """Both models in eval mode from the same seed, their parameter counts, and one seeded image batch."""
    torch.manual_seed(0)
    ours = build_ours(s).to(device).eval()
    peer = build_peer(s).to(device).eval()
    params = {"polymodal": count_params(ours), "peer": count_params(peer), "peer_class": peer_class}
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, s.image_size, s.image_size, generator=gen).to(device)
    return ours, peer, params, gen, images


def bench_embedding(
    s: Shapes, batch: int, device: torch.device, dtype: str, warmup: int, repeats: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Image and text embeds/s of the polymodal dual encoder vs ``CLIPModel``."""
    ours, peer, params, gen, images = _contestants(
        build_polymodal_dual_encoder, build_hf_clip, "transformers.CLIPModel", s, batch, device
    )
    ids, mask = _texts(s, batch, device, gen)

    def peer_image() -> Tensor:
        return _features(peer.get_image_features(pixel_values=images))

    def peer_text() -> Tensor:
        return _features(peer.get_text_features(input_ids=ids, attention_mask=mask))

    with torch.inference_mode():
        dims = {"polymodal": ours.encode_image(images[:2]).shape[-1], "peer": peer_image().shape[-1]}
        text_dims = {
            "polymodal": ours.encode_text(ids[:2], mask[:2]).shape[-1],
            "peer": peer_text().shape[-1],
        }
    if dims != text_dims or dims["polymodal"] != dims["peer"]:
        raise RuntimeError(f"embedding sizes differ: image {dims}, text {text_dims}")
    params["embed_dim"] = dims["polymodal"]
    params["same_function_max_abs_diff"] = _load_peer_weights(ours, peer, s, images, ids, mask)

    rows = []
    t = time_interleaved(
        {"polymodal": lambda: ours.encode_image(images), "peer": peer_image}, device, dtype, warmup, repeats
    )
    rows.append(_row("image embedding", "images/s", batch, t, {"batch": batch}))
    t = time_interleaved(
        {"polymodal": lambda: ours.encode_text(ids, mask), "peer": peer_text}, device, dtype, warmup, repeats
    )
    rows.append(_row("text embedding", "texts/s", batch, t, {"batch": batch}))
    return rows, params


def _load_peer_weights(ours: nn.Module, peer: nn.Module, s: Shapes, images: Tensor, ids: Tensor, mask: Tensor) -> float:
    """Give polymodal the peer's own weights (``polymodal convert clip``'s mapping) and check that both
    compute the same normalised embeddings: the timed models are then one function, two codebases.
    Returns the largest difference (fp32); above 1e-4 the benchmark refuses to run."""
    from polymodal.hub.native_clip import clip_state_dict

    ours.load_state_dict(clip_state_dict(peer.state_dict(), s.vision_depth, s.text_depth))
    with torch.inference_mode():
        diffs = [
            (F.normalize(ours.encode_image(images), dim=-1) - F.normalize(_features(peer.get_image_features(pixel_values=images)), dim=-1)).abs().max(),
            (F.normalize(ours.encode_text(ids, mask), dim=-1)
             - F.normalize(_features(peer.get_text_features(input_ids=ids, attention_mask=mask)), dim=-1)).abs().max(),
        ]
    worst = float(max(diffs))
    if worst > 1e-4:
        raise RuntimeError(f"polymodal with the peer's weights differs from it by {worst:.2e}: not the same model")
    return worst


def _features(out: Any) -> Tensor:
    """``get_*_features`` returns a tensor in transformers 4.x and an output object in some 5.x versions."""
    if isinstance(out, Tensor):
        return out
    return out.pooler_output if getattr(out, "pooler_output", None) is not None else out[0]


def bench_captioning(
    s: Shapes,
    batch: int,
    new_tokens: int,
    device: torch.device,
    dtype: str,
    warmup: int,
    repeats: int,
    no_cache: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generated tokens/s, greedy with a KV cache, of the polymodal captioner vs ``generate`` of a
    ``VisionEncoderDecoderModel`` (ViT + GPT-2); plus polymodal without its cache vs the same peer."""
    ours, peer, params, _, images = _contestants(
        build_polymodal_captioner, build_hf_captioner,
        "transformers.VisionEncoderDecoderModel(ViTModel, GPT2LMHeadModel)", s, batch, device,
    )

    def ours_gen(use_cache: bool) -> Tensor:
        out = ours.generate(images, max_length=new_tokens, min_length=new_tokens, use_cache=use_cache)
        return out.lengths

    def peer_gen(use_cache: bool = True) -> Tensor:
        out = peer.generate(
            pixel_values=images,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=use_cache,
        )
        return out[:, 1:]  # drop the decoder start token

    with torch.inference_mode():
        got = {"polymodal": int(ours_gen(True).min()), "peer": int(peer_gen().shape[1])}
    if got["polymodal"] != new_tokens or got["peer"] != new_tokens:
        raise RuntimeError(f"expected {new_tokens} generated tokens per image on both sides, got {got}")
    work = batch * new_tokens
    extra = {"batch": batch, "new_tokens": new_tokens}
    rows = []
    t = time_interleaved(
        {"polymodal": lambda: ours_gen(True), "peer": peer_gen}, device, dtype, warmup, repeats
    )
    rows.append(_row("captioning, KV cache", "tokens/s", work, t, extra))
    if no_cache:
        # Both sides recompute the whole prefix at every step; the cache's speed-up is cached / uncached.
        t = time_interleaved(
            {"polymodal": lambda: ours_gen(False), "peer": lambda: peer_gen(False)},
            device,
            dtype,
            min(warmup, 1),
            max(1, repeats // 2),
        )
        rows.append(_row("captioning, no KV cache (both)", "tokens/s", work, t, extra))
        for side in ("polymodal", "peer"):
            rows[0][f"{side}_cache_speedup"] = rows[0][side]["best"] / rows[1][side]["best"]
    return rows, params


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------


def machine_info(device: torch.device) -> dict[str, Any]:
    """What a reader needs to compare two result files: CPU, cores, threads, GPU, library versions."""
    import transformers

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = os.getloadavg()
    return info


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (best runs; medians in parentheses)."""
    lines = [
        "| task | unit | polymodal | peer | ratio (polymodal / peer) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        p, q = r["polymodal"], r["peer"]
        lines.append(
            f"| {r['task']} | {r['unit']} | {p['best']:,.1f} ({p['median']:,.1f}) "
            f"| {q['best']:,.1f} ({q['median']:,.1f}) | {r['ratio']:.2f} ({r['ratio_median']:.2f}) |"
        )
    return "\n".join(lines)


def _params_line(name: str, params: dict[str, Any]) -> str:
    p, q = params["polymodal"], params["peer"]
    return f"{name}: polymodal {p:,} parameters, {params['peer_class']} {q:,} ({100 * (p - q) / q:+.2f}%)"


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="Model shapes (see PRESETS).")
    ap.add_argument(
        "--quick", action="store_true", help="Tiny shapes, small batch, few repeats: a smoke test."
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument(
        "--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = autocast on both sides."
    )
    ap.add_argument("--batch", type=int, default=None, help="Embedding batch (default 64; --quick 8).")
    ap.add_argument(
        "--caption-batch", type=int, default=None, help="Captioning batch (default 16; --quick 4)."
    )
    ap.add_argument("--new-tokens", type=int, default=None, help="Tokens generated per image (default 20).")
    ap.add_argument("--repeats", type=int, default=None, help="Timed runs per side (default 7; --quick 2).")
    ap.add_argument("--warmup", type=int, default=None, help="Untimed runs per side (default 2; --quick 1).")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    ap.add_argument("--only", choices=["embedding", "captioning"], default=None)
    ap.add_argument(
        "--no-uncached", action="store_true", help="Skip generation without KV cache (both sides)."
    )
    ap.add_argument(
        "--glibc-defaults", action="store_true",
        help="keep glibc's allocator settings (run as a script, the benchmark otherwise re-runs itself with the heap kept; see the module doc)",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    for field in (
        "image_size",
        "patch_size",
        "vision_width",
        "vision_depth",
        "vision_heads",
        "text_width",
        "text_depth",
        "text_heads",
        "context_length",
        "vocab_size",
        "embed_dim",
    ):
        ap.add_argument("--" + field.replace("_", "-"), type=int, default=None, help="Override the preset.")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, print the Markdown table, write the JSON; returns the exit status."""
    args = parse_args(argv)
    shapes = PRESETS["tiny" if args.quick else args.preset]
    overrides = {k: v for k, v in vars(args).items() if k in Shapes.__dataclass_fields__ and v is not None}
    shapes = replace(shapes, **overrides)
    batch = args.batch or (8 if args.quick else 64)
    caption_batch = args.caption_batch or (4 if args.quick else 16)
    new_tokens = args.new_tokens or (8 if args.quick else 20)
    repeats = args.repeats or (2 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    device = torch.device(args.device)

    rows: list[dict[str, Any]] = []
    params: dict[str, Any] = {}
    with _threads(args.threads):
        info = machine_info(device)
        print(f"shapes: {asdict(shapes)}, heap: {heap_settings()}", flush=True)
        if args.only in (None, "embedding"):
            emb_rows, params["embedding"] = bench_embedding(
                shapes, batch, device, args.dtype, warmup, repeats
            )
            print(_params_line("embedding", params["embedding"]), flush=True)
            rows += emb_rows
        if args.only in (None, "captioning"):
            cap_rows, params["captioning"] = bench_captioning(
                shapes, caption_batch, new_tokens, device, args.dtype, warmup, repeats, not args.no_uncached
            )
            print(_params_line("captioning", params["captioning"]), flush=True)
            rows += cap_rows
    print()
    print(markdown_table(rows))
    for r in rows:
        if "polymodal_cache_speedup" in r:
            print(
                "\nKV cache speed-up (cached / uncached tokens/s): "
                f"polymodal {r['polymodal_cache_speedup']:.2f}x, peer {r['peer_cache_speedup']:.2f}x"
            )
    summary = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "machine": info,
        "heap": heap_settings(),
        "dtype": args.dtype,
        "preset": "tiny" if args.quick else args.preset,
        "shapes": asdict(shapes),
        "warmup": warmup,
        "repeats": repeats,
        "params": params,
        "rows": rows,
    }
    write_result(args.out, summary)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    if not parse_args().glibc_defaults:  # argparse's reading of the flag, abbreviations included
        rerun_with_steady_heap(sys.argv)
    sys.exit(main())
