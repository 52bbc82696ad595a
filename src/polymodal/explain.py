"""Which image regions a VQA answer looked at: a Grad-CAM heat-map over the image token grid.

The gradient of the chosen answer's logit with respect to each image token, times the token, summed
over channels and clipped at zero, says how much that region pushed the model towards its answer
(Grad-CAM, Selvaraju et al. 2017, applied to the fusion's image tokens). It needs no change to the
model, works for every classifier-style polymodal VQA model (and the multi-task model's VQA head),
and costs one backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from polymodal.api import ImageInput, Processors
from polymodal.models.object_head import token_grid
from polymodal.models.vqa import VQAClassifier
from polymodal.modules.encoders.base import EncoderOutput
from polymodal.predict import WrongModelType

__all__ = ["Explanation", "answer_heatmap"]


@dataclass
class Explanation:
    answer: str
    heatmap: list[list[float]]  # [rows][cols] over the image, 0..1 (1: the region that mattered most)


def answer_heatmap(model: torch.nn.Module, processors: Processors, image: ImageInput, question: str) -> Explanation:
    """The model's answer to ``question`` about ``image`` and where in the image it came from."""
    vqa = getattr(model, "vqa", model)
    if not isinstance(vqa, VQAClassifier):
        raise WrongModelType(
            f"an answer heat-map needs a polymodal VQA model (a run trained with train.task: vqa, or a multi-task run); "
            f"{processors.source or 'this model'} is a {type(model).__name__}"
        )
    device = next(vqa.parameters()).device
    pixels = processors.images([image]).to(device)
    ids, mask = processors.texts([question])
    was_training = vqa.training
    vqa.eval()
    try:
        with torch.enable_grad():
            image_out = vqa.backbone.encode_image(pixels)
            tokens = image_out.tokens.detach().requires_grad_(True)
            text = vqa.backbone.encode_text(ids.to(device), mask.to(device))
            fused = vqa.backbone.fuse(text, EncoderOutput(tokens=tokens, pooled=image_out.pooled, mask=image_out.mask))
            logits = vqa.head(vqa.read(fused, tokens))  # with a readout, the cells the question selected matter too
            best = int(logits[0].argmax())
            logits[0, best].backward()
    finally:
        vqa.train(was_training)
    cam = (tokens.grad * tokens.detach()).sum(-1).clamp(min=0)  # [1, N]
    grid = token_grid(cam.unsqueeze(-1))[0, 0]  # [s, s]
    peak = float(grid.max())
    grid = grid / peak if peak > 0 else grid
    return Explanation(answer=vqa.vocab.answers[best], heatmap=[[round(float(v), 4) for v in row] for row in grid])
