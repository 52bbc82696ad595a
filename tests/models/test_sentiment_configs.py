"""The shipped CMU-MOSI/MOSEI baselines build, run and learn on random features."""

from __future__ import annotations

import pytest
import torch

from polymodal.models.factory import build_model, load_model_config

CONFIGS = ["sentiment-early", "sentiment-late", "sentiment-tfn", "sentiment-lmf", "sentiment-mult"]
DIMS = {"text": 300, "audio": 74, "video": 35}


def _batch(g: torch.Generator, batch: int = 8) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    lengths = {"text": 6, "audio": 9, "video": 5}
    out: dict[str, torch.Tensor] = {}
    for m, d in DIMS.items():
        out[f"{m}_features"] = torch.randn(batch, lengths[m], d, generator=g)
        mask = torch.ones(batch, lengths[m], dtype=torch.bool)
        mask[1, lengths[m] // 2 :] = False  # one padded utterance
        out[f"{m}_features_mask"] = mask
    labels = (torch.rand(batch, generator=g) * 6 - 3).round()
    return out, labels


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_and_fits_a_small_batch(name: str) -> None:
    cfg = load_model_config(name)
    assert cfg.task == "regression" and cfg.num_outputs == 1
    assert {s.options()["input_dim"] for s in cfg.encoders.values()} == set(DIMS.values())
    torch.manual_seed(0)
    model = build_model(name)
    assert model.encoders["audio"].where == "audio encoder 'features'"
    g = torch.Generator().manual_seed(0)
    batch, labels = _batch(g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    first = last = None
    for _ in range(12):
        loss = model(batch, labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        last = float(loss.detach())
        first = last if first is None else first
    assert last < 0.5 * first, (first, last)
    model.eval()
    assert model(batch).logits.shape == (8, 1)


def test_stage_of_each_baseline() -> None:
    stages = {n: (load_model_config(n).stage, load_model_config(n).fusion, load_model_config(n).early_fusion) for n in CONFIGS}
    assert stages["sentiment-early"][0] == "early"
    assert stages["sentiment-mult"] == ("early", "concat", "mult")
    assert stages["sentiment-tfn"][:2] == ("late", "tensor")
    assert stages["sentiment-lmf"][:2] == ("late", "low_rank_tensor")
    assert all(e.options()["depth"] == 0 for e in load_model_config("sentiment-early").encoders.values())
