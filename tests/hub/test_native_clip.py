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
