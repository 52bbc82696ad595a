"""Hugging Face CLIP weights in polymodal's own dual encoder: the same model, run by polymodal's code.

A CLIP folder loads as a ``pretrained`` adapter, which runs ``transformers``' CLIPModel: its speed is
the peer's. polymodal's own towers compute the same functions faster on CPU (benchmarks/RESULTS.md,
"Inference": image embedding 1.15-1.30x, text 1.21-1.34x, timed with the same weights on both sides;
packed texts, a fused QuickGELU MLP, one q/k/v projection). The architectures match parameter for
parameter (pre-LN ViT with ``ln_pre``, a causal text tower pooled at its end-of-text token, QuickGELU,
bias-free projections), so converting is a renaming plus stacking q, k and v into one projection.
:func:`convert_clip` writes a polymodal run folder that ``polymodal predict``, ``eval``, ``index build``
and ``serve`` take, and that ``polymodal train`` fine-tunes when a config names it in ``init_from``.

Pooling: CLIPModel pools at the end-of-text token, the first one (configs naming its id) or the
largest id in the text (OpenAI's configs, ``eos_token_id`` 2, whose end token is the vocabulary's last
id); polymodal's text tower at the last real token. They agree when every text ends with the end token
(polymodal's tokenizer keeps it even when it truncates) and, for OpenAI's configs, no token id is larger
than the end token's: both are checked, as is the tokenizer naming the end token the config names.

Padding: CLIP's tokenizer has no pad token, so the converted model pads with id 0 (a real token, "!").
Every polymodal caller passes the attention mask, which is what the model reads; code calling
``encode_text(ids)`` without one would lose real "!" tokens.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from polymodal.hub.loading import PretrainedLoadError

log = logging.getLogger(__name__)

__all__ = ["clip_model_config", "clip_state_dict", "convert_clip"]

_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def _tower(cfg: Any, what: str) -> dict[str, Any]:
    """The options both towers share, checked: polymodal's MLP is ``int(width * mlp_ratio)`` wide."""
    width, hidden = int(cfg.hidden_size), int(cfg.intermediate_size)
    act = str(getattr(cfg, "hidden_act", "quick_gelu"))
    if act not in _ACTIVATIONS:
        raise PretrainedLoadError(f"CLIP {what} tower: hidden_act {act!r} has no polymodal equivalent (known: {sorted(_ACTIVATIONS)})")
    ratio = hidden / width
    if int(width * ratio) != hidden:  # polymodal sizes its MLP as int(width * mlp_ratio); float rounding can miss
        raise PretrainedLoadError(f"CLIP {what} tower: intermediate_size {hidden} over width {width} does not round-trip through mlp_ratio")
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


def clip_image_processor(src: Path, image_size: int) -> Any:
    """polymodal's ``ImageProcessorConfig`` doing what the folder's ``preprocessor_config.json`` asks:
    shortest side to the crop size then a centre crop, or a plain resize to the tower's size. Anything
    it cannot do the same way is refused, naming the setting (a silently different preprocessing would
    give subtly worse embeddings)."""
    from polymodal.data.processors import INTERPOLATIONS, ImageProcessorConfig

    resample = {int(code): name for name, code in INTERPOLATIONS.items()}  # PIL's codes, as the JSON stores them

    path = src / "preprocessor_config.json"
    if not path.is_file():
        log.warning("%s has no preprocessor_config.json: using CLIP's resize, crop and statistics at %d px", src, image_size)
        return ImageProcessorConfig(size=image_size, resize_rounding="floor")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise PretrainedLoadError(f"{path}: not readable JSON ({e})") from None

    def refuse(what: str) -> PretrainedLoadError:
        return PretrainedLoadError(f"{path}: {what}; polymodal's image processor cannot do the same, so the conversion stops")

    if cfg.get("do_normalize", True) is False or abs(float(cfg.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9 or cfg.get("do_rescale", True) is False:
        raise refuse("do_normalize / do_rescale / rescale_factor differ from CLIP's (scale to 0-1, then normalise)")
    interpolation = resample.get(int(cfg.get("resample", 3)))
    if interpolation is None:
        raise refuse(f"resample {cfg.get('resample')!r} is not one of {sorted(resample)}")
    size = cfg.get("size") or {}
    size = {"shortest_edge": size} if isinstance(size, int) else size
    if cfg.get("do_center_crop", True):
        crop = cfg.get("crop_size") or {}
        crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
        if crop.get("height") != crop.get("width") or crop.get("height") != image_size:
            raise refuse(f"crop_size {cfg.get('crop_size')!r} is not the vision tower's {image_size} x {image_size}")
        if size.get("shortest_edge", image_size) != image_size:
            raise refuse(f"size.shortest_edge {size.get('shortest_edge')} differs from the crop {image_size}")
        mode = "shortest_then_center_crop"
    else:
        if size.get("height") != image_size or size.get("width") != image_size:
            raise refuse(f"without a centre crop, size {cfg.get('size')!r} must be the vision tower's {image_size} x {image_size}")
        mode = "squash"
    stats = {}
    for key, name in (("image_mean", "mean"), ("image_std", "std")):
        value = cfg.get(key)
        if value is not None:
            if not (isinstance(value, list) and len(value) == 3):
                raise refuse(f"{key} {value!r} is not three numbers")
            stats[name] = tuple(float(v) for v in value)
    return ImageProcessorConfig(size=image_size, resize_mode=mode, interpolation=interpolation, resize_rounding="floor", **stats)


def _check_end_token(hf_config: Any, tokenizer: Any, src: Path) -> None:
    """The pooling agreement of the module docstring, checked on the tokenizer itself."""
    text = hf_config.text_config
    if tokenizer.sep_id is None:
        raise PretrainedLoadError(f"{src}/tokenizer.json names no end-of-text token, where CLIP pools")
    if int(text.eos_token_id) == 2:  # OpenAI's lineage: CLIPModel pools at the largest id in the text
        if tokenizer.sep_id != text.vocab_size - 1:
            raise PretrainedLoadError(
                f"{src}: the config pools at the largest token id (eos_token_id 2), but the end token's id "
                f"{tokenizer.sep_id} is not the vocabulary's last ({text.vocab_size - 1}): texts with larger ids would pool elsewhere"
            )
    elif int(text.eos_token_id) != tokenizer.sep_id:
        raise PretrainedLoadError(f"{src}: the config's eos_token_id {text.eos_token_id} is not the tokenizer's end token {tokenizer.sep_id}")


def _load_clip(src: Path) -> Any:
    """CLIPModel in float32, refusing a folder of another family or one whose weights are incomplete
    (``from_pretrained`` would fill the gaps with random values, and every check after would pass)."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise PretrainedLoadError(f"{src}: not a readable Hugging Face config ({e})") from None
    clip_model_config(config)  # model_type 'clip', before any weight is read
    try:
        model, info = transformers.CLIPModel.from_pretrained(src, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise PretrainedLoadError(f"{src}: the CLIP weights do not load ({e})") from None
    gaps = {k: [n for n in info.get(k, []) if "position_ids" not in n] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(gaps.values()):
        raise PretrainedLoadError(f"{src}: the weights do not match a CLIPModel of this config: {({k: v for k, v in gaps.items() if v})}")
    return model.eval()


def convert_clip(folder: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a polymodal run folder (``out_dir/checkpoints/...``) holding the CLIP checkpoint in
    ``folder`` (a ``save_pretrained`` folder with ``tokenizer.json``, or a zoo name) as polymodal's own
    dual encoder. Returns the checkpoint folder.

    The converted model's embeddings are compared with ``transformers``' on a few inputs before anything
    is written: a mismatch raises instead of leaving a subtly wrong model. The run is built in a
    temporary folder and renamed into place, so ``out_dir`` holds the old run or the new one, whole;
    ``overwrite`` replaces an existing one."""
    import shutil
    import uuid

    from polymodal.atomic import replace_dir
    from polymodal.data.processors import ImageProcessor
    from polymodal.data.tokenizers import load_tokenizer
    from polymodal.hub.zoo import resolve
    from polymodal.models.factory import BuildContext, build_model
    from polymodal.train.checkpoint import save_checkpoint

    src = resolve(str(folder))
    out = Path(out_dir)
    if out.is_file():
        raise PretrainedLoadError(f"--out {out} is a file; give a folder for the run")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PretrainedLoadError(f"{out} exists and is not empty; pass --overwrite (overwrite=True) to replace it")
    if out.resolve() == src.resolve():
        raise PretrainedLoadError(f"--out {out} is the CLIP folder itself; write the run elsewhere")
    if not (src / "tokenizer.json").is_file():
        raise PretrainedLoadError(f"{src} has no tokenizer.json (the fast tokenizer's file), which the converted model's tokenizer is made from")
    hf = _load_clip(src)
    tokenizer = load_tokenizer(src / "tokenizer.json")
    config = clip_model_config(hf.config, pad_id=tokenizer.pad_id)
    if tokenizer.vocab_size != hf.config.text_config.vocab_size:
        raise PretrainedLoadError(
            f"{src}: tokenizer.json has {tokenizer.vocab_size} tokens but the text tower embeds {hf.config.text_config.vocab_size}"
        )
    _check_end_token(hf.config, tokenizer, src)
    image = ImageProcessor(clip_image_processor(src, config["vision"]["image_size"]))
    model = build_model(config, BuildContext(tokenizer=tokenizer))
    model.load_state_dict(clip_state_dict(hf.state_dict(), config["vision"]["depth"], config["text"]["depth"]))
    _check_same_embeddings(hf, model.eval(), tokenizer, config, src)
    processors = {"image": image.to_dict(), "text_max_length": config["text"]["max_length"], "task": "retrieval", "task_state": {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        checkpoint = save_checkpoint(tmp, model=model, model_config=config, global_step=0, processors=processors, tokenizer=tokenizer, keep_last=0)
        (tmp / "converted_from.json").write_text(json.dumps({"source": str(src), "transformers_class": "CLIPModel"}, indent=1))
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / checkpoint.relative_to(tmp)


@torch.no_grad()
def _check_same_embeddings(hf: Any, model: Any, tokenizer: Any, config: dict[str, Any], src: Path) -> None:
    """The converted model's normalised embeddings equal CLIPModel's on seeded images and on texts of
    several lengths, one longer than the context (padded and truncated: packing, last-token pooling and
    the kept end token are all exercised)."""
    gen = torch.Generator().manual_seed(0)
    size = config["vision"]["image_size"]
    images = torch.randn(2, 3, size, size, generator=gen)
    long_text = " ".join(["a photo of a cat on a red mat"] * (config["text"]["max_length"] // 4 + 1))
    batch = tokenizer.encode(["a photo", "a photo of a cat on a red mat", "x", long_text], config["text"]["max_length"])
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
