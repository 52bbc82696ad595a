"""Hugging Face CLIP weights in polymodal's own dual encoder: the same model, run by polymodal's code.

A CLIP folder loads as a ``pretrained`` adapter, which runs ``transformers``' CLIPModel: its speed is
the peer's. polymodal's own towers compute the same functions faster on CPU (benchmarks/RESULTS.md,
"Inference": image embedding 1.15-1.30x, text 1.21-1.29x; packed texts, a fused QuickGELU MLP, one
q/k/v projection), and train with polymodal's packing and fused optimizer. The architectures match
parameter for parameter (pre-LN ViT with ``ln_pre``, a causal text tower pooled at its last real
token, QuickGELU, bias-free projections), so converting is a renaming plus stacking q, k and v into
one projection. :func:`convert_clip` writes a polymodal run folder that every command takes
(``polymodal predict``, ``eval``, ``index build``, ``serve``, and ``train`` to fine-tune).

The text tower pools at the last real token of each text. CLIPModel pools at the end-of-text token:
the first one (configs naming its id) or the largest id in the text (OpenAI's configs, eos_token_id
2, whose end token is the vocabulary's last id). Both are the last real token when texts end with it,
and polymodal's tokenizer keeps the end token even when it truncates. The conversion checks the
embeddings on real tokenized texts, so a tokenizer for which this fails is caught.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from polymodal.hub.loading import PretrainedLoadError

__all__ = ["clip_model_config", "clip_state_dict", "convert_clip"]

_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def _tower(cfg: Any, what: str) -> dict[str, Any]:
    """The options both towers share, checked: polymodal's MLP is ``int(width * mlp_ratio)`` wide."""
    width, hidden = int(cfg.hidden_size), int(cfg.intermediate_size)
    act = str(getattr(cfg, "hidden_act", "quick_gelu"))
    if act not in _ACTIVATIONS:
        raise PretrainedLoadError(f"CLIP {what} tower: hidden_act {act!r} has no polymodal equivalent (known: {sorted(_ACTIVATIONS)})")
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise PretrainedLoadError(f"CLIP {what} tower: intermediate_size {hidden} is not expressible as width {width} x a ratio")
    return {
        "width": width, "depth": int(cfg.num_hidden_layers), "heads": int(cfg.num_attention_heads), "mlp_ratio": ratio,
        "norm_eps": float(getattr(cfg, "layer_norm_eps", 1e-5)), "activation": _ACTIVATIONS[act],
    }


def clip_model_config(hf_config: Any, pad_id: int = 0) -> dict[str, Any]:
    """polymodal's ``dual_encoder`` config for a ``transformers`` ``CLIPConfig``. The towers own their
    bias-free projections (``output_dim``), as CLIP's do, so they exist even where ``embed_dim`` equals
    a tower's width."""
    if getattr(hf_config, "model_type", None) != "clip":
        raise PretrainedLoadError(f"expected a CLIP config (model_type 'clip'), got model_type {getattr(hf_config, 'model_type', None)!r}")
    v, t, dim = hf_config.vision_config, hf_config.text_config, int(hf_config.projection_dim)
    return {
        "type": "dual_encoder",
        "embed_dim": dim,
        "vision": {"name": "vit", "image_size": int(v.image_size), "patch_size": int(v.patch_size), "ln_pre": True, "output_dim": dim} | _tower(v, "vision"),
        "text": {"name": "text_transformer", "max_length": int(t.max_position_embeddings), "causal": True, "pool": "eos", "pad_id": pad_id, "output_dim": dim}
        | _tower(t, "text"),
    }


def _layers(hf: Mapping[str, Tensor], src: str, dst: str, depth: int) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for i in range(depth):
        a, b = f"{src}.encoder.layers.{i}", f"{dst}.transformer.blocks.{i}"
        for part in ("weight", "bias"):
            out[f"{b}.attn.qkv.{part}"] = torch.cat([hf[f"{a}.self_attn.{p}_proj.{part}"] for p in ("q", "k", "v")])
            out[f"{b}.attn.proj.{part}"] = hf[f"{a}.self_attn.out_proj.{part}"]
            out[f"{b}.ln_1.{part}"] = hf[f"{a}.layer_norm1.{part}"]
            out[f"{b}.ln_2.{part}"] = hf[f"{a}.layer_norm2.{part}"]
            out[f"{b}.mlp.fc.{part}"] = hf[f"{a}.mlp.fc1.{part}"]
            out[f"{b}.mlp.proj.{part}"] = hf[f"{a}.mlp.fc2.{part}"]
    return out


def clip_state_dict(hf: Mapping[str, Tensor], vision_depth: int, text_depth: int) -> dict[str, Tensor]:
    """``CLIPModel.state_dict()`` renamed to polymodal's ``DualEncoder`` (q, k, v stacked into one)."""
    try:
        out = {
            "image_encoder.cls_token": hf["vision_model.embeddings.class_embedding"],
            "image_encoder.pos_embed": hf["vision_model.embeddings.position_embedding.weight"],
            "image_encoder.patch_embed.weight": hf["vision_model.embeddings.patch_embedding.weight"],
            "image_encoder.ln_pre.weight": hf["vision_model.pre_layrnorm.weight"],
            "image_encoder.ln_pre.bias": hf["vision_model.pre_layrnorm.bias"],
            "image_encoder.ln_post.weight": hf["vision_model.post_layernorm.weight"],
            "image_encoder.ln_post.bias": hf["vision_model.post_layernorm.bias"],
            "image_encoder.proj.weight": hf["visual_projection.weight"],
            "text_encoder.token_embed.weight": hf["text_model.embeddings.token_embedding.weight"],
            "text_encoder.pos_embed": hf["text_model.embeddings.position_embedding.weight"],
            "text_encoder.ln_final.weight": hf["text_model.final_layer_norm.weight"],
            "text_encoder.ln_final.bias": hf["text_model.final_layer_norm.bias"],
            "text_encoder.proj.weight": hf["text_projection.weight"],
            "itc.logit_scale": hf["logit_scale"].reshape(1),
        }
        out |= _layers(hf, "vision_model", "image_encoder", vision_depth)
        out |= _layers(hf, "text_model", "text_encoder", text_depth)
    except KeyError as e:
        raise PretrainedLoadError(f"the CLIP weights lack {e.args[0]!r}; is this a CLIPModel checkpoint?") from None
    return {k: v.detach().clone().float() for k, v in out.items()}


def convert_clip(folder: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a polymodal run folder (``out_dir/checkpoints/...``) holding the CLIP checkpoint in
    ``folder`` (a ``save_pretrained`` folder with ``tokenizer.json`` and ``preprocessor_config.json``,
    or a zoo name) as polymodal's own dual encoder. Returns the checkpoint folder.

    The model is rebuilt from the written files and its embeddings are compared with ``transformers``'
    on a few inputs before returning: a mismatch raises instead of leaving a subtly wrong model."""
    from tokenizers import Tokenizer

    from polymodal.data.processors import ImageProcessor, ImageProcessorConfig
    from polymodal.data.tokenizers import TextTokenizer
    from polymodal.hub.towers import image_settings_of
    from polymodal.hub.zoo import resolve
    from polymodal.models.factory import BuildContext, build_model
    from polymodal.train.checkpoint import save_checkpoint

    src = resolve(str(folder))
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PretrainedLoadError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    if not (src / "tokenizer.json").is_file():
        raise PretrainedLoadError(f"{src} has no tokenizer.json (the fast tokenizer's file), which the converted model's tokenizer is made from")
    import transformers

    hf = transformers.CLIPModel.from_pretrained(src).eval()
    tokenizer = TextTokenizer(Tokenizer.from_file(str(src / "tokenizer.json")))
    config = clip_model_config(hf.config, pad_id=tokenizer.pad_id)
    if tokenizer.vocab_size != hf.config.text_config.vocab_size:
        raise PretrainedLoadError(
            f"{src}: tokenizer.json has {tokenizer.vocab_size} tokens but the text tower embeds {hf.config.text_config.vocab_size}"
        )
    model = build_model(config, BuildContext(tokenizer=tokenizer))
    missing, unexpected = model.load_state_dict(
        clip_state_dict(hf.state_dict(), config["vision"]["depth"], config["text"]["depth"]), strict=False
    )
    if missing or unexpected:
        raise PretrainedLoadError(f"converting {src}: weights not matched: missing {missing}, unexpected {unexpected}")
    settings = image_settings_of(str(src))  # preprocessor_config.json: crop size, mean, std
    size = config["vision"]["image_size"]
    if settings.get("size", size) != size:
        raise PretrainedLoadError(f"{src}: the image processor crops to {settings['size']} px but the vision tower takes {size} px")
    stats = {k: tuple(settings[k]) for k in ("mean", "std") if k in settings}  # else CLIP's own, the default
    image = ImageProcessor(ImageProcessorConfig(size=size, **stats))  # shortest side to size, centre crop, bicubic
    _check_same_embeddings(hf, model.eval(), tokenizer, config, src)
    processors = {"image": image.to_dict(), "text_max_length": config["text"]["max_length"], "task": "retrieval", "task_state": {}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "converted_from.json").write_text(json.dumps({"source": str(src), "transformers_class": "CLIPModel"}, indent=1))
    return save_checkpoint(out, model=model, model_config=config, global_step=0, processors=processors, tokenizer=tokenizer, keep_last=0)


@torch.no_grad()
def _check_same_embeddings(hf: Any, model: Any, tokenizer: Any, config: dict[str, Any], src: Path) -> None:
    """The converted model's normalised embeddings equal CLIPModel's on seeded images and on texts of
    several lengths (padded, so packing and last-token pooling are exercised)."""
    gen = torch.Generator().manual_seed(0)
    size = config["vision"]["image_size"]
    images = torch.randn(2, 3, size, size, generator=gen)
    batch = tokenizer.encode(["a photo", "a photo of a cat on a red mat", "x"], config["text"]["max_length"])
    want_img = torch.nn.functional.normalize(_features(hf.get_image_features(pixel_values=images)), dim=-1)
    want_txt = torch.nn.functional.normalize(
        _features(hf.get_text_features(input_ids=batch.input_ids, attention_mask=batch.attention_mask)), dim=-1
    )
    got_img, got_txt = model.encode_image(images), model.encode_text(batch.input_ids, batch.attention_mask)
    worst = max(float((got_img - want_img).abs().max()), float((got_txt - want_txt).abs().max()))
    if worst > 1e-4:
        raise PretrainedLoadError(f"converting {src}: the converted embeddings differ from transformers' by {worst:.2e} (> 1e-4)")


def _features(out: Any) -> Tensor:
    """``get_*_features`` returns a tensor, or (newer transformers) an output whose pooler holds it."""
    return out if isinstance(out, Tensor) else out.pooler_output
