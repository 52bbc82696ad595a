"""The inference-only fused QuickGELU MLP gives what the plain modules give, and runs only where it may."""

from __future__ import annotations

import pytest
import torch

from polymodal.modules import fused_mlp
from polymodal.modules.transformer import MLP, Transformer

pytestmark = pytest.mark.skipif(not fused_mlp.fused_mlp_available(), reason="this PyTorch build lacks oneDNN")


def _mlp(bias: bool = True, activation: str = "quick_gelu") -> MLP:
    torch.manual_seed(0)
    mlp = MLP(24, 96, bias=bias, activation=activation).eval()
    with torch.no_grad():  # larger weights: the activation's negative side matters too
        for p in mlp.parameters():
            p.mul_(3.0)
    return mlp


def _count_fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = fused_mlp.fused_quick_gelu_mlp

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    from polymodal.modules import transformer

    monkeypatch.setattr(transformer, "fused_quick_gelu_mlp", counting)
    return calls


ROWS = fused_mlp.FUSE_MIN_ROWS


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(ROWS, 24), (3, ROWS // 2, 24)])
def test_fused_equals_the_modules_in_float32(bias, shape, monkeypatch):
    mlp = _mlp(bias)
    x = torch.randn(*shape)
    reference = mlp.proj(mlp.act(mlp.fc(x)))  # the plain modules, autograd on
    calls = _count_fused_calls(monkeypatch)
    with torch.inference_mode():
        fused = mlp(x)
    assert calls[0] == 1
    assert fused.shape == reference.shape
    torch.testing.assert_close(fused, reference.detach(), rtol=1e-5, atol=1e-5)


def test_fused_under_bf16_autocast_is_close_and_keeps_autocast_dtype(monkeypatch):
    mlp = _mlp()
    x = torch.randn(4, ROWS // 4, 24)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = mlp.proj(mlp.act(mlp.fc(x)))
        calls = _count_fused_calls(monkeypatch)
        fused = mlp(x)
    assert calls[0] == 1
    assert fused.dtype == reference.dtype == torch.bfloat16
    scale = reference.float().abs().max()
    assert (fused.float() - reference.float()).abs().max() <= 0.02 * scale


def test_fused_in_bf16_weights(monkeypatch):
    mlp = _mlp().to(torch.bfloat16)
    x = torch.randn(ROWS, 24, dtype=torch.bfloat16)
    calls = _count_fused_calls(monkeypatch)
    with torch.no_grad():
        fused = mlp(x)
        reference = mlp.proj(mlp.act(mlp.fc(x)))
    assert calls[0] == 1
    assert fused.dtype == torch.bfloat16
    assert (fused.float() - reference.float()).abs().max() <= 0.02 * reference.float().abs().max()


@pytest.mark.parametrize(
    "case",
    ["grad enabled", "gelu", "train-mode dropout", "float64", "tracing", "few rows", "float64 under autocast", "bf16 input, fp32 weights"],
)
def test_plain_modules_run_where_fusing_is_not_allowed(case, monkeypatch):
    mlp = _mlp(activation="gelu" if case == "gelu" else "quick_gelu")
    rows = ROWS - 1 if case == "few rows" else ROWS
    x = torch.randn(rows, 24, dtype=torch.float64 if "float64" in case else torch.float32)
    if "float64" in case:
        mlp = mlp.double()
    if case == "train-mode dropout":
        mlp = MLP(24, 96, dropout=0.5, activation="quick_gelu").train()
    calls = _count_fused_calls(monkeypatch)
    if case == "grad enabled":
        out = mlp(x)
        assert out.requires_grad
    elif case == "tracing":
        with torch.no_grad():
            torch.jit.trace(mlp, x, check_trace=False)
    elif case == "float64 under autocast":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert mlp(x).dtype == torch.float64  # autocast leaves float64 alone, and so must the fast path
    elif case == "bf16 input, fp32 weights":
        with torch.no_grad(), pytest.raises(RuntimeError):  # as the plain Linear does; no silent weight cast
            mlp(x.bfloat16())
    else:
        with torch.no_grad():
            mlp(x)
    assert calls[0] == 0


def test_forward_mode_derivatives_see_the_plain_modules():
    """jvp ignores no_grad; the fused op has no derivative rule, so it must not run under it."""
    mlp = _mlp()
    x = torch.randn(ROWS, 24)
    reference = torch.func.jvp(lambda a: mlp.proj(mlp.act(mlp.fc(a))), (x,), (torch.ones_like(x),))[1]
    with torch.no_grad():
        tangent = torch.func.jvp(mlp, (x,), (torch.ones_like(x),))[1]
    torch.testing.assert_close(tangent, reference.detach())
    import torch.autograd.forward_ad as fwAD

    with torch.no_grad(), fwAD.dual_level():
        out = mlp(fwAD.make_dual(x, torch.ones_like(x)))
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, reference.detach())


def test_the_probe_is_not_fooled_by_the_callers_autocast(monkeypatch):
    """The first call decides availability once for the process; made under bf16 autocast it once
    compared a bf16 result with a float32 one and switched the fast path off for good."""
    monkeypatch.setattr(fused_mlp, "_available", None)
    calls = _count_fused_calls(monkeypatch)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _mlp()(torch.randn(ROWS, 24))
    assert fused_mlp._available is True and calls[0] == 1


def test_scripted_and_fx_traced_mlps_keep_the_plain_modules():
    mlp = _mlp()
    x = torch.randn(ROWS, 24)
    with torch.no_grad():
        expected = mlp(x)
        torch.testing.assert_close(torch.jit.script(mlp)(x), expected, rtol=1e-5, atol=1e-5)
        traced = torch.fx.symbolic_trace(mlp)
        assert "mkldnn" not in str(traced.graph)
        torch.testing.assert_close(traced(x), expected, rtol=1e-5, atol=1e-5)


def test_eval_mode_dropout_still_fuses(monkeypatch):
    mlp = MLP(24, 96, dropout=0.5, activation="quick_gelu").eval()
    calls = _count_fused_calls(monkeypatch)
    with torch.no_grad():
        mlp(torch.randn(ROWS, 24))
    assert calls[0] == 1


def test_a_build_without_the_op_falls_back(monkeypatch):
    mlp = _mlp()
    x = torch.randn(ROWS, 24)
    monkeypatch.setattr(fused_mlp, "_available", False)
    calls = _count_fused_calls(monkeypatch)
    with torch.no_grad():
        out = mlp(x)
    assert calls[0] == 0
    torch.testing.assert_close(out, mlp.proj(mlp.act(mlp.fc(x))).detach())


def test_clip_style_stack_inference_equals_its_training_forward(monkeypatch):
    """A whole quick_gelu stack: the no-grad forward (fused MLPs) matches the autograd one."""
    torch.manual_seed(1)
    stack = Transformer(32, 3, 4, activation="quick_gelu").eval()
    x = torch.randn(4, ROWS // 4 + 1, 32)
    reference = stack(x)
    calls = _count_fused_calls(monkeypatch)
    with torch.inference_mode():
        fused = stack(x)
    assert calls[0] == 3  # one per block
    torch.testing.assert_close(fused, reference.detach(), rtol=1e-4, atol=1e-4)


def test_an_exported_graph_keeps_portable_ops():
    """ONNX export goes through torch.export: the graph must not hold the oneDNN-only op."""
    mlp = _mlp()
    with torch.no_grad():
        program = torch.export.export(mlp, (torch.randn(ROWS, 24),))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert targets and not any("mkldnn" in t for t in targets)
    assert any("sigmoid" in t for t in targets)


@pytest.mark.parametrize("grad", [True, False])
def test_a_compiled_quick_gelu_transformer_is_one_graph(grad: bool) -> None:
    """torch.compile must see through the fast path's checks: a query it cannot trace, asked before
    the compiling check, broke the graph at every MLP of a compiled CLIP (13 breaks in a ViT-B/32)."""
    torch.manual_seed(0)
    stack = Transformer(24, 2, 2, activation="quick_gelu").train(grad)
    x = torch.randn(2, ROWS, 24)
    torch._dynamo.reset()
    with torch.set_grad_enabled(grad):
        explained = torch._dynamo.explain(stack)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
