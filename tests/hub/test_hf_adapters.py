"""Checkpoints of every supported family load through polymodal and give the Hugging Face model's own outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal import predict
from polymodal.api import load_model
from polymodal.hub.loading import PretrainedLoadError

transformers = pytest.importorskip("transformers")

TEXTS = ["a photo of a red cube", "two blue spheres left of a cone", "the green cone"]


def images(n: int = 2, size: tuple[int, int] = (40, 34)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def hf_inputs(folder: Path, imgs: list[Image.Image], texts: list[str], **tok_kw):
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    proc = transformers.AutoImageProcessor.from_pretrained(folder, use_fast=False)
    enc = tok(texts, padding=tok_kw.pop("padding", "longest"), return_tensors="pt", **tok_kw)
    return proc(images=imgs, return_tensors="pt")["pixel_values"], enc["input_ids"], enc["attention_mask"]


def test_clip_embeddings_and_logits_equal_the_hf_model(hf_folders) -> None:
    folder = hf_folders["clip"]
    model, proc = load_model(folder)
    ref = transformers.CLIPModel.from_pretrained(folder).eval()
    imgs = images()
    px, ids, mask = hf_inputs(folder, imgs, TEXTS)
    ours_px, (ours_ids, ours_mask) = proc.images(imgs), proc.texts(TEXTS)
    assert torch.equal(ours_px, px) and torch.equal(ours_ids, ids) and torch.equal(ours_mask, mask)  # the same preprocessing
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask, pixel_values=px)
        img, txt = model.encode_image(px), model.encode_text(ids, mask)
        torch.testing.assert_close(img, out.image_embeds, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(txt, out.text_embeds, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.similarity_logits(img, txt), out.logits_per_image, atol=1e-5, rtol=1e-5)
    assert proc.model_type == "dual_encoder" and proc.task == "retrieval"


def test_siglip_pads_texts_like_its_training_and_matches_hf_logits(hf_folders) -> None:
    folder = hf_folders["siglip"]
    model, proc = load_model(folder)
    ref = transformers.SiglipModel.from_pretrained(folder).eval()
    imgs = images()
    px, ids, mask = hf_inputs(folder, imgs, TEXTS, padding="max_length", max_length=16, truncation=True)
    ours_ids, _ = proc.texts(TEXTS)
    assert ours_ids.shape[1] == 16 and torch.equal(ours_ids, ids)
    with torch.no_grad():
        out = ref(input_ids=ids, pixel_values=px)
        logits = model.similarity_logits(model.encode_image(proc.images(imgs)), model.encode_text(ids))
    torch.testing.assert_close(logits, out.logits_per_image, atol=1e-5, rtol=1e-5)
    assert model.logit_bias == pytest.approx(-2.0)


def loaded(folder: Path, hf_class: str):
    """Ours and theirs from one folder: (model, processors, the HF model, the HF tokenizer)."""
    model, proc = load_model(folder)
    return model, proc, getattr(transformers, hf_class).from_pretrained(folder).eval(), transformers.AutoTokenizer.from_pretrained(folder)


def test_blip_captions_are_the_hf_generations(hf_folders) -> None:

    folder = hf_folders["blip_caption"]
    model, proc, ref, tok = loaded(folder, "BlipForConditionalGeneration")
    imgs = images()
    px, _, _ = hf_inputs(folder, imgs, TEXTS[:1])
    expected = [tok.decode(s, skip_special_tokens=True) for s in ref.generate(pixel_values=px, max_new_tokens=8, do_sample=False)]
    assert predict.caption(model, proc, imgs, max_length=8) == expected
    # the LM loss of the adapter is the model's own
    ids = tok(["a red cube"], return_tensors="pt")
    with torch.no_grad():
        ours = model(px[:1], ids["input_ids"], ids["attention_mask"]).loss
        theirs = ref(pixel_values=px[:1], input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], labels=ids["input_ids"]).loss
    torch.testing.assert_close(ours, theirs)


def test_vilt_answers_are_the_argmax_of_the_hf_logits(hf_folders) -> None:

    folder = hf_folders["vilt"]
    model, proc = load_model(folder)
    ref = transformers.ViltForQuestionAnswering.from_pretrained(folder).eval()
    imgs = images(size=(32, 32))
    px, ids, mask = hf_inputs(folder, imgs, TEXTS[:2])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, pixel_values=px).logits
        torch.testing.assert_close(model(px, ids, mask).logits, expected, atol=1e-5, rtol=1e-5)
    labels = [ref.config.id2label[i] for i in expected.argmax(-1).tolist()]
    assert predict.answer(model, proc, imgs, TEXTS[:2]) == labels


def test_blip_vqa_generates_the_hf_answer(hf_folders) -> None:

    folder = hf_folders["blip_vqa"]
    model, proc, ref, tok = loaded(folder, "BlipForQuestionAnswering")
    imgs = images()
    px, ids, mask = hf_inputs(folder, imgs, ["what color is the cube", "how many spheres"])
    gen = ref.generate(input_ids=ids, attention_mask=mask, pixel_values=px, max_new_tokens=10, do_sample=False)
    expected = [tok.decode(s, skip_special_tokens=True).strip() for s in gen]
    assert predict.answer(model, proc, imgs, ["what color is the cube", "how many spheres"]) == expected


def test_blip_itm_scores_are_the_hf_match_probabilities(hf_folders) -> None:
    folder = hf_folders["blip_itm"]
    model, proc = load_model(folder)
    ref = transformers.BlipForImageTextRetrieval.from_pretrained(folder).eval()
    px, ids, mask = hf_inputs(folder, images(), TEXTS[:2])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, pixel_values=px, use_itm_head=True).itm_score.softmax(-1)[:, 1]
    torch.testing.assert_close(model.match(px, ids, mask), expected, atol=1e-5, rtol=1e-5)
    assert predict.match(model, proc, images(), TEXTS[:2]) == pytest.approx(expected.tolist(), abs=1e-5)
    with torch.no_grad():  # its ITC side is BLIP's own use_itm_head=False cosine similarity
        cosine = ref(input_ids=ids, attention_mask=mask, pixel_values=px, use_itm_head=False).itm_score
    torch.testing.assert_close(model.encode_image(px) @ model.encode_text(ids, mask).t(), cosine, atol=1e-5, rtol=1e-5)


def test_predict_match_on_the_command_line(hf_folders, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tests.cli_runner import run_cli

    img = tmp_path / "x.png"
    images()[0].save(img)
    code, out, err = run_cli(capsys, "predict", "match", "-c", str(hf_folders["blip_itm"]), "--image", str(img), "--text", "a red cube", "--text", "two spheres", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["text"] for r in rows] == ["a red cube", "two spheres"] and all(0.0 <= r["match"] <= 1.0 for r in rows)
    code, _, err = run_cli(capsys, "predict", "match", "-c", str(hf_folders["clip"]), "--image", str(img), "--text", "a red cube")
    assert code != 0 and "needs an image-text matching head" in err and "'clip'" not in err


# ------------------------------------------------------------------ bad input


def test_a_folder_that_is_not_a_checkpoint_is_named(tmp_path: Path) -> None:
    from polymodal.train.checkpoint import CheckpointError

    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises((CheckpointError, PretrainedLoadError), match=str(tmp_path)):
        load_model(tmp_path)


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(PretrainedLoadError, match=r"model_type 'gpt2' .* not supported as a whole model; polymodal loads: .*clip \(CLIPModel\)") as err:
        load_model(tmp_path)
    assert f"text: {{name: hf_text, path: {tmp_path}}}" in str(err.value)  # a lone backbone is a tower in a model config


def test_missing_tokenizer_is_named(hf_folders, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "clip"
    shutil.copytree(hf_folders["clip"], folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(PretrainedLoadError, match="tokenizer is missing or unreadable beside the weights"):
        load_model(folder)


def test_weights_that_do_not_fit_the_config_are_named(hf_folders, tmp_path: Path) -> None:
    import json
    import shutil

    folder = tmp_path / "clip"
    shutil.copytree(hf_folders["clip"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["projection_dim"] = 24
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PretrainedLoadError, match=r"model.safetensors: the weights do not load into a CLIPModel"):
        load_model(folder)
