"""Attention masks, the pre-LN stack, KV-cache decoding and beam reordering, gradient checkpointing."""

from __future__ import annotations

import math

import pytest
import torch

from polymodal.errors import ConfigError
from polymodal.modules.attention import (
    FAST_LOW_PRECISION_SOFTMAX_MIN_KEYS,
    LayerKV,
    MultiHeadAttention,
    Packing,
    _math_attention,
    cross_attention_mask,
    self_attention_mask,
)
from polymodal.modules.encoders.base import ShapeError
from polymodal.modules.transformer import (
    KVCache,
    LayerCache,
    Transformer,
    TransformerBlock,
    make_activation,
    reorder_cache,
    set_bf16_residual,
)

W, H = 32, 4


def _reference_attention(q, k, v, allowed):
    """Plain softmax attention; ``allowed`` [B, 1|H, T, S] bool (True = may attend)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1) @ v


def _split(x, attn):
    b, t, _ = x.shape
    q, k, v = attn.qkv(x).view(b, t, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    return q, k, v


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_reference_with_padding(causal):
    torch.manual_seed(0)
    attn = MultiHeadAttention(W, H).eval()
    x = torch.randn(3, 7, W)
    key_mask = torch.ones(3, 7, dtype=torch.bool)
    key_mask[1, 5:] = False
    key_mask[2, 2:] = False
    mask, is_causal = self_attention_mask(key_mask, 7, causal=causal)
    out = attn(x, attn_mask=mask, is_causal=is_causal)

    q, k, v = _split(x, attn)
    allowed = key_mask[:, None, None, :].expand(3, 1, 7, 7)
    if causal:
        allowed = allowed & torch.ones(7, 7, dtype=torch.bool).tril()
    ref = attn.proj(_reference_attention(q, k, v, allowed).transpose(1, 2).reshape(3, 7, W))
    real = key_mask
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("precision", ["bf16 autocast", "fp16 tensors"])
@pytest.mark.parametrize("keys", [5, FAST_LOW_PRECISION_SOFTMAX_MIN_KEYS + 8])  # softmax upcast to float32 / kept low
@pytest.mark.parametrize("masking", ["none", "padding", "causal", "additive"])
def test_training_attention_in_low_precision_matches_float64(keys, masking, precision):
    """The CPU training attention (scores scaled and masked in one add, short rows softmaxed in float32)
    against float64, values and gradients, in every masking form it takes."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, keys, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    allowed = torch.ones(2, 1, keys, keys, dtype=torch.bool)
    if masking in ("padding", "additive"):
        allowed[0, :, :, keys // 2 :] = False
    if masking == "causal":
        allowed &= torch.ones(keys, keys, dtype=torch.bool).tril()
    attn_mask = {"none": None, "causal": None, "padding": allowed, "additive": torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))}[masking]

    if precision == "fp16 tensors":
        out = _math_attention(q.half(), k.half(), v.half(), attn_mask, masking == "causal", 0.0)
        assert out.dtype == torch.float16
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = _math_attention(q.float(), k.float(), v.float(), attn_mask, masking == "causal", 0.0)
        assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    ref = _reference_attention(q, k, v, allowed)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=3e-2)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=0.1, rtol=5e-2)


def test_packing_round_trip_and_its_gradients():
    """pad puts the real tokens back in place with exact zeros at the padding; pack and pad are each
    other's gradient, to first and second order."""
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    packing = Packing(mask)
    x = torch.randn(int(mask.sum()), 3, dtype=torch.float64, requires_grad=True)
    padded = packing.pad(x)
    assert padded.shape == (3, 4, 3)
    assert padded[~mask].abs().max() == 0
    assert torch.equal(padded[mask], x)
    assert torch.equal(packing.pack(padded), x)
    assert torch.autograd.gradcheck(packing.pad, (x,))
    assert torch.autograd.gradgradcheck(packing.pad, (x,))
    y = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(packing.pack, (y,))
    assert torch.autograd.gradgradcheck(packing.pack, (y,))


def test_packing_rounds_its_length_up_with_padding_fillers_that_unpack_drops():
    """A bucketed packing carries padding positions along as fillers (so batches repeat shapes); the
    stack's output, unpacked, has exact zeros at every padding position all the same."""
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    packing = Packing(mask, bucket=4)
    assert (packing.real, len(packing.index)) == (7, 8)
    assert mask.reshape(-1)[packing.index[7:]].logical_not().all()  # the filler is a padding position
    assert len(Packing(mask, bucket=64).index) == 15  # never more than every position
    x = torch.randn(3, 5, 2, dtype=torch.float64, requires_grad=True)
    packed = packing.pack(x)
    assert packed.shape == (8, 2)
    out = packing.unpack(packed * 2)
    assert out[~mask].abs().max() == 0 and torch.equal(out[mask], 2 * x[mask])
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, 2.0 * mask[..., None].expand_as(x))  # nothing flows to padding or fillers


def test_causal_without_padding_uses_sdpa_is_causal_fast_path():
    mask, is_causal = self_attention_mask(None, 5, causal=True)
    assert mask is None and is_causal is True
    # With cached keys the top-left aligned SDPA causal mask would be wrong: an explicit mask is built.
    mask, is_causal = self_attention_mask(None, 3, causal=True, past_len=4)
    assert is_causal is False and mask is not None
    assert mask.tolist()[0] == [True] * 5 + [False] * 2
    # A single new token sees everything cached: no mask at all.
    assert self_attention_mask(None, 1, causal=True, past_len=4) == (None, False)


def test_fully_masked_rows_do_not_produce_nan():
    """Left padding + causal and all-padding sequences: no NaN anywhere, real tokens unaffected."""
    torch.manual_seed(0)
    stack = Transformer(W, 2, H, causal=True).eval()
    x = torch.randn(2, 6, W)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    out = stack(x, mask=mask)
    assert torch.isfinite(out).all()
    # The real tokens of row 0 equal those of the same sequence without its left padding
    # (position embeddings live outside the stack, so the stack alone is shift-invariant).
    alone = stack(x[:1, 2:])
    torch.testing.assert_close(out[0, 2:], alone[0], atol=1e-5, rtol=1e-5)
    ctx_mask = cross_attention_mask(torch.zeros(1, 3, dtype=torch.bool))
    assert ctx_mask is not None and ctx_mask.all()


def test_cross_attention_ignores_padded_context():
    torch.manual_seed(0)
    attn = MultiHeadAttention(W, H, cross=True, kv_dim=24).eval()
    x, ctx = torch.randn(2, 4, W), torch.randn(2, 5, 24)
    ctx_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = attn(x, ctx, attn_mask=cross_attention_mask(ctx_mask))
    ctx2 = ctx.clone()
    ctx2[0, 3:] = 100.0
    out2 = attn(x, ctx2, attn_mask=cross_attention_mask(ctx_mask))
    torch.testing.assert_close(out, out2, atol=1e-6, rtol=1e-6)
    ctx2[1, 4] = 100.0  # a real context token: must matter
    assert not torch.allclose(attn(x, ctx2, attn_mask=cross_attention_mask(ctx_mask))[1], out[1])


def test_cross_attention_without_context_or_cache_is_an_error():
    attn = MultiHeadAttention(W, H, cross=True)
    with pytest.raises(ValueError, match="context"):
        attn(torch.randn(1, 2, W))
    with pytest.raises(ConfigError, match="divisible"):
        MultiHeadAttention(30, 4)


def _decode_incrementally(stack, x, chunks, mask=None, context=None, context_mask=None):
    cache = KVCache()
    outs, start = [], 0
    for i, size in enumerate(chunks):
        kw = {"context": context, "context_mask": context_mask} if i == 0 else {}
        m = None if mask is None else mask[:, start : start + size]
        outs.append(stack(x[:, start : start + size], mask=m, cache=cache, **kw))
        start += size
    return torch.cat(outs, dim=1), cache


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_kv_cache_incremental_equals_full_forward(cross, padded):
    torch.manual_seed(0)
    stack = Transformer(W, 3, H, causal=True, cross_attention=cross, context_dim=16).eval()
    x = torch.randn(2, 9, W)
    context = torch.randn(2, 5, 16) if cross else None
    context_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool) if cross else None
    mask = None
    if padded:
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[0, :2] = False  # left padding in the prompt
    full = stack(x, mask=mask, context=context, context_mask=context_mask)
    inc, cache = _decode_incrementally(stack, x, [4, 1, 1, 3], mask, context, context_mask)
    real = torch.ones(2, 9, dtype=torch.bool) if mask is None else mask  # padding outputs are unspecified
    torch.testing.assert_close(inc[real], full[real], atol=1e-5, rtol=1e-5)
    assert cache.length == 9
    if cross:  # the context's keys/values are projected once and cached
        assert cache.layers[0].cross_attn.k.shape == (2, H, 5, W // H)


def test_cross_attention_stack_really_uses_the_context():
    torch.manual_seed(0)
    stack = Transformer(W, 2, H, causal=True, cross_attention=True).eval()
    x, ctx = torch.randn(1, 4, W), torch.randn(1, 3, W)
    assert not torch.allclose(stack(x, context=ctx), stack(x, context=ctx + 1.0))
    # Without a context the cross-attention sub-layers are skipped (text-only mode).
    assert torch.isfinite(stack(x)).all()


def test_reorder_cache_equals_recomputed_cache():
    torch.manual_seed(0)
    stack = Transformer(W, 2, H, causal=True, cross_attention=True).eval()
    b, beams = 2, 3
    context = torch.randn(b, 4, W)
    expand = torch.arange(b).repeat_interleave(beams)
    prefix = torch.randn(b * beams, 5, W)  # each beam already has its own history

    cache = KVCache()
    stack(prefix[:, :1], context=context[expand], cache=cache)
    for i in range(1, 5):
        stack(prefix[:, i : i + 1], cache=cache)
    beam_indices = torch.tensor([2, 0, 0, 4, 5, 3])  # survivors, staying within each example
    reordered = reorder_cache(cache, beam_indices)
    step = torch.randn(b * beams, 1, W)
    got = stack(step, cache=reordered)

    fresh = KVCache()
    stack(prefix[beam_indices], context=context[expand][beam_indices], cache=fresh)
    want = stack(step, cache=fresh)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # and equal to a full forward over the reordered histories
    full = stack(torch.cat([prefix[beam_indices], step], 1), context=context[expand][beam_indices])
    torch.testing.assert_close(got[:, 0], full[:, -1], atol=1e-5, rtol=1e-5)
    assert reordered is not cache and cache.layers[0].self_attn.k.shape[0] == b * beams


def test_reorder_cache_keeps_masks_in_step():
    cache = KVCache(
        layers=[],
        key_mask=torch.tensor([[1, 0], [1, 1]], dtype=torch.bool),
        context_mask=torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool),
    )
    out = reorder_cache(cache, torch.tensor([1, 1]))
    assert out.key_mask.tolist() == [[True, True], [True, True]]
    assert out.context_mask.tolist() == [[True, False, False], [True, False, False]]
    assert LayerKV().index_select(torch.tensor([0])).k is None


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    stack = Transformer(W, 3, H, causal=True, cross_attention=True)
    x, ctx = torch.randn(2, 6, W), torch.randn(2, 3, W)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool)

    def grads(ckpt: bool):
        stack.zero_grad()
        stack.grad_checkpointing = ckpt
        stack(x, mask=mask, context=ctx).pow(2).mean().backward()
        return [p.grad.clone() for p in stack.parameters()]

    plain, ckpt = grads(False), grads(True)
    assert len(plain) == len(ckpt) > 0
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_block_and_stack_shapes_and_errors():
    block = TransformerBlock(W, H, mlp_ratio=2.0)
    assert block(torch.randn(2, 3, W)).shape == (2, 3, W)
    assert block.mlp.fc.out_features == 2 * W
    stack = Transformer(W, 2, H)
    with pytest.raises(ShapeError, match=r"mask \[2, 3\], got \[2, 4\]"):
        stack(torch.randn(2, 3, W), mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="layers"):
        stack(torch.randn(1, 1, W), cache=KVCache(layers=[LayerCache()]))  # wrong depth
    with pytest.raises(ConfigError, match="depth"):
        Transformer(W, 0, H)


def test_qkv_is_one_fused_projection():
    attn = MultiHeadAttention(W, H)
    linears = [m for m in attn.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(3 * W, W), (W, W)]


def test_activation_choices():
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(make_activation("quick_gelu")(x), x * torch.sigmoid(1.702 * x))
    torch.testing.assert_close(make_activation("gelu")(x), torch.nn.functional.gelu(x))
    block = TransformerBlock(W, H, activation="gelu_tanh")
    assert block.mlp.act.approximate == "tanh"
    with pytest.raises(ConfigError, match="activation"):
        make_activation("relu6")


@pytest.mark.parametrize("causal, cross", [(False, False), (True, False), (False, True), (True, True)])
def test_packed_training_forward_equals_the_padded_one_on_real_tokens(causal, cross, monkeypatch):
    """CPU training packs the real tokens (no compute on padding); values and gradients must not change."""
    from polymodal.modules import attention, transformer

    torch.manual_seed(0)
    stack = Transformer(W, 2, H, causal=causal, cross_attention=cross, context_dim=16)
    x = torch.randn(4, 9, W, requires_grad=True)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    mask[3, :] = False  # an all-padding row
    context = torch.randn(4, 5, 16) if cross else None
    context_mask = torch.tensor([[1, 1, 1, 0, 0]] + [[1] * 5] * 3, dtype=torch.bool) if cross else None
    packs = []
    monkeypatch.setattr(attention.Packing, "__init__", _recording(attention.Packing.__init__, packs))

    packed = stack(x, mask=mask, context=context, context_mask=context_mask)
    (grad_packed,) = torch.autograd.grad((packed * mask[..., None]).square().sum(), x)
    assert len(packs) == 1, "a padded CPU training batch is packed"
    assert packed[~mask].abs().max() == 0  # padding comes back as zeros

    monkeypatch.setattr(transformer, "PACK_MAX_REAL_FRACTION", -1.0)  # never pack
    padded = stack(x, mask=mask, context=context, context_mask=context_mask)
    (grad_padded,) = torch.autograd.grad((padded * mask[..., None]).square().sum(), x)
    assert len(packs) == 1
    torch.testing.assert_close(packed[mask], padded[mask], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad_packed, grad_padded, atol=1e-6, rtol=1e-5)


def test_packing_is_skipped_without_enough_padding_or_with_a_cache(monkeypatch):
    from polymodal.modules import attention

    packs = []
    monkeypatch.setattr(attention.Packing, "__init__", _recording(attention.Packing.__init__, packs))
    stack = Transformer(W, 1, H, causal=True)
    x = torch.randn(2, 20, W)
    almost_full = torch.ones(2, 20, dtype=torch.bool)
    almost_full[0, -1] = False  # 97.5% real: packing would cost more than it saves
    stack(x, mask=almost_full)
    half = torch.ones(2, 20, dtype=torch.bool)
    half[:, 10:] = False
    with torch.no_grad():
        stack(x, mask=half, cache=KVCache())  # incremental decoding keeps the padded layout
    assert packs == []


@pytest.mark.parametrize("cross", [False, True])
def test_inference_packs_too_and_equals_the_padded_forward(cross, monkeypatch):
    """Without gradients (embedding a gallery, evaluation) the stack packs as well, attending with SDPA."""
    from polymodal.modules import attention, transformer

    packs = []
    monkeypatch.setattr(attention.Packing, "__init__", _recording(attention.Packing.__init__, packs))
    torch.manual_seed(0)
    stack = Transformer(W, 2, H, cross_attention=cross, context_dim=16).eval()
    x = torch.randn(4, 9, W)
    mask = torch.arange(9)[None] < torch.tensor([9, 3, 5, 2])[:, None]
    kwargs = {"context": torch.randn(4, 6, 16)} if cross else {}
    with torch.no_grad():
        packed = stack(x, mask=mask, **kwargs)
        assert len(packs) == 1
        monkeypatch.setattr(transformer, "PACK_MAX_REAL_FRACTION", -1.0)  # never pack
        padded = stack(x, mask=mask, **kwargs)
    assert packed[~mask].abs().max() == 0
    torch.testing.assert_close(packed[mask], padded[mask], atol=1e-5, rtol=1e-5)


def _recording(init, calls):
    def wrapped(self, mask, **kwargs):
        calls.append(tuple(mask.shape))
        init(self, mask, **kwargs)

    return wrapped


@pytest.mark.parametrize("bucket", [3, 64])  # some padding as fillers, or all of it
def test_a_bucketed_stack_equals_the_padded_one(bucket, monkeypatch):
    """Fillers (padding carried along to round the packed length) change nothing: the real tokens'
    values and every gradient match the padded stack's, with grouped cross-attention too."""
    from polymodal.modules import transformer

    torch.manual_seed(0)
    stack = Transformer(W, 2, H, cross_attention=True, context_dim=16)
    x = torch.randn(6, 7, W, requires_grad=True)
    mask = torch.arange(7)[None] < torch.tensor([7, 2, 5, 3, 1, 4])[:, None]
    context = torch.randn(3, 6, 16, requires_grad=True)
    rows = torch.tensor([0, 0, 1, 1, 2, 2])

    def run():
        out = stack(x, mask=mask, context=context, context_rows=rows)
        return out, torch.autograd.grad((out * mask[..., None]).square().sum(), [x, context, stack.blocks[1].attn.qkv.weight])

    monkeypatch.setattr(transformer, "PACK_BUCKET", bucket)
    packed, packed_grads = run()
    monkeypatch.setattr(transformer, "PACK_MAX_REAL_FRACTION", -1.0)  # never pack
    padded, padded_grads = run()
    assert packed[~mask].abs().max() == 0
    torch.testing.assert_close(packed[mask], padded[mask], atol=1e-6, rtol=1e-5)
    for a, b in zip(packed_grads, padded_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("pack", "rows", "grouped"),
    [
        (True, [0, 0, 1, 1, 0], True),  # packed: the texts' queries are stacked per context
        (True, [2, 0, 2, 0, 2], True),  # in any order, with a context no text reads
        (True, [0, 0, 0, 0, 1], False),  # too uneven to stack (3 contexts x 4 > 2 x 5 rows): keys and values picked per row
        (False, [0, 0, 1, 1, 0], False),
    ],
)
def test_context_rows_equal_a_repeated_context(pack, rows, grouped, monkeypatch):
    """Texts that share an image read it through ``context_rows`` instead of a repeated copy: values and
    gradients (to the texts, the shared context and the weights) are those of the repeated context,
    packed or not, grouped by context or not, with a context mask."""
    from polymodal.modules import attention, transformer

    if not pack:
        monkeypatch.setattr(transformer, "PACK_MAX_REAL_FRACTION", -1.0)
    groups = []
    init = attention.ContextGroups.__init__
    monkeypatch.setattr(attention.ContextGroups, "__init__", lambda self, *a: groups.append(a[1].tolist()) or init(self, *a))
    torch.manual_seed(0)
    stack = Transformer(W, 2, H, cross_attention=True, context_dim=16)
    x = torch.randn(5, 7, W, requires_grad=True)
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    mask[4, 4:] = False  # 24 of 35 real: padded enough for training to pack
    context = torch.randn(3, 6, 16, requires_grad=True)
    context_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6, [0, 1, 1, 0, 1, 1]], dtype=torch.bool)
    rows = torch.tensor(rows)

    def run(**kwargs):
        out = stack(x, mask=mask, **kwargs)
        loss = (out * mask[..., None]).square().sum()
        return out, torch.autograd.grad(loss, [x, context, stack.blocks[0].cross_attn.kv.weight])

    shared, shared_grads = run(context=context, context_mask=context_mask, context_rows=rows)
    assert groups == ([rows.tolist()] if grouped else [])
    repeated, repeated_grads = run(context=context[rows], context_mask=context_mask[rows])
    torch.testing.assert_close(shared[mask], repeated[mask], atol=1e-6, rtol=1e-5)
    for a, b in zip(shared_grads, repeated_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"context_rows must index the context's 3 entries once per row of x \(5\)"):
        stack(x, mask=mask, context=context, context_rows=torch.tensor([0, 1, 3, 0, 0]))
    with pytest.raises(ValueError, match="context_rows must index"):
        stack(x, mask=mask, context=context, context_rows=rows[:3])


@pytest.mark.parametrize("causal, padded, cross, pack", [
    (False, False, False, False),
    (True, False, False, False),
    (True, True, False, False),
    (False, True, False, False),
    (True, True, True, False),
    (True, True, False, True),
    (False, True, False, True),
    (True, True, True, True),
    (False, False, True, False),
])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_positions_give_the_full_stacks_rows_and_gradients(causal, padded, cross, pack, checkpointing, monkeypatch):
    """A stack asked for one token per row (what an encoder pools) must return exactly those rows of the
    full forward, with the same gradients, though its last block computes nothing else."""
    from polymodal.modules import transformer

    if not pack:
        monkeypatch.setattr(transformer, "PACK_MAX_REAL_FRACTION", -1.0)
    torch.manual_seed(0)
    stack = Transformer(W, 3, H, causal=causal, cross_attention=cross, context_dim=16,
                        grad_checkpointing=checkpointing)
    x = torch.randn(4, 9, W, requires_grad=True)
    mask = None
    positions = torch.tensor([8, 3, 0, 5])
    if padded:
        mask = torch.ones(4, 9, dtype=torch.bool)
        mask[1, 4:] = False  # right padding: its last real token is 3
        mask[3, :2] = False  # left padding
        mask[2, :] = False  # an all-padding row (position 0 is padding; a packed stack gives zeros there)
    context = torch.randn(4, 5, 16) if cross else None
    context_mask = torch.tensor([[1, 1, 1, 0, 0]] + [[1] * 5] * 3, dtype=torch.bool) if cross else None
    rows = stack(x, mask=mask, context=context, context_mask=context_mask, positions=positions)
    full = stack(x, mask=mask, context=context, context_mask=context_mask)
    assert rows.shape == (4, 1, W)
    expected = full[torch.arange(4), positions].unsqueeze(1)
    torch.testing.assert_close(rows, expected, atol=1e-6, rtol=1e-5)
    weights = torch.randn(4, 1, W)
    grads = torch.autograd.grad((rows * weights).sum(), [x, *stack.parameters()], allow_unused=True)
    grads_full = torch.autograd.grad((expected * weights).sum(), [x, *stack.parameters()], allow_unused=True)
    for name, a, b in zip(["x", *(n for n, _ in stack.named_parameters())], grads, grads_full):
        if b is None or (not b.abs().any() and a is None):
            continue
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_positions_last_block_runs_one_token_per_row():
    """The saving is real: the last block's MLP sees B tokens, the others B * T."""
    torch.manual_seed(0)
    stack = Transformer(W, 2, H)
    seen = []
    for block in stack.blocks:
        block.mlp.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape)))
    stack(torch.randn(3, 7, W), positions=torch.zeros(3, dtype=torch.long))
    assert seen == [(3, 7, W), (3, 1, W)]
    with pytest.raises(ValueError, match="one index per row"):
        stack(torch.randn(3, 7, W), positions=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="no cache"):
        stack(torch.randn(3, 7, W), positions=torch.zeros(3, dtype=torch.long), cache=KVCache())


@pytest.mark.parametrize("pack", [False, True])
def test_positions_with_shared_contexts_equal_the_full_stack(pack, monkeypatch):
    """Rows that cross-attend to shared contexts (``context_rows``; packed: grouped by context) give the
    full stack's rows too, the last block's context mask picked per row."""
    from polymodal.modules import attention, transformer

    if not pack:
        monkeypatch.setattr(transformer, "PACK_MAX_REAL_FRACTION", -1.0)
    packs = []
    monkeypatch.setattr(attention.Packing, "__init__", _recording(attention.Packing.__init__, packs))
    torch.manual_seed(0)
    stack = Transformer(W, 2, H, causal=True, cross_attention=True, context_dim=16)
    x = torch.randn(5, 8, W)
    mask = torch.ones(5, 8, dtype=torch.bool)
    mask[0, 5:] = False
    mask[3, 2:] = False
    mask[4, 1:] = False  # 24 of 40 real: padded enough for training to pack
    context = torch.randn(2, 6, 16)
    context_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    context_rows = torch.tensor([0, 1, 0, 1, 0])
    positions = torch.tensor([4, 7, 7, 1, 0])
    kwargs = {"mask": mask, "context": context, "context_mask": context_mask, "context_rows": context_rows}
    rows = stack(x, positions=positions, **kwargs)
    full = stack(x, **kwargs)
    assert len(packs) == (2 if pack else 0)
    torch.testing.assert_close(rows, full[torch.arange(5), positions].unsqueeze(1), atol=1e-6, rtol=1e-5)


def test_positions_keep_the_last_blocks_hooks_and_wrapped_projections():
    """A hook on the last block sees its full output (the shortcut steps aside); a wrapped fused qkv
    (adapters, quantisation) is called as a module, not read as a weight."""
    torch.manual_seed(0)
    stack = Transformer(W, 2, H, causal=True)
    x, positions = torch.randn(3, 6, W), torch.tensor([5, 2, 0])
    expected = stack(x)[torch.arange(3), positions].unsqueeze(1)
    seen = []
    handle = stack.blocks[-1].register_forward_hook(lambda m, inp, out: seen.append(tuple(out.shape)))
    torch.testing.assert_close(stack(x, positions=positions), expected)
    assert seen == [(3, 6, W)]
    handle.remove()
    attn = stack.blocks[-1].attn
    attn.qkv = torch.nn.Sequential(attn.qkv)  # no longer an nn.Linear with a .weight
    torch.testing.assert_close(stack(x, positions=positions), expected, atol=1e-6, rtol=1e-5)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize("padded, pack", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("pooled", [False, True])
def test_bf16_residual_keeps_the_stream_in_bf16_and_close_to_autocasts(padded, pack, pooled, monkeypatch):
    """Under bf16 autocast the sums between blocks stay bf16 (every block's LayerNorm reads bf16), and
    outputs and gradients stay within bf16 rounding of autocast's fp32 stream."""
    from polymodal.modules import attention, transformer

    if not pack:
        monkeypatch.setattr(transformer, "PACK_MAX_REAL_FRACTION", -1.0)
    packs = []
    monkeypatch.setattr(attention.Packing, "__init__", _recording(attention.Packing.__init__, packs))
    torch.manual_seed(0)
    stack = Transformer(W, 3, H, causal=True, activation="quick_gelu")
    read: list[torch.dtype] = []
    for block in stack.blocks:
        block.ln_1.register_forward_hook(lambda m, inp, out: read.append(inp[0].dtype))
    x = torch.randn(4, 9, W, requires_grad=True)
    mask = None
    if padded:
        mask = torch.ones(4, 9, dtype=torch.bool)
        mask[1, 4:] = False
        mask[2, 3:] = False
        mask[3, 6:] = False  # 22 of 36 real: padded enough for training to pack
    positions = torch.tensor([8, 3, 0, 5]) if pooled else None
    weights = torch.randn(4, 1 if pooled else 9, W)

    def run(enabled: bool):
        assert set_bf16_residual(stack, enabled) == 1
        read.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = stack(x, mask=mask, positions=positions)
        grads = torch.autograd.grad((out.float() * weights).sum(), [x, *stack.parameters()])
        return out, list(read), grads

    fp32_out, fp32_read, fp32_grads = run(False)
    out, bf16_read, grads = run(True)
    assert len(packs) == (2 if pack else 0)
    assert fp32_read == [torch.float32] * 3 and fp32_out.dtype == torch.float32
    assert bf16_read == [torch.bfloat16] * 3 and out.dtype == torch.float32  # the stack returns what it was given
    real = (slice(None),) if mask is None or pooled else (mask,)
    assert _relative_error(out[real], fp32_out[real]) < 2e-2
    names = ["x", *(n for n, _ in stack.named_parameters())]
    for name, a, b in zip(names, grads, fp32_grads):
        assert a.dtype == b.dtype, name
        if b.abs().any():
            assert _relative_error(a, b) < 5e-2, name


def test_bf16_residual_changes_nothing_outside_bf16_autocast():
    torch.manual_seed(0)
    stack = Transformer(W, 2, H)
    x = torch.randn(2, 5, W)
    with torch.no_grad():
        plain = stack(x)
        set_bf16_residual(stack)
        assert stack.bf16_residual
        torch.testing.assert_close(stack(x), plain, atol=0, rtol=0)  # fp32: not autocast
        with torch.autocast("cpu", dtype=torch.float16):  # fp16 sums could overflow: left alone
            fp16 = stack(x)
        set_bf16_residual(stack, False)
        with torch.autocast("cpu", dtype=torch.float16):
            torch.testing.assert_close(fp16, stack(x), atol=0, rtol=0)
    assert fp16.dtype == torch.float32


def test_set_bf16_residual_reaches_every_stack_of_a_model():
    from polymodal.models.dual_encoder import DualEncoder
    from polymodal.modules.encoders.text import TextTransformer
    from polymodal.modules.encoders.vision import VisionTransformer

    model = DualEncoder(VisionTransformer(32, 8, W, 1, H), TextTransformer(100, 16, W, 1, H, causal=True), 16)
    assert set_bf16_residual(model) == 2
    assert all(m.bf16_residual for m in model.modules() if isinstance(m, Transformer))
    assert set_bf16_residual(torch.nn.Linear(2, 2)) == 0
