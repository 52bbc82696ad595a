"""One-line loading: ``model, processors = load_model("runs/vqa")``.

The weights always come with the exact preprocessing they were trained with (LAVIS-style): the image
processor (size, normalisation, resize mode), the text tokenizer and its ``max_length``, and the task's
state (the VQA answer vocabulary, the classifier's class names), all read from the checkpoint folder.

    from polymodal.api import load_model
    from polymodal import predict

    model, proc = load_model("runs/world_vqa")              # a run folder, checkpoints/ or step_* folder
    print(predict.answer(model, proc, ["scene.png"], ["what color is the cube?"]))

    pixels = proc.images(["a.png", "b.png"])                 # [2, 3, S, S], normalised as in training
    ids, mask = proc.texts(["a red cube", "two spheres"])    # [2, L] token ids and attention mask

Hugging Face checkpoints load the same way, from a folder or by zoo name (offline: the local cache):

    model, proc = load_model("clip-vit-base-patch32")        # CLIP: encode_image / encode_text
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from PIL import Image
from torch import nn

from polymodal.data.images import as_rgb, open_image
from polymodal.data.processors import ImageProcessor
from polymodal.data.tokenizers import TextTokenizer
from polymodal.errors import ConfigError, DataError, PolymodalError

__all__ = [
    "TASK_OF_MODEL",
    "ImageInput",
    "Processors",
    "load_model",
    "model_from_checkpoint",
    "processors_from_checkpoint",
    "resolve_device",
]

ImageInput = Union[Image.Image, str, "os.PathLike[str]", bytes]

# The task a model type is trained and evaluated with (a checkpoint written by the trainer names it too).
TASK_OF_MODEL: dict[str, str] = {
    "dual_encoder": "retrieval",
    "captioner": "captioning",
    "vqa": "vqa",
    "classifier": "classification",
    "multitask": "multitask",
    "mllm": "mllm",
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    name = (device or "cpu").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {device!r} is not a device name; use 'cpu', 'cuda', 'cuda:N' or 'auto'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for, but no CUDA device is available; use 'cpu' or 'auto'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} was asked for, but Apple's MPS backend is not available here; use 'cpu' or 'auto'")
    if dev.type not in ("cpu", "cuda", "mps"):  # torch knows more names (meta, xpu, ...) that models are not moved to here
        raise ConfigError(f"device {device!r}: polymodal runs on 'cpu', 'cuda' ('cuda:N') or 'mps'; use one of those or 'auto'")
    return dev


@dataclass
class Processors:
    """The preprocessing a checkpoint's weights were trained with, ready to turn inputs into tensors.

    ``task`` is the task adapter's name (``vqa``, ``retrieval``, ...) and ``task_state`` its saved state
    (``{"answer_vocab": ...}`` for VQA, ``{"classes": [...]}`` for classification).
    """

    image: ImageProcessor
    tokenizer: TextTokenizer | None
    max_length: int
    task: str | None
    task_state: dict[str, Any] = field(default_factory=dict)
    model_type: str | None = None
    source: str = ""  # where the weights came from, for messages
    media: Any = None  # a MediaPlan: how audio / video / feature inputs are decoded (None: the model reads none)
    chat: Any = None  # an assistant's (mllm) ChatEncoder: its tokenizer, prompt layout and image tokens
    # what evaluation does with a sample that has no image, when the model reads images: the run's
    # missing_modality ("skip", or "zero" / "learned": zeros flagged absent); None: no policy was saved
    missing_image: str | None = None

    def load_image(self, image: ImageInput) -> Image.Image:
        """A PIL image (RGB) from a PIL image, a path or encoded bytes; errors name the file."""
        if isinstance(image, Image.Image):
            return as_rgb(image)
        if isinstance(image, (bytes, bytearray)):
            return open_image(bytes(image))
        if isinstance(image, (str, os.PathLike)):
            return open_image(Path(image))
        raise DataError(f"an image must be a PIL image, a file path or encoded bytes, got {type(image).__name__}")

    def images(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """``[B, 3, S, S]`` float pixels, processed exactly as at evaluation time in training."""
        if isinstance(images, (str, os.PathLike, Image.Image, bytes)):
            images = [images]  # type: ignore[list-item]
        images = list(images)  # a generator or any other iterable
        if len(images) == 0:
            raise DataError("no images given")
        return torch.stack([self.image(self.load_image(im)) for im in images])

    def texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, each ``[B, L]`` with ``L <= max_length``."""
        if isinstance(texts, str):
            texts = [texts]
        if self.tokenizer is None:
            raise PolymodalError(f"{self.source or 'this checkpoint'} has no text tokenizer, so it cannot encode texts")
        texts = list(texts)
        if len(texts) == 0:
            raise DataError("no texts given")
        wrong = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if wrong is not None:
            raise DataError(f"texts[{wrong}] should be a string, got {type(texts[wrong]).__name__} {texts[wrong]!r:.40}")
        enc = self.tokenizer.encode(texts, self.max_length)
        return enc.input_ids, enc.attention_mask

    def build_task(self) -> Any:
        """The task adapter (with its saved state) that trained these weights, for evaluation."""
        from polymodal.tasks import build_task

        if not self.task:
            raise PolymodalError(
                f"{self.source or 'this checkpoint'} holds a {self.model_type!r} model, which no evaluation task uses"
            )
        tokenizer = self.chat.tokenizer if self.chat is not None else self.tokenizer
        task = build_task(self.task, tokenizer, self.max_length)
        task.load_state(self.task_state)
        if self.chat is not None:  # an assistant: prompts are laid out as in training
            task.encoder, task.processor = self.chat, self.image
        return task


def load_model(
    name_or_path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    *,
    expect_type: str | None = None,
    allow_download: bool = False,
) -> tuple[nn.Module, Processors]:
    """Load a model and the exact preprocessing it expects, in eval mode on ``device``.

    ``name_or_path`` is a polymodal run folder (its best checkpoint, else its latest), a ``checkpoints/``
    folder or one ``step_*`` folder; a Hugging Face checkpoint folder (CLIP, SigLIP, BLIP, ViLT); a zoo
    name such as ``clip-vit-base-patch32`` (``polymodal models`` lists them); or a hub repo id. Names
    are looked up in the local Hugging Face cache only, unless ``allow_download``. ``expect_type``
    (``"vqa"``, ``"dual_encoder"``, ...) rejects a model of another type with an error naming both.
    """
    from polymodal.hub.loading import is_hf_checkpoint, load_pretrained
    from polymodal.hub.zoo import locate
    from polymodal.train.checkpoint import CheckpointError, load_checkpoint

    path = locate(name_or_path, allow_download=allow_download)
    if is_hf_checkpoint(path):
        model, processors = load_pretrained(path)
        if expect_type is not None and processors.model_type != expect_type:
            raise CheckpointError(f"{path} holds a {processors.model_type!r} model, but a {expect_type!r} model was expected")
        return model.to(resolve_device(device)), processors
    ckpt = load_checkpoint(path, expect_type=expect_type)
    return model_from_checkpoint(ckpt, device)


def processors_from_checkpoint(ckpt: Any) -> Processors:
    """The :class:`Processors` of a loaded :class:`~polymodal.train.checkpoint.Checkpoint`."""
    from polymodal.train.checkpoint import PROCESSORS_FILE, CheckpointError

    p = ckpt.processors
    where = ckpt.path / PROCESSORS_FILE
    if p.get("hf_folder"):  # a fine-tuned Hugging Face model: its own processors, saved beside the weights
        return _fine_tuned_processors(ckpt, _hf_parts(ckpt))
    if not isinstance(p.get("image"), dict):
        raise CheckpointError(f"{where} has no 'image' processor settings; the checkpoint was not written by polymodal's trainer")
    try:
        image = ImageProcessor.from_dict(p["image"], train=False)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: the 'image' processor settings are invalid ({e})") from None
    media = None
    if isinstance(p.get("media"), dict):
        from polymodal.data.media import plan_from_dict

        try:
            media = plan_from_dict(p["media"])
        except (TypeError, ValueError, PolymodalError) as e:
            raise CheckpointError(f"{where}: the 'media' (audio / video / features) settings are invalid ({e})") from None
    model_type = ckpt.model_type
    task = p.get("task") or TASK_OF_MODEL.get(str(model_type))
    max_length = p.get("text_max_length")
    if not isinstance(max_length, int):
        max_length = 32
    return Processors(
        image=image,
        tokenizer=ckpt.tokenizer,
        max_length=max_length,
        task=task,
        task_state=dict(p.get("task_state") or {}),
        model_type=model_type,
        source=str(ckpt.path),
        media=media,
        missing_image=_missing_image(p, where),
    )


def _hf_parts(ckpt: Any) -> Any:
    """The Hugging Face config/tokenizer/processor folder inside a fine-tuned pretrained checkpoint."""
    from polymodal.hub.loading import PretrainedLoadError, open_parts
    from polymodal.train.checkpoint import PROCESSORS_FILE, CheckpointError

    folder = ckpt.path / str(ckpt.processors["hf_folder"])
    if folder.parent != ckpt.path or not folder.is_dir():
        raise CheckpointError(f"{ckpt.path / PROCESSORS_FILE} names the Hugging Face files folder {folder.name!r}, but {folder} is missing; copy the whole checkpoint folder")
    try:
        return open_parts(folder)
    except PretrainedLoadError as e:
        raise CheckpointError(str(e)) from None


def _fine_tuned_processors(ckpt: Any, parts: Any) -> Processors:
    """The checkpoint's own HF processors, with the text length, task and task state the run saved."""
    from polymodal.hub.loading import processors_of
    from polymodal.train.checkpoint import PROCESSORS_FILE

    p = ckpt.processors
    processors = processors_of(parts)
    processors.max_length = int(p.get("text_max_length") or processors.max_length)
    processors.task = p.get("task") or processors.task
    processors.task_state = dict(p.get("task_state") or {})
    processors.source = str(ckpt.path)
    processors.missing_image = _missing_image(p, ckpt.path / PROCESSORS_FILE)
    return processors


def _missing_image(saved: dict[str, Any], where: Path) -> str | None:
    from polymodal.data.media import MISSING_POLICIES
    from polymodal.train.checkpoint import CheckpointError

    policy = saved.get("missing_image")
    if policy is not None and policy not in MISSING_POLICIES:
        raise CheckpointError(f"{where}: 'missing_image' must be one of {MISSING_POLICIES}, got {policy!r}")
    return policy


def model_from_checkpoint(ckpt: Any, device: str | torch.device = "cpu") -> tuple[nn.Module, Processors]:
    """Rebuild the model of a loaded checkpoint, load its (sha256-checked) weights, eval mode."""
    from polymodal.models.configs import parse_model_config
    from polymodal.models.factory import BuildContext, build_model
    from polymodal.models.object_head import ObjectVocab
    from polymodal.models.vqa import AnswerVocab
    from polymodal.train.checkpoint import CONFIG_FILE, PROCESSORS_FILE, CheckpointError

    # a fine-tuned HF model's folder is read once: its tokenizer, processor and config serve both
    parts = _hf_parts(ckpt) if ckpt.processors.get("hf_folder") else None
    processors = _fine_tuned_processors(ckpt, parts) if parts is not None else processors_from_checkpoint(ckpt)
    config = parse_model_config(ckpt.model_config, str(ckpt.path / CONFIG_FILE))
    if config.type == "pretrained":
        from polymodal.hub.loading import build_adapter

        if parts is None:
            raise CheckpointError(f"{ckpt.path / PROCESSORS_FILE} names no 'hf_folder', which a 'pretrained' model needs")
        model = build_adapter(parts, weights=False, freeze=config.freeze)
        ckpt.load_model_state(model)
        return model.eval().to(resolve_device(device)), processors
    if config.type == "mllm":
        return _assistant_from_checkpoint(ckpt, config, processors, device)
    vocab = None
    if "answer_vocab" in processors.task_state:
        try:
            vocab = AnswerVocab.from_dict(processors.task_state["answer_vocab"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{ckpt.path / PROCESSORS_FILE}: the answer vocabulary is malformed ({e})") from None
    if config.type in ("vqa", "multitask") and vocab is None:
        raise CheckpointError(
            f"{ckpt.path / PROCESSORS_FILE} holds no answer vocabulary (task_state.answer_vocab), which a {config.type!r} model needs"
        )
    if config.type != "classifier" and ckpt.tokenizer is None:
        raise CheckpointError(f"{ckpt.path} has no tokenizer.json, which a {config.type!r} model needs")
    objects = None
    if processors.task_state.get("object_attributes"):
        try:
            objects = ObjectVocab(processors.task_state["object_attributes"])
        except (AttributeError, TypeError, DataError) as e:
            raise CheckpointError(f"{ckpt.path / PROCESSORS_FILE}: the object attributes are malformed ({e})") from None
    try:
        model = build_model(config, BuildContext(tokenizer=ckpt.tokenizer, answer_vocab=vocab, object_vocab=objects))
    except ConfigError as e:
        raise CheckpointError(f"{ckpt.path / CONFIG_FILE}: cannot rebuild the model: {e}") from None
    ckpt.load_model_state(model)
    model.eval()
    return model.to(resolve_device(device)), processors


def _assistant_from_checkpoint(ckpt: Any, config: Any, processors: Processors, device: str | torch.device) -> tuple[nn.Module, Processors]:
    """An mllm checkpoint: the LM's config and tokenizer come from its own ``lm/`` folder."""
    from polymodal.models.factory import BuildContext, build_model
    from polymodal.models.mllm_build import chat_encoder, load_lm_tokenizer
    from polymodal.train.checkpoint import CONFIG_FILE, PROCESSORS_FILE, CheckpointError

    folder = ckpt.path / str(ckpt.processors.get("lm_folder") or "lm")
    if folder.parent != ckpt.path or not (folder / "config.json").is_file():
        raise CheckpointError(f"{ckpt.path / PROCESSORS_FILE}: the language model's files ({folder}) are missing; copy the whole checkpoint folder")
    config = config.model_copy(update={"lm": str(folder), "init_from": None})
    try:
        tokenizer = load_lm_tokenizer(str(folder), config.image_token)
        model = build_model(config, BuildContext(lm_tokenizer=tokenizer, load_weights=False))
    except ConfigError as e:
        raise CheckpointError(f"{ckpt.path / CONFIG_FILE}: cannot rebuild the assistant: {e}") from None
    ckpt.load_model_state(model)
    processors.chat = chat_encoder(model, tokenizer, config.system_prompt, config.truncation)
    processors.max_length = model.max_length or processors.max_length
    return model.eval().to(resolve_device(device)), processors
