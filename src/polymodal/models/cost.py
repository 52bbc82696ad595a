"""What a model costs: parameters, FLOPs per sample and latency, for ``polymodal bench model``.

FLOPs are counted by torch's own FlopCounterMode on a real forward pass (matmuls and convolutions,
the terms that dominate), not estimated from a formula, so they stay right as the code changes.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from polymodal.models.factory import BuildContext, build_model
from polymodal.models.vqa import AnswerVocab


@dataclass
class ModelCost:
    name: str
    params: int
    trainable: int
    flops_per_sample: float  # forward
    latency_ms_per_sample: float  # forward, median over repeats, on the current device/threads

    def format(self) -> str:
        return (
            f"{self.name:<24} params {self.params / 1e6:8.2f} M  trainable {self.trainable / 1e6:8.2f} M  "
            f"forward {self.flops_per_sample / 1e9:8.3f} GFLOP/sample  {self.latency_ms_per_sample:8.2f} ms/sample"
        )


def _specs(cfg: Any) -> tuple[int, int]:
    """(image size, text length) for a dummy batch."""
    vision = getattr(cfg, "vision", None) or cfg.encoders.get("image")
    text = getattr(cfg, "text", None) or getattr(cfg, "decoder", None) or cfg.encoders.get("text")
    size = vision.options().get("image_size", 64) if vision is not None else 64
    length = text.options().get("max_length", 32) if text is not None else 32
    return size, max(2, length // 2)


def dummy_forward(model: nn.Module, cfg: Any, batch: int) -> Any:
    size, length = _specs(cfg)
    images = torch.randn(batch, 3, size, size)
    ids = torch.randint(5, 100, (batch, length))
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    if cfg.type == "classifier":
        inputs = {"image": images, "text_ids": ids, "text_mask": mask}
        return lambda: model(inputs)
    return lambda: model(images, ids, mask)


def measure(name: str, batch: int = 8, repeats: int = 5, vocab_size: int = 1000) -> ModelCost:
    from polymodal.models.factory import load_model_config

    cfg = load_model_config(name)
    ctx = BuildContext(vocab_size=vocab_size, answer_vocab=AnswerVocab(tuple(f"a{i}" for i in range(100))))
    model = build_model(cfg, ctx).eval()
    run = dummy_forward(model, cfg, batch)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            run()
        flops = counter.get_total_flops() / batch
        run()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    return ModelCost(name, params, trainable, flops, 1000 * statistics.median(times) / batch)
