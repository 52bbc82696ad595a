"""The compiled-traffic benchmark counts what Inductor's kernels move, on the GPU's code path.

The real run (CLIP ViT-B/32 shapes, batch 256) is in benchmarks/RESULTS.md; here it runs at tiny shapes,
and its two CPU-to-GPU substitutions are checked to do what they claim and to undo themselves.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

BENCHMARK = "bench_compiled_traffic"


def test_quick_run_counts_the_gpu_attention_path_and_the_bf16_residual_saving(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "traffic.json"
    assert bench.main(["--quick", "--libraries", "polymodal", "--out", str(out), "--commit", "abc1234"]) == 0
    result = json.loads(out.read_text())
    assert result["commit"] == "abc1234" and result["settings"]["cuda_layer_norm_rule"] is True
    rows = {row["residual"]: row for row in result["rows"]}
    assert set(rows) == {"fp32", "bf16"}
    for row in rows.values():
        assert row["library"] == "polymodal" and row["fused_gb"] > 0 and row["fused_kernels"] > 0
        # the GPU path: attention is one library call per layer and direction, not matmuls + softmax
        sdpa = {name: n for name, n in row["extern_calls"].items() if "scaled_dot_product" in name}
        assert sorted(sdpa.values()) == [4, 4], row["extern_calls"]  # 2 + 2 layers, forward and backward
        assert "MultiOutput" not in row["extern_calls"]
        assert sum(kind["kernels"] for kind in row["by_kind"].values()) == row["fused_kernels"]
        assert sum(kind["gb"] for kind in row["by_kind"].values()) == pytest.approx(row["fused_gb"])
    # a bf16 residual stream moves fewer bytes through the same kind of step
    assert rows["bf16"]["fused_gb"] < rows["fp32"]["fused_gb"]
    saves = result["comparison"]["bf16_residual_saves_gb"]["polymodal"]
    assert saves == pytest.approx(rows["fp32"]["fused_gb"] - rows["bf16"]["fused_gb"])
    assert "transformers" not in result["comparison"]["bf16_residual_saves_gb"]


def test_comparison_pairs_the_sides_at_each_setting(bench: ModuleType) -> None:
    rows = [
        {"library": "polymodal", "residual": "fp32", "fused_gb": 30.0, "fused_kernels": 800},
        {"library": "transformers", "residual": "fp32", "fused_gb": 45.0, "fused_kernels": 900},
        {"library": "polymodal", "residual": "bf16", "fused_gb": 24.0, "fused_kernels": 790},
    ]
    comparison = bench.compare(rows, bandwidth_tbs=3.0)
    assert comparison["fp32"]["fused_gb"]["ratio_peer_over_polymodal"] == pytest.approx(1.5)
    assert comparison["fp32"]["ms_at_bandwidth"] == {"polymodal": pytest.approx(10.0), "transformers": pytest.approx(15.0)}
    assert "bf16" not in comparison  # the peer has no bf16 row to pair with
    assert comparison["bf16_residual_saves_gb"] == {"polymodal": pytest.approx(6.0)}


@pytest.mark.parametrize(
    ("ops", "kind"),
    [
        ({"mul", "sigmoid", "reshape"}, "activation (forward and backward)"),
        ({"add", "mul", "sigmoid", "sub", "convert_element_type"}, "activation (forward and backward)"),
        ({"add", "var_mean", "rsqrt", "mul", "sub", "convert_element_type"}, "LayerNorm forward"),
        ({"add", "div", "mul", "sub", "sum", "convert_element_type"}, "LayerNorm backward (with residual gradients)"),
        ({"sum", "convert_element_type", "reshape"}, "bias gradients"),
        ({"cat", "permute"}, "layout copies (heads split / merged)"),
        ({"clone", "permute", "reshape", "unbind"}, "layout copies (heads split / merged)"),
        ({"convert_element_type"}, "casts (weights, gradients, activations)"),
        ({"add", "reshape"}, "residual adds"),
        ({"amax", "exp", "sub", "sum"}, "softmax / loss"),
        ({"embedding", "add"}, "other"),
        (set(), "other"),
    ],
)
def test_kernel_kind_reads_what_a_kernel_computes_off_its_operators(bench: ModuleType, ops: set[str], kind: str) -> None:
    assert bench.kernel_kind(ops) == kind


def test_operator_names_drop_namespace_and_overload(bench: ModuleType) -> None:
    assert bench.operator_name(torch.ops.aten.add.Tensor) == "add"
    assert bench.operator_name(torch.ops.prims.convert_element_type.default) == "convert_element_type"
    assert bench.operator_name("getitem") == "getitem"


def test_cuda_layer_norm_rule_returns_fp32_under_autocast_and_is_undone(bench: ModuleType) -> None:
    original = nn.functional.layer_norm
    ln = nn.LayerNorm(8)
    x = torch.randn(2, 3, 8).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ln(x).dtype == torch.bfloat16  # CPU autocast keeps the input's dtype
        with bench.cuda_layer_norm_rule():
            y = ln(x)
            assert y.dtype == torch.float32  # CUDA's rule
            torch.testing.assert_close(y, nn.functional.layer_norm(x.float(), (8,), ln.weight, ln.bias))
            assert ln(x.float()).dtype == torch.float32
        assert ln(x).dtype == torch.bfloat16
    with pytest.raises(RuntimeError, match="boom"), bench.cuda_layer_norm_rule():
        raise RuntimeError("boom")
    assert nn.functional.layer_norm is original  # undone after an error too
    with bench.cuda_layer_norm_rule():  # no autocast: untouched
        assert ln(x).dtype == torch.bfloat16


def test_gpu_attention_path_swaps_in_sdpa_with_the_same_result_and_is_undone(bench: ModuleType) -> None:
    from polymodal.modules import attention

    original = attention._math_attention
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    with bench.gpu_attention_path():
        assert attention._math_attention is not original
        swapped = attention._math_attention(q, k, v, None, True, 0.0)
    assert attention._math_attention is original
    torch.testing.assert_close(swapped, original(q, k, v, None, True, 0.0))
    mha = attention.MultiHeadAttention(8, 2)
    x = torch.randn(2, 5, 8)
    calls: list[int] = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real_sdpa(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp, bench.gpu_attention_path():
        mp.setattr(bench.F, "scaled_dot_product_attention", counting)
        mha(x, is_causal=True).sum().backward()  # a CPU training forward: the path that was swapped
    assert calls == [1]


@pytest.mark.parametrize(
    ("argv", "option"),
    [(["--libraries", "polymodal,timm"], "--libraries"), (["--libraries", "polymodal,polymodal"], "--libraries"),
     (["--bandwidth-tbs", "0"], "--bandwidth-tbs"), (["--batch", "0"], "--batch")],
)
def test_bad_options_are_refused_by_name_before_anything_compiles(
    bench: ModuleType, capsys: pytest.CaptureFixture[str], argv: list[str], option: str
) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert option in capsys.readouterr().err


class _Origin:
    op = "call_function"

    def __init__(self, target: object) -> None:
        self.target = target


class _Fused:
    """A stand-in for a fused scheduler node: its operators, nothing else."""

    def __init__(self, *targets: object) -> None:
        self.node = SimpleNamespace(origins=[_Origin(t) for t in targets])

    def get_nodes(self) -> list[_Fused]:
        return [self]


def test_summarize_counts_kernels_and_library_calls_apart_and_skips_what_runs_nothing(bench: ModuleType) -> None:
    from torch._inductor.ir import MultiOutput
    from torch._inductor.scheduler import ExternKernelSchedulerNode, NopKernelSchedulerNode

    mm = object.__new__(ExternKernelSchedulerNode)
    mm.node = SimpleNamespace(python_kernel_name="extern_kernels.mm")
    one_output = object.__new__(ExternKernelSchedulerNode)  # an output of a multi-output call: no kernel
    one_output.node = object.__new__(MultiOutput)
    nop = object.__new__(NopKernelSchedulerNode)
    gelu = _Fused(torch.ops.aten.mul.Tensor, torch.ops.aten.sigmoid.default)
    scalar_cast = _Fused(torch.ops.prims.convert_element_type.default)  # a 2-byte kernel still runs
    row = bench.summarize([(gelu, 100), (mm, 50), (one_output, 7), (nop, 0), (scalar_cast, 0)])
    assert row["fused_kernels"] == 2 and row["fused_gb"] == pytest.approx(400e-9)
    assert row["extern_calls"] == {"mm": 1} and row["extern_gb"] == pytest.approx(200e-9)
    assert row["by_kind"]["activation (forward and backward)"] == {"gb": pytest.approx(400e-9), "kernels": 1}
    assert row["by_kind"]["casts (weights, gradients, activations)"]["kernels"] == 1


def test_the_layer_norm_rule_holds_inside_a_compiled_graph_and_changes_the_count(bench: ModuleType) -> None:
    ln = nn.LayerNorm(64)
    x = torch.randn(32, 64).to(torch.bfloat16)
    counted_gb, dtypes = [], []
    for rule in (contextlib.nullcontext(), bench.cuda_layer_norm_rule()):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16), rule, bench.inductor_byte_counts() as counted:
            y = torch.compile(ln)(x)
            nodes = list(counted)
        assert not torch._dynamo.utils.counters["graph_break"]  # the patched function traces into one graph
        dtypes.append(y.dtype)
        counted_gb.append(bench.summarize(nodes)["fused_gb"])
    assert dtypes == [torch.bfloat16, torch.float32]
    assert counted_gb[1] > counted_gb[0] > 0  # the fp32 output is written at 4 bytes a value
