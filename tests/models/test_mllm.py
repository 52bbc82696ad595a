"""The assistant architecture: image-token placement, assistant-only loss, connectors, KV-cached generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from polymodal.data.chat import ChatEncoder
from polymodal.errors import ConfigError
from polymodal.losses.mlm import IGNORE_INDEX
from polymodal.models.connectors import build_connector
from polymodal.models.factory import BuildContext, build_model
from polymodal.models.mllm_build import load_lm_tokenizer
from polymodal.models.tiny_lm import build_tiny_lm
from polymodal.modules.encoders.base import ShapeError

TEXTS = ["a small red cube left of a large blue sphere.", "how many cubes are there? 2", "what color is the sphere? blue"] * 30


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm_dir(request, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(f"lm_{request.param}") / "lm"
    build_tiny_lm(TEXTS, out, arch=request.param, width=32, depth=2, heads=2, context=128, vocab_size=300, steps=0, progress=False)
    return out


def _model(lm_dir: Path, connector: dict | None = None, **extra):
    torch.manual_seed(0)
    cfg = {"type": "mllm", "vision": {"name": "cnn", "image_size": 16, "channels": [8, 16], "width": 16}, "lm": str(lm_dir),
           "connector": connector or {"kind": "mlp"}} | extra
    tok = load_lm_tokenizer(str(lm_dir))
    return build_model(cfg, BuildContext(lm_tokenizer=tok)).eval(), tok


def _encoder(model, tok) -> ChatEncoder:
    return ChatEncoder(tok, model.image_token_id, model.tokens_per_image, model.max_length)


@pytest.mark.parametrize("kind,tokens", [("linear", 16), ("mlp", 16), ("qformer", 5)])
def test_connectors_map_vision_tokens_to_lm_width(kind: str, tokens: int) -> None:
    opts = {"num_queries": 5, "heads": 2} if kind == "qformer" else {}
    conn = build_connector(kind, 16, 24, **opts)
    out = conn(torch.randn(3, 16, 16))
    assert out.shape == (3, tokens, 24)
    assert conn.tokens_out(16) == tokens


def test_unknown_connector_option_names_the_connector() -> None:
    with pytest.raises(ConfigError, match="qformer"):
        build_connector("qformer", 16, 24, queries=3)
    with pytest.raises(ConfigError, match="valid: linear, mlp, qformer"):
        build_connector("perceiver", 16, 24)


def test_image_features_replace_exactly_the_image_tokens(lm_dir: Path) -> None:
    model, tok = _model(lm_dir)
    enc = _encoder(model, tok)
    ids, n = enc.prompt([("user", "<image>\nwhat is here? and <image>")])
    assert n == 2 and ids.count(model.image_token_id) == 2 * model.tokens_per_image
    images = torch.randn(2, 3, 16, 16)
    x = torch.tensor([ids])
    embeds = model.embed(x, images)
    feats = model.image_features(images).reshape(-1, embeds.shape[-1])
    slots = (x[0] == model.image_token_id).nonzero().squeeze(1)
    torch.testing.assert_close(embeds[0, slots], feats)  # in marker order: first image first
    text = (x[0] != model.image_token_id).nonzero().squeeze(1)
    torch.testing.assert_close(embeds[0, text], model.lm.get_input_embeddings()(x[0, text]))


def test_image_count_must_match_markers(lm_dir: Path) -> None:
    model, tok = _model(lm_dir)
    ids, _ = _encoder(model, tok).prompt([("user", "<image>\nwhat is here?")])
    with pytest.raises(ShapeError, match="2 images were given"):
        model.embed(torch.tensor([ids]), torch.randn(2, 3, 16, 16))
    with pytest.raises(ShapeError, match="0 images"):
        model.embed(torch.tensor([ids]), None)


def test_loss_counts_only_assistant_tokens(lm_dir: Path) -> None:
    model, tok = _model(lm_dir)
    enc = _encoder(model, tok).encode([("user", "<image>\nhow many cubes?"), ("assistant", "2"), ("user", "and spheres?"), ("assistant", "blue")])
    labelled = [i for i in enc.labels if i != IGNORE_INDEX]
    assert tok.decode(labelled).replace(" ", "") == "2</s>blue</s>"
    out = model(torch.tensor([enc.input_ids]), images=torch.randn(1, 3, 16, 16), labels=torch.tensor([enc.labels]))
    assert int(out.tokens) == len(labelled)
    # the loss is the mean over exactly those positions
    logp = out.logits[0, :-1].float().log_softmax(-1)
    target = torch.tensor(enc.labels[1:])
    keep = target != IGNORE_INDEX
    expected = -logp[keep].gather(1, target[keep].unsqueeze(1)).mean()
    torch.testing.assert_close(out.loss, expected)


def _greedy_without_cache(model, ids: list[int], images: torch.Tensor, steps: int) -> list[int]:
    seq = list(ids)
    out = []
    for _ in range(steps):
        logits = model(torch.tensor([seq]), images=images).logits[0, -1]
        tok = int(logits.argmax())
        if tok in model.eos_token_ids:
            break
        out.append(tok)
        seq.append(tok)
    return out


@pytest.mark.parametrize("connector", [{"kind": "mlp"}, {"kind": "qformer", "num_queries": 4, "heads": 2}])
def test_cached_generation_equals_full_recompute_and_batching(lm_dir: Path, connector: dict) -> None:
    model, tok = _model(lm_dir, connector)
    for p in model.lm.parameters():  # random weights give flat logits; sharpen them so argmax is stable
        p.data.mul_(3)
    enc = _encoder(model, tok)
    a, _ = enc.prompt([("user", "<image>\nhow many cubes are there?")])
    b, _ = enc.prompt([("user", "<image>\nwhat?")])
    images = torch.randn(2, 3, 16, 16)
    alone_a = model.generate([a], images[:1], max_new_tokens=6).sequences[0]
    alone_b = model.generate([b], images[1:], max_new_tokens=6).sequences[0]
    assert alone_a == _greedy_without_cache(model, a, images[:1], 6)
    assert alone_b == _greedy_without_cache(model, b, images[1:], 6)
    batched = model.generate([a, b], images, max_new_tokens=6).sequences  # b is left-padded
    assert batched == [alone_a, alone_b]


def test_stream_yields_what_generate_returns(lm_dir: Path) -> None:
    model, tok = _model(lm_dir)
    ids, _ = _encoder(model, tok).prompt([("user", "<image>\nwhat color is the sphere?")])
    images = torch.randn(1, 3, 16, 16)
    steps = list(model.stream([ids], images, max_new_tokens=5))
    streamed = [s[0] for s in steps if s[0] is not None]
    assert streamed == model.generate([ids], images, max_new_tokens=5).sequences[0]
    assert 1 <= len(steps) <= 5


def test_sampling_is_seeded(lm_dir: Path) -> None:
    model, tok = _model(lm_dir)
    ids, _ = _encoder(model, tok).prompt([("user", "<image>\nwhat?")])
    images = torch.randn(1, 3, 16, 16)

    def run(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return model.generate([ids], images, max_new_tokens=8, temperature=1.5, top_p=0.9, generator=g).sequences[0]

    assert run(1) == run(1)
    assert run(1) != run(2) or run(1) != run(3)


def test_prompt_filling_the_context_window_is_refused(lm_dir: Path) -> None:
    model, _tok = _model(lm_dir, max_length=40)
    with pytest.raises(ShapeError, match="no room"):
        model.generate([[5] * 40], None, max_new_tokens=3)
    out = model.generate([[5] * 38], None, max_new_tokens=10)
    assert len(out.sequences[0]) <= 2  # generation stops at the window


def test_max_length_beyond_the_lm_window_is_a_config_error(lm_dir: Path) -> None:
    with pytest.raises(ConfigError, match="context window"):
        _model(lm_dir, max_length=4096)


def test_freezing_and_lora_choose_what_trains(lm_dir: Path) -> None:
    model, _ = _model(lm_dir, freeze=["vision", "lm"])
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"connector"}
    pytest.importorskip("peft")
    model, _ = _model(lm_dir, freeze=["vision"], lora={"r": 4, "alpha": 8})
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in names)
    assert not any(n.startswith("lm.") and "lora_" not in n for n in names)  # the LM's own weights stay frozen
    assert not any(n.startswith("vision.") for n in names)


def test_missing_lm_folder_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.lm"):
        load_lm_tokenizer(str(tmp_path))
