"""Pretrained towers inside native model configs: their preprocessing becomes the run's default.

A model config may use a Hugging Face backbone as one tower (``vision: {name: hf_vision, path: ...}``,
``text: {name: hf_text, path: ...}``). The weights then expect their own tokenizer and their own image
size and normalisation; making the user copy those into the run config invites silent mismatches, so
the trainer takes them from the tower's folder unless the config sets them explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from polymodal.errors import ConfigError

HF_TOWERS = {"hf_vision": "vision", "hf_text": "text", "run_vision": "vision"}  # towers that bring their preprocessing


def tower_paths(model_cfg: Any) -> dict[str, str]:
    """``{"vision": path, "text": path}`` for the Hugging Face towers a model config uses."""
    specs = [getattr(model_cfg, name, None) for name in ("vision", "text", "decoder")]
    specs += list((getattr(model_cfg, "encoders", None) or {}).values())
    found: dict[str, str] = {}
    for spec in specs:
        if spec is not None and spec.name in HF_TOWERS and "path" in spec.options():
            if spec.name == "run_vision":
                from polymodal.modules.encoders.run_tower import require_run

                require_run(str(spec.options()["path"]))
            found.setdefault(HF_TOWERS[spec.name], str(spec.options()["path"]))
    return found


def image_settings_of(name_or_path: str) -> dict[str, Any]:
    """``{"size", "mean", "std"}`` from a vision tower's ``preprocessor_config.json`` (or its config)."""
    from polymodal.hub.zoo import resolve

    folder = resolve(name_or_path)
    run = _run_image_settings(folder)
    if run is not None:
        return run
    pre = folder / "preprocessor_config.json"
    settings: dict[str, Any] = {}
    if pre.is_file():
        try:
            cfg = json.loads(pre.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{pre}: not readable JSON ({e})") from None
        size = cfg.get("crop_size") if cfg.get("do_center_crop") else cfg.get("size")
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        if isinstance(size, int):
            settings["size"] = size
        if _triple(cfg.get("image_mean")) and _triple(cfg.get("image_std")):
            settings["mean"], settings["std"] = tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    if "size" not in settings:
        size = _config_image_size(folder / "config.json")
        if size is not None:
            settings["size"] = size
    return settings


def _triple(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)


def _config_image_size(path: Path) -> int | None:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    cfg = cfg.get("vision_config", cfg) if isinstance(cfg, dict) else {}
    size = cfg.get("image_size") if isinstance(cfg, dict) else None
    return size if isinstance(size, int) else None


def _run_image_settings(folder: Path) -> dict[str, Any] | None:
    """``{"size", "mean", "std"}`` of a polymodal run or checkpoint (its processors.json); None for other folders."""
    from polymodal.train.checkpoint import CheckpointError, load_checkpoint

    if not (folder / "checkpoints").is_dir() and not (folder / "processors.json").is_file():
        return None
    try:
        image = load_checkpoint(folder).processors.get("image") or {}
    except CheckpointError:
        return None
    return {k: (tuple(image[k]) if isinstance(image[k], list) else image[k]) for k in ("size", "mean", "std") if k in image}
