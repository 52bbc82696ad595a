"""TextTransformer: shapes, causality, padding invariance, pooling, KV-cache decoding, errors."""

from __future__ import annotations

import pytest
import torch

from polymodal.errors import ConfigError
from polymodal.modules.encoders import EncoderOutput, ShapeError, TextTransformer
from polymodal.modules.transformer import KVCache, reorder_cache

VOCAB, MAXLEN, W = 50, 16, 32


def _text(causal=True, **kw):
    torch.manual_seed(0)
    return TextTransformer(VOCAB, MAXLEN, W, 2, 4, causal=causal, **kw).eval()


def _ids(b=2, t=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (b, t), generator=g)  # 0 is the pad id


@pytest.mark.parametrize("pool", ["cls", "eos", "mean"])
@pytest.mark.parametrize("output_dim", [None, 12])
def test_output_shapes_and_mask(pool, output_dim):
    model = _text(pool=pool, output_dim=output_dim)
    ids = _ids()
    ids[1, 5:] = 0
    out = model(ids)
    assert isinstance(out, EncoderOutput)
    assert out.tokens.shape == (2, 8, W) and out.tokens.dtype == torch.float32
    assert out.pooled.shape == (2, output_dim or W)
    assert out.mask.dtype == torch.bool and out.mask.tolist()[1] == [True] * 5 + [False] * 3
    assert model.output_dim == (output_dim or W)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_text_follows_model_dtype(dtype):
    model = _text(cross_attention=True, context_dim=16).to(dtype)
    out = model(_ids(), encoder_tokens=torch.randn(2, 3, 16, dtype=dtype))
    assert out.tokens.dtype == dtype and out.pooled.dtype == dtype
    assert torch.isfinite(out.tokens.float()).all()


def test_default_pool_is_eos_for_causal_and_cls_for_bidirectional():
    assert _text(causal=True).pool == "eos"
    assert _text(causal=False).pool == "cls"


def test_causal_outputs_ignore_later_tokens():
    model = _text(causal=True)
    ids = _ids()
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] % (VOCAB - 1)) + 1
    assert not torch.equal(ids, changed)
    a, b = model(ids).tokens, model(changed).tokens
    torch.testing.assert_close(a[:, :5], b[:, :5], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_bidirectional_outputs_see_later_tokens():
    model = _text(causal=False)
    ids = _ids()
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] % (VOCAB - 1)) + 1
    a, b = model(ids).tokens, model(changed).tokens
    assert not torch.allclose(a[:, 0], b[:, 0], atol=1e-4)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("pool", ["cls", "eos", "mean"])
def test_padded_tokens_do_not_change_real_outputs(causal, pool):
    model = _text(causal=causal, pool=pool, pad_id=None)
    ids = _ids()
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, 5:] = False
    out = model(ids, attention_mask=mask)
    other = ids.clone()
    other[0, 5:] = (other[0, 5:] % (VOCAB - 1)) + 1  # different garbage under the padding
    out2 = model(other, attention_mask=mask)
    torch.testing.assert_close(out.tokens[mask], out2.tokens[mask], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.pooled, out2.pooled, atol=1e-6, rtol=1e-6)
    # and the real tokens of the padded row equal those of the unpadded sequence
    alone = model(ids[:1, :5])
    torch.testing.assert_close(out.tokens[0, :5], alone.tokens[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.pooled[0], alone.pooled[0], atol=1e-5, rtol=1e-5)


def test_mask_from_pad_id_and_eos_is_last_real_token():
    model = _text(causal=True, pool="eos")
    ids = _ids()
    ids[0, 6:] = 0
    out = model(ids)
    torch.testing.assert_close(out.pooled[0], out.tokens[0, 5])
    torch.testing.assert_close(out.pooled[1], out.tokens[1, 7])


@pytest.mark.parametrize("cross", [False, True])
def test_kv_cache_incremental_decoding_equals_full_forward(cross):
    model = _text(causal=True, cross_attention=cross, context_dim=24, output_dim=8)
    ids = _ids(t=10)
    enc = torch.randn(2, 5, 24) if cross else None
    enc_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool) if cross else None
    full = model(ids, encoder_tokens=enc, encoder_mask=enc_mask)

    cache = KVCache()
    steps = [model(ids[:, :3], encoder_tokens=enc, encoder_mask=enc_mask, cache=cache)]
    for t in range(3, 10):
        steps.append(model(ids[:, t : t + 1], cache=cache))  # encoder tokens come from the cache
    logits_like = torch.cat([s.tokens for s in steps], dim=1)
    torch.testing.assert_close(logits_like, full.tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(steps[-1].pooled, full.pooled, atol=1e-5, rtol=1e-5)
    assert cache.length == 10


def test_kv_cache_with_tied_lm_head_gives_same_logits_and_beams_reorder():
    """What a captioner's generate loop does: prefill, step, reorder beams, step."""
    model = _text(causal=True, cross_attention=True)
    lm_head = lambda h: h @ model.token_embed.weight.T
    b, beams = 2, 2
    image_tokens = torch.randn(b, 4, W)
    expand = torch.arange(b).repeat_interleave(beams)
    prompt = _ids(b * beams, 3, seed=3)

    cache = KVCache()
    model(prompt, encoder_tokens=image_tokens[expand], cache=cache)
    nxt = _ids(b * beams, 1, seed=4)
    model(nxt, cache=cache)
    order = torch.tensor([1, 1, 3, 2])
    cache = reorder_cache(cache, order)
    last = _ids(b * beams, 1, seed=5)
    step_logits = lm_head(model(last, cache=cache).tokens[:, -1])

    history = torch.cat([prompt, nxt], 1)[order]
    full = model(torch.cat([history, last], 1), encoder_tokens=image_tokens[expand][order])
    torch.testing.assert_close(step_logits, lm_head(full.tokens[:, -1]), atol=1e-5, rtol=1e-5)


def test_grad_checkpointing_same_gradients():
    ids = _ids()
    enc = torch.randn(2, 3, W)

    def grads(ckpt: bool):
        model = _text(causal=True, cross_attention=True, grad_checkpointing=ckpt).train()
        out = model(ids, encoder_tokens=enc)
        (out.tokens.pow(2).mean() + out.pooled.sum()).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys() and all(g is not None for g in plain.values())
    for name in plain:
        torch.testing.assert_close(plain[name], ckpt[name], atol=1e-5, rtol=1e-5, msg=name)


def test_too_long_input_names_max_length():
    model = _text()
    with pytest.raises(ShapeError) as info:
        model(_ids(t=MAXLEN + 1))
    msg = str(info.value)
    assert "max_length=16" in msg and "input_ids" in msg and "[2, 17]" in msg
    cache = KVCache()
    model(_ids(t=MAXLEN), cache=cache)
    with pytest.raises(ShapeError, match="max_length=16.*after 16 cached tokens"):
        model(_ids(t=1), cache=cache)


def test_input_errors():
    model = _text()
    with pytest.raises(ShapeError, match=r"expected input_ids \[batch, tokens\], got \[8\]"):
        model(torch.ones(8, dtype=torch.long))
    with pytest.raises(ShapeError, match="integer input_ids"):
        model(torch.ones(2, 3))
    with pytest.raises(ShapeError, match=r"attention_mask.*\[2, 8\], got \[2, 7\]"):
        model(_ids(), attention_mask=torch.ones(2, 7))
    with pytest.raises(ConfigError, match="cross_attention=True"):
        model(_ids(), encoder_tokens=torch.randn(2, 3, W))
    cross = _text(cross_attention=True, context_dim=24)
    with pytest.raises(ShapeError, match=r"expected encoder_tokens \[2, tokens, 24\], got \[2, 3, 32\]"):
        cross(_ids(), encoder_tokens=torch.randn(2, 3, W))
    with pytest.raises(ConfigError, match="pool"):
        _text(pool="max")


@pytest.mark.parametrize("causal, pool", [(True, "eos"), (False, "cls"), (False, "eos"), (True, "mean")])
@pytest.mark.parametrize("padded", [False, True])
def test_forward_pooled_equals_forward_pooled_field(causal, pool, padded):
    """The pooled-only path (last block on the pooled token alone) gives what ``forward().pooled`` does."""
    torch.manual_seed(0)
    enc = TextTransformer(50, 12, 32, 2, 4, causal=causal, pool=pool, pad_id=0 if padded else None, output_dim=16)
    ids = torch.randint(1, 50, (4, 10))
    if padded:  # on a CPU a padded batch is packed
        ids[1, 6:] = 0
        ids[2, 3:] = 0
        ids[3, :] = 0  # an empty text
    torch.testing.assert_close(enc.forward_pooled(ids), enc(ids).pooled, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("pool", ["eos", "cls"])
def test_forward_pooled_with_a_left_padded_mask_and_a_context(pool):
    """An explicit attention_mask (left padding) and cross-attention to another modality's tokens."""
    torch.manual_seed(0)
    enc = TextTransformer(50, 12, 32, 2, 4, causal=pool == "eos", pool=pool, pad_id=None, cross_attention=True,
                          context_dim=16)
    ids = torch.randint(1, 50, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[0, :3] = 0
    context, context_mask = torch.randn(3, 5, 16), torch.tensor([[1, 1, 0, 0, 0]] + [[1] * 5] * 2)
    torch.testing.assert_close(enc.forward_pooled(ids, mask, context, context_mask),
                               enc(ids, mask, context, context_mask).pooled, atol=1e-6, rtol=1e-5)


def test_strings_foreign_ids_and_empty_rows_are_named():
    model = _text()
    with pytest.raises(ShapeError, match=r"expected input_ids as a torch.Tensor .* got str \(strings are tokenised by processors.texts"):
        model("a red cube")
    with pytest.raises(ShapeError, match=rf"token id {VOCAB + 3} is outside the vocabulary \(ids 0..{VOCAB - 1}\); were these ids made by another tokenizer"):
        model(torch.full((2, 4), VOCAB + 3))
    with pytest.raises(ShapeError, match="token id -1 is outside the vocabulary"):
        model(_ids() - _ids() - 1)
    with pytest.raises(ShapeError, match=r"at least one token per row, got input_ids \[1, 0\]"):
        model(torch.ones(1, 0, dtype=torch.long))
    model.train()  # training ids come from the run's tokenizer: no check, no read-back of the device
    with pytest.raises(IndexError):
        model(torch.full((2, 4), VOCAB + 3))
