"""Known-value tests for the objectives in polymodal.losses (and the distributed gather they use)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from polymodal import distributed as pdist
from polymodal.errors import PolymodalError
from polymodal.losses import (
    IGNORE_INDEX,
    ITCLoss,
    LossInputError,
    MultiTaskLoss,
    itc_loss,
    itm_loss,
    itm_pairs,
    lm_loss,
    mask_tokens,
    mlm_loss,
    sample_hard_negatives,
    vqa_bce_loss,
    vqa_score,
    vqa_soft_scores,
    vqa_soft_targets,
)

# ----------------------------------------------------------------------------------------------
# ITC
# ----------------------------------------------------------------------------------------------

# Unit vectors, so normalisation is a no-op and the similarities can be written down by hand.
IMG = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
TXT = [[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]
# S[i][j] = IMG[i] . TXT[j], computed by hand.
SIM = [[0.8, 0.0, 1.0], [0.6, 1.0, 0.0], [0.96, 0.8, 0.6]]


def _ce(logits_row: list[float], target: int, allowed: list[int] | None = None) -> float:
    cols = allowed if allowed is not None else list(range(len(logits_row)))
    return -logits_row[target] + math.log(sum(math.exp(logits_row[c]) for c in cols))


def test_itc_matches_hand_computed_cross_entropy() -> None:
    t = 2.0
    out = itc_loss(torch.tensor(IMG), torch.tensor(TXT), torch.tensor(math.log(t)))
    i2t = sum(_ce([t * s for s in SIM[i]], i) for i in range(3)) / 3
    t2i = sum(_ce([t * SIM[i][j] for i in range(3)], j) for j in range(3)) / 3
    assert out.loss.item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    assert out.logits_per_image[2, 0].item() == pytest.approx(t * 0.96, rel=1e-6)
    assert torch.equal(out.labels, torch.arange(3))
    # row argmaxes: 2, 1, 0 -> only row 1 right; column argmaxes: 2, 1, 0 -> only column 1 right.
    assert out.acc_i2t.item() == pytest.approx(1 / 3)
    assert out.acc_t2i.item() == pytest.approx(1 / 3)
    assert out.logit_scale.item() == pytest.approx(t)


def test_itc_normalises_features() -> None:
    s = torch.tensor(math.log(2.0))
    plain = itc_loss(torch.tensor(IMG), torch.tensor(TXT), s).loss
    scaled = itc_loss(3.0 * torch.tensor(IMG), 0.5 * torch.tensor(TXT), s).loss
    assert scaled.item() == pytest.approx(plain.item(), rel=1e-6)


def test_itc_image_ids_mask_same_image_pairs() -> None:
    t = 2.0
    ids = torch.tensor([7, 7, 9])  # pairs 0 and 1 show the same image
    out = itc_loss(torch.tensor(IMG), torch.tensor(TXT), torch.tensor(math.log(t)), image_ids=ids)
    row = [[t * s for s in r] for r in SIM]
    col = [[t * SIM[i][j] for i in range(3)] for j in range(3)]
    # image 0 may not see text 1 (and vice versa); text 0 may not see image 1 (and vice versa).
    i2t = (_ce(row[0], 0, [0, 2]) + _ce(row[1], 1, [1, 2]) + _ce(row[2], 2)) / 3
    t2i = (_ce(col[0], 0, [0, 2]) + _ce(col[1], 1, [1, 2]) + _ce(col[2], 2)) / 3
    assert out.loss.item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    assert out.logits_per_image[0, 1].item() == float("-inf")
    assert out.logits_per_image[2, 0].item() == pytest.approx(t * 0.96, rel=1e-6)


def test_itc_logit_scale_clamped_at_100() -> None:
    s = torch.tensor(math.log(1000.0), requires_grad=True)
    out = itc_loss(torch.tensor(IMG), torch.tensor(TXT), s)
    out.loss.backward()
    assert out.logit_scale.item() == pytest.approx(100.0, rel=1e-5)
    assert s.grad is not None and s.grad.item() == 0.0
    below = torch.tensor(math.log(10.0), requires_grad=True)
    itc_loss(torch.tensor(IMG), torch.tensor(TXT), below).loss.backward()
    assert below.grad is not None and below.grad.item() != 0.0


def test_itc_module_owns_learnable_temperature() -> None:
    module = ITCLoss(init_temperature=0.07)
    assert module.scale == pytest.approx(1 / 0.07, rel=1e-5)
    params = dict(module.named_parameters())
    assert "logit_scale" in params
    out = module(torch.randn(4, 8), torch.randn(4, 8))
    out.loss.backward()
    assert module.logit_scale.grad is not None
    frozen = ITCLoss(learnable=False)
    assert list(frozen.parameters()) == []


def test_itc_shape_errors_name_the_input() -> None:
    with pytest.raises(LossInputError, match=r"image_features: expected \[batch, dim\], got \[4, 2, 8\]"):
        itc_loss(torch.randn(4, 2, 8), torch.randn(4, 8), 0.0)
    with pytest.raises(PolymodalError, match="image_features batch has 4 but text_features batch has 3"):
        itc_loss(torch.randn(4, 8), torch.randn(3, 8), 0.0)


def test_gather_is_identity_without_process_group() -> None:
    t = torch.randn(3, 2, requires_grad=True)
    assert not pdist.is_dist() and pdist.rank() == 0 and pdist.world_size() == 1
    assert pdist.all_gather_with_grad(t) is t
    assert pdist.all_gather_no_grad(t) is t


# -- two real processes (gloo) against the single-process full batch ------------------------------

WORLD = 2
CONFIGS = [(False, False), (True, False), (False, True), (True, True)]  # (local_loss, use_ids)


def _dist_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    images = torch.randn(6, 5, generator=g, dtype=torch.float64)
    texts = torch.randn(6, 5, generator=g, dtype=torch.float64)
    ids = torch.tensor([0, 1, 2, 2, 3, 0])  # duplicates inside rank 1 and across ranks 0/1
    return images, texts, ids


def _itc_worker(rank: int, init_file: str, out_dir: str, split: tuple[int, ...]) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        images, texts, ids = _dist_data()
        rows = slice(sum(split[:rank]), sum(split[: rank + 1]))
        results = {}
        for local_loss, use_ids in CONFIGS:
            img = images[rows].clone().requires_grad_(True)
            txt = texts[rows].clone().requires_grad_(True)
            scale = torch.tensor(math.log(5.0), dtype=torch.float64, requires_grad=True)
            out = itc_loss(img, txt, scale, image_ids=ids[rows] if use_ids else None, local_loss=local_loss)
            out.loss.backward()
            scale_grad = scale.grad.clone()
            pdist.average_gradients([scale])
            results[(local_loss, use_ids)] = {
                "loss": out.loss.detach(),
                "logits_shape": tuple(out.logits_per_image.shape),
                "local_logits": [t.detach() for t in out.local_logits()],
                "img_grad": img.grad,
                "txt_grad": txt.grad,
                "scale_grad": scale_grad,
                "scale_grad_averaged": scale.grad,
            }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("split", [(3, 3), (2, 4)])
def test_itc_gather_with_grad_and_local_loss_match_full_batch(tmp_path: Path, split: tuple[int, int]) -> None:
    """Ranks of equal batches, and of unequal ones (images unreadable on one rank only): the gathered
    loss is the full batch's, and local rows are labelled at their rank's offset."""
    mp.spawn(_itc_worker, args=(str(tmp_path / "init"), str(tmp_path), split), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    images, texts, ids = _dist_data()
    if split[0] != split[1]:
        for local_loss, use_ids in CONFIGS:
            full = itc_loss(images, texts, math.log(5.0), image_ids=ids if use_ids else None).loss
            per_rank = [r[(local_loss, use_ids)]["loss"] for r in ranks]
            # a local loss is its rank's mean: weighed by the rank's rows (as the trainer does) it is the full loss
            got = sum(n * v for n, v in zip(split, per_rank)) / sum(split) if local_loss else per_rank[0]
            torch.testing.assert_close(got, full, rtol=1e-10, atol=1e-12)
        return
    local = split[0]
    for local_loss, use_ids in CONFIGS:
        img = images.clone().requires_grad_(True)
        txt = texts.clone().requires_grad_(True)
        scale = torch.tensor(math.log(5.0), dtype=torch.float64, requires_grad=True)
        full = itc_loss(img, txt, scale, image_ids=ids if use_ids else None)
        full.loss.backward()
        per_rank = [r[(local_loss, use_ids)] for r in ranks]
        rows = local if local_loss else images.shape[0]
        assert per_rank[0]["logits_shape"] == (rows, images.shape[0])
        for rank, r in enumerate(per_rank):  # this rank's own pairs, as ITM hard negatives need them
            own = slice(rank * local, (rank + 1) * local)
            torch.testing.assert_close(r["local_logits"][0], full.logits_per_image.detach()[own, own])
            torch.testing.assert_close(r["local_logits"][1], full.logits_per_text.detach()[own, own])
        mean_loss = sum(r["loss"] for r in per_rank) / WORLD
        torch.testing.assert_close(mean_loss, full.loss.detach(), rtol=1e-10, atol=1e-12)
        if not local_loss:
            for r in per_rank:
                torch.testing.assert_close(r["loss"], full.loss.detach(), rtol=1e-10, atol=1e-12)
        # DDP averages parameter gradients over ranks: local grad / world == full-batch grad slice.
        for rank, r in enumerate(per_rank):
            sl = slice(rank * local, (rank + 1) * local)
            torch.testing.assert_close(r["img_grad"] / WORLD, img.grad[sl], rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(r["txt_grad"] / WORLD, txt.grad[sl], rtol=1e-9, atol=1e-12)
        mean_scale_grad = sum(r["scale_grad"] for r in per_rank) / WORLD
        torch.testing.assert_close(mean_scale_grad, scale.grad, rtol=1e-9, atol=1e-12)
        for r in per_rank:  # what average_gradients gives every rank for a parameter outside DDP
            torch.testing.assert_close(r["scale_grad_averaged"], scale.grad, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# ITM hard negatives
# ----------------------------------------------------------------------------------------------


def test_hard_negatives_never_pick_the_positive() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        # Strongly favour the diagonal: a sampler that ignored the mask would pick it almost always.
        sim = torch.randn(5, 5, generator=g) + 20 * torch.eye(5)
        negs = sample_hard_negatives(sim, generator=g)
        assert not bool((negs.text_for_image == torch.arange(5)).any())
        assert not bool((negs.image_for_text == torch.arange(5)).any())


def test_hard_negatives_respect_image_ids() -> None:
    g = torch.Generator().manual_seed(1)
    ids = torch.tensor([0, 0, 1, 1, 2])
    for _ in range(300):
        sim = torch.randn(5, 5, generator=g)
        sim[:2, :2] += 20  # make same-image texts the most tempting choice
        negs = sample_hard_negatives(sim, image_ids=ids, generator=g)
        assert not bool((ids[negs.text_for_image] == ids).any())
        assert not bool((ids[negs.image_for_text] == ids).any())


def test_hard_negatives_follow_softmax_and_are_reproducible() -> None:
    batch = 40
    rows = torch.arange(batch)
    sim = 5.0 * torch.eye(batch)  # a huge positive that must be ignored
    sim[rows, (rows + 1) % batch] = 3.0  # one confusable text per image; all other entries 0
    # P(text i+1 | image i) = e^3 / (e^3 + 38 * e^0): the diagonal is excluded from the softmax.
    expected = math.exp(3.0) / (math.exp(3.0) + (batch - 2))
    g = torch.Generator().manual_seed(2)
    draws = [sample_hard_negatives(sim, generator=g) for _ in range(100)]  # 4000 draws per direction
    text_hits = torch.stack([d.text_for_image == (rows + 1) % batch for d in draws]).float().mean()
    # sim_t2i defaults to sim.T: text j's confusable image is j - 1.
    image_hits = torch.stack([d.image_for_text == (rows - 1) % batch for d in draws]).float().mean()
    assert text_hits.item() == pytest.approx(expected, abs=0.03)
    assert image_hits.item() == pytest.approx(expected, abs=0.03)

    a = sample_hard_negatives(sim, generator=torch.Generator().manual_seed(5))
    b = sample_hard_negatives(sim, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.text_for_image, b.text_for_image) and torch.equal(a.image_for_text, b.image_for_text)


def test_hard_negatives_error_when_no_negative_exists() -> None:
    with pytest.raises(LossInputError, match="image 0 has no valid negative"):
        sample_hard_negatives(torch.randn(3, 3), image_ids=torch.tensor([4, 4, 4]))
    with pytest.raises(LossInputError, match=r"square \[batch, batch\]"):
        sample_hard_negatives(torch.randn(3, 4))


def test_itm_pairs_layout_and_loss_values() -> None:
    negs = sample_hard_negatives(torch.randn(3, 3), generator=torch.Generator().manual_seed(0))
    pairs = itm_pairs(negs)
    assert pairs.labels.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert pairs.image_index[:6].tolist() == [0, 1, 2, 0, 1, 2]
    assert torch.equal(pairs.text_index[3:6], negs.text_for_image)
    assert torch.equal(pairs.image_index[6:], negs.image_for_text)

    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    labels = torch.tensor([1, 0])
    # row 0: p(match) = 3/4 -> -log(3/4); row 1: p(no match) = 1/2 -> log 2
    expected = (-math.log(0.75) + math.log(2.0)) / 2
    out = itm_loss(logits, labels)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.accuracy.item() == pytest.approx(1.0)  # row 1 ties -> argmax 0 == label 0

    single = itm_loss(torch.tensor([0.0, 2.0]), torch.tensor([1, 0]))
    expected_bce = (math.log(2.0) + math.log(1 + math.exp(2.0))) / 2
    assert single.loss.item() == pytest.approx(expected_bce, rel=1e-6)
    assert single.accuracy.item() == pytest.approx(0.0)
    with pytest.raises(LossInputError, match=r"expected \[N, 2\]"):
        itm_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


# ----------------------------------------------------------------------------------------------
# MLM
# ----------------------------------------------------------------------------------------------


def test_mask_tokens_statistics_and_specials() -> None:
    vocab, mask_id, pad_id, cls_id = 1000, 4, 0, 1
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (64, 512), generator=g)
    ids[:, 0] = cls_id
    ids[:, -50:] = pad_id
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    original = ids.clone()

    out = mask_tokens(
        ids,
        vocab,
        mask_id,
        special_tokens_mask=special,
        pad_token_id=pad_id,
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.equal(ids, original)  # input untouched
    eligible = ~special & (ids != pad_id)
    sel = out.selected
    assert not bool(sel[~eligible].any())
    assert torch.equal(out.input_ids[~eligible], ids[~eligible])
    assert sel[eligible].float().mean().item() == pytest.approx(0.15, abs=0.01)

    n = sel.sum().item()
    masked = (out.input_ids == mask_id) & sel
    unchanged = (out.input_ids == ids) & sel
    randomised = sel & ~masked & ~unchanged
    assert masked.sum().item() / n == pytest.approx(0.8, abs=0.02)
    assert randomised.sum().item() / n == pytest.approx(0.1, abs=0.015)
    assert unchanged.sum().item() / n == pytest.approx(0.1, abs=0.015)
    assert not bool((out.input_ids[~sel] != ids[~sel]).any())
    assert torch.equal(out.labels[sel], ids[sel])
    assert bool((out.labels[~sel] == IGNORE_INDEX).all())

    again = mask_tokens(
        ids,
        vocab,
        mask_id,
        special_tokens_mask=special,
        pad_token_id=pad_id,
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.equal(again.input_ids, out.input_ids)


def test_mask_tokens_rejects_bad_input() -> None:
    with pytest.raises(LossInputError, match=r"input_ids: expected \[batch, seq\], got \[8\]"):
        mask_tokens(torch.zeros(8, dtype=torch.long), 10, 3)
    with pytest.raises(LossInputError, match="special_tokens_mask"):
        mask_tokens(
            torch.zeros(2, 8, dtype=torch.long),
            10,
            3,
            special_tokens_mask=torch.zeros(2, 7, dtype=torch.bool),
        )


def test_mlm_loss_known_value_and_empty_selection() -> None:
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]], requires_grad=True)
    labels = torch.tensor([[0, IGNORE_INDEX]])
    expected = -1.0 + math.log(math.exp(1) + math.exp(2) + math.exp(3))
    assert mlm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    empty = mlm_loss(logits, torch.full((1, 2), IGNORE_INDEX))
    assert empty.item() == 0.0 and empty.requires_grad


# ----------------------------------------------------------------------------------------------
# Captioning LM
# ----------------------------------------------------------------------------------------------


def _smoothed_nll(row: list[float], target: int, eps: float) -> float:
    log_z = math.log(sum(math.exp(v) for v in row))
    logp = [v - log_z for v in row]
    return (1 - eps) * -logp[target] + eps * sum(-lp for lp in logp) / len(row)


def test_lm_loss_label_smoothing_and_shift() -> None:
    rows = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0], [0.0, 3.0, 0.0], [9.0, 9.0, 9.0]]
    logits = torch.tensor([rows])
    labels = torch.tensor([[2, 0, IGNORE_INDEX, 1]])
    eps = 0.1
    # shift=True: logits[t] predicts labels[t + 1] -> (row0, 0), (row1, ignored), (row2, 1); row3 unused.
    expected = (_smoothed_nll(rows[0], 0, eps) + _smoothed_nll(rows[2], 1, eps)) / 2
    assert lm_loss(logits, labels, label_smoothing=eps).item() == pytest.approx(expected, rel=1e-6)
    # shift=False: labels are already aligned with the logits.
    aligned = torch.tensor([[0, IGNORE_INDEX, 1, IGNORE_INDEX]])
    assert lm_loss(logits, aligned, shift=False, label_smoothing=eps).item() == pytest.approx(
        expected, rel=1e-6
    )
    # pad_token_id: padded positions are ignored just like -100.
    padded = torch.tensor([[2, 0, 7, 1]])
    with_pad = lm_loss(torch.cat([logits, torch.zeros(1, 4, 5)], dim=2), padded, pad_token_id=7)
    without = lm_loss(torch.cat([logits, torch.zeros(1, 4, 5)], dim=2), labels)
    assert with_pad.item() == pytest.approx(without.item(), rel=1e-6)
    assert with_pad.item() != pytest.approx(lm_loss(logits, labels).item())  # vocab grew: value changes


def test_lm_loss_shape_error() -> None:
    with pytest.raises(LossInputError, match=r"labels: expected \[2, 5\]"):
        lm_loss(torch.randn(2, 5, 7), torch.zeros(2, 4, dtype=torch.long))


# ----------------------------------------------------------------------------------------------
# VQA
# ----------------------------------------------------------------------------------------------


def test_vqa_soft_scores() -> None:
    assert [vqa_score(n) for n in range(6)] == pytest.approx([0, 1 / 3, 2 / 3, 1, 1, 1])
    vocab = ["no", "yes", "maybe", "red"]
    answers = ["yes"] * 3 + ["no"] + ["maybe"] * 2 + ["blue"] * 4  # "blue" is out of vocabulary
    assert vqa_soft_scores(answers, vocab).tolist() == pytest.approx([1 / 3, 1.0, 2 / 3, 0.0])
    as_map = {a: i for i, a in enumerate(vocab)}
    assert vqa_soft_scores(["Yes", "YES"], as_map, normalize=str.lower).tolist() == pytest.approx(
        [0, 2 / 3, 0, 0]
    )
    batch = vqa_soft_targets([["red"] * 10, []], vocab)
    assert batch.shape == (2, 4) and batch[0].tolist() == [0, 0, 0, 1] and batch[1].sum().item() == 0


def test_vqa_bce_times_num_answers() -> None:
    logits = torch.tensor([[0.0, 2.0], [-1.0, 0.0]])
    targets = torch.tensor([[1 / 3, 1.0], [0.0, 2 / 3]])

    def bce(x: float, y: float) -> float:
        return math.log(1 + math.exp(x)) - x * y

    total = bce(0.0, 1 / 3) + bce(2.0, 1.0) + bce(-1.0, 0.0) + bce(0.0, 2 / 3)
    expected = total / 4 * 2  # mean over the 4 elements, times 2 answers (= sum over answers / batch)
    assert vqa_bce_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(LossInputError, match=r"targets: expected \[2, 2\]"):
        vqa_bce_loss(logits, targets[:, :1])


# ----------------------------------------------------------------------------------------------
# Multi-task
# ----------------------------------------------------------------------------------------------


def test_multitask_weighted_sum_and_parts() -> None:
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(3.0, requires_grad=True)
    combo = MultiTaskLoss({"itc": 1.0, "itm": 0.5, "mlm": 2.0})
    out = combo({"itm": b, "itc": a})
    assert out.total.item() == pytest.approx(2.0 + 1.5)
    assert set(out.parts) == {"itc", "itm"} and not out.parts["itc"].requires_grad
    assert out.parts["itm"].item() == 3.0  # unweighted
    out.total.backward()
    assert a.grad.item() == pytest.approx(1.0) and b.grad.item() == pytest.approx(0.5)

    assert out.over_ranks is None  # no objective was declared a mean over every rank
    shared = MultiTaskLoss({"itc": 1.0, "mlm": 2.0}, over_ranks=("mlm",))({"itc": a, "mlm": b})
    assert shared.over_ranks is not None and shared.over_ranks.item() == pytest.approx(6.0) and shared.total.item() == pytest.approx(8.0)

    with pytest.raises(
        LossInputError,
        match=r"unknown loss name\(s\) \['itcc'\]; expected names among \['itc', 'itm', 'mlm'\]",
    ):
        combo({"itcc": a})
    with pytest.raises(LossInputError, match=r"\['mlm'\] missing"):
        MultiTaskLoss({"itc": 1.0, "mlm": 1.0}, strict=True)({"itc": a})
    with pytest.raises(LossInputError, match="scalar"):
        combo({"itc": torch.ones(2)})
    with pytest.raises(LossInputError, match="weight of 'itc'"):
        MultiTaskLoss({"itc": -1.0})


def test_a_single_answer_is_a_full_credit_target() -> None:
    from polymodal.losses.vqa import vqa_soft_scores

    vocab = ["yes", "no", "2"]
    assert vqa_soft_scores(["no"], vocab).tolist() == [0.0, 1.0, 0.0]  # CLEVR / GQA / JSONL: one answer
    assert vqa_soft_scores(["no", "yes"], vocab).tolist() == pytest.approx([1 / 3, 1 / 3, 0.0])  # humans: n / 3
