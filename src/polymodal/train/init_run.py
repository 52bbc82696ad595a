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
from polymodal.models.inputs import model_inputs
from polymodal.train.checkpoint import Checkpoint, CheckpointError, load_checkpoint

# settings that decide what the weights see (so they come from the run the weights come from), per
# section; the others (augmentation, caching, draft decoding) stay the new config's
INPUT_SETTINGS = {
    "image": ("size", "mean", "std"),
    "audio": ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "max_seconds"),
    "video": ("num_frames", "sampling", "stride"),
}
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


def _plain(value: Any) -> Any:
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def _saved_inputs(processors: dict[str, Any], model: Any) -> dict[str, dict[str, Any]]:
    """The run's input settings per config section, as the processors it saved record them: those that
    shape what ``model`` reads (every run records an image processor, even one whose model reads no pixels)."""
    media = processors.get("media") or {}
    image = processors.get("image") if model_inputs(model).pixels else None
    saved = {"image": image, "audio": media.get("audio"), "video": media.get("video")}
    return {section: {k: _plain(values[k]) for k in INPUT_SETTINGS[section] if k in values} for section, values in saved.items() if values}


def _as_decoded(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """Settings as the decoders read them, so that two spellings of one input compare equal: an unset
    ``f_max`` is half the sample rate, and ``stride`` means nothing unless frames are sampled by stride."""
    out = dict(values)
    if section == "audio" and out.get("f_max") is None and out.get("sample_rate"):
        out["f_max"] = out["sample_rate"] / 2
    if section == "video" and out.get("sampling") == "uniform":
        out.pop("stride", None)
    return out


def _adopt_inputs(cfg: RunConfig, saved: dict[str, dict[str, Any]], where: str) -> dict[str, Any]:
    """Config sections updated with the run's input settings; a setting the config gives another value is refused."""
    update: dict[str, Any] = {}
    for section, values in saved.items():
        settings = getattr(cfg, section)
        asked = {k: _plain(getattr(settings, k)) for k in values if k in settings.model_fields_set}
        run, merged = _as_decoded(section, values), _as_decoded(section, values | asked)
        changed = [k for k in asked if run.get(k) != merged.get(k)]
        if changed:
            raise ConfigError(
                f"{section}: {', '.join(changed)} cannot be changed with init_from: the weights of {where} were trained on "
                f"{', '.join(f'{k}={run.get(k, values[k])!r}' for k in changed)}, which the run keeps (augmentation settings such as "
                "random_resized_crop, flip_prob and SpecAugment's masks are the config's)"
            )
        update[section] = settings.model_copy(update=values)
    return update


def _check_tokenizer(cfg: RunConfig, where: str, vocab_size: int) -> None:
    """Tokenizer settings are refused where they ask for another tokenizer than the run's (a config
    that restates the run's vocabulary size, as its written config.yaml does, asks for none)."""
    defaults = type(cfg.tokenizer)()
    other = [k for k in ("path", "kind") if getattr(cfg.tokenizer, k) != getattr(defaults, k)]
    other += ["vocab_size"] if cfg.tokenizer.vocab_size not in (defaults.vocab_size, vocab_size) else []
    if other:
        raise ConfigError(
            f"tokenizer: {', '.join(other)} cannot be set with init_from: the weights of {where} were trained with its own "
            "tokenizer, which the run uses (only tokenizer.max_length may change)"
        )


def open_init_run(cfg: RunConfig, source: Path | None = None) -> tuple[RunConfig, InitRun]:
    """Read the run ``cfg.init_from`` names (or ``source``: a resumed run's own checkpoint, which holds
    the same and outlives the first run); return ``cfg`` completed with its model and input settings.

    Raises ConfigError naming ``init_from`` for a folder that is no run, a model type that starts
    another way, a ``model`` section of another type, and tokenizer, image, audio or video settings
    that would feed the weights inputs they were not trained on.
    """
    path = Path(str(source if source is not None else cfg.init_from))
    where = repr(str(cfg.init_from))
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        raise ConfigError(f"init_from {where}: {e}") from None
    kind = ckpt.model_config.get("type")
    if kind in _OWN_WAY:
        raise ConfigError(f"init_from {where} is a {kind!r} run, which cannot start another run this way: {_OWN_WAY[kind]}")
    if ckpt.tokenizer is None:
        raise ConfigError(f"init_from {where}: {ckpt.path} holds no tokenizer.json; copy the whole checkpoint folder")

    from polymodal.models.configs import parse_model_config

    saved_model = parse_model_config(ckpt.model_config, source=f"{ckpt.path}/config.json")
    model = cfg.model if cfg.model is not None else saved_model
    if model.type != saved_model.type:
        raise ConfigError(
            f"init_from {where} holds a {saved_model.type!r} model, but model.type is {model.type!r}; "
            "leave model.type out: a model section with init_from holds changes to the run's own model"
        )
    _check_tokenizer(cfg, where, ckpt.tokenizer.vocab_size)
    update: dict[str, Any] = {"model": model} | _adopt_inputs(cfg, _saved_inputs(ckpt.processors, saved_model), where)
    image = ckpt.processors.get("image") or {}
    if "image" in update and "jpeg_draft" in image and "jpeg_draft" not in cfg.image.model_fields_set:
        update["image"] = update["image"].model_copy(update={"jpeg_draft": bool(image["jpeg_draft"])})  # the run's, recorded
    update["tokenizer"] = cfg.tokenizer.model_copy(update={"vocab_size": ckpt.tokenizer.vocab_size})  # recorded, as used
    max_length = cfg.tokenizer.max_length if "max_length" in cfg.tokenizer.model_fields_set else ckpt.processors.get("text_max_length")
    if isinstance(max_length, int):
        update["tokenizer"] = update["tokenizer"].model_copy(update={"max_length": max_length})
    init = InitRun(ckpt, ckpt.tokenizer, ckpt.processors.get("image"), ckpt.processors.get("task"), dict(ckpt.processors.get("task_state") or {}))
    return cfg.model_copy(update=update), init
