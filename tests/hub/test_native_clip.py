"""A Hugging Face CLIP checkpoint converted into polymodal's own dual encoder gives CLIPModel's embeddings,
from raw images and texts, and works wherever a polymodal run does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal import predict
from polymodal.api import load_model
from polymodal.hub import native_clip
from polymodal.hub.loading import PretrainedLoadError
from polymodal.models.dual_encoder import DualEncoder

transformers = pytest.importorskip("transformers")

TEXTS = ["a photo of a red cube", "two blue spheres left of a cone", "the green cone", "a"]


@pytest.fixture(scope="module")
def converted(hf_folders, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("native") / "clip_run"
    native_clip.convert_clip(hf_folders["clip"], out)
    return out


def _images(n: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_converted_model_embeds_raw_inputs_as_clipmodel_does(hf_folders, converted) -> None:
    folder = hf_folders["clip"]
    model, proc = load_model(converted)
    assert isinstance(model, DualEncoder)
    ref = transformers.CLIPModel.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    enc = tok(TEXTS, padding="longest", return_tensors="pt")
    imgs = _images(3, 30)  # the crop size: no resize, so both pipelines see the same pixels
    pixels = transformers.AutoImageProcessor.from_pretrained(folder, use_fast=False)(images=imgs, return_tensors="pt")["pixel_values"]
    ours_ids, ours_mask = proc.texts(TEXTS)
    assert torch.equal(ours_ids, enc["input_ids"]) and torch.equal(ours_mask, enc["attention_mask"])
    torch.testing.assert_close(proc.images(imgs), pixels, rtol=0, atol=1e-5)
    with torch.no_grad():
        want_txt = torch.nn.functional.normalize(native_clip._features(ref.get_text_features(**enc)), dim=-1)
        want_img = torch.nn.functional.normalize(native_clip._features(ref.get_image_features(pixel_values=pixels)), dim=-1)
    torch.testing.assert_close(predict.embed_texts(model, proc, TEXTS), want_txt, rtol=0, atol=1e-5)
    torch.testing.assert_close(predict.embed_images(model, proc, imgs), want_img, rtol=0, atol=1e-5)
    torch.testing.assert_close(model.itc.logit_scale.exp(), ref.logit_scale.exp().reshape(1))


def test_weights_are_renamed_and_stacked_exactly(hf_folders) -> None:
    ref = transformers.CLIPModel.from_pretrained(hf_folders["clip"])
    hf = ref.state_dict()
    ours = native_clip.clip_state_dict(hf, vision_depth=2, text_depth=2)
    a = "vision_model.encoder.layers.1.self_attn"
    assert torch.equal(ours["image_encoder.transformer.blocks.1.attn.qkv.weight"], torch.cat([hf[f"{a}.{p}_proj.weight"] for p in "qkv"]))
    # every CLIP tensor is used once (q, k, v three to one; position ids are buffers, not weights)
    used = sum(v.numel() for v in ours.values())
    assert used == sum(p.numel() for p in ref.parameters())


def test_a_wrong_mapping_is_caught_before_anything_is_written(hf_folders, tmp_path, monkeypatch) -> None:
    real = native_clip.clip_state_dict

    def swapped(hf, vision_depth, text_depth):
        out = real(hf, vision_depth, text_depth)
        w = out["text_encoder.transformer.blocks.0.attn.qkv.weight"]
        q, k, v = w.chunk(3)
        out["text_encoder.transformer.blocks.0.attn.qkv.weight"] = torch.cat([k, q, v])  # q and k swapped
        return out

    monkeypatch.setattr(native_clip, "clip_state_dict", swapped)
    with pytest.raises(PretrainedLoadError, match="differ from transformers'"):
        native_clip.convert_clip(hf_folders["clip"], tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_other_families_and_occupied_folders_are_refused(hf_folders, converted) -> None:
    with pytest.raises(PretrainedLoadError, match="model_type 'clip'"):
        native_clip.clip_model_config(transformers.AutoConfig.from_pretrained(hf_folders["siglip"]))
    with pytest.raises(PretrainedLoadError, match="not empty"):
        native_clip.convert_clip(hf_folders["clip"], converted)


def test_cli_converts_and_the_search_index_takes_the_run(hf_folders, tmp_path, capsys) -> None:
    pytest.importorskip("faiss")
    from polymodal.index import SearchIndex
    from tests.cli_runner import run_cli

    out = tmp_path / "run"
    code, printed, err = run_cli(capsys, "convert", "clip", str(hf_folders["clip"]), "--out", str(out))
    assert code == 0 and "polymodal dual encoder" in printed, err
    code, _, err = run_cli(capsys, "convert", "clip", str(hf_folders["clip"]), "--out", str(out))
    assert code == 2 and "--overwrite" in err
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, img in enumerate(_images(4, 40)):
        img.save(photos / f"p{i}.png")
    index = SearchIndex.create(tmp_path / "idx", out, root=photos)
    index.add_images(photos, progress=False)
    hits = index.search_image(photos / "p2.png", k=1)
    assert hits[0].path == "p2.png"
    index.close()


# ---------------------------------------------------------------------------------------------------------
# OpenAI's lineage: eos_token_id 2 (pooling at the largest id), the end token last in the vocabulary, no pad
# token, towers of different widths, texts truncated to the context, photos that need a resize.

OPENAI_WORDS = ["[UNK]", "a", "photo", "of", "the", "red", "blue", "cube", "sphere", "cat", "on", "mat", "two", "left"]


def _openai_style(folder: Path, seed: int = 0, *, dtype=None, preprocessor: dict | None = None, eos_last: bool = True) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    ends = ["<|startoftext|>", "<|endoftext|>"] if eos_last else ["<|endoftext|>", "<|startoftext|>"]
    vocab = {w: i for i, w in enumerate(OPENAI_WORDS + ends)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[(t, vocab[t]) for t in ("<|startoftext|>", "<|endoftext|>")]
    )
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        unk_token="[UNK]", model_max_length=12,
    ).save_pretrained(folder)
    torch.manual_seed(seed)
    text = dict(vocab_size=len(vocab), max_position_embeddings=12, hidden_size=24, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=3, eos_token_id=2, bos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=40, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, image_size=30, patch_size=6)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=12))
    with torch.no_grad():  # non-trivial norms, so a swapped LayerNorm would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder)
    transformers.CLIPImageProcessor(**(preprocessor or {"size": {"shortest_edge": 30}, "crop_size": {"height": 30, "width": 30}})).save_pretrained(folder)
    return folder


def _photos() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    # 50x37: the long side scales to 40.5; Hugging Face floors it to 40 (rounding would give 41)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in ((64, 48), (50, 37), (30, 45))]


def _hf_embeddings(folder: Path, photos, texts):
    ref = transformers.CLIPModel.from_pretrained(folder, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    enc = tok(texts, padding="longest", truncation=True, max_length=12, return_tensors="pt")
    pixels = transformers.CLIPImageProcessor.from_pretrained(folder)(images=photos, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        t = torch.nn.functional.normalize(native_clip._features(ref.get_text_features(**enc)), dim=-1)
        i = torch.nn.functional.normalize(native_clip._features(ref.get_image_features(pixel_values=pixels)), dim=-1)
    return pixels, t, i


OPENAI_TEXTS = ["a photo of a cat", "two red cube left of the blue sphere on a mat " * 3, "cat"]


@pytest.mark.parametrize("squash", [False, True])
def test_openai_style_clip_converts_and_embeds_raw_inputs_identically(tmp_path, squash) -> None:
    pre = {"do_center_crop": False, "size": {"height": 30, "width": 30}} if squash else None
    folder = _openai_style(tmp_path / "hf", preprocessor=pre)
    native_clip.convert_clip(folder, tmp_path / "run")
    model, proc = load_model(tmp_path / "run")
    assert proc.tokenizer.pad_id == 0  # no pad token: a real one stands in, and only the mask matters
    pixels, want_txt, want_img = _hf_embeddings(folder, _photos(), OPENAI_TEXTS)
    torch.testing.assert_close(proc.images(_photos()), pixels, rtol=0, atol=1e-5)
    torch.testing.assert_close(predict.embed_texts(model, proc, OPENAI_TEXTS), want_txt, rtol=0, atol=1e-5)
    torch.testing.assert_close(predict.embed_images(model, proc, _photos()), want_img, rtol=0, atol=1e-5)


def test_fp16_checkpoints_convert(tmp_path) -> None:
    folder = _openai_style(tmp_path / "hf", dtype=torch.float16)
    native_clip.convert_clip(folder, tmp_path / "run")
    model, proc = load_model(tmp_path / "run")
    assert next(model.parameters()).dtype == torch.float32


def test_incomplete_weights_are_refused(tmp_path) -> None:
    """from_pretrained fills missing tensors with random values; every later check would pass on them."""
    from safetensors.torch import load_file, save_file

    folder = _openai_style(tmp_path / "hf")
    weights = load_file(folder / "model.safetensors")
    del weights["text_projection.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(PretrainedLoadError, match="text_projection.weight"):
        native_clip.convert_clip(folder, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_overwrite_replaces_the_whole_run(tmp_path) -> None:
    first, second = _openai_style(tmp_path / "a", seed=0), _openai_style(tmp_path / "b", seed=1)
    out = tmp_path / "run"
    native_clip.convert_clip(first, out)
    (out / "stale.txt").write_text("from before")
    with pytest.raises(PretrainedLoadError, match="--overwrite"):
        native_clip.convert_clip(second, out)
    native_clip.convert_clip(second, out, overwrite=True)
    assert not (out / "stale.txt").exists() and not list(tmp_path.glob(".run.tmp-*"))
    model, proc = load_model(out)
    _, want_txt, _ = _hf_embeddings(second, _photos(), OPENAI_TEXTS)
    torch.testing.assert_close(predict.embed_texts(model, proc, OPENAI_TEXTS), want_txt, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "case, match",
    [
        ("resize larger than the crop", "shortest_edge 40 differs from the crop 30"),
        ("no normalisation", "do_normalize"),
        ("end token not last", "not the vocabulary's last"),
        ("another family", "model_type 'clip'"),
    ],
)
def test_what_cannot_be_reproduced_is_refused_naming_it(tmp_path, hf_folders, case, match) -> None:
    if case == "another family":
        folder = hf_folders["siglip"]
    elif case == "end token not last":
        folder = _openai_style(tmp_path / "hf", eos_last=False)
    else:
        pre = {"size": {"shortest_edge": 40}, "crop_size": {"height": 30, "width": 30}} if case.startswith("resize") else {
            "size": {"shortest_edge": 30}, "crop_size": {"height": 30, "width": 30}, "do_normalize": False}
        folder = _openai_style(tmp_path / "hf", preprocessor=pre)
    with pytest.raises(PretrainedLoadError, match=match):
        native_clip.convert_clip(folder, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_converted_clip_fine_tunes_with_polymodal_train(converted, tmp_path, caplog) -> None:
    """`init_from: <converted run>` trains CLIP's weights in polymodal's own model, with CLIP's
    tokenizer and preprocessing, and two micro-batches scored as one contrastive batch."""
    import json

    import yaml

    from polymodal.config import load_config
    from polymodal.data.world import WorldConfig, generate_world
    from polymodal.models.configs import parse_model_config
    from polymodal.train.checkpoint import latest_checkpoint, load_checkpoint
    from polymodal.train.trainer import Trainer

    world = tmp_path / "world"
    generate_world(world, WorldConfig(num_scenes=24, seed=4, image_size=32), workers=1)
    captions = {split: {"format": "coco_captions", "annotations": str(world / f"annotations/captions_{split}.json"),
                        "images": str(world / f"images/{split}")} for split in ("train", "test")}
    config = tmp_path / "finetune.yaml"
    config.write_text(yaml.safe_dump({
        "init_from": str(converted), "output_dir": str(tmp_path / "tuned"), "data": captions,
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"task": "retrieval", "max_steps": 2, "batch_size": 4, "accumulation": 2, "num_workers": 0, "eval_batch_size": 16,
                  "log_every": 1},
    }))
    trainer = Trainer(load_config(config), progress=False)
    with caplog.at_level("INFO", logger="polymodal.train.trainer"):
        summary = trainer.fit()
    assert summary["steps"] == 2 and "t2i_R@1" in summary["test"]
    assert any("scored as one contrastive batch of 8" in r.message for r in caplog.records)

    source = load_checkpoint(converted)
    tuned = load_checkpoint(latest_checkpoint(tmp_path / "tuned"))
    assert parse_model_config(tuned.model_config) == parse_model_config(source.model_config)
    assert tuned.processors["image"] == source.processors["image"]  # CLIP's crop, resample and statistics, kept
    assert tuned.processors["text_max_length"] == source.processors["text_max_length"]
    before, after = source.model_state(), tuned.model_state()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    log = (tmp_path / "tuned/log.csv").read_text()
    assert ",train,loss," in log
    model, proc = load_model(tmp_path / "tuned")
    ids, mask = proc.texts(TEXTS)
    with torch.no_grad():
        assert torch.allclose(model.encode_text(ids, mask), trainer.eval_model.eval().encode_text(ids, mask), atol=1e-6)
    assert json.loads((tmp_path / "tuned/metrics.json").read_text())["steps"] == 2
