"""ViT and SmallCNN: output shapes and dtypes, pooling, shape errors, grad checkpointing, freezing."""

from __future__ import annotations

import pytest
import torch

from polymodal.errors import ConfigError, PolymodalError
from polymodal.modules.encoders import EncoderOutput, ShapeError, SmallCNN, VisionTransformer


def _vit(**kw):
    torch.manual_seed(0)
    args = {"image_size": 32, "patch_size": 8, "width": 32, "depth": 2, "heads": 4}
    args.update(kw)
    return VisionTransformer(**args)


@pytest.mark.parametrize("output_dim", [None, 24])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_output_shapes(output_dim, pool):
    vit = _vit(output_dim=output_dim, pool=pool)
    out = vit(torch.randn(3, 3, 32, 32))
    assert isinstance(out, EncoderOutput)
    assert out.tokens.shape == (3, 1 + 16, 32)  # CLS + 4x4 patches
    assert out.pooled.shape == (3, output_dim or 32)
    assert out.mask is None
    assert vit.width == 32 and vit.output_dim == (output_dim or 32)


def test_vit_pooling_picks_cls_or_patch_mean():
    vit = _vit(pool="cls").eval()
    images = torch.randn(2, 3, 32, 32)
    out = vit(images)
    torch.testing.assert_close(out.pooled, out.tokens[:, 0])
    vit.pool = "mean"
    torch.testing.assert_close(vit(images).pooled, out.tokens[:, 1:].mean(1), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("in_channels, patch", [(3, 16), (1, 8)])
def test_vit_patch_matmul_is_the_strided_conv(in_channels, patch):
    """The patch embedding runs as a matmul (fast on GPUs); it must be the conv it replaces, both ways."""
    torch.manual_seed(0)
    vit = VisionTransformer(32, patch, 24, 1, 2, in_channels=in_channels)
    images = torch.randn(3, in_channels, 32, 32, requires_grad=True)
    ours = vit._embed_patches(images)
    conv = vit.patch_embed(images).flatten(2).transpose(1, 2)
    torch.testing.assert_close(ours, conv, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ours)
    g_ours = torch.autograd.grad(ours, (images, vit.patch_embed.weight), grad)
    g_conv = torch.autograd.grad(conv, (images, vit.patch_embed.weight), grad)
    for a, b in zip(g_ours, g_conv):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_vit_tokens_depend_on_their_own_patch():
    vit = _vit().eval()
    images = torch.randn(1, 3, 32, 32)
    changed = images.clone()
    changed[:, :, :8, :8] += 1.0  # first patch only
    a, b = vit(images).tokens, vit(changed).tokens
    assert not torch.allclose(a[:, 1], b[:, 1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_encoders_follow_the_input_dtype(kind, dtype):
    model = _vit(output_dim=16) if kind == "vit" else SmallCNN(32, channels=(8, 16), width=24, output_dim=16)
    model = model.to(dtype).eval()
    out = model(torch.randn(2, 3, 32, 32, dtype=dtype))
    assert out.tokens.dtype == dtype and out.pooled.dtype == dtype
    assert torch.isfinite(out.tokens.float()).all() and out.pooled.shape == (2, 16)


@pytest.mark.parametrize("output_dim", [None, 20])
def test_small_cnn_shapes(output_dim):
    cnn = SmallCNN(64, channels=(8, 16, 32), width=24, output_dim=output_dim)
    out = cnn(torch.randn(2, 3, 64, 64))
    assert out.tokens.shape == (2, 8 * 8, 24)  # 64 px halved three times
    assert out.pooled.shape == (2, output_dim or 24)
    assert out.mask is None and cnn.num_tokens == 64
    if output_dim is None:
        torch.testing.assert_close(out.pooled, out.tokens.mean(1))


def test_small_cnn_batch_norm_option_and_batch_independence():
    images = torch.randn(4, 3, 32, 32)
    cnn = SmallCNN(32, channels=(8, 16), width=16).eval()
    torch.testing.assert_close(cnn(images[:1]).pooled, cnn(images).pooled[:1], atol=1e-5, rtol=1e-5)
    bn = SmallCNN(32, channels=(8, 16), width=16, norm="batch")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules())
    with pytest.raises(ConfigError, match="norm"):
        SmallCNN(32, norm="layer")


@pytest.mark.parametrize(
    "shape, message",
    [
        ((8, 1, 32, 32), "image encoder 'vit': expected images [batch, 3, 32, 32], got [8, 1, 32, 32]"),
        ((8, 3, 64, 64), "image encoder 'vit': expected images [batch, 3, 32, 32], got [8, 3, 64, 64]"),
        ((3, 32, 32), "image encoder 'vit': expected images [batch, 3, 32, 32], got [3, 32, 32]"),
    ],
)
def test_vit_shape_errors_name_input_and_expected_shape(shape, message):
    with pytest.raises(ShapeError) as info:
        _vit()(torch.randn(*shape))
    assert str(info.value) == message
    assert isinstance(info.value, PolymodalError)


def test_cnn_shape_and_dtype_errors():
    cnn = SmallCNN(32, channels=(8,), width=8)
    with pytest.raises(
        ShapeError, match=r"image encoder 'cnn': expected images \[batch, 3, 32, 32\], got \[2, 3, 28, 28\]"
    ):
        cnn(torch.randn(2, 3, 28, 28))
    with pytest.raises(ShapeError, match="floating-point"):
        cnn(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_bad_vit_configs_are_config_errors():
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        _vit(image_size=30)
    with pytest.raises(ConfigError, match="pool"):
        _vit(pool="max")


def test_vit_grad_checkpointing_same_gradients():
    images = torch.randn(2, 3, 32, 32)

    def grads(ckpt: bool):
        vit = _vit(output_dim=8, grad_checkpointing=ckpt)
        vit(images).pooled.pow(2).sum().backward()
        return {n: p.grad for n, p in vit.named_parameters()}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], ckpt[name], atol=1e-5, rtol=1e-5, msg=name)


def test_set_grad_checkpointing_toggles_the_stack():
    vit = _vit()
    vit.set_grad_checkpointing(True)
    assert vit.transformer.grad_checkpointing and vit.grad_checkpointing


def test_freeze_stops_gradients_and_keeps_eval_mode():
    vit = _vit(output_dim=8)
    head = torch.nn.Linear(8, 2)
    vit.freeze()
    torch.nn.Sequential(vit, head).train()  # a parent switching to train mode must not unfreeze
    assert not vit.training and vit.frozen
    out = head(vit(torch.randn(2, 3, 32, 32)).pooled)
    out.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in vit.parameters())
    assert head.weight.grad is not None
    vit.unfreeze().train()
    assert vit.training and all(p.requires_grad for p in vit.parameters())


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_forward_pooled_equals_forward_pooled_field(pool):
    """A dual encoder reads only ``pooled``; the shortcut that skips the last block's other tokens agrees."""
    torch.manual_seed(0)
    vit = VisionTransformer(32, 8, 32, 2, 4, output_dim=16, pool=pool, ln_pre=True)
    images = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(vit.forward_pooled(images), vit(images).pooled, atol=1e-6, rtol=1e-5)
    with pytest.raises(ShapeError, match="images"):
        vit.forward_pooled(torch.randn(3, 3, 16, 16))


def test_vit_forward_pooled_gradients_hooks_and_subclasses():
    """The shortcut's gradients match (with checkpointing too); a hook on the patch conv still runs; a
    subclass that overrides forward is not bypassed."""
    torch.manual_seed(0)
    vit = VisionTransformer(32, 8, 32, 2, 4, output_dim=16, in_channels=1, grad_checkpointing=True)
    images = torch.randn(2, 1, 32, 32)
    params = list(vit.parameters())
    g_short = torch.autograd.grad(vit.forward_pooled(images).square().sum(), params)
    g_full = torch.autograd.grad(vit(images).pooled.square().sum(), params)
    for a, b in zip(g_short, g_full):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)

    calls = []
    vit.patch_embed.register_forward_hook(lambda m, inp, out: calls.append(out.shape))
    torch.testing.assert_close(vit.forward_pooled(images), vit(images).pooled, atol=1e-6, rtol=1e-5)
    assert len(calls) == 2

    class Doubled(VisionTransformer):
        def forward(self, images):
            out = super().forward(images)
            return EncoderOutput(tokens=out.tokens, pooled=2 * out.pooled)

    doubled = Doubled(32, 8, 32, 2, 4, in_channels=1)
    torch.testing.assert_close(doubled.forward_pooled(images), doubled(images).pooled)


@pytest.mark.parametrize("kind", ["vit", "cnn"])
def test_images_of_another_dtype_or_type_are_named(kind):
    model = (_vit() if kind == "vit" else SmallCNN(32, channels=(8,), width=8)).eval()
    with pytest.raises(ShapeError, match=r"expected torch.float32 images, the dtype of the model's weights, got torch.float64; convert them with images.to\(torch.float32\)"):
        model(torch.randn(2, 3, 32, 32, dtype=torch.float64))  # numpy's default float
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts float32 and half inputs for the matmuls, not float64
        assert model(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)).pooled.shape[0] == 2
        with pytest.raises(ShapeError, match="got torch.float64"):
            model(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"expected images as a torch.Tensor \[batch, 3, 32, 32\] \(processors.images"):
        model(torch.randn(2, 3, 32, 32).numpy())
