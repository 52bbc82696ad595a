"""A tiny causal language model trained from scratch on a corpus, saved as a Hugging Face folder.

The assistant recipe needs a pretrained LM, and none can be downloaded here; a few-million-parameter
Llama (or GPT-2) trained for a few minutes on the world's own captions and questions is enough to
show every stage of the recipe working, and it is an ordinary ``save_pretrained`` folder, so the
rest of the code cannot tell it from SmolLM or Qwen.

The tokenizer is byte-level BPE (any text round-trips, no unknown tokens) with ``<s>``, ``</s>``,
``<pad>`` and the ``<image>`` token reserved.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from polymodal.errors import ConfigError, DataError

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")


def train_lm_tokenizer(texts: Sequence[str], vocab_size: int = 1024) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise DataError("cannot train a tokenizer on an empty corpus")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", additional_special_tokens=["<image>"]
    )


def tiny_lm_config(arch: Literal["llama", "gpt2"], tokenizer: Any, width: int, depth: int, heads: int, context: int) -> Any:
    import transformers

    if width % heads:
        raise ConfigError(f"tiny lm: width {width} must be divisible by heads {heads}")
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if arch == "llama":
        return transformers.LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width, num_hidden_layers=depth, num_attention_heads=heads,
            num_key_value_heads=heads, max_position_embeddings=context, tie_word_embeddings=True, **ids,
        )
    if arch == "gpt2":
        return transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=width, n_layer=depth, n_head=heads, n_positions=context, **ids)
    raise ConfigError(f"tiny lm: arch must be 'llama' or 'gpt2', got {arch!r}")


def _blocks(tokenizer: Any, texts: Sequence[str], block: int) -> torch.Tensor:
    """The corpus as one stream (each text ends with ``</s>``) cut into ``[N, block]`` training rows."""
    stream: list[int] = []
    for text in texts:
        stream += tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    n = len(stream) // block
    if n == 0:
        raise DataError(f"the corpus has {len(stream)} tokens, fewer than one block of {block}")
    return torch.tensor(stream[: n * block]).view(n, block)


def pretrain_lm(
    model: Any, tokenizer: Any, texts: Sequence[str], steps: int, batch_size: int = 32, block: int = 128, lr: float = 3e-3,
    seed: int = 0, progress: bool = True,
) -> list[float]:
    """Next-token training on ``texts`` (AdamW, warmup + cosine); returns the loss of every step."""
    rows = _blocks(tokenizer, texts, block)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc="pretraining the language model", unit="step", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        batch = rows[torch.randint(len(rows), (batch_size,), generator=g)]
        logits = model(input_ids=batch).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses


def save_lm(model: Any, tokenizer: Any, out: str | Path) -> Path:
    """``save_pretrained`` model and tokenizer into ``out`` atomically (a temporary folder, then a rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}.tmp"
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def build_tiny_lm(
    texts: Sequence[str], out: str | Path, arch: Literal["llama", "gpt2"] = "llama", width: int = 128, depth: int = 4, heads: int = 4,
    context: int = 512, vocab_size: int = 1024, steps: int = 300, batch_size: int = 32, lr: float = 3e-3, seed: int = 0, progress: bool = True,
) -> tuple[Path, list[float]]:
    """Tokenizer + LM trained on ``texts`` for ``steps`` (0: random weights), saved in ``out``."""
    import transformers

    torch.manual_seed(seed)
    tokenizer = train_lm_tokenizer(texts, vocab_size)
    model = transformers.AutoModelForCausalLM.from_config(tiny_lm_config(arch, tokenizer, width, depth, heads, context))
    losses = pretrain_lm(model, tokenizer, texts, steps, batch_size, min(128, context), lr, seed, progress) if steps else []
    return save_lm(model, tokenizer, out), losses


def corpus_texts(samples: Any) -> list[str]:
    """The text of data samples as LM training lines: captions, "question answer", conversation turns."""
    from polymodal.data.chat import IMAGE_MARKER, majority_answer

    texts: list[str] = []
    for s in samples:
        if s.conversation:
            texts.append(" ".join(t.replace(IMAGE_MARKER, "").strip() for _, t in s.conversation))
        elif s.text and s.answers:
            texts.append(f"{s.text} {majority_answer(s.answers)}")
        elif s.text:
            texts.append(s.text)
    return texts


def world_corpus(root: str | Path) -> list[str]:
    """:func:`corpus_texts` of a built-in world's train split: its captions, questions and conversations."""
    from polymodal.data.check import load_spec
    from polymodal.data.formats import read_source

    wanted = {"coco_captions", "vqa_v2", "llava"}
    specs = [spec for name, spec in load_spec(root) if name.split("[")[0] in ("train", "conversations_train") and spec.format in wanted]
    return corpus_texts(s for spec in specs for s in read_source(spec))
