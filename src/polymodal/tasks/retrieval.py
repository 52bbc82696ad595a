"""Image-text retrieval with a dual encoder: ITC training, R@K both ways at evaluation.

Evaluation embeds each distinct image once and every caption once, then ranks in blocks, so a
gallery of 5k images and 25k captions never materialises a float64 N x M matrix.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from polymodal.data.sample import Sample
from polymodal.errors import DataError
from polymodal.metrics import retrieval_metrics
from polymodal.models.dual_encoder import PairEncoder
from polymodal.tasks.base import EvalResult, LoaderFactory, StepOutput, Task, caption_rejection, group_by_image, image_id_tensor, is_caption
from polymodal.train.contrastive_accum import contrastive_accum_step


class RetrievalTask(Task):
    name = "retrieval"
    model_type = "dual_encoder"

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def select(self, sample: Sample) -> bool:
        return is_caption(sample)

    def rejection(self, sample: Sample) -> str | None:
        return caption_rejection(sample)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        ids = image_id_tensor(batch["samples"]).to(batch["image"].device)
        return _step_output(model(batch["image"], batch["text_ids"], batch["text_mask"], image_ids=ids))

    def keeps_negatives_across(self, model: nn.Module) -> bool:
        return isinstance(model, PairEncoder)

    def accumulated_loss(
        self,
        model: nn.Module,
        core: nn.Module,
        micro_batches: Sequence[dict[str, Any]],
        *,
        scale_loss: Callable[[Tensor], Tensor] | None = None,
        no_sync: Callable[[], Any] | None = None,
    ) -> StepOutput:
        """Gradient caching (``train/contrastive_accum``): every pair of the accumulated batch is a
        negative for every other, as in one step on the whole batch, with a micro-batch's activations."""
        ids = torch.cat([image_id_tensor(b["samples"]) for b in micro_batches]).to(micro_batches[0]["image"].device)
        out = contrastive_accum_step(
            lambda b: model(b["image"], b["text_ids"], b["text_mask"], embeddings_only=True),
            micro_batches,
            lambda *rows: _weighed_by_rank(core.pair_loss(*rows, image_ids=ids)),
            scale_loss=scale_loss,
            no_sync=no_sync,
            module=core,
        )
        return _step_output(out.loss_output, loss=out.loss)

    @torch.no_grad()
    def embed(self, model: nn.Module, samples: Sequence[Sample], make_loader: LoaderFactory, device: torch.device):
        first = {key: group[0] for key, group in group_by_image(samples).items()}
        position = {k: i for i, k in enumerate(first)}
        loaded = [b for b in make_loader(list(first.values()), True) if "image" in b]
        embedded = [s.image_key for b in loaded for s in b["samples"]]
        if embedded != list(first):
            # a skipped (unreadable) image would shift every later row and silently corrupt the ranks
            missing = [k for k in first if k not in set(embedded)]
            raise DataError(f"retrieval evaluation: {len(missing)} gallery image(s) could not be read (e.g. {first[missing[0]].image_path or first[missing[0]].origin}); run 'polymodal data check' on the data")
        image_emb = torch.cat([model.encode_image(b["image"].to(device)).float().cpu() for b in loaded])
        texts = [s.text for s in samples]
        chunks = []
        for start in range(0, len(texts), 512):
            enc = self.tokenizer.encode(texts[start : start + 512], self.max_length)
            chunks.append(model.encode_text(enc.input_ids.to(device), enc.attention_mask.to(device)).float().cpu())
        text_to_image = torch.tensor([position[s.image_key] for s in samples])
        return image_emb, torch.cat(chunks), text_to_image, list(first.values())

    def evaluate(self, model: nn.Module, samples: Sequence[Sample], make_loader: LoaderFactory, device: torch.device) -> EvalResult:
        image_emb, text_emb, text_to_image, images = self.embed(model, samples, make_loader, device)
        m = retrieval_metrics(image_emb, text_emb, text_to_image)
        metrics = {f"i2t_{k}": v for k, v in m["image_to_text"].items()} | {f"t2i_{k}": v for k, v in m["text_to_image"].items()}
        metrics["rsum"] = m["rsum"]
        examples = []
        sims = text_emb[:8] @ image_emb.t()
        for j in range(min(8, len(samples))):
            top = sims[j].topk(min(5, sims.shape[1]))
            examples.append(
                {
                    "query": samples[j].text,
                    "gold": str(images[int(text_to_image[j])].image_path),
                    "top": [(str(images[int(i)].image_path), float(v), int(i) == int(text_to_image[j])) for v, i in zip(top.values, top.indices)],
                }
            )
        return EvalResult(metrics, {"gallery_images": len(images), "captions": len(samples), "examples": examples})


def _weighed_by_rank(out: Any) -> Any:
    """A ``local_loss`` ITC under DDP is the mean over this rank's rows, of ``columns`` in all: scored as one
    accumulated batch it gets no micro-batch share from the trainer, so it is weighed here by its rank's
    part of the rows (W n_rank / N; 1 when ranks are equal) to make the ranks' average the full batch's
    loss. A gathered loss over every row is the same on every rank and needs nothing."""
    itc = getattr(out, "itc", None)
    logits = getattr(itc, "logits_per_image", None)
    if logits is None or logits.shape[0] >= logits.shape[1]:
        return out
    from polymodal.distributed import world_size

    return dataclasses.replace(out, loss=out.loss * (world_size() * logits.shape[0] / logits.shape[1]))


def _step_output(out: Any, loss: Tensor | None = None) -> StepOutput:
    logs = {"acc_i2t": out.itc.acc_i2t, "logit_scale": out.itc.logit_scale}
    if loss is not None:  # gradient caching's whole-step loss: the trainer weighs nothing in it
        return StepOutput(loss, logs)
    return StepOutput(out.loss, logs, loss_over_ranks=getattr(out, "loss_over_ranks", None))  # a fusion encoder's MLM
