"""Benchmark: CLIP ViT-B/32 contrastive training throughput, polymodal vs Hugging Face ``CLIPModel``.

Run ``python benchmarks/bench_train_gpu.py`` on a GPU (issue #9, target 1). Both sides are the same
network: a ViT-B/32 image tower (width 768, 12 layers, 12 heads, patch 32, 224 px, pre-LN + ln_pre,
QuickGELU) and a causal text tower (width 512, 12 layers, 8 heads, 77 tokens, vocabulary 49,408),
projected to 512-d, with CLIP's contrastive loss and a learnable logit scale. The script checks that
the two parameter counts agree (within 1%) before timing anything.

What one training step is, identically for every row: forward both towers and the loss under bf16
autocast (fp32 master weights), ``loss.backward()``, ``AdamW.step()`` (fused on CUDA) and
``zero_grad(set_to_none=True)``. The batch is one synthetic batch on the device (fp32 pixels, 77
random token ids ending in the end-of-text id, no padding, as open_clip trains), so data loading is
not measured. TF32 and cuDNN autotuning are on for both sides.

Sections:

a. **matmul peak**: the card's measured bf16 matmul rate (``--matmul-size``\\ :sup:`3` matmuls, best
   of ``--matmul-repeats``, CUDA events). MFU is relative to this, not to the datasheet.
b. **throughput** at ``--batch`` (256): polymodal eager / ``torch.compile`` and ``CLIPModel``
   (``attn_implementation='sdpa'``) eager / compiled. Timed repeats are interleaved (each repeat runs
   every side for ``--steps`` steps, the order rotating), so drift on a shared machine hits all sides
   alike; samples/s is from the median repeat (the best is in the JSON).
c. **max batch**: the largest batch one GPU trains (one eager step per try: doubling, then a binary
   search to 1/16 of the bracket, ``torch.cuda.OutOfMemoryError`` caught and memory freed between
   tries; raw uint8 pixels on the device, normalised inside the step) for plain training and with
   gradient checkpointing on each side; then polymodal's ``contrastive_accum_step`` (gradient-cached
   accumulation, train/contrastive_accum.py): K micro-batches (3/4 of polymodal's plain maximum each,
   normalised one at a time) whose features are scored together, so the effective contrastive batch
   is K x micro with *all* negatives kept. The peer has no such accumulation (summing per-micro-batch losses keeps
   only B/K negatives), so its max effective contrastive batch is its largest single batch. The
   polymodal model there is built with ``local_loss=True, gather=True`` (on one GPU both are no-ops;
   under DDP they keep the logits at ``[local, global]``). All searches share ``--time-budget-s``;
   a search that runs out of time reports its proven lower bound and says so.

Model FLOPs per step (the same formula for both sides; see :func:`model_flops`)::

    6 * B * (N_v * T_v' + N_t * T_t + N_proj)   matmul weights x tokens they touch, fwd + bwd
  + 12 * B * (L_v * T_v^2 * d_v + L_t * T_t^2 * d_t)   attention scores and weighted values, fwd + bwd
  + 6 * B^2 * E                                  the image-text logits, fwd + bwd

``N_*`` counts only weights that multiply activations (qkv, out-proj, MLP; the patch-embedding conv
on the ``T_v - 1`` patches; the two projections on one token per sample); embeddings, norms and
biases are left out. Attention counts the full ``T^2`` for the causal text tower too (the
PaLM-appendix convention), and gradient checkpointing's recompute is not counted (model FLOPs, not
hardware FLOPs). ``MFU = FLOPs / step time / measured matmul peak``.

Outputs Markdown tables and ``benchmarks/results/train_gpu.json``. ``--quick`` shrinks everything
(64-wide, 2-layer towers at 64 px / 16 tokens, batch 8, 2 steps, no compile unless ``--compile``,
max batch capped at 32) so the whole script runs on a CPU in under a minute; it also checks
that one accumulated step (K=2, fp32) updates the parameters exactly as one full-batch step does.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Before torch initialises CUDA: fewer fragmentation OOMs in the max-batch search (same for both sides).
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch
from provenance import git_commit, write_result
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "train_gpu.json"


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
    attention, the numbers a reader can recompute by hand from the shapes.
    """
    n = matmul_params(s)
    tv, tt = s.vision_tokens, s.context_length
    matmul = 6.0 * batch * (
        n["vision_blocks"] * tv + n["patch_embed"] * (tv - 1) + n["text_blocks"] * tt + n["projections"]
    )
    attention = 12.0 * batch * (
        s.vision_layers * tv**2 * s.vision_width + s.text_layers * tt**2 * s.text_width
    )
    logits = 6.0 * batch**2 * s.embed_dim
    return {"matmul": matmul, "attention": attention, "logits": logits, "total": matmul + attention + logits}


def counted_matmul_params(model: nn.Module) -> int:
    """Sum of ``nn.Linear`` / ``nn.Conv2d`` weights actually in a model: checks the formula."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------- models


def build_polymodal(
    s: Shapes, *, grad_checkpointing: bool = False, local_loss: bool = False
) -> nn.Module:
    """polymodal's ``DualEncoder`` shaped like OpenAI's CLIP (ln_pre, QuickGELU, bias-free projections).

    The projections live in the towers (``output_dim``) so ``DualEncoder``'s own projections are
    identities, as in CLIP; ``pad_id=None`` means no padding mask (full 77-token texts, causal fast
    path), the same input the peer gets.
    """
    from polymodal.models.dual_encoder import DualEncoder
    from polymodal.modules.encoders.text import TextTransformer
    from polymodal.modules.encoders.vision import VisionTransformer

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
    return DualEncoder(vision, text, s.embed_dim, init_temperature=0.07, gather=True, local_loss=local_loss)


def build_hf(s: Shapes, *, grad_checkpointing: bool = False) -> nn.Module:
    """The peer: ``transformers.CLIPModel`` with the same shapes and SDPA attention."""
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
    return model


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
    """One step with ``contrastive_accum_step``: the loss sees the whole batch, encoders a micro-batch."""
    from polymodal.train.contrastive_accum import contrastive_accum_step, split_micro_batches

    def encode(mb: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return model.encode_image(pixels(mb[0])), model.encode_text(mb[1])

    def step(images: Tensor, ids: Tensor) -> Tensor:
        k = max(1, math.ceil(images.shape[0] / micro_batch))
        with _autocast(device, amp):
            out = contrastive_accum_step(
                encode, split_micro_batches((images, ids), k), lambda img, txt: model.itc(img, txt)
            )
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    return step


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


def matmul_peak(device: torch.device, size: int, repeats: int, dtype: torch.dtype) -> dict[str, Any]:
    """The card's measured dense matmul rate: best of ``repeats`` timings of 10 ``size``^3 matmuls."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    c = torch.empty(size, size, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=c)
    best = min(time_ms(lambda: torch.matmul(a, b, out=c), 10, device) for _ in range(repeats))
    return {"size": size, "dtype": str(dtype).removeprefix("torch."), "ms": best,
            "tflops": 2 * size**3 / (best * 1e-3) / 1e12}


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
    """One competitor in the throughput table."""

    name: str
    model: nn.Module
    opt: torch.optim.Optimizer
    step: StepFn
    times_ms: list[float]
    peak_bytes: int = 0
    warmup_s: float = 0.0


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_throughput(
    sides: list[Side], batch: tuple[Tensor, Tensor], steps: int, repeats: int, warmup: int,
    device: torch.device,
) -> None:
    """Warm every side up (this is where compilation happens), then interleave the timed repeats."""
    for side in sides:
        t0 = time.perf_counter()
        for _ in range(warmup):
            side.step(*batch)
        _sync(device)
        side.warmup_s = time.perf_counter() - t0
        print(f"  warmed up {side.name} in {side.warmup_s:.1f} s", flush=True)
    for r in range(repeats):
        order = sides[r % len(sides):] + sides[: r % len(sides)]
        for side in order:
            if device.type == "cuda":
                others = torch.cuda.memory_allocated(device) - _state_bytes(side.model, side.opt)
                torch.cuda.reset_peak_memory_stats(device)
            side.times_ms.append(time_ms(lambda s=side: s.step(*batch), steps, device))
            if device.type == "cuda":
                side.peak_bytes = max(side.peak_bytes, torch.cuda.max_memory_allocated(device) - others)


# ------------------------------------------------------------------------------------------ max batch


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc)


def try_batch(
    step: StepFn, model: nn.Module, opt: torch.optim.Optimizer, s: Shapes, batch: int, device: torch.device
) -> float | None:
    """ms of one step at ``batch``, or None if it ran out of memory (memory freed either way)."""
    data: tuple[Tensor, Tensor] | None = None
    ok = True
    ms = 0.0
    try:
        data = make_batch(s, batch, device, seed=batch, uint8=True)
        ms = time_ms(lambda: step(*data), 1, device)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as exc:
        if not _is_oom(exc):
            raise
        ok = False
    data = None
    opt.zero_grad(set_to_none=True)
    _free(device)
    return ms if ok else None


@dataclass
class Search:
    """Result of one max-batch search: ``fits`` trained, ``fails`` ran out of memory (None: never seen)."""

    fits: int
    fails: int | None
    capped: bool
    out_of_time: bool
    ms_at_fits: float | None
    tries: list[tuple[int, bool]]
    seconds: float


def find_max(
    attempt: Callable[[int], float | None], start: int, limit: int, deadline: float, unit: int = 1,
    resolution: float = 1 / 16,
) -> Search:
    """Largest ``n * unit <= limit`` with ``attempt(n * unit)`` succeeding: doubling, then bisection.

    Bisection stops once the bracket is within ``resolution`` of the lower bound (each try is a full
    step at a huge batch; 6% is enough to compare libraries). A try predicted to overrun ``deadline``
    is not started; the result then says ``out_of_time`` and ``fits`` is a proven lower bound.
    """
    t0 = time.perf_counter()
    tries: list[tuple[int, bool]] = []
    lo, hi, lo_ms = 0, None, None
    out_of_time = False
    n_max = max(1, limit // unit)

    def attempt_n(n: int) -> bool:
        nonlocal lo, hi, lo_ms, out_of_time
        if lo and lo_ms is not None:
            predicted = lo_ms * 1e-3 * n / lo * 1.5  # per-try time grows about linearly with the batch
            if time.perf_counter() + predicted > deadline:
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


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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
    ap.add_argument("--matmul-size", type=int, default=None, help="peak matmul size (default 8192; quick 256)")
    ap.add_argument("--matmul-repeats", type=int, default=10)
    ap.add_argument("--skip-max-batch", action="store_true")
    ap.add_argument("--max-batch-limit", type=int, default=None,
                    help="largest batch any search tries (default 131072; quick 64)")
    ap.add_argument("--accum-micro", type=int, default=None,
                    help="micro-batch of the accumulated search (default: 3/4 of polymodal's plain max)")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="wall-clock budget of the whole run; the max-batch searches share what is left "
                         "(default 540; quick 60)")
    ap.add_argument("--skip-accum-check", action="store_true", help="skip the CPU accumulation check")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    defaults = {"batch": (8, 256), "steps": (2, 10), "repeats": (2, 5), "warmup": (1, 3),
                "matmul_size": (256, 8192), "max_batch_limit": (32, 131072), "time_budget_s": (45.0, 540.0)}
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.amp is None:
        args.amp = "bf16" if str(args.device).startswith("cuda") else "fp32"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    deadline = t_start + args.time_budget_s
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda but CUDA is not available; use --device cpu (with --quick)", file=sys.stderr)
        return 2
    import transformers

    shapes = QUICK if args.quick else CLIP_B32
    amp = torch.bfloat16 if args.amp == "bf16" else None
    compile_rows = not args.skip_compile and (args.compile or not args.quick)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)

    result: dict[str, Any] = {
        "benchmark": "CLIP ViT-B/32 contrastive training step, polymodal vs transformers CLIPModel",
        "issue": "#9 target 1",
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "commit": git_commit(),
        "device": _device_name(device),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version(), "cuda": torch.version.cuda},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "shapes": asdict(shapes),
    }
    print(f"# {result['benchmark']}\n\ndevice: {result['device']}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}; commit {result['commit']}; {'quick' if args.quick else 'full'}"
          f" shapes; batch {args.batch}; autocast {args.amp}\n", flush=True)

    # ---- accumulation sanity (CPU, fp32, tiny)
    if not args.skip_accum_check:
        check = check_accum_equivalence()
        result["accum_equivalence"] = check
        print(f"accumulation check (CPU fp32, batch {check['batch']}, K={check['micro_batches']}): loss "
              f"{check['loss_full']:.6f} vs {check['loss_accum']:.6f}, max parameter difference after "
              f"AdamW {check['max_param_diff']:.2e} (update size {check['max_param_update']:.1e}): "
              f"{'OK' if check['ok'] else 'MISMATCH'}\n", flush=True)

    # ---- (a) matmul peak
    peak = matmul_peak(device, args.matmul_size, args.matmul_repeats,
                       torch.bfloat16 if args.amp == "bf16" else torch.float32)
    result["matmul_peak"] = peak
    print(_table(["measured matmul peak", "size", "dtype", "ms", "TFLOP/s"],
                 [[f"best of {args.matmul_repeats}", str(peak["size"]), peak["dtype"], f"{peak['ms']:.3f}",
                   f"{peak['tflops']:.1f}"]]) + "\n", flush=True)

    # ---- models, parameter check
    pm = build_polymodal(shapes).to(device)
    hf = build_hf(shapes).to(device)
    formula = matmul_params(shapes)
    params = {
        "polymodal": count_params(pm), "transformers": count_params(hf),
        "matmul_formula": sum(formula.values()),
        "matmul_counted_polymodal": counted_matmul_params(pm), "matmul_counted_transformers": counted_matmul_params(hf),
    }
    params["relative_difference"] = abs(params["polymodal"] - params["transformers"]) / params["transformers"]
    params["ok"] = params["relative_difference"] <= 0.01 and (
        params["matmul_formula"] == params["matmul_counted_polymodal"] == params["matmul_counted_transformers"]
    )
    result["params"] = params
    print(_table(["parameters", "polymodal", "transformers"], [
        ["all", f"{params['polymodal']:,}", f"{params['transformers']:,}"],
        ["in matmuls (counted)", f"{params['matmul_counted_polymodal']:,}", f"{params['matmul_counted_transformers']:,}"],
        ["in matmuls (formula)", f"{params['matmul_formula']:,}", f"{params['matmul_formula']:,}"],
    ]) + f"\n\nparameter counts differ by {100 * params['relative_difference']:.3f}%"
        + ("" if params["ok"] else "  ** MISMATCH: the two sides are not the same network **") + "\n", flush=True)
    if not params["ok"]:
        write_result(args.out, result)
        return 1

    # ---- (b) throughput
    flops = model_flops(shapes, args.batch)
    result["flops_per_step"] = flops
    batch = make_batch(shapes, args.batch, device)
    sides = [Side("polymodal eager", pm, (o := make_optimizer(pm, device)), polymodal_step(pm, o, device, amp), [])]
    if compile_rows:
        pm_c = build_polymodal(shapes).to(device)
        pm_c.load_state_dict(pm.state_dict())
        o = make_optimizer(pm_c, device)
        sides.append(Side("polymodal compiled", pm_c, o, polymodal_step(
            pm_c, o, device, amp, torch.compile(pm_c, mode=args.compile_mode)), []))
    sides.append(Side("transformers eager", hf, (o := make_optimizer(hf, device)), hf_step(hf, o, device, amp), []))
    if compile_rows:
        hf_c = build_hf(shapes).to(device)
        hf_c.load_state_dict(hf.state_dict())
        o = make_optimizer(hf_c, device)
        sides.append(Side("transformers compiled", hf_c, o, hf_step(
            hf_c, o, device, amp, torch.compile(hf_c, mode=args.compile_mode)), []))
    print(f"throughput: batch {args.batch}, {args.warmup} warm-up steps, {args.repeats} interleaved repeats "
          f"x {args.steps} steps; model FLOPs/step {flops['total'] / 1e12:.3f} TFLOP "
          f"(matmul {flops['matmul'] / flops['total']:.1%}, attention {flops['attention'] / flops['total']:.1%}, "
          f"logits {flops['logits'] / flops['total']:.2%})", flush=True)
    run_throughput(sides, batch, args.steps, args.repeats, args.warmup, device)

    rows = []
    for side in sides:
        med, best = statistics.median(side.times_ms), min(side.times_ms)
        rows.append({
            "name": side.name, "batch": args.batch, "ms_per_step": med, "ms_per_step_best": best,
            "ms_per_step_all": side.times_ms, "samples_per_s": args.batch / med * 1e3,
            "tflops": flops["total"] / (med * 1e-3) / 1e12,
            "mfu": flops["total"] / (med * 1e-3) / 1e12 / peak["tflops"],
            "peak_memory_gib": side.peak_bytes / 2**30 if side.peak_bytes else None,
            "warmup_s": side.warmup_s,
        })
    result["throughput"] = rows
    print("\n" + _table(["side", "samples/s", "ms/step", "TFLOP/s", "MFU", "peak mem GiB", "warm-up s"], [
        [r["name"], f"{r['samples_per_s']:,.1f}", f"{r['ms_per_step']:.2f}", f"{r['tflops']:.1f}",
         f"{r['mfu']:.1%}", _gb(side.peak_bytes), f"{r['warmup_s']:.1f}"] for r, side in zip(rows, sides)
    ]), flush=True)
    by = {r["name"]: r for r in rows}
    targets: dict[str, Any] = {}
    ours = max((r for r in rows if r["name"].startswith("polymodal")), key=lambda r: r["samples_per_s"])
    peer_name = "transformers compiled" if "transformers compiled" in by else "transformers eager"
    ratio = ours["samples_per_s"] / by[peer_name]["samples_per_s"]
    targets["speedup_vs_peer"] = {"ours": ours["name"], "peer": peer_name, "value": ratio, "target": 1.5,
                                  "met": ratio >= 1.5}
    targets["mfu"] = {"ours": ours["name"], "value": ours["mfu"], "target": 0.40, "met": ours["mfu"] >= 0.40}
    result["targets"] = targets
    print(f"\n{ours['name']} vs {peer_name}: {ratio:.2f}x (target >= 1.5x: "
          f"{'met' if ratio >= 1.5 else 'missed'}); MFU {ours['mfu']:.1%} (target >= 40%: "
          f"{'met' if ours['mfu'] >= 0.40 else 'missed'})"
          + ("" if device.type == "cuda" else "  [CPU run: the targets are for a GPU]") + "\n", flush=True)
    del sides, batch, o, pm, hf
    if compile_rows:
        del pm_c, hf_c
        torch._dynamo.reset()  # compiled graphs may still reference the models' weights
    _free(device)

    # ---- (c) max batch
    if not args.skip_max_batch:
        if device.type == "cuda":  # no autotuning per new batch shape: steadier one-step timings
            torch.backends.cudnn.benchmark = False
        rows_mb, effective = run_max_batch(args, shapes, device, amp, deadline, peak["tflops"])
        result["max_batch"] = rows_mb
        result["max_effective_contrastive_batch"] = effective

    result["seconds"] = time.perf_counter() - t_start
    write_result(args.out, result)
    print(f"\ntotal {result['seconds']:.0f} s; wrote {args.out}")
    ok = result.get("accum_equivalence", {"ok": True})["ok"]
    return 0 if ok else 1


def search_one(
    lib: str, ckpt: bool, micro: int | None, shapes: Shapes, device: torch.device, amp: torch.dtype | None,
    start: int, limit: int, deadline: float,
) -> Search:
    """One max-batch search on a freshly built model (``micro``: use contrastive accumulation).

    Only this model and its optimiser are alive during the search; the caller frees them after it.
    """
    if lib == "polymodal":
        model = build_polymodal(shapes, grad_checkpointing=ckpt, local_loss=micro is not None).to(device)
    else:
        model = build_hf(shapes, grad_checkpointing=ckpt).to(device)
    opt = make_optimizer(model, device)
    if micro is not None:
        step = polymodal_accum_step(model, opt, device, amp, micro)
    elif lib == "polymodal":
        step = polymodal_step(model, opt, device, amp)
    else:
        step = hf_step(model, opt, device, amp)
    try_batch(step, model, opt, shapes, min(8, start), device)  # allocates the optimiser state
    unit = micro or 1
    search = find_max(
        lambda b: try_batch(step, model, opt, shapes, b, device),
        start=max(start, 2 * unit) if micro else start, limit=limit, deadline=deadline, unit=unit,
    )
    return search


def run_max_batch(
    args: argparse.Namespace, shapes: Shapes, device: torch.device, amp: torch.dtype | None, deadline: float,
    peak_tflops: float,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The five searches of section (c), one model alive at a time, sharing what is left of the budget."""
    limit = args.max_batch_limit
    start = min(args.batch, limit)
    plans: list[tuple[str, str, bool, bool]] = [  # name, library, checkpointing, accumulation
        ("polymodal plain", "polymodal", False, False),
        ("transformers plain", "transformers", False, False),
        ("polymodal grad-checkpointing", "polymodal", True, False),
        ("transformers gradient_checkpointing_enable()", "transformers", True, False),
        ("polymodal contrastive_accum (local_loss + gather)", "polymodal", False, True),
    ]
    print(f"max batch: one eager step per try, limit {limit:,}, "
          f"{max(0.0, deadline - time.perf_counter()):.0f} s left for {len(plans)} searches", flush=True)
    out: list[dict[str, Any]] = []
    micro: int | None = args.accum_micro
    for i, (name, lib, ckpt, accum) in enumerate(plans):
        if accum and micro is None:
            plain = out[0]["max_batch"]
            micro = max(1, (plain * 3 // 4) // 8 * 8) if plain >= 16 else max(1, plain // 2)
        share = (deadline - time.perf_counter()) / (len(plans) - i)
        search = search_one(lib, ckpt, micro if accum else None, shapes, device, amp, start, limit,
                            time.perf_counter() + max(0.0, share))
        _free(device)
        row = {
            "name": name, "library": lib, "grad_checkpointing": ckpt, "accumulation": accum,
            "micro_batch": micro if accum else None, "max_batch": search.fits,
            "first_failing": search.fails, "capped_at_limit": search.capped, "out_of_time": search.out_of_time,
            "samples_per_s_at_max": search.fits / search.ms_at_fits * 1e3 if search.ms_at_fits else None,
            "mfu_at_max": None, "seconds": search.seconds, "tries": search.tries,
        }
        if search.ms_at_fits and search.fits:
            fl = model_flops(shapes, search.fits)["total"]
            row["mfu_at_max"] = fl / (search.ms_at_fits * 1e-3) / 1e12 / peak_tflops
        out.append(row)
        note = " (limit)" if search.capped else " (out of time: lower bound)" if search.out_of_time else ""
        print(f"  {name}: {search.fits:,}{note} in {search.seconds:.0f} s, {len(search.tries)} tries", flush=True)

    effective = {
        "polymodal": max(r["max_batch"] for r in out if r["library"] == "polymodal"),
        "transformers": max(r["max_batch"] for r in out if r["library"] == "transformers"),
    }
    print("\n" + _table(["max batch per GPU", "micro-batch", "max (effective contrastive) batch", "first OOM",
                         "samples/s there", "MFU there", "search s"], [
        [r["name"], str(r["micro_batch"] or "-"),
         f"{r['max_batch']:,}" + (" (limit)" if r["capped_at_limit"] else " (time)" if r["out_of_time"] else ""),
         f"{r['first_failing']:,}" if r["first_failing"] else "-",
         f"{r['samples_per_s_at_max']:,.0f}" if r["samples_per_s_at_max"] else "-",
         f"{r['mfu_at_max']:.1%}" if r["mfu_at_max"] else "-", f"{r['seconds']:.0f}"] for r in out
    ]))
    print(f"\nmax effective contrastive batch per GPU (all negatives kept): polymodal {effective['polymodal']:,}"
          f" vs transformers {effective['transformers']:,} "
          f"({effective['polymodal'] / max(1, effective['transformers']):.1f}x)")
    return out, effective


if __name__ == "__main__":
    raise SystemExit(main())
