"""A checkpoint's own Hugging Face preprocessing, behind polymodal's processor interface.

The image processor and tokenizer are the ones saved beside the weights (``preprocessor_config.json``,
``tokenizer.json`` / vocab files), loaded by ``transformers`` itself: resize mode, crop, mean/std and
tokenisation are then exactly what the checkpoint was trained with. Only the calling convention is
polymodal's: ``processor(pil_image) -> [3, H, W]`` and ``tokenizer.encode(texts, max_length)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from polymodal.data.images import as_rgb
from polymodal.data.tokenizers import TextBatch


class HFImageProcessor:
    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, img: Image.Image, rng: Any = None) -> torch.Tensor:
        img = as_rgb(img)
        return self.processor(images=img, return_tensors="pt")["pixel_values"][0]

    def to_dict(self) -> dict[str, Any]:
        return self.processor.to_dict()


class HFTokenizer:
    """``pad_to_max_length``: SigLIP was trained on texts padded to 64 tokens and expects them so."""

    def __init__(self, tokenizer: Any, pad_to_max_length: bool = False) -> None:
        self.tokenizer = tokenizer
        self.pad_to_max_length = pad_to_max_length

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def encode(self, texts: Sequence[str], max_length: int, add_special_tokens: bool = True) -> TextBatch:
        enc = self.tokenizer(
            list(texts),
            padding="max_length" if self.pad_to_max_length else "longest",
            truncation=True,
            max_length=max_length,
            add_special_tokens=add_special_tokens,
            return_tensors="pt",
        )
        return TextBatch(enc["input_ids"].long(), enc["attention_mask"].long())

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
