from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from polymodal.data.processors import ImageProcessor, ImageProcessorConfig
from polymodal.data.sample import Sample
from polymodal.data.tokenizers import train_tokenizer
from polymodal.errors import DataError
from polymodal.models.dual_encoder import DualEncoder
from polymodal.modules.encoders import TextTransformer, VisionTransformer
from polymodal.tasks.base import group_by_image
from polymodal.tasks.retrieval import RetrievalTask
from polymodal.train.data import make_loader


def test_group_by_image_keeps_first_seen_order() -> None:
    s = [Sample("a", image_id="2"), Sample("b", image_id="1"), Sample("c", image_id="2"), Sample("d")]
    groups = group_by_image(s)
    assert list(groups) == ["2", "1", "d"] and [x.sample_id for x in groups["2"]] == ["a", "c"]


def test_retrieval_evaluation_refuses_a_gallery_with_unreadable_images(tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (16, 16), (i * 80, 0, 0)).save(p)
        paths.append(p)
    paths[1].write_bytes(b"broken")
    samples = [Sample(str(i), image_path=p, image_id=str(i), text=f"image {i}") for i, p in enumerate(paths)]
    tok = train_tokenizer([s.text for s in samples], vocab_size=40)
    model = DualEncoder(
        VisionTransformer(image_size=16, patch_size=8, width=16, depth=1, heads=2),
        TextTransformer(vocab_size=tok.vocab_size, max_length=8, width=16, depth=1, heads=2, causal=True),
        embed_dim=8,
    )
    proc = ImageProcessor(ImageProcessorConfig(size=16))
    task = RetrievalTask(tok, 8)
    with pytest.raises(DataError, match="1 gallery image.*1.png"):
        task.evaluate(model, samples, lambda ss, img=True: make_loader(ss, proc, tok, 8, 2, 0), torch.device("cpu"))
