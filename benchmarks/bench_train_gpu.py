"""Benchmark: CLIP ViT-B/32 contrastive training throughput, polymodal vs Hugging Face ``CLIPModel``.

Run ``python benchmarks/bench_train_gpu.py`` on a GPU (issue #9, target 1). Both sides are the same
network: a ViT-B/32 image tower (width 768, 12 layers, 12 heads, patch 32, 224 px, pre-LN + ln_pre,
QuickGELU) and a causal text tower (width 512, 12 layers, 8 heads, 77 tokens, vocabulary 49,408),
projected to 512-d, with CLIP's contrastive loss and a learnable logit scale. The script checks that
the two parameter counts agree (within 1%) before timing anything.

On the rented GPU machine (one command of at most 10 minutes; polymodal is not installed there, so
the script puts this checkout's ``src/`` on ``sys.path``; only files under ``$OUT`` come back), run
exactly::

    set -o pipefail; PYTHONUNBUFFERED=1 python3 benchmarks/bench_train_gpu.py --device cuda --time-budget-s 540 --out "$OUT/train_gpu.json" 2>&1 | tee "$OUT/train_gpu.log"

adding ``--commit <hash>`` (resolved where ``.git`` exists: the copy on the machine has none, and the
JSON would say ``"unknown"``). ``--device`` defaults to ``cuda`` for a full run, which exits with code 2
and a message when CUDA is missing rather than timing the full shapes on a CPU.

What one training step is, identically for every row: forward both towers and the loss under bf16
autocast (fp32 master weights), ``loss.backward()``, ``AdamW.step()`` (fused on CUDA) and
``zero_grad(set_to_none=True)``. The batch is one synthetic batch on the device (fp32 pixels, 77
random token ids ending in the end-of-text id, no padding, as open_clip trains), so data loading is
not measured. TF32 and cuDNN autotuning are on for both sides.

Sections:

a. **matmul peak**: the card's measured bf16 matmul rate (``--matmul-size``\\ :sup:`3` matmuls, best
   of ``--matmul-repeats``, CUDA events, after ~1 s of warm-up so clocks and cuBLAS have settled).
   MFU is relative to this, not to the datasheet.
b. **throughput** at ``--batch`` (256): polymodal eager / ``torch.compile`` and ``CLIPModel``
   (``attn_implementation='sdpa'``) eager / compiled. Timed repeats are interleaved (each repeat runs
   every side for ``--steps`` steps, the order rotating), so drift on a shared machine hits all sides
   alike; samples/s is from the median repeat (the best is in the JSON). The speedup target compares
   the faster polymodal row with the faster transformers row. Each compiled row records its graph
   breaks and recompiles (``torch._dynamo`` counters), and on CUDA every row records the attention
   kernels one profiled step launched, so a side that fell back to a slower SDPA kernel shows.
   ``--residual both`` (the default under bf16 autocast) runs each of the four rows twice: with
   autocast's fp32 residual stream, and with ``train.bf16_residual``'s bf16 stream, which the peer gets
   too, through hooks on its towers' inputs (:func:`build_hf`). The target takes the best row of each
   library; the JSON also gives the ratio at each setting on both sides (``by_residual``).
c. **max batch**: the largest batch one GPU trains (one eager step per try: doubling, then a binary
   search to 1/16 of the bracket, out-of-memory errors caught and memory freed between tries; raw
   uint8 pixels on the device, normalised inside the step) for plain training and with gradient
   checkpointing on each side; then polymodal's ``contrastive_accum_step`` (gradient-cached
   accumulation, train/contrastive_accum.py): K micro-batches (3/4 of polymodal's plain maximum each,
   normalised one at a time) whose features are scored together, so the effective contrastive batch
   is K x micro with *all* negatives kept. The peer has no such accumulation (summing per-micro-batch
   losses keeps only B/K negatives), so its max effective contrastive batch is its largest single
   batch. Both sides keep autocast's fp32 residual stream there unless ``--residual bf16``. The
   polymodal model there is built with ``local_loss=True, gather=True`` (on one GPU both
   are no-ops; under DDP they keep the logits at ``[local, global]``). samples/s and MFU at the
   maximum come from 2 timed steps after 1 untimed one at that batch when the search's share of the
   budget allows, else from the search's single cold step, which ``timing_at_max`` then says.

Time: ``--time-budget-s`` counts from the start. Compiled rows are only started in its first 45%
(later ones are recorded as skipped), a max-batch search only with ``--min-search-s`` left (else it
is recorded as skipped), and the searches share what is left; a search that runs out of time reports
its proven lower bound and says so.

Nothing is lost when the run dies: the JSON (``--out``) is rewritten atomically after every section
and every max-batch search, with ``status`` saying how far it got; a search that raises is recorded
(``error``) and the next one runs, except after an unrecoverable CUDA error (illegal memory access,
device-side assert, launch failure), where the script writes what it has and stops; an uncaught
exception or SIGTERM writes ``status: crashed ...`` / ``terminated ...`` before the process ends.

Model FLOPs per step (the same formula for both sides; see :func:`model_flops`)::

    6 * B * (N_v * T_v' + N_t * T_t + N_proj)   matmul weights x tokens they touch, fwd + bwd
  + 12 * B * (L_v * T_v^2 * d_v + L_t * T_t^2 * d_t)   attention scores and weighted values, fwd + bwd
  + 6 * B^2 * E                                  the image-text logits, fwd + bwd

``N_*`` counts only weights that multiply activations (qkv, out-proj, MLP; the patch-embedding conv
on the ``T_v - 1`` patches; the two projections on one token per sample); embeddings, norms and
biases are left out. Attention counts the full ``T^2`` for the causal text tower too (the
PaLM-appendix convention), and gradient checkpointing's recompute is not counted (model FLOPs, not
hardware FLOPs). ``MFU = FLOPs / step time / measured matmul peak``.

Model FLOPs are the work the loss needs. It reads one token of each tower's last block (the class
token, the end-of-text token), so that block counts its key/value projections and attention keys
for every token but its query, output projection, MLP and attention for that token alone: 6.7% less
than the formula above over every token, which the JSON keeps as ``total_every_token``. polymodal
computes just that (``Transformer(positions=...)``); ``CLIPModel`` computes every token, so its MFU
by this count is its useful work, not its hardware FLOPs.

Outputs Markdown tables and ``--out`` (default ``benchmarks/results/train_gpu.json``). ``--quick``
shrinks everything (64-wide, 2-layer towers at 64 px / 16 tokens, batch 8, 2 steps, no compile unless
``--compile``, max batch capped at 32) so the whole script runs on a CPU in under a minute
(``--quick --device cpu``); it also checks that one accumulated step (K=2, fp32) updates the
parameters exactly as one full-batch step does.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as _dt
import gc
import math
import os
import platform
import re
import signal
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Before torch initialises CUDA: fewer fragmentation OOMs in the max-batch search (same for both sides).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch
from provenance import ensure_polymodal_importable, git_commit, write_result
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "train_gpu.json"
COMPILE_BUDGET_FRACTION = 0.45  # compiled rows start only within this part of --time-budget-s
WARM_TIMING_SHARE = 0.2  # part of each search's time kept for the warm re-timing at its maximum


ensure_polymodal_importable()


# --------------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shapes:
    """The dual encoder's sizes, shared by both sides so they build the same network."""

    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    context_length: int = 77
    vocab_size: int = 49408
    embed_dim: int = 512
    mlp_ratio: int = 4

    @property
    def vision_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


CLIP_B32 = Shapes()
QUICK = Shapes(
    image_size=64, patch_size=16, vision_width=64, vision_layers=2, vision_heads=2,
    text_width=64, text_layers=2, text_heads=2, context_length=16, vocab_size=1000, embed_dim=64,
)


def matmul_params(s: Shapes) -> dict[str, int]:
    """Weights that multiply activations, per group, from the shapes alone (see the module doc)."""
    r = s.mlp_ratio
    return {
        "vision_blocks": s.vision_layers * (4 + 2 * r) * s.vision_width**2,
        "patch_embed": 3 * s.patch_size**2 * s.vision_width,
        "text_blocks": s.text_layers * (4 + 2 * r) * s.text_width**2,
        "projections": (s.vision_width + s.text_width) * s.embed_dim,
    }


def model_flops(s: Shapes, batch: int) -> dict[str, float]:
    """Model FLOPs of one training step (forward + backward = 3x forward), by term.

    One formula for both libraries, so MFU compares like with like; it is the usual ``6 N T`` plus
    attention, the numbers a reader can recompute by hand from the shapes, with each tower's last
    block counted for the one token the loss reads (see the module doc; ``total_every_token``
    counts every token there too).
    """
    n = matmul_params(s)
    tv, tt = s.vision_tokens, s.context_length

    def tower(layers: int, width: int, tokens: int, pooled_last: bool) -> tuple[float, float]:
        block, kv = (4 + 2 * s.mlp_ratio) * width**2, 2 * width**2  # kv: what the last block needs of every token
        if not pooled_last:
            return layers * block * tokens, layers * tokens**2 * width
        weights = (layers - 1) * block * tokens + kv * tokens + (block - kv)
        return weights, (layers - 1) * tokens**2 * width + tokens * width

    def total(pooled_last: bool) -> dict[str, float]:
        (v_w, v_a), (t_w, t_a) = (tower(s.vision_layers, s.vision_width, tv, pooled_last),
                                  tower(s.text_layers, s.text_width, tt, pooled_last))
        matmul = 6.0 * batch * (v_w + n["patch_embed"] * (tv - 1) + t_w + n["projections"])
        attention = 12.0 * batch * (v_a + t_a)
        logits = 6.0 * batch**2 * s.embed_dim
        return {"matmul": matmul, "attention": attention, "logits": logits, "total": matmul + attention + logits}

    return total(True) | {"total_every_token": total(False)["total"]}


def counted_matmul_params(model: nn.Module) -> int:
    """Sum of ``nn.Linear`` / ``nn.Conv2d`` weights actually in a model: checks the formula."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------- models


def build_polymodal(
    s: Shapes, *, grad_checkpointing: bool = False, local_loss: bool = False, bf16_residual: bool = False,
) -> nn.Module:
    """polymodal's ``DualEncoder`` shaped like OpenAI's CLIP (ln_pre, QuickGELU, bias-free projections).

    The projections live in the towers (``output_dim``) so ``DualEncoder``'s own projections are
    identities, as in CLIP; ``pad_id=None`` means no padding mask (full 77-token texts, causal fast
    path), the same input the peer gets. ``bf16_residual``: ``train.bf16_residual``'s setting
    (:func:`polymodal.modules.transformer.set_bf16_residual`).
    """
    from polymodal.models.dual_encoder import DualEncoder
    from polymodal.modules.encoders.text import TextTransformer
    from polymodal.modules.encoders.vision import VisionTransformer
    from polymodal.modules.transformer import set_bf16_residual

    vision = VisionTransformer(
        s.image_size, s.patch_size, s.vision_width, s.vision_layers, s.vision_heads,
        mlp_ratio=s.mlp_ratio, output_dim=s.embed_dim, grad_checkpointing=grad_checkpointing,
        ln_pre=True, activation="quick_gelu",
    )
    text = TextTransformer(
        s.vocab_size, s.context_length, s.text_width, s.text_layers, s.text_heads, causal=True,
        pad_id=None, pool="eos", output_dim=s.embed_dim, mlp_ratio=s.mlp_ratio,
        activation="quick_gelu", grad_checkpointing=grad_checkpointing,
    )
    model = DualEncoder(vision, text, s.embed_dim, init_temperature=0.07, gather=True, local_loss=local_loss)
    set_bf16_residual(model, bf16_residual)
    return model


def build_hf(s: Shapes, *, grad_checkpointing: bool = False, bf16_residual: bool = False) -> nn.Module:
    """The peer: ``transformers.CLIPModel`` with the same shapes and SDPA attention.

    ``bf16_residual`` gives the peer polymodal's setting too, so the two can be compared at equal
    numerics: hooks cast each tower's input to its encoder layers (the output of the vision tower's
    ``pre_layrnorm`` and of the text embeddings) to bf16 under bf16 autocast. Each
    ``residual + sublayer(...)`` sum in ``CLIPEncoderLayer`` is then a bf16 sum, as in polymodal's stacks.
    """
    from transformers import CLIPConfig, CLIPModel

    text = {
        "vocab_size": s.vocab_size, "hidden_size": s.text_width, "intermediate_size": s.mlp_ratio * s.text_width,
        "num_hidden_layers": s.text_layers, "num_attention_heads": s.text_heads,
        "max_position_embeddings": s.context_length, "hidden_act": "quick_gelu",
        "bos_token_id": s.vocab_size - 2, "eos_token_id": s.vocab_size - 1, "pad_token_id": s.vocab_size - 1,
    }
    vision = {
        "hidden_size": s.vision_width, "intermediate_size": s.mlp_ratio * s.vision_width,
        "num_hidden_layers": s.vision_layers, "num_attention_heads": s.vision_heads,
        "image_size": s.image_size, "patch_size": s.patch_size, "hidden_act": "quick_gelu",
    }
    config = CLIPConfig(
        text_config=text, vision_config=vision, projection_dim=s.embed_dim, attn_implementation="sdpa"
    )
    model = CLIPModel(config)
    if grad_checkpointing:  # per layer, non-reentrant, like polymodal's
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if bf16_residual:
        model.vision_model.pre_layrnorm.register_forward_hook(_bf16_under_autocast)
        model.text_model.embeddings.register_forward_hook(_bf16_under_autocast)
    return model


def _bf16_under_autocast(module: nn.Module, inputs: Any, output: Tensor) -> Tensor:
    """A forward hook: the module's fp32 output as bf16, under bf16 autocast only (what polymodal's stacks do)."""
    from polymodal.modules.transformer import _bf16_autocast  # the stacks' own test of "under bf16 autocast"

    if output.dtype == torch.float32 and _bf16_autocast(output.device.type):
        return output.to(torch.bfloat16)
    return output


def make_batch(
    s: Shapes, batch: int, device: torch.device, seed: int = 0, uint8: bool = False
) -> tuple[Tensor, Tensor]:
    """Synthetic pixels and token ids, made on the device; every text ends with the end-of-text id.

    ``uint8=True`` gives raw pixels (150 KB per 224 px image instead of 600 KB), what a GPU-side
    loader hands over; the steps normalise them (:func:`pixels`). The max-batch searches use it so a
    batch of 50,000 images does not need 30 GB of fp32 input before the model even starts.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    shape = (batch, 3, s.image_size, s.image_size)
    if uint8:
        images = torch.randint(0, 256, shape, generator=g, device=device, dtype=torch.uint8)
    else:
        images = torch.randn(shape, generator=g, device=device)
    ids = torch.randint(1, s.vocab_size - 2, (batch, s.context_length), generator=g, device=device)
    ids[:, -1] = s.vocab_size - 1
    return images, ids


def pixels(images: Tensor) -> Tensor:
    """Raw ``uint8`` pixels -> float in [-1, 1]; float images pass through untouched."""
    return images.float().sub_(127.5).div_(127.5) if images.dtype == torch.uint8 else images


# ----------------------------------------------------------------------------------------- train steps

StepFn = Callable[[Tensor, Tensor], Tensor]


def make_optimizer(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over every parameter, fused on CUDA; the same for both sides (throughput, not recipe)."""
    return torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1,
        fused=device.type == "cuda",
    )


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def polymodal_step(
    model: nn.Module, opt: torch.optim.Optimizer, device: torch.device, amp: torch.dtype | None,
    forward: nn.Module | None = None,
) -> StepFn:
    """One plain training step of a polymodal ``DualEncoder`` (``forward``: e.g. its compiled form)."""
    fwd = forward if forward is not None else model
    return _backward_step(lambda images, ids: fwd(pixels(images), ids).loss, opt, device, amp)


def _backward_step(
    loss_of: Callable[[Tensor, Tensor], Tensor], opt: torch.optim.Optimizer, device: torch.device, amp: torch.dtype | None,
) -> StepFn:
    """Forward under autocast, backward, optimizer step: the same for both sides, only the loss differs."""

    def step(images: Tensor, ids: Tensor) -> Tensor:
        with _autocast(device, amp):
            loss = loss_of(images, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def polymodal_accum_step(
    model: nn.Module, opt: torch.optim.Optimizer, device: torch.device, amp: torch.dtype | None,
    micro_batch: int,
) -> StepFn:
    """One step with ``contrastive_accum_step``: the loss sees the whole batch, encoders a micro-batch.

    The first step that completes checks that every trainable parameter got a gradient before the
    optimiser runs (see :func:`check_every_grad`).
    """
    from polymodal.train.contrastive_accum import contrastive_accum_step, split_micro_batches

    def encode(mb: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return model.encode_image(pixels(mb[0])), model.encode_text(mb[1])

    checked = False

    def step(images: Tensor, ids: Tensor) -> Tensor:
        nonlocal checked
        k = max(1, math.ceil(images.shape[0] / micro_batch))
        with _autocast(device, amp):
            out = contrastive_accum_step(
                encode, split_micro_batches((images, ids), k), lambda img, txt: model.itc(img, txt)
            )
        if not checked:
            check_every_grad(model)
            checked = True
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    return step


def check_every_grad(model: nn.Module) -> None:
    """Raise if a trainable parameter has no ``.grad`` after an accumulated backward.

    The no-grad-encode-then-re-encode pattern once lost weight gradients to a bf16 autocast
    cast-cache bug (weights cast under ``no_grad`` were reused, detached, by the pass with grad);
    AdamW would then silently train only the rest, and the timings would be of a cheaper step.
    """
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if missing:
        raise RuntimeError(
            f"contrastive accumulation left {len(missing)} trainable parameter(s) without a gradient "
            f"(e.g. {', '.join(missing[:5])}); the accumulated rows would time a step that trains less"
        )


def hf_step(
    model: nn.Module, opt: torch.optim.Optimizer, device: torch.device, amp: torch.dtype | None,
    forward: nn.Module | None = None,
) -> StepFn:
    """One training step of ``CLIPModel`` with its own contrastive loss (``return_loss=True``)."""
    fwd = forward if forward is not None else model
    return _backward_step(lambda images, ids: fwd(input_ids=ids, pixel_values=pixels(images), return_loss=True).loss, opt, device, amp)


# ------------------------------------------------------------------------------------------ measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], n: int, device: torch.device) -> float:
    """Milliseconds per call of ``fn`` over ``n`` back-to-back calls (CUDA events on a GPU)."""
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / n
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) * 1e3 / n


def _warm_up(fn: Callable[[], Any], device: torch.device, seconds: float) -> int:
    """Call ``fn`` at least 3 times, and on CUDA until ``seconds`` of device work have passed.

    A few calls are not enough on a GPU: clocks ramp up and cuBLAS settles on its kernel over the
    first second or so, and a peak measured before that understates the card (overstating MFU).
    Synchronising every 10 calls keeps the wall clock in step with the device.
    """
    end = time.perf_counter() + (seconds if device.type == "cuda" else 0.0)
    calls = 0
    while calls < 3 or time.perf_counter() < end:
        fn()
        calls += 1
        if calls % 10 == 0:
            _sync(device)
    _sync(device)
    return calls


def matmul_peak(
    device: torch.device, size: int, repeats: int, dtype: torch.dtype, warmup_s: float = 1.0
) -> dict[str, Any]:
    """The card's measured dense matmul rate: best of ``repeats`` timings of 10 ``size``^3 matmuls."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    c = torch.empty(size, size, device=device, dtype=dtype)
    t0 = time.perf_counter()
    calls = _warm_up(lambda: torch.matmul(a, b, out=c), device, warmup_s)
    warmed_s = time.perf_counter() - t0
    best = min(time_ms(lambda: torch.matmul(a, b, out=c), 10, device) for _ in range(repeats))
    return {"size": size, "dtype": str(dtype).removeprefix("torch."), "ms": best,
            "tflops": 2 * size**3 / (best * 1e-3) / 1e12, "warmup_calls": calls, "warmup_s": warmed_s}


# ------------------------------------------------------------------------ what the compiled sides ran


def dynamo_counts() -> dict[str, Any]:
    """Process-wide ``torch._dynamo`` counters so far (best effort: private API, may change).

    Callers diff two snapshots (:func:`dynamo_delta`) around one side's warm-up, where it compiles.
    """
    try:
        from torch._dynamo import utils as dynamo_utils

        counters = dynamo_utils.counters
        guard_failures = getattr(dynamo_utils, "guard_failures", {})
        return {
            "graph_breaks": sum(counters["graph_break"].values()),
            "graph_break_reasons": dict(counters["graph_break"]),
            "recompiles": sum(len(v) for v in guard_failures.values()),
            "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "frames_compiled": int(counters["frames"].get("ok", 0)),
        }
    except Exception as exc:  # noqa: BLE001 - a counter we cannot read must not cost the run
        return {"error": repr(exc)[:200]}


def dynamo_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What happened between two :func:`dynamo_counts` snapshots (the 10 most frequent break reasons)."""
    if "error" in before or "error" in after:
        return {"error": before.get("error") or after.get("error")}
    reasons = collections.Counter(after["graph_break_reasons"])
    reasons.subtract(before["graph_break_reasons"])
    delta: dict[str, Any] = {k: after[k] - before[k] for k in after if k != "graph_break_reasons"}
    delta["graph_break_reasons"] = {r[:200]: n for r, n in reasons.most_common(10) if n > 0}
    return delta


_ATTENTION_NAME = re.compile(r"scaled_dot_product|flash|fmha|attention|attn|mem_eff|efficient|softmax", re.IGNORECASE)


def attention_names(events: Any) -> dict[str, dict[str, int]]:
    """Attention-looking entries of a profiler's ``key_averages()``: device kernels and ATen ops.

    The ATen op (``aten::_scaled_dot_product_flash_attention`` vs ``..._efficient_attention`` vs a
    bare ``softmax``, the math path) says which SDPA backend each side got; the kernel names confirm it.
    """
    found: dict[str, dict[str, int]] = {"kernels": {}, "ops": {}}
    for evt in events:
        name = str(evt.key)
        if name.startswith("autograd::engine::evaluate_function") or not _ATTENTION_NAME.search(name):
            continue
        kind = "kernels" if str(getattr(evt, "device_type", "")).endswith("CUDA") else "ops"
        key = name[:160]
        found[kind][key] = found[kind].get(key, 0) + int(evt.count)
    return {kind: dict(sorted(names.items(), key=lambda kv: -kv[1])[:30]) for kind, names in found.items()}


# Kernel (or, on a CPU, ATen op) names -> what the time went to; the first match wins.
_TIME_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("attention", re.compile(r"sdpa|flash|fmha|attention|scaled_dot_product", re.IGNORECASE)),
    ("optimizer", re.compile(r"adam|multi_tensor|foreach", re.IGNORECASE)),
    ("conv", re.compile(r"convolve|convolution|cudnn::cnn|implicit_gemm|wgrad_alg|dgrad_alg", re.IGNORECASE)),
    ("matmul", re.compile(r"gemm|nvjet|xmma|cutlass|cublas|triton_tem|aten::(?:mm|addmm|bmm|linear|matmul)\b",
                          re.IGNORECASE)),
    # Inductor's own fused kernels (not its matmul templates): their names list every op fused, "_to_copy" too
    ("fused by Inductor", re.compile(r"^triton_(?!tem)")),
    ("copy / cast / fill", re.compile(r"copy|memcpy|memset|fill|aten::to\b|aten::_to_copy|cat_", re.IGNORECASE)),
)
OTHER_KIND = "elementwise / norm / other"


def time_kind(name: str) -> str:
    """Which kind of work a kernel or op name is (see ``_TIME_KINDS``)."""
    return next((kind for kind, pattern in _TIME_KINDS if pattern.search(name)), OTHER_KIND)


def time_by_kind(events: Any, on_gpu: bool, steps: int, top: int = 12) -> dict[str, Any]:
    """Milliseconds per step by kind of work, and the ``top`` kernels, from ``key_averages()``.

    On a GPU these are the device kernels' own times; their sum against the step's wall time says how
    much of the step the GPU sat idle (launch overhead, host work). On a CPU the ATen ops' self times.
    """
    kinds: dict[str, float] = collections.defaultdict(float)
    kernels: list[tuple[str, float, int]] = []
    for evt in events:
        name = str(evt.key)
        if on_gpu:
            if not str(getattr(evt, "device_type", "")).endswith("CUDA") or _annotation(evt):
                continue
            us = float(getattr(evt, "self_device_time_total", getattr(evt, "self_cuda_time_total", 0.0)))
        else:
            if not name.startswith("aten::"):
                continue
            us = float(evt.self_cpu_time_total)
        if us <= 0:
            continue
        ms = us / 1e3 / steps
        kinds[time_kind(name)] += ms
        kernels.append((name[:120], ms, int(evt.count) // steps))
    kernels.sort(key=lambda k: -k[1])
    return {
        "ms_per_step": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
        "total_ms": sum(kinds.values()),
        "top": [{"name": n, "ms": ms, "calls": c, "kind": time_kind(n)} for n, ms, c in kernels[:top]],
    }


# Ranges the profiler draws on the GPU's timeline, by name, for a torch whose events lack is_user_annotation
_RANGE_NAME = re.compile(r"^(?:Optimizer\.|Torch-Compiled Region|## |CompiledFunction|ProfilerStep)")


def _annotation(evt: Any) -> bool:
    """A ``record_function`` range drawn on the GPU's timeline (``Optimizer.step#AdamW.step``): it spans
    kernels that are counted on their own, so counting it too would count them twice."""
    return bool(getattr(evt, "is_user_annotation", False)) or bool(_RANGE_NAME.search(str(evt.key)))


def profile_step(step: StepFn, batch: tuple[Tensor, Tensor], device: torch.device, steps: int = 2) -> dict[str, Any]:
    """Profile ``steps`` steps of a side: its attention kernels/ops and where its time went (best effort)."""
    try:
        from torch.profiler import ProfilerActivity, profile

        on_gpu = device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                step(*batch)
            _sync(device)
            wall_ms = (time.perf_counter() - start) * 1e3 / steps
        events = prof.key_averages()
        return {"attention": attention_names(events),
                "time": time_by_kind(events, on_gpu, steps) | {"wall_ms_profiled": wall_ms}}
    except Exception as exc:  # noqa: BLE001 - the profile is a diagnostic, never a reason to stop
        return {"error": repr(exc)[:300]}


def _state_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Bytes a side keeps between steps (weights, grads if any, optimizer state)."""
    total = 0
    for p in model.parameters():
        total += p.numel() * p.element_size()
        if p.grad is not None:
            total += p.grad.numel() * p.grad.element_size()
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, Tensor):
                total += v.numel() * v.element_size()
    return total


@dataclass
class Side:
    """One competitor in the throughput table (``skipped`` / ``error``: it has no or partial timings)."""

    name: str
    model: nn.Module
    opt: torch.optim.Optimizer
    step: StepFn
    compiled: bool = False
    times_ms: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    warmup_s: float = 0.0
    skipped: str | None = None
    error: str | None = None
    dynamo: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None

    @property
    def live(self) -> bool:
        return self.skipped is None and self.error is None


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


_FATAL_MARKERS = (
    "illegal memory access", "device-side assert", "unspecified launch failure", "misaligned address",
    "illegal instruction",
)


def _fatal_cuda(exc: BaseException) -> bool:
    """An error after which the CUDA context is unusable: every later kernel fails too."""
    msg = str(exc).lower()
    return any(marker in msg for marker in _FATAL_MARKERS)


def _side_failed(side: Side, what: str, exc: Exception) -> None:
    """Record a side's error and carry on with the others (an unrecoverable CUDA error re-raises)."""
    if _fatal_cuda(exc):
        raise exc
    side.error = f"{what}: {exc!r}"[:500]
    print(f"  {side.name}: {what} failed, left out: {exc!r}"[:600], flush=True)
    traceback.print_exc()


def warm_up_sides(
    sides: list[Side], batch: tuple[Tensor, Tensor], warmup: int, device: torch.device, compile_deadline: float,
) -> None:
    """Warm every side up (this is where compilation happens, so compiled sides start only in time).

    A compiled side whose warm-up would begin after ``compile_deadline`` is skipped: compiling can
    take minutes and must not eat the max-batch section's time. One that fails is left out.
    """
    for side in sides:
        if side.compiled and time.perf_counter() > compile_deadline:
            side.skipped = (f"budget: compiled rows only start within the first "
                            f"{COMPILE_BUDGET_FRACTION:.0%} of --time-budget-s")
            print(f"  skipped {side.name}: past {COMPILE_BUDGET_FRACTION:.0%} of the time budget", flush=True)
            continue
        before = dynamo_counts() if side.compiled else None
        t0 = time.perf_counter()
        try:
            for _ in range(warmup):
                side.step(*batch)
            _sync(device)
        except Exception as exc:  # noqa: BLE001 - e.g. a compile error on one side only
            _side_failed(side, "warm-up", exc)
        side.warmup_s = time.perf_counter() - t0
        if before is not None:
            side.dynamo = dynamo_delta(before, dynamo_counts())
        if side.live:
            print(f"  warmed up {side.name} in {side.warmup_s:.1f} s"
                  + (f"; dynamo {side.dynamo}" if side.dynamo else ""), flush=True)


def run_throughput(
    sides: list[Side], batch: tuple[Tensor, Tensor], steps: int, repeats: int, warmup: int,
    device: torch.device, compile_deadline: float = math.inf,
) -> dict[str, Any]:
    """Warm every side up, then interleave the timed repeats of the sides that warmed up.

    Returns what ``torch._dynamo`` did during the timed repeats (recompiles there would be timed).
    """
    warm_up_sides(sides, batch, warmup, device, compile_deadline)
    before = dynamo_counts()
    for r in range(repeats):
        live = [s for s in sides if s.live]
        if not live:
            break
        order = live[r % len(live):] + live[: r % len(live)]
        for side in order:
            try:
                _time_side(side, batch, steps, device)
            except Exception as exc:  # noqa: BLE001
                _side_failed(side, "timed steps", exc)
    return dynamo_delta(before, dynamo_counts())


def _time_side(side: Side, batch: tuple[Tensor, Tensor], steps: int, device: torch.device) -> None:
    """One timed repeat of ``side``, and its peak memory over what it keeps between steps."""
    if device.type == "cuda":
        others = torch.cuda.memory_allocated(device) - _state_bytes(side.model, side.opt)
        torch.cuda.reset_peak_memory_stats(device)
    side.times_ms.append(time_ms(lambda: side.step(*batch), steps, device))
    if device.type == "cuda":
        side.peak_bytes = max(side.peak_bytes, torch.cuda.max_memory_allocated(device) - others)


def throughput_rows(sides: list[Side], batch: int, flops: float, peak_tflops: float) -> list[dict[str, Any]]:
    """One JSON row per side; a skipped or failed side keeps its name and says why."""
    rows = []
    for side in sides:
        row: dict[str, Any] = {"name": side.name, "batch": batch, "compiled": side.compiled}
        if side.times_ms:
            med, best = statistics.median(side.times_ms), min(side.times_ms)
            row.update({
                "ms_per_step": med, "ms_per_step_best": best, "ms_per_step_all": side.times_ms,
                "samples_per_s": batch / med * 1e3, "tflops": flops / (med * 1e-3) / 1e12,
                "mfu": flops / (med * 1e-3) / 1e12 / peak_tflops,
                "peak_memory_gib": side.peak_bytes / 2**30 if side.peak_bytes else None,
                "warmup_s": side.warmup_s,
            })
        for key, value in (("skipped", side.skipped), ("error", side.error), ("dynamo", side.dynamo),
                           ("profile", side.profile)):
            if value is not None:
                row[key] = value
        rows.append(row)
    return rows


def fastest(rows: list[dict[str, Any]], library: str, residual: str | None = None) -> dict[str, Any] | None:
    """The faster timed row of ``library`` (eager or compiled, whichever won), None if none was timed;
    ``residual`` ('fp32' / 'bf16'): among the rows of that residual setting only."""
    timed = [r for r in rows if r["name"].startswith(library) and r.get("samples_per_s")
             and (residual is None or r["name"].endswith(RESIDUAL_SUFFIX) == (residual == "bf16"))]
    return max(timed, key=lambda r: r["samples_per_s"], default=None)


def speedup_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Target 1 of issue #9: the faster polymodal row >= 1.5x the *faster* transformers row, MFU >= 40%.

    Best against best: comparing our faster mode with the peer's compiled mode alone would flatter us
    whenever the peer's eager mode is the quicker one.
    """
    ours, peer = fastest(rows, "polymodal"), fastest(rows, "transformers")
    if ours is None or peer is None:
        why = "no timed polymodal row" if ours is None else "no timed transformers row"
        return {"speedup_vs_peer": {"value": None, "target": 1.5, "met": None, "why": why},
                "mfu": {"value": ours["mfu"] if ours else None, "target": 0.40,
                        "met": ours["mfu"] >= 0.40 if ours else None}}
    ratio = ours["samples_per_s"] / peer["samples_per_s"]
    same_setting = {}  # each residual setting on its own, where both sides ran it
    for residual in ("fp32", "bf16"):
        a, b = fastest(rows, "polymodal", residual), fastest(rows, "transformers", residual)
        if a is not None and b is not None:
            same_setting[residual] = {"ours": a["name"], "peer": b["name"], "value": a["samples_per_s"] / b["samples_per_s"]}
    return {
        "speedup_vs_peer": {"ours": ours["name"], "peer": peer["name"], "value": ratio, "target": 1.5,
                            "met": ratio >= 1.5, "by_residual": same_setting},
        "mfu": {"ours": ours["name"], "value": ours["mfu"], "target": 0.40, "met": ours["mfu"] >= 0.40},
    }


RESIDUAL_SUFFIX = ", bf16 residual"


def make_sides(
    pm: nn.Module, hf: nn.Module, shapes: Shapes, device: torch.device, amp: torch.dtype | None,
    compile_mode: str | None, residuals: tuple[str, ...] = ("fp32",),
) -> list[Side]:
    """Each library eager and compiled, once per residual setting; all start from the same weights.

    ``pm`` / ``hf`` are the first setting's eager models; every other side is a copy, built with its own
    setting. A bf16-residual row's name ends in :data:`RESIDUAL_SUFFIX`. The sides come setting by
    setting, so a budget that stops the last compiled rows leaves whole pairs.
    """
    sides = []
    for i, residual in enumerate(residuals):
        suffix, bf16 = ("", False) if residual == "fp32" else (RESIDUAL_SUFFIX, True)
        for library, model, build, make_step in (("polymodal", pm, build_polymodal, polymodal_step),
                                                 ("transformers", hf, build_hf, hf_step)):
            eager = model if i == 0 else _copy_of(model, build(shapes, bf16_residual=bf16), device)
            sides.append(_side(f"{library} eager{suffix}", eager, device, amp, make_step))
            if compile_mode is not None:
                compiled = _copy_of(model, build(shapes, bf16_residual=bf16), device)
                sides.append(_side(f"{library} compiled{suffix}", compiled, device, amp, make_step, compile_mode))
    return sides


def _copy_of(model: nn.Module, fresh: nn.Module, device: torch.device) -> nn.Module:
    fresh = fresh.to(device)
    fresh.load_state_dict(model.state_dict())
    return fresh


def _side(
    name: str, model: nn.Module, device: torch.device, amp: torch.dtype | None,
    make_step: Callable[..., StepFn], compile_mode: str | None = None,
) -> Side:
    opt = make_optimizer(model, device)
    forward = torch.compile(model, mode=compile_mode) if compile_mode is not None else None
    return Side(name, model, opt, make_step(model, opt, device, amp, forward), compiled=forward is not None)


# ------------------------------------------------------------------------------------------ max batch

_OOM_MARKERS = (
    "out of memory",  # torch.cuda.OutOfMemoryError, and "CUDA error: out of memory" from a raw CUDA call
    "unable to find an engine",  # cuDNN, when no engine's workspace can be allocated
    "alloc_failed",  # CUDNN_STATUS_ALLOC_FAILED / CUBLAS_STATUS_ALLOC_FAILED
)


def _is_oom(exc: BaseException) -> bool:
    """Did a try fail for want of memory (so a smaller batch may fit), rather than for a bug?"""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    if not isinstance(exc, Exception) or _fatal_cuda(exc):
        return False
    msg = str(exc).lower()
    return any(marker in msg for marker in _OOM_MARKERS)


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def _timed_unless_oom(
    s: Shapes, batch: int, step: StepFn, opt: torch.optim.Optimizer, device: torch.device, *, warm_steps: int, what: str
) -> float | None:
    """Milliseconds per step at ``batch`` (``warm_steps`` untimed first, then 1 timed step when cold,
    2 when warm), or None when it ran out of memory; memory is freed either way. Other errors propagate."""
    data: tuple[Tensor, Tensor] | None = None
    ms: float | None = None
    try:
        data = make_batch(s, batch, device, seed=batch, uint8=True)
        for _ in range(warm_steps):
            step(*data)
        ms = time_ms(lambda: step(*data), 2 if warm_steps else 1, device)
    except Exception as exc:
        if not _is_oom(exc):
            raise
        print(f"    {what}: out of memory ({type(exc).__name__}: {_first_line(exc)})", flush=True)
    data = None
    opt.zero_grad(set_to_none=True)
    _free(device)
    return ms


def try_batch(
    step: StepFn, model: nn.Module, opt: torch.optim.Optimizer, s: Shapes, batch: int, device: torch.device
) -> float | None:
    """ms of one step at ``batch``, or None if it ran out of memory (memory freed either way).

    Any other error propagates (the caller records it); the message of every failed try is logged.
    """
    return _timed_unless_oom(s, batch, step, opt, device, warm_steps=0, what=f"batch {batch:,}")


@dataclass
class Search:
    """Result of one max-batch search: ``fits`` trained, ``fails`` ran out of memory (None: never seen).

    ``ms_at_fits`` is the search's one (cold) step at ``fits``; ``ms_warm_at_fits`` the mean of 2 steps
    after an untimed one at that batch, when there was time for them (``timing`` says which to use).
    """

    fits: int
    fails: int | None
    capped: bool
    out_of_time: bool
    ms_at_fits: float | None
    tries: list[tuple[int, bool]]
    seconds: float
    ms_warm_at_fits: float | None = None
    timing: str = "first (cold) step at this batch"


def find_max(
    attempt: Callable[[int], float | None], start: int, limit: int, deadline: float, unit: int = 1,
    resolution: float = 1 / 16,
) -> Search:
    """Largest ``n * unit <= limit`` with ``attempt(n * unit)`` succeeding: doubling, then bisection.

    Bisection stops once the bracket is within ``resolution`` of the lower bound (each try is a full
    step at a huge batch; 6% is enough to compare libraries). No try starts past ``deadline``, and
    once one has fitted, a try predicted (from the largest fitting one) to overrun it is not started
    either; the result then says ``out_of_time`` and ``fits`` is a proven lower bound. (A small
    warm-up step is no basis for a prediction: it is launch-bound, and would forecast a 256-sample
    step at 10x its time.)
    """
    t0 = time.perf_counter()
    tries: list[tuple[int, bool]] = []
    lo, hi, lo_ms = 0, None, None
    out_of_time = False
    n_max = max(1, limit // unit)

    def predicted_s(n: int) -> float:
        if not lo or lo_ms is None:
            return 0.0
        return lo_ms * 1e-3 * n / lo * 1.5  # per-try time grows about linearly with the batch

    def attempt_n(n: int) -> bool:
        nonlocal lo, hi, lo_ms, out_of_time
        if time.perf_counter() + predicted_s(n) > deadline:
            out_of_time = True
            return False
        ms = attempt(n * unit)
        tries.append((n * unit, ms is not None))
        if ms is None:
            hi = n if hi is None else min(hi, n)
            return True
        lo, lo_ms = n, ms
        return True

    n = min(max(1, start // unit), n_max)
    while True:  # doubling (halving first if even the start does not fit)
        if not attempt_n(n) or hi is not None or n >= n_max:
            break
        n = min(2 * n, n_max)
    if lo == 0 and hi is not None and not out_of_time:
        n = hi // 2
        while n >= 1 and lo == 0 and attempt_n(n) and not out_of_time:
            n //= 2
    while hi is not None and lo and hi - lo > max(1, int(lo * resolution)) and not out_of_time:
        if not attempt_n((lo + hi) // 2):
            break
    return Search(
        fits=lo * unit, fails=None if hi is None else hi * unit, capped=hi is None and lo >= n_max,
        out_of_time=out_of_time, ms_at_fits=lo_ms, tries=tries, seconds=time.perf_counter() - t0,
    )


def warm_timing(
    step: StepFn, opt: torch.optim.Optimizer, s: Shapes, batch: int, device: torch.device, cold_ms: float,
    deadline: float,
) -> tuple[float | None, str]:
    """ms per step at ``batch`` from 2 timed steps after 1 untimed one, nothing freed in between.

    The search's own try is a cold step (the allocator grows to a new size, caches are empty), so
    samples/s and MFU at the maximum would understate a real run. Skipped - the cold step is then
    what the row reports, and says so - when 3 steps would overrun ``deadline`` or no longer fit.
    """
    if time.perf_counter() + 3 * cold_ms * 1e-3 * 1.2 > deadline:
        return None, "first (cold) step at this batch: no time left for warm steps"
    ms = _timed_unless_oom(s, batch, step, opt, device, warm_steps=1, what=f"warm re-timing at {batch:,}")
    if ms is None:
        return None, "first (cold) step at this batch: the warm re-run ran out of memory"
    return ms, "mean of 2 steps after 1 untimed step at this batch"


def _search_model(
    lib: str, ckpt: bool, micro: int | None, shapes: Shapes, device: torch.device, amp: torch.dtype | None,
    bf16_residual: bool = False,
) -> tuple[nn.Module, torch.optim.Optimizer, StepFn]:
    if lib == "polymodal":
        model = build_polymodal(shapes, grad_checkpointing=ckpt, local_loss=micro is not None,
                                bf16_residual=bf16_residual).to(device)
    else:
        model = build_hf(shapes, grad_checkpointing=ckpt, bf16_residual=bf16_residual).to(device)
    opt = make_optimizer(model, device)
    if micro is not None:
        return model, opt, polymodal_accum_step(model, opt, device, amp, micro)
    make_step = polymodal_step if lib == "polymodal" else hf_step
    return model, opt, make_step(model, opt, device, amp)


def search_one(
    lib: str, ckpt: bool, micro: int | None, shapes: Shapes, device: torch.device, amp: torch.dtype | None,
    start: int, limit: int, deadline: float, timing_deadline: float | None = None, *, bf16_residual: bool = False,
) -> Search:
    """One max-batch search on a freshly built model (``micro``: use contrastive accumulation).

    Tries stop at ``deadline``; the warm re-timing at the result may run until ``timing_deadline``.
    Only this model and its optimiser are alive during the search; they go when it returns.
    """
    model, opt, step = _search_model(lib, ckpt, micro, shapes, device, amp, bf16_residual)
    try_batch(step, model, opt, shapes, min(8, start), device)  # allocates the optimiser state
    unit = micro or 1
    search = find_max(
        lambda b: try_batch(step, model, opt, shapes, b, device),
        start=max(start, 2 * unit) if micro else start, limit=limit, deadline=deadline, unit=unit,
    )
    if search.fits and search.ms_at_fits:
        ms, search.timing = warm_timing(step, opt, shapes, search.fits, device, search.ms_at_fits,
                                        deadline if timing_deadline is None else timing_deadline)
        search.ms_warm_at_fits = ms
    return search


PLANS: list[tuple[str, str, bool, bool]] = [  # name, library, checkpointing, accumulation
    ("polymodal plain", "polymodal", False, False),
    ("transformers plain", "transformers", False, False),
    ("polymodal grad-checkpointing", "polymodal", True, False),
    ("transformers gradient_checkpointing_enable()", "transformers", True, False),
    ("polymodal contrastive_accum (local_loss + gather)", "polymodal", False, True),
]


def _accum_micro(rows: list[dict[str, Any]], given: int | None) -> int | None:
    """``--accum-micro``, else 3/4 of polymodal's plain maximum (None when that search found none)."""
    if given is not None:
        return given
    plain = next((r.get("max_batch") for r in rows if r["name"] == "polymodal plain"), None)
    if not plain:
        return None
    return max(1, (plain * 3 // 4) // 8 * 8) if plain >= 16 else max(1, plain // 2)


def search_row(
    search: Search, name: str, lib: str, ckpt: bool, micro: int | None, shapes: Shapes, peak_tflops: float,
) -> dict[str, Any]:
    """The JSON row of one finished search; samples/s and MFU from the warm timing when there is one."""
    ms = search.ms_warm_at_fits or search.ms_at_fits
    row: dict[str, Any] = {
        "name": name, "library": lib, "grad_checkpointing": ckpt, "accumulation": micro is not None,
        "micro_batch": micro, "max_batch": search.fits, "first_failing": search.fails,
        "capped_at_limit": search.capped, "out_of_time": search.out_of_time,
        "ms_per_step_at_max": ms, "ms_first_step_at_max": search.ms_at_fits, "timing_at_max": search.timing,
        "samples_per_s_at_max": search.fits / ms * 1e3 if ms and search.fits else None,
        "mfu_at_max": None, "seconds": search.seconds, "tries": search.tries,
    }
    if ms and search.fits:
        row["mfu_at_max"] = model_flops(shapes, search.fits)["total"] / (ms * 1e-3) / 1e12 / peak_tflops
    return row


def run_max_batch(
    args: argparse.Namespace, shapes: Shapes, device: torch.device, amp: torch.dtype | None, deadline: float,
    peak_tflops: float, result: dict[str, Any], save: Callable[[], None],
) -> bool:
    """The five searches of section (c), one model alive at a time, sharing what is left of the budget.

    Rows go into ``result["max_batch"]`` and the JSON is saved after each search. A search that raises
    is recorded with its error and the next one runs; False (and stop) after an unrecoverable CUDA
    error, since every later kernel would fail too.
    """
    limit = args.max_batch_limit
    start = min(args.batch, limit)
    rows: list[dict[str, Any]] = []
    result["max_batch"] = rows
    # eager steps: CUDA autocast copies each LayerNorm input to fp32 and keeps it, so a bf16 stream is not
    # expected to fit more; fp32 (unless only bf16 was asked for) keeps the rows comparable with earlier runs
    residual = "bf16" if residual_settings(args) == ("bf16",) else "fp32"
    result["max_batch_residual"] = residual
    print(f"max batch ({residual} residual on both sides): one eager step per try, limit {limit:,}, "
          f"{max(0.0, deadline - time.perf_counter()):.0f} s left for {len(PLANS)} searches", flush=True)
    for i, (name, lib, ckpt, accum) in enumerate(PLANS):
        micro = _accum_micro(rows, args.accum_micro) if accum else None
        left = deadline - time.perf_counter()
        if accum and micro is None:
            row = _empty_row(name, lib, ckpt, accum, "no polymodal plain maximum to size the micro-batches")
        elif left < args.min_search_s:
            row = _empty_row(name, lib, ckpt, accum, f"budget: {max(0.0, left):.0f} s left "
                                                       f"(< --min-search-s {args.min_search_s:g})")
        else:
            share = left / (len(PLANS) - i)
            row = _guarded_search(name, lib, ckpt, micro, shapes, device, amp, start, limit,
                                  time.perf_counter() + share, WARM_TIMING_SHARE * share, peak_tflops,
                                  residual == "bf16")
        rows.append(row)
        _print_search(row)
        if row.get("unrecoverable"):
            result["status"] = f"stopped: unrecoverable CUDA error in the search '{name}'"
            save()
            print(f"\nstopped: unrecoverable CUDA error in '{name}'; the JSON has everything before it",
                  file=sys.stderr, flush=True)
            return False
        result["status"] = f"running: {len(rows)} of {len(PLANS)} max-batch searches done"
        save()
    result["max_effective_contrastive_batch"] = _effective(rows)
    _print_max_batch(rows, result["max_effective_contrastive_batch"])
    return True


def _guarded_search(
    name: str, lib: str, ckpt: bool, micro: int | None, shapes: Shapes, device: torch.device,
    amp: torch.dtype | None, start: int, limit: int, share_end: float, timing_reserve_s: float,
    peak_tflops: float, bf16_residual: bool = False,
) -> dict[str, Any]:
    """One search as a JSON row, whatever happens: an exception becomes the row's ``error``.

    Tries stop ``timing_reserve_s`` before ``share_end``, leaving that for the warm re-timing. An
    unrecoverable CUDA error is flagged (``unrecoverable``) and nothing more is run on the device.
    """
    try:
        search = search_one(lib, ckpt, micro, shapes, device, amp, start, limit,
                            share_end - timing_reserve_s, share_end, bf16_residual=bf16_residual)
    except Exception as exc:  # noqa: BLE001 - one failed search must not cost the others
        traceback.print_exc()
        row = _empty_row(name, lib, ckpt, micro is not None, None, error=repr(exc)[:500], micro=micro)
        if _fatal_cuda(exc):
            row["unrecoverable"] = True
            return row
    else:
        row = search_row(search, name, lib, ckpt, micro, shapes, peak_tflops)
    _free(device)
    return row


def _empty_row(
    name: str, lib: str, ckpt: bool, accum: bool, skipped: str | None, error: str | None = None,
    micro: int | None = None,
) -> dict[str, Any]:
    """The row of a search that produced no result, saying why (``skipped``) or what broke (``error``)."""
    row: dict[str, Any] = {"name": name, "library": lib, "grad_checkpointing": ckpt, "accumulation": accum,
                           "micro_batch": micro, "max_batch": None}
    if skipped is not None:
        row["skipped"] = skipped
    if error is not None:
        row["error"] = error
    return row


def _effective(rows: list[dict[str, Any]]) -> dict[str, int | None]:
    """Largest batch per library over its searches (all negatives kept); None if none finished."""
    def best(lib: str) -> int | None:
        found = [r["max_batch"] for r in rows if r["library"] == lib and r.get("max_batch")]
        return max(found, default=None)

    return {"polymodal": best("polymodal"), "transformers": best("transformers")}


def _print_search(row: dict[str, Any]) -> None:
    if row.get("error"):
        print(f"  {row['name']}: FAILED {row['error']}", flush=True)
    elif row.get("skipped"):
        print(f"  {row['name']}: skipped ({row['skipped']})", flush=True)
    else:
        note = " (limit)" if row["capped_at_limit"] else " (out of time: lower bound)" if row["out_of_time"] else ""
        print(f"  {row['name']}: {row['max_batch']:,}{note} in {row['seconds']:.0f} s, {len(row['tries'])} tries; "
              f"timing: {row['timing_at_max']}", flush=True)


def _print_max_batch(rows: list[dict[str, Any]], effective: dict[str, int | None]) -> None:
    def cell(r: dict[str, Any]) -> str:
        if r.get("max_batch") is None:
            return "error" if r.get("error") else "skipped"
        return f"{r['max_batch']:,}" + (" (limit)" if r["capped_at_limit"] else " (time)" if r["out_of_time"] else "")

    def warm(r: dict[str, Any], text: str) -> str:  # * marks a cold first-step timing
        return text + ("" if "mean of 2" in r.get("timing_at_max", "") else " *")

    print("\n" + _table(["max batch per GPU", "micro-batch", "max (effective contrastive) batch", "first OOM",
                         "samples/s there", "MFU there", "search s"], [
        [r["name"], str(r["micro_batch"] or "-"), cell(r),
         f"{r['first_failing']:,}" if r.get("first_failing") else "-",
         warm(r, f"{r['samples_per_s_at_max']:,.0f}") if r.get("samples_per_s_at_max") else "-",
         warm(r, f"{r['mfu_at_max']:.1%}") if r.get("mfu_at_max") else "-",
         f"{r['seconds']:.0f}" if r.get("seconds") is not None else "-"] for r in rows
    ]))
    print("(* = from the search's single cold step at that batch, not from warm steps)")
    pm, hf = effective["polymodal"], effective["transformers"]
    ratio = f" ({pm / hf:.1f}x)" if pm and hf else ""
    print(f"\nmax effective contrastive batch per GPU (all negatives kept): polymodal {pm or '-'}"
          f" vs transformers {hf or '-'}{ratio}", flush=True)


# ------------------------------------------------------------------------------ accumulation sanity


def check_accum_equivalence(shapes: Shapes = QUICK, batch: int = 8, k: int = 2, seed: int = 0) -> dict[str, Any]:
    """One fp32 AdamW step via ``contrastive_accum_step`` (K micro-batches) vs one full-batch step.

    The benchmark's accumulated rows only mean something if that path trains the same model as the
    plain step; this checks the wiring used above (encode = both towers, loss = the model's ITC
    module) on CPU: same loss, and parameters after the optimiser step equal within 1e-5.
    """
    device = torch.device("cpu")
    images, ids = make_batch(shapes, batch, device, seed=seed)
    torch.manual_seed(seed)
    ref = build_polymodal(shapes)
    acc = build_polymodal(shapes)
    acc.load_state_dict(ref.state_dict())
    before = {n: p.detach().clone() for n, p in ref.named_parameters()}

    ref_loss = polymodal_step(ref, make_optimizer(ref, device), device, None)(images, ids)
    acc_loss = polymodal_accum_step(acc, make_optimizer(acc, device), device, None, batch // k)(images, ids)

    acc_params = dict(acc.named_parameters())
    max_diff = max((p - acc_params[n]).abs().max().item() for n, p in ref.named_parameters())
    max_update = max((p - before[n]).abs().max().item() for n, p in ref.named_parameters())
    return {
        "batch": batch, "micro_batches": k, "dtype": "float32",
        "loss_full": ref_loss.item(), "loss_accum": acc_loss.item(),
        "max_param_diff": max_diff, "max_param_update": max_update, "ok": max_diff <= 1e-5,
    }


# --------------------------------------------------------------------------------------------- output


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _table(header: list[str], rows: Iterator[list[str]] | list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in
                                                            range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _gb(b: float | None) -> str:
    return "-" if not b else f"{b / 2**30:.2f}"


def save_result(path: Path, record: dict[str, Any]) -> None:
    """Write the results JSON atomically (temporary file + rename), and never raise.

    It is rewritten after every section: a kill mid-write must leave the previous complete file, and
    a full disk or an odd value must not end the run (``default=str`` stringifies the unexpected).
    """
    try:
        write_result(path, record, default=str)
    except (OSError, TypeError, ValueError) as exc:
        print(f"warning: could not write {path}: {exc!r}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--device", default=None,
                    help="default cuda (a full run exits with code 2 without CUDA); with --quick, cpu if "
                         "CUDA is missing")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, CPU-friendly (tests, smoke runs)")
    ap.add_argument("--batch", type=int, default=None, help="throughput batch (default 256; quick 8)")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed repeat (default 10; quick 2)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5; quick 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per side (default 3; quick 1)")
    ap.add_argument("--skip-compile", action="store_true", help="no torch.compile rows")
    ap.add_argument("--compile", action="store_true", help="compile rows even with --quick")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode (both sides)")
    ap.add_argument("--amp", choices=["bf16", "fp32"], default=None,
                    help="autocast dtype, fp32 = none (default bf16 on CUDA; fp32 on CPU, where bf16 is slow)")
    ap.add_argument("--residual", choices=["fp32", "bf16", "both"], default=None,
                    help="residual stream of both sides' transformer layers under bf16 autocast: fp32 (autocast's), "
                         "bf16 (train.bf16_residual) or both, as separate rows (default both with bf16 autocast, "
                         "else fp32)")
    ap.add_argument("--matmul-size", type=int, default=None, help="peak matmul size (default 8192; quick 256)")
    ap.add_argument("--matmul-repeats", type=int, default=10)
    ap.add_argument("--skip-max-batch", action="store_true")
    ap.add_argument("--max-batch-limit", type=int, default=None,
                    help="largest batch any search tries (default 131072; quick 32)")
    ap.add_argument("--accum-micro", type=int, default=None,
                    help="micro-batch of the accumulated search (default: 3/4 of polymodal's plain max)")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="wall-clock budget of the whole run, from the start: compiled rows start only in its "
                         f"first {COMPILE_BUDGET_FRACTION:.0%}%, the max-batch searches share what is left "
                         "(default 540; quick 45)")
    ap.add_argument("--min-search-s", type=float, default=None,
                    help="a max-batch search with less time left than this is skipped (default 20; quick 2)")
    ap.add_argument("--skip-accum-check", action="store_true", help="skip the CPU accumulation check")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT})")
    ap.add_argument("--commit", default=None,
                    help="commit recorded in the JSON (default: asked from git, 'unknown' without .git)")
    args = ap.parse_args(argv)
    defaults = {"batch": (8, 256), "steps": (2, 10), "repeats": (2, 5), "warmup": (1, 3),
                "matmul_size": (256, 8192), "max_batch_limit": (32, 131072), "time_budget_s": (45.0, 540.0),
                "min_search_s": (2.0, 20.0)}
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.device is None:
        args.device = "cpu" if args.quick and not torch.cuda.is_available() else "cuda"
    if args.amp is None:
        args.amp = "bf16" if str(args.device).startswith("cuda") else "fp32"
    if args.residual is None:
        args.residual = "both" if args.amp == "bf16" else "fp32"
    elif args.residual != "fp32" and args.amp != "bf16":
        ap.error(f"--residual {args.residual} needs --amp bf16 (a bf16 residual stream exists only under bf16 autocast)")
    return args


def residual_settings(args: argparse.Namespace) -> tuple[str, ...]:
    """The residual settings the throughput rows run, in their order: ``('fp32',)``, ``('bf16',)`` or both,
    bf16 first (should the budget stop the compiled rows, the fp32 pair was measured before it existed)."""
    return ("bf16", "fp32") if args.residual == "both" else (args.residual,)


def _import_problem() -> str | None:
    """Import everything the run needs now, so a missing piece fails in the first second, not later."""
    try:
        import transformers  # noqa: F401
        from transformers import CLIPModel  # noqa: F401

        from polymodal.models.dual_encoder import DualEncoder  # noqa: F401
        from polymodal.modules.encoders.text import TextTransformer  # noqa: F401
        from polymodal.modules.encoders.vision import VisionTransformer  # noqa: F401
        from polymodal.train.contrastive_accum import contrastive_accum_step  # noqa: F401
    except ImportError as exc:
        return f"{exc!r} (sys.path starts {sys.path[:3]})"
    return None


class Terminated(BaseException):
    """SIGTERM arrived (e.g. the machine's wall-clock limit): unwind so the JSON says how far it got."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the duration (main thread only, handler restored)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"--device {args.device}, but CUDA is not available here (torch {torch.__version__}); this "
              "benchmark times a GPU. For a CPU smoke run use --quick --device cpu.", file=sys.stderr)
        return 2
    problem = _import_problem()
    if problem is not None:
        print(f"cannot import what the benchmark needs: {problem}", file=sys.stderr)
        return 2
    result = _header(args, device)

    def save() -> None:
        save_result(args.out, result)

    with _sigterm_unwinds():
        try:
            code = run_sections(args, device, result, save, t_start)
        except BaseException as exc:
            what = "terminated" if isinstance(exc, (Terminated, KeyboardInterrupt)) else "crashed"
            result["status"] = f"{what}: {exc!r}"[:600]
            result["seconds"] = time.perf_counter() - t_start
            save()
            print(f"\n{what}; partial results in {args.out}", file=sys.stderr, flush=True)
            raise
    return code


def _header(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Provenance of the run: what ran where, with which settings."""
    import transformers

    shapes = QUICK if args.quick else CLIP_B32
    return {
        "benchmark": "CLIP ViT-B/32 contrastive training step, polymodal vs transformers CLIPModel",
        "issue": "#9 target 1",
        "status": "started",
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "commit": args.commit or git_commit(),
        "device": _device_name(device),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version(), "cuda": torch.version.cuda},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "shapes": asdict(shapes),
    }


def run_sections(
    args: argparse.Namespace, device: torch.device, result: dict[str, Any], save: Callable[[], None],
    t_start: float,
) -> int:
    """The sections in order, saving the JSON after each; the exit code (0 all fine)."""
    import transformers

    deadline = t_start + args.time_budget_s
    shapes = QUICK if args.quick else CLIP_B32
    amp = torch.bfloat16 if args.amp == "bf16" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    print(f"# {result['benchmark']}\n\ndevice: {result['device']}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}; commit {result['commit']}; {'quick' if args.quick else 'full'}"
          f" shapes; batch {args.batch}; autocast {args.amp}; budget {args.time_budget_s:.0f} s; "
          f"results to {args.out}\n", flush=True)
    save()

    if not args.skip_accum_check:
        result["accum_equivalence"] = accum_check_section()
    result["matmul_peak"] = peak_section(args, device)
    _saved(result, save, "matmul peak")

    compile_mode = args.compile_mode if not args.skip_compile and (args.compile or not args.quick) else None
    compile_deadline = t_start + COMPILE_BUDGET_FRACTION * args.time_budget_s
    if not compare_section(args, shapes, device, amp, compile_mode, compile_deadline, result, save):
        result["status"] = "stopped: the two sides are not the same network"
        save()
        return 1
    if compile_mode is not None:
        torch._dynamo.reset()  # compiled graphs may still reference the models' weights
    _free(device)
    if device.type == "cuda":
        allocated = torch.cuda.memory_allocated(device)
        result["memory_allocated_before_max_batch_bytes"] = allocated
        print(f"memory still allocated after the throughput section: {allocated / 2**20:,.1f} MiB", flush=True)

    if not args.skip_max_batch:
        if device.type == "cuda":  # no autotuning per new batch shape: steadier one-step timings
            torch.backends.cudnn.benchmark = False
        if not run_max_batch(args, shapes, device, amp, deadline, result["matmul_peak"]["tflops"], result, save):
            result["seconds"] = time.perf_counter() - t_start
            save()
            return 1

    result["seconds"] = time.perf_counter() - t_start
    result["status"] = "complete"
    save()
    print(f"\ntotal {result['seconds']:.0f} s; wrote {args.out}", flush=True)
    return 0 if result.get("accum_equivalence", {"ok": True})["ok"] else 1


def _saved(result: dict[str, Any], save: Callable[[], None], section: str) -> None:
    result["status"] = f"running: done up to the {section}"
    save()


def accum_check_section() -> dict[str, Any]:
    check = check_accum_equivalence()
    print(f"accumulation check (CPU fp32, batch {check['batch']}, K={check['micro_batches']}): loss "
          f"{check['loss_full']:.6f} vs {check['loss_accum']:.6f}, max parameter difference after "
          f"AdamW {check['max_param_diff']:.2e} (update size {check['max_param_update']:.1e}): "
          f"{'OK' if check['ok'] else 'MISMATCH'}\n", flush=True)
    return check


def peak_section(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    peak = matmul_peak(device, args.matmul_size, args.matmul_repeats,
                       torch.bfloat16 if args.amp == "bf16" else torch.float32)
    print(_table(["measured matmul peak", "size", "dtype", "ms", "TFLOP/s"],
                 [[f"best of {args.matmul_repeats}", str(peak["size"]), peak["dtype"], f"{peak['ms']:.3f}",
                   f"{peak['tflops']:.1f}"]]) + f"\n(after {peak['warmup_calls']} warm-up matmuls)\n", flush=True)
    return peak


def param_check(shapes: Shapes, pm: nn.Module, hf: nn.Module) -> dict[str, Any]:
    """Both sides must be the same network, and the FLOP formula must count exactly their matmuls."""
    formula = matmul_params(shapes)
    params: dict[str, Any] = {
        "polymodal": count_params(pm), "transformers": count_params(hf),
        "matmul_formula": sum(formula.values()),
        "matmul_counted_polymodal": counted_matmul_params(pm), "matmul_counted_transformers": counted_matmul_params(hf),
    }
    params["relative_difference"] = abs(params["polymodal"] - params["transformers"]) / params["transformers"]
    params["ok"] = params["relative_difference"] <= 0.01 and (
        params["matmul_formula"] == params["matmul_counted_polymodal"] == params["matmul_counted_transformers"]
    )
    print(_table(["parameters", "polymodal", "transformers"], [
        ["all", f"{params['polymodal']:,}", f"{params['transformers']:,}"],
        ["in matmuls (counted)", f"{params['matmul_counted_polymodal']:,}", f"{params['matmul_counted_transformers']:,}"],
        ["in matmuls (formula)", f"{params['matmul_formula']:,}", f"{params['matmul_formula']:,}"],
    ]) + f"\n\nparameter counts differ by {100 * params['relative_difference']:.3f}%"
        + ("" if params["ok"] else "  ** MISMATCH: the two sides are not the same network **") + "\n", flush=True)
    return params


def compare_section(
    args: argparse.Namespace, shapes: Shapes, device: torch.device, amp: torch.dtype | None,
    compile_mode: str | None, compile_deadline: float, result: dict[str, Any], save: Callable[[], None],
) -> bool:
    """Parameter check and section (b); False if the sides differ.

    Every model, optimiser and compiled wrapper of this section lives in this function's frame only,
    so all of them are gone - not just all but the last side - once it returns.
    """
    residuals = residual_settings(args)
    pm = build_polymodal(shapes, bf16_residual=residuals[0] == "bf16").to(device)
    hf = build_hf(shapes, bf16_residual=residuals[0] == "bf16").to(device)
    result["params"] = param_check(shapes, pm, hf)
    if not result["params"]["ok"]:
        return False
    flops = model_flops(shapes, args.batch)
    result["flops_per_step"] = flops
    batch = make_batch(shapes, args.batch, device)
    sides = make_sides(pm, hf, shapes, device, amp, compile_mode, residuals)
    del pm, hf
    print(f"throughput: batch {args.batch}, {args.warmup} warm-up steps, {args.repeats} interleaved repeats "
          f"x {args.steps} steps; model FLOPs/step {flops['total'] / 1e12:.3f} TFLOP "
          f"(matmul {flops['matmul'] / flops['total']:.1%}, attention {flops['attention'] / flops['total']:.1%}, "
          f"logits {flops['logits'] / flops['total']:.2%})", flush=True)
    during_timing = run_throughput(sides, batch, args.steps, args.repeats, args.warmup, device, compile_deadline)
    if compile_mode is not None:
        result["dynamo_during_timing"] = during_timing
    if device.type == "cuda":  # after timing, so the profiler cannot disturb it
        for side in (s for s in sides if s.live):
            side.profile = profile_step(side.step, batch, device)
    rows = throughput_rows(sides, args.batch, flops["total"], result["matmul_peak"]["tflops"])
    result["throughput"] = rows
    result["targets"] = speedup_targets(rows)
    _saved(result, save, "throughput section")
    _print_throughput(rows, result["targets"], device)
    return True


def _print_throughput(rows: list[dict[str, Any]], targets: dict[str, Any], device: torch.device) -> None:
    def line(r: dict[str, Any]) -> list[str]:
        if not r.get("samples_per_s"):
            why = r.get("skipped") or r.get("error") or "no timing"
            return [r["name"], "-", "-", "-", "-", "-", why[:60]]
        return [r["name"], f"{r['samples_per_s']:,.1f}", f"{r['ms_per_step']:.2f}", f"{r['tflops']:.1f}",
                f"{r['mfu']:.1%}", _gb((r["peak_memory_gib"] or 0) * 2**30), f"{r['warmup_s']:.1f}"]

    print("\n" + _table(["side", "samples/s", "ms/step", "TFLOP/s", "MFU", "peak mem GiB", "warm-up s"],
                        [line(r) for r in rows]), flush=True)
    speed, mfu = targets["speedup_vs_peer"], targets["mfu"]
    if speed["value"] is None:
        print(f"\nspeedup target not measurable: {speed['why']}\n", flush=True)
        return
    print(f"\n{speed['ours']} vs {speed['peer']} (the faster transformers row): {speed['value']:.2f}x "
          f"(target >= 1.5x: {'met' if speed['met'] else 'missed'}); MFU {mfu['value']:.1%} (target >= 40%: "
          f"{'met' if mfu['met'] else 'missed'})"
          + ("" if device.type == "cuda" else "  [CPU run: the targets are for a GPU]") + "\n", flush=True)
    for residual, pair in speed.get("by_residual", {}).items():
        print(f"  {residual} residual on both sides: {pair['ours']} vs {pair['peer']}: {pair['value']:.2f}x", flush=True)
    _print_profiles(rows)


def _print_profiles(rows: list[dict[str, Any]]) -> None:
    """Where each side's step went, by kind of kernel (profiled steps; see :func:`time_by_kind`)."""
    profiled = [r for r in rows if "time" in r.get("profile", {})]
    if not profiled:
        return
    kinds = sorted({k for r in profiled for k in r["profile"]["time"]["ms_per_step"]},
                   key=lambda k: -max(r["profile"]["time"]["ms_per_step"].get(k, 0.0) for r in profiled))
    print("\nwhere a step's time went (ms per step, one profiled run of 2 steps; 'kernels' is their sum, "
          "'wall' the profiled step):\n", flush=True)
    print(_table(["side", *kinds, "kernels", "wall"], [
        [r["name"], *(f"{r['profile']['time']['ms_per_step'].get(k, 0.0):.2f}" for k in kinds),
         f"{r['profile']['time']['total_ms']:.2f}", f"{r['profile']['time']['wall_ms_profiled']:.2f}"]
        for r in profiled]), flush=True)
    for r in profiled:
        top = ", ".join(f"{k['name'][:70]} {k['ms']:.2f} ms x{k['calls']}" for k in r["profile"]["time"]["top"][:8])
        print(f"  {r['name']} top kernels: {top}", flush=True)
        print(f"  {r['name']} attention: {r['profile']['attention']}", flush=True)

if __name__ == "__main__":
    raise SystemExit(main())
