"""Tiny random Hugging Face checkpoints of each supported family, saved with save_pretrained."""

from __future__ import annotations

from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers, processors

WORDS = ["a", "an", "the", "red", "blue", "green", "cube", "sphere", "cone", "photo", "of", "picture", "is", "there", "what", "color", "how", "many", "left", "right", "yes", "no", "two", "one"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
VOCAB = {w: i for i, w in enumerate(SPECIALS + WORDS)}
TINY = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)


def save_tokenizer(folder: Path, max_length: int = 32) -> None:
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", bos_token="[DEC]", eos_token="[SEP]", model_max_length=max_length,
    )
    fast.save_pretrained(folder)


def _save(folder: Path, model, image_processor, max_length: int = 32) -> Path:
    model.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    save_tokenizer(folder, max_length)
    return folder


def vision_config(image_size: int = 30) -> dict:
    return TINY | dict(image_size=image_size, patch_size=6)


def text_config(**extra) -> dict:
    return TINY | dict(vocab_size=len(VOCAB), max_position_embeddings=32) | extra


@pytest.fixture(scope="session")
def hf_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    T = transformers
    ids = dict(pad_token_id=0, bos_token_id=5, eos_token_id=3, sep_token_id=3)
    out = {}
    clip = T.CLIPModel(T.CLIPConfig(text_config=text_config(**ids), vision_config=vision_config(), projection_dim=16))
    out["clip"] = _save(root / "clip", clip, T.CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}))
    siglip = T.SiglipModel(T.SiglipConfig(text_config=text_config(**ids), vision_config=vision_config()))
    with torch.no_grad():
        siglip.logit_bias.fill_(-2.0)
    out["siglip"] = _save(root / "siglip", siglip, T.SiglipImageProcessor(size={"height": 30, "width": 30}), max_length=16)
    blip_cfg = T.BlipConfig(text_config=text_config(encoder_hidden_size=32, **ids), vision_config=vision_config(), projection_dim=16)
    out["blip_caption"] = _save(root / "blip_caption", T.BlipForConditionalGeneration(blip_cfg), T.BlipImageProcessor(size={"height": 30, "width": 30}))
    out["blip_vqa"] = _save(root / "blip_vqa", T.BlipForQuestionAnswering(blip_cfg), T.BlipImageProcessor(size={"height": 30, "width": 30}))
    out["blip_itm"] = _save(root / "blip_itm", T.BlipForImageTextRetrieval(blip_cfg), T.BlipImageProcessor(size={"height": 30, "width": 30}))
    vilt_cfg = T.ViltConfig(vocab_size=len(VOCAB), max_position_embeddings=32, image_size=32, patch_size=8, num_labels=4,
                            id2label={0: "yes", 1: "no", 2: "red", 3: "two"}, label2id={"yes": 0, "no": 1, "red": 2, "two": 3}, **TINY)
    out["vilt"] = _save(root / "vilt", T.ViltForQuestionAnswering(vilt_cfg), T.ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=32, do_pad=False))
    return out
