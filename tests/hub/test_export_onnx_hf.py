"""ONNX export of Hugging Face dual encoders (tiny random CLIP and SigLIP from ``conftest.hf_folders``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ort = pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")

from polymodal import export as E
from polymodal.api import load_model

TEXTS = ["a photo of a red cube", "two blue spheres left of a cone", "the green cone", "what color is the cube", "a"]


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (36 + 4 * i, 44 - 2 * i, 3), dtype=np.uint8)) for i in range(n)]


# CLIP goes through the default (torch.export-based) exporter; SigLIP through the TorchScript one, which
# takes a second instead of ten (both exporters give SigLIP within 3e-7 of PyTorch when run by hand).
@pytest.mark.parametrize(("family", "exporter"), [("clip", "auto"), ("siglip", "torchscript")])
def test_hf_dual_encoder_towers_match_pytorch_and_the_folder_loads_with_transformers(hf_folders, family: str, exporter: str, tmp_path: Path) -> None:
    folder = hf_folders[family]
    out = tmp_path / f"{family}_onnx"
    result = E.export_onnx(folder, out, exporter=exporter)
    assert result.family == family and result.exporter == ("dynamo" if exporter == "auto" else exporter)
    assert set(result.max_abs_diff) == {E.IMAGE_FILE, E.TEXT_FILE} and max(result.max_abs_diff.values()) <= 1e-4

    model, proc = load_model(folder)
    image_s = ort.InferenceSession(str(out / E.IMAGE_FILE), providers=["CPUExecutionProvider"])
    text_s = ort.InferenceSession(str(out / E.TEXT_FILE), providers=["CPUExecutionProvider"])
    assert image_s.get_inputs()[0].shape == ["batch", 3, 30, 30]
    assert [i.shape for i in text_s.get_inputs()] == [["batch", "sequence"], ["batch", "sequence"]]

    # the saved tokenizer and image processor load with transformers alone and give polymodal's inputs
    tok = transformers.AutoTokenizer.from_pretrained(out)
    image_proc = transformers.AutoImageProcessor.from_pretrained(out, use_fast=False)
    manifest = json.loads((out / E.MANIFEST_FILE).read_text())
    assert manifest["image_processor_format"] == "huggingface" and "preprocessor_config.json" in {p.name for p in out.iterdir()}
    padding = manifest["text"]["padding"]
    assert padding == ("max_length" if family == "siglip" else "longest")
    for b in (1, 5):
        imgs, texts = _images(b), TEXTS[:b]
        px = image_proc(images=imgs, return_tensors="np")["pixel_values"]
        enc = tok(texts, padding=padding, truncation=True, max_length=manifest["text"]["max_length"], return_tensors="np")
        ids, mask = proc.texts(texts)
        assert np.array_equal(enc["input_ids"], ids.numpy()) and np.array_equal(enc["attention_mask"], mask.numpy())
        np.testing.assert_allclose(px, proc.images(imgs).numpy(), atol=1e-6)
        with torch.no_grad():
            want_img, want_txt = model.encode_image(proc.images(imgs)).numpy(), model.encode_text(ids, mask).numpy()
        got_img = image_s.run(None, {"pixel_values": px.astype(np.float32)})[0]
        got_txt = text_s.run(None, {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
        np.testing.assert_allclose(got_img, want_img, atol=1e-4, rtol=0)
        np.testing.assert_allclose(got_txt, want_txt, atol=1e-4, rtol=0)
    assert manifest["embed_dim"] == want_img.shape[1] and manifest["logit_scale"] == pytest.approx(model.logit_scale)
    if family == "siglip":
        assert manifest["logit_bias"] == pytest.approx(-2.0)
    else:
        assert manifest["logit_bias"] is None


def test_a_captioner_checkpoint_is_refused(hf_folders, tmp_path: Path) -> None:
    with pytest.raises(E.ExportError, match=r"blip_caption holds a 'captioner' model; ONNX export covers dual encoders"):
        E.export_onnx(hf_folders["blip_caption"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
