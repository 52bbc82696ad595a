"""What ``--resume`` may change.

A resumed run continues the saved one: its weights, optimizer moments, learning-rate schedule and
position in the epoch only mean something with the settings they were saved under. A changed learning
rate would be overridden by the restored optimizer while config.yaml claimed it; a changed batch size
would restart the epoch at the wrong sample; a changed normalisation would show the weights other
pixels. So those settings must be as they were, and a run that wants them changed starts from this
one's weights instead (``init_from``). Everything else (how long to train, logging, evaluation,
workers, device, augmentation) may change and is named in the log.

Each checkpoint records the run's resolved config, a fingerprint of its training samples and the
schedule's length in ``run.json``; checkpoints from before that record are compared with the run
folder's config.yaml, and their data cannot be checked.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from polymodal.data.sample import Sample
from polymodal.errors import ConfigError
from polymodal.train.init_run import INPUT_SETTINGS

log = logging.getLogger(__name__)

RUN_RECORD = "run.json"

# why a setting may not change on --resume, by dotted prefix (the longest matching prefix decides)
_FIXED: dict[str, str] = {
    "seed": "it orders the samples of every epoch",
    "model": "the saved weights were built for it",
    "tokenizer": "the saved weights were trained on its tokens",
    "missing_modality": "the saved weights were trained with it",
    "optim": "the restored optimizer and schedule keep the saved values",
    "train.task": "the saved weights and optimizer were trained for it",
    "train.blind": "the saved weights were trained with it",
    "train.batch_size": "the saved position in the epoch counts batches of the saved size",
    "train.accumulation": "the saved position in the epoch counts micro-batches of the saved steps",
    "train.contrastive_accumulation": "it decides which negatives the saved steps' losses saw",
    "train.questions_per_image": "the saved position in the epoch counts batches drawn with it",
    "train.early_stopping": "the restored best value and patience count were measured with it",
    "model.path": "the checkpoint's tokenizer and preprocessing are read from it again",
    "model.lm": "the language model's tokenizer is read from it again",
    **{f"{section}.{key}": "the saved weights were trained on that preprocessing" for section, keys in INPUT_SETTINGS.items() for key in keys},
}
# may change: the data's location (their content is checked by fingerprint), where a tower or the
# tokenizer is read from (the weights and the tokenizer come from the run), the training schedule's
# length, and every operational setting
_FREE = ("output_dir", "init_from", "data", "optim.grad_clip", "model.allow_download")
_LOCATION_KEYS = ("path", "init_from")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def _matches(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _reason(key: str) -> str | None:
    """Why ``key`` may not change, or None when it may."""
    if any(_matches(key, p) for p in _FREE):
        return None
    if key.split(".")[0] in ("model", "tokenizer") and key.rsplit(".", 1)[-1] in _LOCATION_KEYS and key not in _FIXED:
        return None
    fixed = [p for p in _FIXED if _matches(key, p)]
    return _FIXED[max(fixed, key=len)] if fixed else None


_ABSENT = object()


def _with_defaults(saved: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    """The saved config with every key today's schema has (settings added since take their defaults),
    and whether that worked; the data section is left out of the validation (its files may have moved)."""
    from polymodal.config import RunConfig

    try:
        checked = RunConfig.model_validate({**saved, "data": {}})
    except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
        return saved, False
    return {**json.loads(checked.model_dump_json()), "data": saved.get("data")}, True


def _encoder_default(key: str, *trees: Mapping[str, Any]) -> Any:
    """The default of an encoder option (``model.vision.depth``), which a spec may leave out or spell
    out: encoder specs are free-form, so schema defaults do not cover them. _ABSENT when unknown."""
    parent, _, option = key.rpartition(".")
    name = next((t[f"{parent}.name"] for t in trees if f"{parent}.name" in t), None)
    if not key.startswith("model.") or not isinstance(name, str):
        return _ABSENT
    if option == "freeze":  # read by the model factory, not the encoder
        return False
    from polymodal.modules.encoders import ENCODERS

    factory = ENCODERS.get(name)
    try:
        param = inspect.signature(factory).parameters.get(option) if factory is not None else None
    except (TypeError, ValueError):
        param = None
    return _ABSENT if param is None or param.default is inspect.Parameter.empty else param.default


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(not set)"
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def data_fingerprint(samples: Sequence[Sample], items: int) -> dict[str, Any]:
    """What identifies the training data in their order, not where they are: ids, texts and targets.
    Moving the files keeps it; adding, removing, relabelling or reordering samples changes it."""
    digest = hashlib.blake2b(digest_size=16)
    for s in samples:
        record = (s.sample_id, s.image_key, s.text, s.answers, s.label, s.conversation)
        digest.update(repr(record).encode("utf-8", "surrogatepass"))
        digest.update(b"\x1e")
    return {"samples": len(samples), "items": items, "digest": digest.hexdigest()}


def run_record(config: Mapping[str, Any], fingerprint: Mapping[str, Any], total_steps: int, world_size: int) -> bytes:
    """The checkpoint file a later --resume compares itself with."""
    record = {"config": config, "train_data": fingerprint, "total_steps": total_steps, "world_size": world_size}
    return json.dumps(record, indent=1).encode("utf-8")


def read_record(checkpoint: Path, run_dir: Path) -> dict[str, Any]:
    """The saved run's record; from config.yaml alone for checkpoints written before run.json."""
    path = checkpoint / RUN_RECORD
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"--resume: {path} cannot be read ({e}); the checkpoint is damaged") from None
    config = run_dir / "config.yaml"
    try:
        saved = yaml.safe_load(config.read_text(encoding="utf-8")) if config.is_file() else None
    except (OSError, yaml.YAMLError):
        saved = None
    if not isinstance(saved, Mapping):
        log.warning("--resume: %s has no %s and %s cannot be read: the settings cannot be compared with the saved run's", checkpoint, RUN_RECORD, config)
        return {}
    log.info("--resume: %s predates %s; settings are compared with %s, the training data are not checked", checkpoint.name, RUN_RECORD, config)
    return {"config": saved}


def check_settings(saved: Mapping[str, Any], current: Mapping[str, Any], run_dir: Path) -> None:
    """Refuse a resume whose fixed settings differ from the saved run's; log the other changes."""
    if not saved:
        return
    saved, complete = _with_defaults(saved)
    before, after = dict(_flatten(saved)), dict(_flatten(current))
    # a key on one side only is a change too (an encoder option or objective weight added or removed),
    # unless the saved tree could not be completed with today's defaults: then only shared keys compare
    keys = list(dict.fromkeys([*before, *after])) if complete else [k for k in after if k in before]
    refused, changed = [], []
    for key in keys:
        old, new = before.get(key, _ABSENT), after.get(key, _ABSENT)
        if old == new or (_ABSENT in (old, new) and _encoder_default(key, before, after) == (new if old is _ABSENT else old)):
            continue
        change = f"{key} {_show(old)} -> {_show(new)}"
        reason = _reason(key)
        (refused if reason else changed).append(f"{change} ({reason})" if reason else change)
    if refused:
        raise ConfigError(
            f"--resume continues the run in {run_dir} as it was saved, but these settings differ from it: "
            + "; ".join(refused)
            + f". Put them back, or start a new run (another output_dir) from this one's weights with init_from: {run_dir}"
        )
    if changed:
        log.info("--resume: changed since the checkpoint: %s", ", ".join(changed))


def check_data(saved: Mapping[str, Any] | None, current: Mapping[str, Any], run_dir: Path) -> None:
    """The saved position in the epoch points into the saved data's order: other data cannot resume it."""
    if not saved or saved == current:
        return
    counts = f"{saved.get('samples')} training samples then, {current['samples']} now"
    raise ConfigError(
        f"--resume: the training data differ from the run's in {run_dir} ({counts}; their ids, texts or targets changed), "
        "so the saved position in the epoch would point at other samples. Put the data back as they were, or train "
        f"on these in a new run (another output_dir) from this one's weights with init_from: {run_dir}"
    )
