"""Hugging Face LLaVA checkpoints load as polymodal assistants with transformers' own logits and greedy answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from polymodal.api import load_model
from polymodal.hub.llava import is_llava_folder, load_llava
from polymodal.hub.loading import PretrainedLoadError

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
WORDS = ["USER", "ASSISTANT", ":", "what", "is", "this", "?", "a", "red", "cube"]
VOCAB = {w: i for i, w in enumerate(SPECIALS + WORDS + [f"w{k}" for k in range(120 - len(SPECIALS) - len(WORDS))])}
IMAGE_ID = 120  # the last row of a 121-token embedding table
PAD, BOS, EOS = 0, 1, 2
PATCHES = (32 // 8) ** 2


def vision_config() -> object:
    return transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)


def text_config(kind: str) -> object:
    ids = {"vocab_size": 121, "pad_token_id": PAD, "bos_token_id": BOS, "eos_token_id": EOS}
    if kind == "gpt2":  # another base-model prefix (transformer.*) and learned positions
        return transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, tie_word_embeddings=False, **ids)  # transformers cannot tie it inside LLaVA
    common = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 128, **ids}
    if kind == "qwen2":  # grouped-query attention and an lm_head tied to the embeddings (wider init: greedy answers vary)
        return transformers.Qwen2Config(num_key_value_heads=1, tie_word_embeddings=True, initializer_range=0.3, **common)
    return transformers.LlamaConfig(num_key_value_heads=2, **common)


def save_tokenizer(folder: Path) -> None:
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    assert fast.convert_tokens_to_ids("<image>") == IMAGE_ID
    fast.save_pretrained(folder)


def make_llava(folder: Path, text: str = "llama", strategy: str = "default", layer: int = -2, seed: int = 0, tie: bool = False) -> Path:
    """``tie``: LlavaConfig's own tie_word_embeddings (the text config says not to tie; transformers ties anyway)."""
    torch.manual_seed(seed)
    cfg = transformers.LlavaConfig(vision_config=vision_config(), text_config=text_config(text), image_token_index=IMAGE_ID,
                                   vision_feature_select_strategy=strategy, vision_feature_layer=layer, tie_word_embeddings=tie)
    transformers.LlavaForConditionalGeneration(cfg).save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def hf_model(folder: Path) -> object:
    return transformers.LlavaForConditionalGeneration.from_pretrained(folder).eval()


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def prompt(n_tokens: int, image_tokens: int, words: tuple[int, ...] = (VOCAB["what"], VOCAB["is"], VOCAB["this"])) -> list[int]:
    """[bos] USER : <image x N> words... ASSISTANT : - image tokens expanded by hand, as transformers' processor does."""
    body = [VOCAB["USER"], VOCAB[":"]] + [IMAGE_ID] * image_tokens + list(words)[:n_tokens] + [VOCAB["ASSISTANT"], VOCAB[":"]]
    return [BOS, *body]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llava")
    return {
        "llama": make_llava(root / "llama"),
        "qwen2": make_llava(root / "qwen2", text="qwen2", seed=1),
        "gpt2": make_llava(root / "gpt2", text="gpt2", seed=2),
    }


def assert_same_logits(folder: Path, image_tokens: int, batch: int = 2) -> None:
    ref = hf_model(folder)
    ours, _ = load_llava(folder)
    ids = torch.tensor([prompt(3, image_tokens)] * batch)
    ids[1, -3] = VOCAB["red"]  # rows differ in text too
    mask = torch.ones_like(ids)
    px = pixels(batch)
    with torch.no_grad():
        want = ref(input_ids=ids, pixel_values=px, attention_mask=mask).logits
        got = ours(ids, mask, images=px).logits
    assert ours.tokens_per_image == image_tokens
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("strategy", "layer"), [("default", -2), ("full", -1), ("default", -1), ("full", -2)])
def test_logits_equal_transformers_for_each_feature_choice(tmp_path: Path, strategy: str, layer: int) -> None:
    folder = make_llava(tmp_path / "m", strategy=strategy, layer=layer)
    assert_same_logits(folder, PATCHES + (strategy == "full"))


def test_a_gpt2_language_model_loads_with_equal_logits(folders: dict[str, Path]) -> None:
    folder = folders["gpt2"]
    assert any(k.startswith("language_model.model.h.") for k in load_file(str(folder / "model.safetensors")))
    assert_same_logits(folder, PATCHES)


@pytest.mark.parametrize("where", ["qwen2_text_config", "llama_llava_config"])
def test_tied_embeddings_load_with_equal_logits(folders: dict[str, Path], tmp_path: Path, where: str) -> None:
    folder = folders["qwen2"] if where == "qwen2_text_config" else make_llava(tmp_path / "m", tie=True, seed=2)
    assert not any("lm_head" in k for k in load_file(str(folder / "model.safetensors")))  # tied: saved once
    assert_same_logits(folder, PATCHES)
    ours, _ = load_llava(folder)
    assert ours.lm.lm_head.weight is ours.lm.get_input_embeddings().weight


def _rename(folder: Path, out: Path, rename) -> Path:
    out.mkdir()
    for f in folder.iterdir():
        if f.name != "model.safetensors":
            (out / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(folder / "model.safetensors"))
    save_file({rename(k): v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _transformers5_layout(key: str) -> str:
    for old, new in (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                     ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector.")):
        if key.startswith(old):
            return new + key[len(old):]
    raise AssertionError(key)


def _hub_layout(key: str) -> str:  # llava-hf/* on the hub: CLIPVisionModel's vision_model. inside the tower
    return key.replace("vision_tower.", "vision_tower.vision_model.", 1) if key.startswith("vision_tower.") else key


@pytest.mark.parametrize("layout", [_transformers5_layout, _hub_layout], ids=["transformers5", "hub"])
def test_both_key_layouts_load(folders: dict[str, Path], tmp_path: Path, layout) -> None:
    folder = _rename(folders["llama"], tmp_path / "renamed", layout)
    assert_same_logits(folder, PATCHES)


def _hf_new_tokens(ref, ids: torch.Tensor, mask: torch.Tensor, px: torch.Tensor, steps: int) -> list[list[int]]:
    with torch.no_grad():
        out = ref.generate(input_ids=ids, attention_mask=mask, pixel_values=px, max_new_tokens=steps, do_sample=False)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        rows.append(row[: row.index(EOS)] if EOS in row else row)  # ours stop before end-of-sequence
    return rows


@pytest.mark.parametrize("text", ["llama", "qwen2", "gpt2"])
def test_greedy_generation_equals_transformers(folders: dict[str, Path], text: str) -> None:
    folder = folders[text]
    ref, (ours, _) = hf_model(folder), load_llava(folder)
    ids = prompt(3, PATCHES)
    px = pixels(1, seed=3)
    want = _hf_new_tokens(ref, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), px, 8)
    got = ours.generate([ids], px, max_new_tokens=8)
    assert len(set(want[0])) >= 3, "the random model ends at once or repeats one token; the comparison would prove little"
    assert got.sequences == want


@pytest.mark.parametrize("text", ["llama", "gpt2"])  # GPT-2's absolute positions show any position-id slip
def test_batched_prompts_of_different_lengths_equal_transformers_left_padded(folders: dict[str, Path], text: str) -> None:
    folder = folders[text]
    ref, (ours, _) = hf_model(folder), load_llava(folder)
    prompts = [prompt(3, PATCHES), prompt(1, PATCHES, words=(9,))]
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    px = pixels(2, seed=4)
    want = _hf_new_tokens(ref, ids, mask, px, 8)
    got = ours.generate(prompts, px, max_new_tokens=8)
    assert got.sequences == want
    assert got.sequences[0] != got.sequences[1]  # two real answers, not one repeated
    alone = ours.generate([prompts[1]], px[1:], max_new_tokens=8)  # padding changes nothing
    assert alone.sequences[0] == got.sequences[1]


def test_a_missing_tensor_is_named(folders: dict[str, Path], tmp_path: Path) -> None:
    src = folders["llama"]
    out = _rename(src, tmp_path / "m", lambda k: k)
    tensors = load_file(str(out / "model.safetensors"))
    del tensors["multi_modal_projector.linear_2.bias"]
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PretrainedLoadError, match=r"lack tensors.*connector\.linear_2\.bias") as err:
        load_llava(out)
    assert str(out) in str(err.value)


def test_an_extra_or_misshapen_tensor_is_named(folders: dict[str, Path], tmp_path: Path) -> None:
    out = _rename(folders["llama"], tmp_path / "m", lambda k: k)
    tensors = load_file(str(out / "model.safetensors"))
    save_file(tensors | {"multi_modal_projector.linear_3.weight": torch.zeros(2)}, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PretrainedLoadError, match=r"no part of a LLaVA model takes: multi_modal_projector\.linear_3\.weight"):
        load_llava(out)
    tensors["multi_modal_projector.linear_1.weight"] = torch.zeros(32, 31)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PretrainedLoadError, match=r"linear_1\.weight.*\[32, 31\].*\[32, 32\]"):
        load_llava(out)


def test_other_folders_are_not_routed_to_the_llava_loader(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    assert not is_llava_folder(tmp_path) and not is_llava_folder(tmp_path / "absent")
    with pytest.raises(PretrainedLoadError, match="not a LLaVA checkpoint"):
        load_llava(tmp_path)
    with pytest.raises(PretrainedLoadError) as err:  # load_model goes the usual way: CLIP needs its tokenizer
        load_model(tmp_path)
    assert "LLaVA" not in str(err.value)


def test_load_model_gives_a_chat_encoder_and_the_checkpoints_preprocessing(folders: dict[str, Path]) -> None:
    folder = folders["llama"]
    model, proc = load_model(folder)
    assert proc.model_type == "mllm" and proc.chat is not None and not model.training
    ids, n_images = proc.chat.prompt([("user", "<image>\nwhat is this?")])
    assert n_images == 1 and ids.count(IMAGE_ID) == model.tokens_per_image == PATCHES
    assert ids[0] == BOS and ids[-2:] == [VOCAB["ASSISTANT"], VOCAB[":"]]
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36, 3), dtype=np.uint8))
    want = transformers.CLIPImageProcessor.from_pretrained(folder)(images=img, return_tensors="pt")["pixel_values"]
    px = proc.images([img])
    torch.testing.assert_close(px, want)
    ref = hf_model(folder)
    hf = _hf_new_tokens(ref, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), px, 6)
    assert model.generate([ids], px, max_new_tokens=6).sequences == hf


def test_mllm_config_with_a_hugging_face_vision_tower_reads_the_chosen_layer(hf_folders, tmp_path: Path) -> None:
    """``vision: {name: hf_vision}`` + ``feature_layer: -2`` + ``drop_cls``: what LLaVA reads from CLIP."""
    from polymodal.models.factory import BuildContext, build_model
    from polymodal.models.mllm_build import load_lm_tokenizer
    from polymodal.models.tiny_lm import build_tiny_lm

    lm, _ = build_tiny_lm(["a red cube", "two spheres"] * 20, tmp_path / "lm", width=32, depth=1, heads=2, context=128, vocab_size=280, steps=0, progress=False)
    cfg = {"type": "mllm", "vision": {"name": "hf_vision", "path": str(hf_folders["clip"])}, "lm": str(lm), "feature_layer": -2, "drop_cls": True,
           "freeze": ["vision"]}
    model = build_model(cfg, BuildContext(lm_tokenizer=load_lm_tokenizer(str(lm)))).eval()
    assert model.tokens_per_image == (30 // 6) ** 2  # patches only, no [CLS]
    images = torch.randn(2, 3, 30, 30)
    hidden = model.vision.encoder.model(pixel_values=images, output_hidden_states=True).hidden_states
    torch.testing.assert_close(model.vision(images), hidden[-2][:, 1:])
    assert not torch.allclose(hidden[-2][:, 1:], hidden[-1][:, 1:])  # the layer choice matters
    assert not any(p.requires_grad for p in model.vision.parameters())
