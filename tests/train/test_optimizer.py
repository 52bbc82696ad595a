"""The Trainer's optimizer: fused AdamW where PyTorch has the kernel, kept fused across a resume."""

from __future__ import annotations

import torch
from torch import nn

from polymodal.train.schedule import build_adamw, load_keeping_kernel


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def test_adamw_is_fused_on_cpu_and_not_for_sharded_parameters() -> None:
    model = _model()
    opt = build_adamw(model, lr=1e-3, weight_decay=0.1)
    assert [g["fused"] for g in opt.param_groups] == [True, True]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]  # biases and norms undecayed
    assert all(g["fused"] is None for g in build_adamw(model, lr=1e-3, sharded=True).param_groups)


def test_fused_step_equals_the_default_loop() -> None:
    a, b = _model(), _model()
    fused, plain = build_adamw(a, lr=1e-2, weight_decay=0.1), build_adamw(b, lr=1e-2, weight_decay=0.1, sharded=True)
    x = torch.randn(16, 4)
    for _ in range(3):
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_a_resumed_optimizer_keeps_the_kernel_it_was_built_with() -> None:
    """load_state_dict copies the saved groups' flags: a checkpoint from an unfused optimizer would
    silently switch the resumed run to the slow loop."""
    model = _model()
    old = torch.optim.AdamW(build_adamw(model, lr=1e-3).param_groups[0]["params"], lr=1e-3)
    old.add_param_group({"params": build_adamw(model, lr=1e-3).param_groups[1]["params"], "weight_decay": 0.0})
    model(torch.randn(2, 4)).sum().backward()
    old.step()
    plain_load = build_adamw(model, lr=1e-3)
    plain_load.load_state_dict(old.state_dict())
    assert plain_load.param_groups[0]["fused"] is None  # what load_state_dict does on its own
    opt = build_adamw(model, lr=1e-3)
    assert load_keeping_kernel(opt, lambda: opt.load_state_dict(old.state_dict()) or "loaded") == "loaded"
    assert [g["fused"] for g in opt.param_groups] == [True, True]
    opt.step()  # and the fused kernel takes the loaded state
