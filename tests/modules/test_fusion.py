"""Fusion catalogue: one interface, order-independent, and each op equal to its paper's formula."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from polymodal.errors import PolymodalError
from polymodal.modules.fusion import (
    FUSIONS,
    ConcatFusion,
    CrossAttentionFusion,
    FusionConfigError,
    FusionInputError,
    GatedFusion,
    LowRankTensorFusion,
    TensorFusion,
    TuckerFusion,
    WeightedSumFusion,
    build_fusion,
)

DIMS = {"image": 6, "text": 4}
OUT = 8
BATCH = 3
OPTIONS: dict[str, dict[str, Any]] = {"cross_attention": {"query": "text", "num_heads": 2}}


def _inputs(
    dims: dict[str, int], batch: int = BATCH, seed: int = 0, dtype=torch.float32
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, d, generator=g, dtype=dtype) for m, d in sorted(dims.items())}


def _build(name: str, dims: dict[str, int], seed: int = 0):
    torch.manual_seed(seed)
    return build_fusion(name, dims, OUT, **OPTIONS.get(name, {})).eval()


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_output_shape_dtype_and_out_dim(name: str) -> None:
    fusion = _build(name, DIMS)
    out = fusion(_inputs(DIMS))
    assert out.shape == (BATCH, OUT) and fusion.out_dim == OUT
    assert out.dtype == torch.float32
    wide = fusion.double()(_inputs(DIMS, dtype=torch.float64))
    assert wide.dtype == torch.float64


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_input_dict_order_does_not_matter(name: str) -> None:
    fusion = _build(name, DIMS)
    x = _inputs(DIMS)
    forward = fusion({"image": x["image"], "text": x["text"]})
    backward = fusion({"text": x["text"], "image": x["image"]})
    assert torch.equal(forward, backward)
    # The constructor's dict order does not matter either: same seed -> same parameters -> same output.
    reordered = _build(name, {"text": 4, "image": 6})
    assert torch.equal(reordered(x), forward)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_every_modality_reaches_the_output(name: str) -> None:
    dims = {"audio": 3, "image": 6, "text": 4}
    fusion = _build(name, dims)
    x = {m: t.requires_grad_(True) for m, t in _inputs(dims).items()}
    fusion(x).sum().backward()
    for modality, tensor in x.items():
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0, modality


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_missing_and_unexpected_modality_errors(name: str) -> None:
    fusion = _build(name, DIMS)
    x = _inputs(DIMS)
    with pytest.raises(
        FusionInputError,
        match=rf"fusion '{name}': modality 'text' missing; expected keys \['image', 'text'\]",
    ):
        fusion({"image": x["image"]})
    with pytest.raises(FusionInputError, match=rf"fusion '{name}': unexpected modality 'audio'"):
        fusion({**x, "audio": torch.randn(BATCH, 2)})


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_wrong_shape_error_names_modality_and_expected_shape(name: str) -> None:
    fusion = _build(name, DIMS)
    x = _inputs(DIMS)
    with pytest.raises(
        PolymodalError,
        match=r"modality 'text': expected \[batch, (tokens, 4\] or \[batch, )?4\], got \[3, 5\]",
    ):
        fusion({"image": x["image"], "text": torch.randn(BATCH, 5)})
    with pytest.raises(FusionInputError, match="modality 'text' has batch 2 but 'image' has batch 3"):
        fusion({"image": x["image"], "text": torch.randn(2, 4)})
    with pytest.raises(FusionInputError, match="floating-point"):
        fusion({"image": x["image"], "text": torch.zeros(BATCH, 4, dtype=torch.long)})


def test_vector_ops_hint_at_pooling_for_token_sequences() -> None:
    fusion = ConcatFusion(DIMS, OUT)
    with pytest.raises(
        FusionInputError, match=r"expected \[batch, 4\], got \[3, 7, 4\] \(pool the token sequence"
    ):
        fusion({"image": torch.randn(BATCH, 6), "text": torch.randn(BATCH, 7, 4)})


# -- explicit formulas ----------------------------------------------------------------------------


def test_concat_without_projection_is_plain_concatenation() -> None:
    fusion = ConcatFusion(DIMS)
    x = _inputs(DIMS)
    assert fusion.out_dim == 10
    assert torch.equal(
        fusion({"text": x["text"], "image": x["image"]}), torch.cat([x["image"], x["text"]], 1)
    )


def test_weighted_sum_starts_as_mean_of_projections() -> None:
    fusion = WeightedSumFusion(DIMS, OUT)
    x = _inputs(DIMS)
    expected = (fusion.proj["image"](x["image"]) + fusion.proj["text"](x["text"])) / 2
    torch.testing.assert_close(fusion(x), expected)
    assert fusion.modality_weights() == pytest.approx({"image": 0.5, "text": 0.5})


def test_gated_two_modalities_is_gmu() -> None:
    fusion = GatedFusion(DIMS, OUT)
    x = _inputs(DIMS)
    z = torch.sigmoid(fusion.gate(torch.cat([x["image"], x["text"]], 1)))
    expected = z * torch.tanh(fusion.proj["image"](x["image"])) + (1 - z) * torch.tanh(
        fusion.proj["text"](x["text"])
    )
    torch.testing.assert_close(fusion(x), expected)


def test_tensor_fusion_equals_explicit_outer_product() -> None:
    dims = {"a": 2, "b": 3}
    fusion = TensorFusion(dims, 5).double()
    x = _inputs(dims, batch=2, dtype=torch.float64)
    za = torch.cat([x["a"], torch.ones(2, 1, dtype=torch.float64)], 1)
    zb = torch.cat([x["b"], torch.ones(2, 1, dtype=torch.float64)], 1)
    flat = torch.empty(2, 3 * 4, dtype=torch.float64)
    for n in range(2):
        for i in range(3):
            for j in range(4):
                flat[n, i * 4 + j] = za[n, i] * zb[n, j]
    torch.testing.assert_close(fusion.fused(x), flat)
    torch.testing.assert_close(fusion(x), flat @ fusion.head.weight.T + fusion.head.bias)

    dims3 = {"a": 2, "b": 3, "c": 1}
    fusion3 = TensorFusion(dims3, 5).double()
    x3 = _inputs(dims3, batch=2, dtype=torch.float64)
    z = {m: torch.cat([t, torch.ones(2, 1, dtype=torch.float64)], 1) for m, t in x3.items()}
    outer = torch.einsum("ni,nj,nk->nijk", z["a"], z["b"], z["c"]).reshape(2, -1)
    torch.testing.assert_close(fusion3(x3), outer @ fusion3.head.weight.T + fusion3.head.bias)


def test_low_rank_tensor_fusion_equals_explicit_formula() -> None:
    dims = {"a": 2, "b": 3, "c": 4}
    fusion = LowRankTensorFusion(dims, 5, rank=3).double()
    with torch.no_grad():
        fusion.bias.normal_()
    x = _inputs(dims, batch=2, dtype=torch.float64)
    z = {m: torch.cat([t, torch.ones(2, 1, dtype=torch.float64)], 1) for m, t in x.items()}
    expected = torch.zeros(2, 5, dtype=torch.float64)
    for r in range(3):
        term = torch.ones(2, 5, dtype=torch.float64)
        for m in dims:
            term = term * (z[m] @ fusion.factors[m][r])
        expected += term
    torch.testing.assert_close(fusion(x), expected + fusion.bias)


def test_low_rank_equals_tensor_fusion_with_cp_weight() -> None:
    """LMF with rank R is TFN whose weight tensor is the sum of R outer products of the factors."""
    dims = {"a": 2, "b": 3}
    lmf = LowRankTensorFusion(dims, 4, rank=2).double()
    x = _inputs(dims, batch=3, dtype=torch.float64)
    weight = torch.einsum("rio,rjo->ijo", lmf.factors["a"], lmf.factors["b"]).reshape(-1, 4)
    tfn = TensorFusion(dims, 4).double()
    torch.testing.assert_close(lmf(x), tfn.fused(x) @ weight + lmf.bias)


def test_tucker_equals_explicit_bilinear_form() -> None:
    fusion = TuckerFusion(DIMS, 5, proj_dim=3).double()
    x = _inputs(DIMS, dtype=torch.float64)
    p = torch.tanh(fusion.proj["image"](x["image"]))
    q = torch.tanh(fusion.proj["text"](x["text"]))
    expected = torch.zeros(BATCH, 5, dtype=torch.float64)
    for i in range(3):
        for j in range(3):
            expected += p[:, i : i + 1] * q[:, j : j + 1] * fusion.core[i, j]
    torch.testing.assert_close(fusion(x), expected + fusion.bias)


# -- cross-attention --------------------------------------------------------------------------------


def _tokens(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(BATCH, 5, 6, generator=g), "text": torch.randn(BATCH, 7, 4, generator=g)}


@pytest.mark.parametrize(
    "pool, shape", [("mean", (BATCH, OUT)), ("first", (BATCH, OUT)), ("none", (BATCH, 7, OUT))]
)
def test_cross_attention_pooling_shapes(pool: str, shape: tuple[int, ...]) -> None:
    fusion = CrossAttentionFusion(DIMS, OUT, query="text", num_heads=2, pool=pool, num_layers=2)
    assert fusion(_tokens()).shape == shape


def test_cross_attention_ignores_padded_tokens() -> None:
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(DIMS, OUT, query="text", num_heads=2).eval()
    x = _tokens()
    masks = {"image": torch.ones(BATCH, 5, dtype=torch.bool), "text": torch.ones(BATCH, 7, dtype=torch.long)}
    masks["image"][:, 3:] = False
    masks["text"][0, 4:] = 0
    out = fusion(x, masks)
    changed = {m: t.clone() for m, t in x.items()}
    changed["image"][:, 3:] = 100.0
    changed["text"][0, 4:] = -50.0
    torch.testing.assert_close(fusion(changed, masks), out)
    # Without the masks the padding is attended to, so the same change must show.
    assert not torch.allclose(fusion(changed), fusion(x))
    # Equivalent to dropping the padded image tokens (sample 1 and 2 have full text).
    trimmed = fusion({"image": x["image"][:, :3], "text": x["text"]})
    torch.testing.assert_close(trimmed[1:], out[1:])


def test_cross_attention_mask_errors() -> None:
    fusion = CrossAttentionFusion(DIMS, OUT, query="text", num_heads=2)
    x = _tokens()
    with pytest.raises(FusionInputError, match=r"mask of modality 'image': expected \[3, 5\]"):
        fusion(x, {"image": torch.ones(BATCH, 4, dtype=torch.bool)})
    with pytest.raises(FusionInputError, match="mask for unexpected modality 'audio'"):
        fusion(x, {"audio": torch.ones(BATCH, 4, dtype=torch.bool)})
    with pytest.raises(FusionInputError, match=r"no real token in any of \['image'\]"):
        fusion(x, {"image": torch.zeros(BATCH, 5, dtype=torch.bool)})


def test_cross_attention_accepts_pooled_vectors_as_single_tokens() -> None:
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(DIMS, OUT, query="image", num_heads=2).eval()
    x = _tokens()
    pooled_query = fusion({"image": x["image"][:, 0], "text": x["text"]})
    as_tokens = fusion({"image": x["image"][:, :1], "text": x["text"]})
    torch.testing.assert_close(pooled_query, as_tokens)


# -- configuration errors ---------------------------------------------------------------------------


def test_build_fusion_errors_list_valid_choices() -> None:
    with pytest.raises(
        FusionConfigError, match=r"unknown fusion 'tfn'; valid names: \['concat', 'cross_attention'"
    ):
        build_fusion("tfn", DIMS, OUT)
    with pytest.raises(
        FusionConfigError, match=r"unknown option\(s\) \['rnak'\]; accepted options: \['rank'\]"
    ):
        build_fusion("low_rank_tensor", DIMS, OUT, rnak=2)
    with pytest.raises(FusionConfigError, match=r"option\(s\) \['query'\] required"):
        build_fusion("cross_attention", DIMS, OUT)
    with pytest.raises(FusionConfigError, match="query modality 'audio' is not in dims"):
        build_fusion("cross_attention", DIMS, OUT, query="audio")
    with pytest.raises(FusionConfigError, match="use 'low_rank_tensor'"):
        TensorFusion({"a": 1023, "b": 1023, "c": 3}, OUT)
    with pytest.raises(FusionConfigError, match="at least 2"):
        GatedFusion({"image": 3}, OUT)
    with pytest.raises(FusionConfigError, match="modality 'text': dim must be a positive int"):
        ConcatFusion({"image": 3, "text": 0}, OUT)
    assert isinstance(build_fusion("gated", DIMS, OUT), GatedFusion)
