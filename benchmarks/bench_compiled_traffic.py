"""Memory traffic of each side's compiled training step, as Inductor counts it: a GPU question asked on a CPU.

Issue #9, target 1. On an H100 the matmuls of the CLIP ViT-B/32 step already run at the card's peak
(``bench_train_gpu.py``); what separates the two libraries, and what is left to cut, is the time of the
memory-bound kernels Inductor generates around them (LayerNorms, activations, residual adds, casts,
copies). That time is about their bytes over the card's bandwidth, and the bytes are fixed when
Inductor compiles the step, before any kernel runs: its scheduler knows what each fused kernel reads
and writes. So this script compiles each side's training step, exactly as ``bench_train_gpu.py``
builds it (same models, shapes, batch, loss, bf16 autocast), runs it once, and reports per side:

* the bytes all of Inductor's own (fused) kernels read and write, in one step, forward and backward;
* how many such kernels run (on a GPU, each is a launch the host pays for in the default mode);
* the library calls it leaves alone (matmuls, attention): how many, and their bytes;
* the fused bytes split by what the kernel computes (from the operators it was made of).

It runs on any device. On a CPU it is a proxy with three known differences from a GPU, two of them
removed here:

* polymodal's stacks train with a plain matmul-softmax-matmul attention on a CPU (faster there); the
  GPU path, ``scaled_dot_product_attention``, is swapped in, as on a GPU.
* CPU autocast runs LayerNorm in its input's dtype; CUDA autocast runs it in fp32 (its output is fp32).
  CUDA's rule is applied (``--cpu-layer-norm`` keeps the CPU's).
* Inductor's CPU and GPU back-ends fuse differently (a GPU fuses LayerNorm-backward reductions the CPU
  keeps apart, a CPU merges loop nests a GPU launches apart), so the number of kernels, and somewhat
  their bytes, differ from a GPU's. The graph and the saved activations are the same, and so are the
  dtypes of everything but the loss's few softmax values (CUDA autocast computes those in fp32 too).

Inductor's count is its own estimate, the bytes each kernel would move at best (each buffer read or
written once), not a measurement. The optimizer (the same AdamW, eager, on both sides) is not compiled
and not counted (about 28 bytes a parameter a step).

    python benchmarks/bench_compiled_traffic.py                 # both sides, fp32 and bf16 residual
    python benchmarks/bench_compiled_traffic.py --quick         # tiny shapes (tests, smoke runs)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import logging
import platform
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from provenance import cpu_model, ensure_polymodal_importable, git_commit, write_result
from torch.nn import functional as F

ensure_polymodal_importable()

import bench_train_gpu as gpu_bench  # after the path set-up above: it imports polymodal
from bench_train_cpu import sdpa_attention as gpu_attention_path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "compiled_traffic.json"
LIBRARIES = ("polymodal", "transformers")
# The logger whose INFO level makes Inductor count each compiled graph's bytes (compile_fx's
# ``inductor_metrics`` artifact). Enabled with no handler, so nothing is printed.
METRICS_LOGGER = "torch._inductor.compile_fx.__inductor_metrics"

# What a fused kernel computes, from the aten / prims operators it was made of (see :func:`kernel_kind`).
LAYOUT_OPS = {"cat", "clone", "permute"}  # operators that move values to new places
PLAIN_OPS = {"reshape", "view", "unsqueeze", "squeeze", "unbind", "split_with_sizes", "slice", "select", "expand"}  # views


# ---------------------------------------------------------------------------------------- counting


def operator_name(target: Any) -> str:
    """``aten.add.Tensor`` / ``prims.convert_element_type.default`` -> ``add`` / ``convert_element_type``."""
    parts = str(target).split(".")
    return parts[1] if len(parts) >= 3 else parts[-1]


def kernel_kind(ops: set[str]) -> str:
    """What a fused kernel is for, read off its operators (a heuristic: the totals do not depend on it).

    The order matters: a LayerNorm backward also sums and adds, an activation backward also adds.
    """
    if not ops:
        return "other"
    if ops & {"sigmoid", "gelu", "erf", "tanh"}:
        return "activation (forward and backward)"
    if ops & {"var_mean", "rsqrt"}:
        return "LayerNorm forward"
    if ops & {"amax", "exp", "log"}:
        return "softmax / loss"
    if "sum" in ops:
        if ops <= {"sum", "convert_element_type"} | PLAIN_OPS | {"permute"}:
            return "bias gradients"
        return "LayerNorm backward (with residual gradients)"
    if ops & LAYOUT_OPS and ops <= LAYOUT_OPS | PLAIN_OPS | {"convert_element_type", "mul"}:
        return "layout copies (heads split / merged)"
    if ops <= {"convert_element_type"} | PLAIN_OPS:
        return "casts (weights, gradients, activations)"
    if ops <= {"add"} | PLAIN_OPS:
        return "residual adds"
    return "other"


def _kernel_ops(node: Any) -> set[str]:
    ops: set[str] = set()
    for sub in node.get_nodes():
        for origin in getattr(sub.node, "origins", ()) or ():
            if origin.op == "call_function":
                ops.add(operator_name(origin.target))
    return ops


def summarize(nodes_num_elem: list[tuple[Any, int]]) -> dict[str, Any]:
    """Inductor's per-node byte counts (``metrics.nodes_num_elem``: bytes // 4 per scheduler node) as a row."""
    from torch._inductor.ir import MultiOutput
    from torch._inductor.scheduler import ExternKernelSchedulerNode, NopKernelSchedulerNode

    fused_bytes = extern_bytes = kernels = 0
    extern_calls: Counter[str] = Counter()
    kinds: dict[str, dict[str, float]] = {}
    for node, elems in nodes_num_elem:
        nbytes = 4 * int(elems)
        if isinstance(node, ExternKernelSchedulerNode):
            if isinstance(node.node, MultiOutput):  # one output of a multi-output call: no kernel of its own
                continue
            extern_bytes += nbytes
            name = getattr(node.node, "python_kernel_name", None) or type(node.node).__name__
            extern_calls[str(name).removeprefix("extern_kernels.").removeprefix("torch.ops.aten.")] += 1
            continue
        if isinstance(node, NopKernelSchedulerNode):  # views and concatenations done in place run no kernel
            continue
        fused_bytes += nbytes
        kernels += 1
        kind = kinds.setdefault(kernel_kind(_kernel_ops(node)), {"gb": 0.0, "kernels": 0})
        kind["gb"] += nbytes / 1e9
        kind["kernels"] += 1
    return {
        "fused_gb": fused_bytes / 1e9,
        "fused_kernels": kernels,
        "extern_gb": extern_bytes / 1e9,
        "extern_calls": dict(extern_calls.most_common()),
        "by_kind": dict(sorted(kinds.items(), key=lambda kv: -kv[1]["gb"])),
    }


@contextlib.contextmanager
def inductor_byte_counts() -> Iterator[list[tuple[Any, int]]]:
    """Make every graph compiled inside count its bytes; yields the list Inductor appends to.

    The FX-graph and autotuning caches are off inside: a graph loaded from a cache is not lowered
    again, and its bytes would not be counted.
    """
    from torch._inductor import config, metrics

    logger = logging.getLogger(METRICS_LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    metrics.reset()
    try:
        with config.patch(force_disable_caches=True):
            yield metrics.nodes_num_elem
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def cuda_layer_norm_rule() -> Iterator[None]:
    """LayerNorm under bf16 / fp16 autocast computes in fp32 and returns fp32, CUDA autocast's rule.

    CPU autocast instead keeps a bf16 input's dtype. Both libraries' LayerNorms are ``nn.LayerNorm``,
    which calls ``torch.nn.functional.layer_norm``.
    """
    original = F.layer_norm

    def layer_norm(input: torch.Tensor, normalized_shape: Any, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
        kind = input.device.type
        if torch.is_autocast_enabled(kind) and input.dtype in (torch.bfloat16, torch.float16):
            with torch.autocast(kind, enabled=False):
                as_fp32 = [None if t is None else t.float() for t in (weight, bias)]
                return original(input.float(), normalized_shape, as_fp32[0], as_fp32[1], eps)
        return original(input, normalized_shape, weight, bias, eps)

    F.layer_norm = layer_norm
    try:
        yield
    finally:
        F.layer_norm = original


def step_traffic(
    library: str, residual: str, shapes: gpu_bench.Shapes, batch: int, device: torch.device,
    cuda_rules: bool = True,
) -> dict[str, Any]:
    """Compile one side's training step (bf16 autocast, as ``bench_train_gpu.py``), run it once, count it."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    bf16_residual = residual == "bf16"
    build = gpu_bench.build_polymodal if library == "polymodal" else gpu_bench.build_hf
    make_step = gpu_bench.polymodal_step if library == "polymodal" else gpu_bench.hf_step
    model = build(shapes, bf16_residual=bf16_residual).to(device)
    opt = gpu_bench.make_optimizer(model, device)
    step = make_step(model, opt, device, torch.bfloat16, forward=torch.compile(model))
    images, ids = gpu_bench.make_batch(shapes, batch, device)
    rules = (gpu_attention_path(), cuda_layer_norm_rule()) if cuda_rules else (gpu_attention_path(),)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        for rule in rules:
            stack.enter_context(rule)
        counted = stack.enter_context(inductor_byte_counts())
        loss = step(images, ids)
        nodes = list(counted)
    if not nodes:
        raise RuntimeError(
            f"Inductor counted no bytes for the {library} step (torch {torch.__version__}): its metrics "
            f"logger {METRICS_LOGGER!r} or metrics.nodes_num_elem may have changed"
        )
    if not torch.isfinite(loss).all():
        raise RuntimeError(f"the {library} step gave a non-finite loss ({loss.item()}): its count would describe a broken step")
    row = {"library": library, "residual": residual, "batch": batch} | summarize(nodes)
    row["seconds"] = time.perf_counter() - start
    return row


# --------------------------------------------------------------------------------------------- report


def compare(rows: list[dict[str, Any]], bandwidth_tbs: float) -> dict[str, Any]:
    """Per residual setting: polymodal's fused bytes and kernels against the peer's, and those bytes'
    time at ``bandwidth_tbs`` (bytes / bandwidth: what a card sustaining that rate would spend on them)."""
    out: dict[str, Any] = {}
    by = {(r["library"], r["residual"]): r for r in rows}
    for residual in sorted({r["residual"] for r in rows}):
        pm, hf = by.get(("polymodal", residual)), by.get(("transformers", residual))
        if pm is None or hf is None:
            continue
        out[residual] = {
            "fused_gb": {"polymodal": pm["fused_gb"], "transformers": hf["fused_gb"],
                         "ratio_peer_over_polymodal": hf["fused_gb"] / pm["fused_gb"]},
            "fused_kernels": {"polymodal": pm["fused_kernels"], "transformers": hf["fused_kernels"]},
            "ms_at_bandwidth": {"polymodal": pm["fused_gb"] / bandwidth_tbs,
                                    "transformers": hf["fused_gb"] / bandwidth_tbs},
        }
    for library in LIBRARIES:
        fp32, bf16 = by.get((library, "fp32")), by.get((library, "bf16"))
        if fp32 is not None and bf16 is not None:
            out.setdefault("bf16_residual_saves_gb", {})[library] = fp32["fused_gb"] - bf16["fused_gb"]
    out["bandwidth_tbs"] = bandwidth_tbs
    return out


def print_report(rows: list[dict[str, Any]], comparison: dict[str, Any]) -> None:
    """The rows as a table, each side's bytes by kernel kind, and what the bf16 stream saves."""
    bw = comparison["bandwidth_tbs"]
    print(f"\n{'side':<34} {'fused GB':>9} {'kernels':>8} {f'ms @ {bw:g} TB/s':>15} {'library calls':>14}")
    for r in rows:
        name = f"{r['library']}, {r['residual']} residual"
        print(f"{name:<34} {r['fused_gb']:>9.3g} {r['fused_kernels']:>8d} {r['fused_gb'] / bw:>15.3g} "
              f"{sum(r['extern_calls'].values()):>14d}")
    for r in rows:
        print(f"\n{r['library']}, {r['residual']} residual: fused GB by what the kernel computes")
        for kind, v in r["by_kind"].items():
            print(f"  {kind:<46} {v['gb']:>9.3g} GB {int(v['kernels']):>5d} kernels")
    saves = comparison.get("bf16_residual_saves_gb")
    if saves:
        print("\nbf16 residual saves: " + ", ".join(f"{k} {v:.3g} GB" for k, v in saves.items()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked before anything compiles (a full run takes minutes)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="where to compile and run the step (default cpu)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (tests, smoke runs)")
    ap.add_argument("--batch", type=int, default=None, help="batch (default 256, bench_train_gpu's; quick 8)")
    ap.add_argument("--libraries", default=",".join(LIBRARIES), help="comma-separated: polymodal,transformers")
    ap.add_argument("--residual", choices=["fp32", "bf16", "both"], default="both",
                    help="residual stream setting(s), as bench_train_gpu.py --residual")
    ap.add_argument("--cpu-layer-norm", action="store_true",
                    help="keep CPU autocast's LayerNorm rule (input dtype) instead of CUDA's (fp32)")
    ap.add_argument("--bandwidth-tbs", type=float, default=3.0,
                    help="memory bandwidth (TB/s) to turn bytes into time (default 3.0; an H100 sustained "
                         "2.6-2.7 on these kernels)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--commit", default=None, help="commit to record (default: this checkout's)")
    args = ap.parse_args(argv)
    libraries = [x.strip() for x in args.libraries.split(",") if x.strip()]
    unknown = [x for x in libraries if x not in LIBRARIES]
    if unknown or not libraries:
        ap.error(f"--libraries: expected a comma-separated subset of {', '.join(LIBRARIES)}, got {args.libraries!r}")
    if len(set(libraries)) != len(libraries):
        ap.error(f"--libraries: each library once, got {args.libraries!r}")
    args.libraries = libraries
    if not args.bandwidth_tbs > 0:
        ap.error(f"--bandwidth-tbs must be > 0 (TB/s), got {args.bandwidth_tbs}")
    if args.batch is not None and args.batch < 1:
        ap.error(f"--batch must be >= 1, got {args.batch}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Count every requested side and setting, print the report, write the JSON; 0 when done."""
    args = parse_args(argv)
    device = torch.device(args.device)
    shapes = gpu_bench.QUICK if args.quick else gpu_bench.CLIP_B32
    batch = args.batch or (8 if args.quick else 256)
    residuals = ("fp32", "bf16") if args.residual == "both" else (args.residual,)
    import transformers

    result: dict[str, Any] = {
        "benchmark": "Inductor's byte count of the compiled CLIP ViT-B/32 training step, polymodal vs transformers",
        "issue": "#9 target 1",
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "commit": args.commit or git_commit(),
        "device": cpu_model() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "settings": {"batch": batch, "quick": args.quick, "cuda_layer_norm_rule": not args.cpu_layer_norm,
                     "device": str(device)},
        "shapes": asdict(shapes),
        "rows": [],
    }
    for library in args.libraries:
        for residual in residuals:
            print(f"compiling {library}, {residual} residual ...", flush=True)
            row = step_traffic(library, residual, shapes, batch, device, cuda_rules=not args.cpu_layer_norm)
            result["rows"].append(row)
            print(f"  {row['fused_gb']:.3g} GB in {row['fused_kernels']} fused kernels ({row['seconds']:.0f} s)", flush=True)
    result["comparison"] = compare(result["rows"], args.bandwidth_tbs)
    print_report(result["rows"], result["comparison"])
    write_result(args.out, result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
