"""Accumulated contrastive steps must give exactly the full-batch gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polymodal.losses import ITCLoss, itc_loss
from polymodal.train.contrastive_accum import (
    AccumulationError,
    contrastive_accum_step,
    split_micro_batches,
)


class TinyDualEncoder(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Dropout(dropout), nn.Linear(7, 3))
        self.text = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Dropout(dropout), nn.Linear(7, 3))

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(batch["image"]), self.text(batch["text"])


def _setup(dtype: torch.dtype, dropout: float = 0.0, batch: int = 8):
    torch.manual_seed(0)
    model = TinyDualEncoder(dropout).to(dtype)
    loss = ITCLoss(init_temperature=0.1).to(dtype)
    g = torch.Generator().manual_seed(1)
    data = {
        "image": torch.randn(batch, 5, generator=g, dtype=dtype),
        "text": torch.randn(batch, 6, generator=g, dtype=dtype),
        "ids": torch.tensor([0, 1, 1, 2, 3, 4, 4, 5][:batch]),
    }
    return model, loss, data


def _grads(*modules: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{i}.{n}": p.grad.clone() for i, m in enumerate(modules) for n, p in m.named_parameters()}


def _zero(*modules: nn.Module) -> None:
    for m in modules:
        m.zero_grad(set_to_none=True)


def _loss_fn(loss: ITCLoss, ids: torch.Tensor):
    return lambda img, txt: loss(img, txt, ids)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("num", [1, 3, 4])
def test_accumulation_equals_full_batch_gradients(dtype: torch.dtype, tol: float, num: int) -> None:
    model, loss, data = _setup(dtype)
    full = loss(*model(data), data["ids"])
    full.loss.backward()
    expected = _grads(model, loss)
    _zero(model, loss)

    micro = split_micro_batches({"image": data["image"], "text": data["text"]}, num)
    out = contrastive_accum_step(model, micro, _loss_fn(loss, data["ids"]))
    got = _grads(model, loss)
    assert out.loss.item() == pytest.approx(full.loss.item(), rel=tol)
    assert out.features[0].shape == (8, 3) and not out.features[0].requires_grad
    assert out.loss_output.acc_i2t.item() == pytest.approx(full.acc_i2t.item())
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=tol, atol=tol, msg=name)
    # the temperature gets its gradient once, not once per micro-batch
    torch.testing.assert_close(loss.logit_scale.grad, expected["1.logit_scale"], rtol=tol, atol=tol)


def test_naive_accumulation_would_differ() -> None:
    """Sanity check that the test above can fail: per-micro-batch losses lose the cross negatives."""
    model, loss, data = _setup(torch.float64)
    loss(*model(data), data["ids"]).loss.backward()
    expected = _grads(model, loss)
    _zero(model, loss)
    for piece, ids in zip(
        split_micro_batches({"image": data["image"], "text": data["text"]}, 4),
        split_micro_batches(data["ids"], 4),
    ):
        (loss(*model(piece), ids).loss / 4).backward()
    naive = _grads(model, loss)
    assert not torch.allclose(naive["0.image.0.weight"], expected["0.image.0.weight"], atol=1e-6)


def _dropout_reference(model, loss, micro, ids, seed):
    """What a full-batch step would compute if the micro-batches were encoded one after another."""
    torch.manual_seed(seed)
    feats = [model(m) for m in micro]
    img = torch.cat([f[0] for f in feats])
    txt = torch.cat([f[1] for f in feats])
    return loss(img, txt, ids)


def test_accumulation_with_dropout_restores_rng() -> None:
    model, loss, data = _setup(torch.float64, dropout=0.3)
    model.train()
    micro = split_micro_batches({"image": data["image"], "text": data["text"]}, 4)
    ref = _dropout_reference(model, loss, micro, data["ids"], seed=7)
    ref.loss.backward()
    expected = _grads(model, loss)
    _zero(model, loss)

    torch.manual_seed(7)
    out = contrastive_accum_step(model, micro, _loss_fn(loss, data["ids"]), check_determinism=True)
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-12)
    got = _grads(model, loss)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-10, atol=1e-10, msg=name)

    # Without restoring the RNG the re-encoding draws new dropout masks: detected, or wrong gradients.
    _zero(model, loss)
    torch.manual_seed(7)
    with pytest.raises(AccumulationError, match="differs between the cached and the re-encoded pass"):
        contrastive_accum_step(
            model, micro, _loss_fn(loss, data["ids"]), preserve_rng=False, check_determinism=True
        )
    _zero(model, loss)
    torch.manual_seed(7)
    contrastive_accum_step(model, micro, _loss_fn(loss, data["ids"]), preserve_rng=False)
    assert not torch.allclose(_grads(model, loss)["0.image.0.weight"], expected["0.image.0.weight"])


def test_scale_loss_and_no_sync_hooks() -> None:
    model, loss, data = _setup(torch.float64)
    micro = split_micro_batches({"image": data["image"], "text": data["text"]}, 4)
    contrastive_accum_step(model, micro, _loss_fn(loss, data["ids"]))
    plain = _grads(model, loss)
    _zero(model, loss)

    entered = []

    class NoSync:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    contrastive_accum_step(
        model, micro, _loss_fn(loss, data["ids"]), scale_loss=lambda value: value * 0.25, no_sync=NoSync
    )
    scaled = _grads(model, loss)
    assert len(entered) == 3  # every re-encoding except the last
    for name, grad in plain.items():
        torch.testing.assert_close(scaled[name], grad * 0.25, msg=name)


def test_plain_function_loss_and_bad_encoder_output() -> None:
    model, _, data = _setup(torch.float64)
    micro = split_micro_batches({"image": data["image"], "text": data["text"]}, 2)
    out = contrastive_accum_step(model, micro, lambda i, t: itc_loss(i, t, 2.0).loss)
    assert out.loss_output.shape == () and out.loss.item() > 0
    with pytest.raises(AccumulationError, match=r"encode\(micro_batch 0\) must return a tensor or a tuple"):
        contrastive_accum_step(lambda b: {"x": b}, micro, lambda *f: f[0].sum())
    with pytest.raises(AccumulationError, match="scalar"):
        contrastive_accum_step(model, micro, lambda i, t: i)
    with pytest.raises(AccumulationError, match="empty"):
        contrastive_accum_step(model, [], lambda i, t: i.sum())


def test_split_micro_batches_keeps_fields_aligned() -> None:
    batch = {
        "image": torch.arange(10),
        "text": [f"t{i}" for i in range(10)],
        "pair": (torch.arange(10),),
        "task": "retrieval",
    }
    pieces = split_micro_batches(batch, 3)
    assert [len(p["text"]) for p in pieces] == [4, 3, 3]
    for p in pieces:
        assert p["text"] == [f"t{int(i)}" for i in p["image"]]
        assert torch.equal(p["pair"][0], p["image"]) and p["task"] == "retrieval"
    with pytest.raises(AccumulationError, match="cannot make 11 non-empty"):
        split_micro_batches(batch, 11)


def _pair_batches(n: int, micro: int) -> tuple[dict, list[dict]]:
    """A batch of ``n`` image-text pairs (two pairs share an image) and the same rows in ``micro`` pieces."""
    from polymodal.data.sample import Sample

    g = torch.Generator().manual_seed(3)
    samples = [Sample(sample_id=str(i), image_id=str(i // 2 if i < 2 else i), text="t") for i in range(n)]
    batch = {
        "image": torch.randn(n, 3, 16, 16, generator=g),
        "text_ids": torch.randint(1, 50, (n, 6), generator=g),
        "text_mask": torch.ones(n, 6, dtype=torch.long),
        "samples": samples,
    }
    batch["text_mask"][1, 4:] = 0
    return batch, split_micro_batches(batch, micro)


def test_retrieval_task_accumulation_gives_the_full_batch_gradients_of_every_parameter() -> None:
    """The trainer's path (RetrievalTask.accumulated_loss on a DualEncoder): every gradient, the
    temperature's included, equals one full-batch step's; summing micro-batch losses would not."""
    from polymodal.models.factory import BuildContext, build_model
    from polymodal.tasks.retrieval import RetrievalTask

    torch.manual_seed(0)
    vit = {"name": "vit", "image_size": 16, "patch_size": 8, "width": 16, "depth": 1, "heads": 2}
    text = {"name": "text_transformer", "max_length": 8, "width": 16, "depth": 1, "heads": 2, "causal": True}
    model = build_model({"type": "dual_encoder", "vision": vit, "text": text, "embed_dim": 8}, BuildContext(vocab_size=50))
    task = RetrievalTask(tokenizer=None, max_length=8)
    batch, pieces = _pair_batches(8, 3)

    task.loss(model, batch).loss.backward()
    full = _grads(model)
    _zero(model)
    out = task.accumulated_loss(model, model, pieces)
    cached = _grads(model)
    assert full.keys() == cached.keys() and "0.itc.logit_scale" in full
    for name in full:  # summation order differs: compare to each tensor's own scale
        assert (cached[name] - full[name]).abs().max() <= 1e-6 * full[name].abs().max() + 1e-7, name
    assert out.logs["acc_i2t"] >= 0 and out.loss.requires_grad is False

    _zero(model)
    for piece in pieces:
        (task.loss(model, piece).loss / len(pieces)).backward()
    summed = _grads(model)
    assert not torch.allclose(summed["0.itc.logit_scale"], full["0.itc.logit_scale"], atol=1e-4)


def test_batch_norm_statistics_count_each_micro_batch_once() -> None:
    """The no-grad first pass must not move BatchNorm's running statistics: after the step they equal
    one ordinary training forward per micro-batch."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    reference = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    reference.load_state_dict(net.state_dict())
    data = torch.randn(12, 4) * 3 + 1
    pieces = split_micro_batches(data, 3)
    def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = net(x)
        return h, h.roll(1, dims=1)

    contrastive_accum_step(encode, pieces, lambda a, b: itc_loss(a, b, 1.0).loss, module=net)
    with torch.no_grad():
        for piece in pieces:
            reference(piece)
    bn, ref = net[1], reference[1]
    assert int(bn.num_batches_tracked) == 3
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
