"""Starting a run from another run's weights (``init_from``): fine-tuning a trained or converted model.

A run's weights only mean something with the model, the tokenizer and the image preprocessing they
were trained with, so those come from the run too: the new config may leave ``model`` out or give only
changes to it (``model: {vision: {freeze: true}}``, merged by ``config.load_config``), and may not set
what would silently change the inputs the weights expect (the tokenizer, the image size and
normalisation). Training-only choices (augmentation, the optimizer, the data, the task's schedule)
are the new config's. A CLIP checkpoint rewritten by ``polymodal convert clip`` is such a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polymodal.config import RunConfig
from polymodal.data.tokenizers import TextTokenizer
from polymodal.errors import ConfigError
from polymodal.train.checkpoint import Checkpoint, CheckpointError, load_checkpoint

# image settings that decide what the weights see, and so belong to the run the weights come from
_IMAGE_GEOMETRY = ("size", "mean", "std")
# model types whose runs start from other runs in their own way
_OWN_WAY = {
    "pretrained": "fine-tune the Hugging Face folder itself with model: {type: pretrained, path: ...}, or convert it first (polymodal convert clip)",
    "mllm": "an assistant's second stage starts from the first with model.init_from",
}


@dataclass
class InitRun:
    """What a new run takes from the run it starts from."""

    checkpoint: Checkpoint
    tokenizer: TextTokenizer
    image: dict[str, Any] | None  # the image processor's settings (None: the model reads no images)
    task: str | None
    task_state: dict[str, Any]

    def load_weights(self, model: Any) -> None:
        try:
            self.checkpoint.load_model_state(model, strict=True)
        except CheckpointError as e:
            raise ConfigError(f"init_from {self.checkpoint.path}: {e}") from None

    def task_state_for(self, task: str) -> dict[str, Any]:
        """The answer vocabulary or class names of the run, when the new run trains the same task."""
        return self.task_state if task == self.task else {}


def open_init_run(cfg: RunConfig) -> tuple[RunConfig, InitRun]:
    """Read the run ``cfg.init_from`` names; return ``cfg`` completed with its model and text length.

    Raises ConfigError naming ``init_from`` for a folder that is no run, a model type that starts
    another way, a ``model`` section of another type, and tokenizer or image settings that would
    feed the weights inputs they were not trained on.
    """
    path = Path(str(cfg.init_from))
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        raise ConfigError(f"init_from {str(path)!r}: {e}") from None
    kind = ckpt.model_config.get("type")
    if kind in _OWN_WAY:
        raise ConfigError(f"init_from {str(path)!r} is a {kind!r} run, which cannot start another run this way: {_OWN_WAY[kind]}")
    if ckpt.tokenizer is None:
        raise ConfigError(f"init_from {str(path)!r}: {ckpt.path} holds no tokenizer.json; copy the whole checkpoint folder")

    from polymodal.models.configs import parse_model_config

    saved_model = parse_model_config(ckpt.model_config, source=f"{ckpt.path}/config.json")
    model = cfg.model if cfg.model is not None else saved_model
    if model.type != saved_model.type:
        raise ConfigError(
            f"init_from {str(path)!r} holds a {saved_model.type!r} model, but model.type is {model.type!r}; "
            "leave model.type out: a model section with init_from holds changes to the run's own model"
        )
    tokenizer_keys = sorted(cfg.tokenizer.model_fields_set - {"max_length"})
    if tokenizer_keys:
        raise ConfigError(
            f"tokenizer: {', '.join(tokenizer_keys)} cannot be set with init_from: the weights of {str(path)!r} were trained "
            "with its own tokenizer, which the run uses (only tokenizer.max_length may change)"
        )
    image = ckpt.processors.get("image")
    geometry = sorted(set(_IMAGE_GEOMETRY) & cfg.image.model_fields_set)
    if image is not None and geometry:
        raise ConfigError(
            f"image: {', '.join(geometry)} cannot be set with init_from: the weights of {str(path)!r} were trained on its "
            "preprocessing, which the run keeps (augmentation settings such as random_resized_crop and flip_prob apply)"
        )
    max_length = cfg.tokenizer.max_length if "max_length" in cfg.tokenizer.model_fields_set else ckpt.processors.get("text_max_length")
    update: dict[str, Any] = {"model": model}
    if isinstance(max_length, int):
        update["tokenizer"] = cfg.tokenizer.model_copy(update={"max_length": max_length})
    init = InitRun(ckpt, ckpt.tokenizer, image, ckpt.processors.get("task"), dict(ckpt.processors.get("task_state") or {}))
    return cfg.model_copy(update=update), init
