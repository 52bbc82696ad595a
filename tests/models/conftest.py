"""Eight real samples of the built-in world, read through the same format readers users' data goes through."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from polymodal.data.formats import read_source
from polymodal.data.images import open_image
from polymodal.data.processors import ImageProcessor, ImageProcessorConfig
from polymodal.data.sources import CocoCaptionsSource, TableSource, VqaV2Source
from polymodal.data.tokenizers import TextTokenizer, train_tokenizer
from polymodal.data.world import WorldConfig, generate_world

SIZE = 32


@dataclass
class WorldBatch:
    images: torch.Tensor
    captions: list[str]
    questions: list[str]
    answers: list[tuple[str, ...]]
    statements: list[str]
    labels: torch.Tensor
    statement_images: torch.Tensor
    tokenizer: TextTokenizer


@pytest.fixture(scope="session")
def world_batch(tmp_path_factory: pytest.TempPathFactory) -> WorldBatch:
    root = tmp_path_factory.mktemp("world8")
    generate_world(root, WorldConfig(num_scenes=40, seed=5, image_size=SIZE), workers=1)
    proc = ImageProcessor(ImageProcessorConfig(size=SIZE))
    caps = list(read_source(CocoCaptionsSource(format="coco_captions", annotations=root / "annotations/captions_train.json", images=root / "images/train")))
    by_image: dict[str, object] = {}
    for s in caps:
        by_image.setdefault(s.image_id, s)
    first8 = list(by_image.values())[:8]
    vqa = list(read_source(VqaV2Source(format="vqa_v2", questions=root / "vqa/questions_train.json", annotations=root / "vqa/annotations_train.json", images=root / "images/train", image_template="{split}_{image_id:06d}.png")))
    # one question per image, with distinct answers where possible, so the model must look at the image
    qs, seen = [], set()
    for s in vqa:
        if s.image_id not in seen and len(qs) < 8:
            seen.add(s.image_id)
            qs.append(s)
    stmts = list(read_source(TableSource(format="jsonl", path=root / "classification/train.jsonl", root=root, id_field="id")))[:8]
    corpus = [s.text for s in caps] + [s.text for s in vqa] + [s.text for s in stmts]
    tok = train_tokenizer(corpus, vocab_size=300)
    return WorldBatch(
        images=torch.stack([proc(open_image(s.image_path)) for s in first8]),
        captions=[s.text for s in first8],
        questions=[s.text for s in qs],
        answers=[s.answers for s in qs],
        statements=[s.text for s in stmts],
        labels=torch.tensor([int(s.label) for s in stmts]),
        statement_images=torch.stack([proc(open_image(s.image_path)) for s in stmts]),
        tokenizer=tok,
    )


@pytest.fixture()
def vqa_images(world_batch: WorldBatch) -> torch.Tensor:
    return world_batch.images
