"""The image tower of a polymodal training run, as an encoder for another model (``name: run_vision``).

LLaVA's recipe starts from a *pretrained* vision tower. Offline, the best tower at hand is often one
polymodal trained itself - the quickstart's, whose grid tokens learned objects, attributes and places
from the world's scene graphs. ``vision: {name: run_vision, path: runs/quickstart}`` lifts that tower
(weights included) out of any run whose model has one: a dual encoder, a captioner, a VQA, fusion or
multi-task model, or an assistant. Its image preprocessing comes along like a Hugging Face tower's does (see
:mod:`polymodal.hub.towers`).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from polymodal.errors import ConfigError
from polymodal.modules.encoders.base import Encoder


def image_tower_of(model: nn.Module) -> Encoder | None:
    """The encoder in a model's image place (which may read clips or sounds): ``image_encoder``, a backbone's, or an assistant's."""
    for holder in (model, getattr(model, "backbone", None), getattr(model, "vision", None)):
        tower = getattr(holder, "image_encoder", None) or getattr(holder, "encoder", None)  # an assistant's: vision.encoder
        if isinstance(tower, Encoder):
            return tower
    return None


def require_run(path: str) -> Path:
    """``path`` as a folder, or a ConfigError saying where it was looked for and how to make it."""
    if not Path(path).exists():
        raise ConfigError(
            f"encoder run_vision: there is no run at {path!r} (a relative path is looked up beside the config, then from "
            f"the working directory {Path.cwd()}). Train that run first; the shipped world configs take the quickstart's "
            "tower: polymodal quickstart --out quickstart_out, beside the configs folder"
        )
    return Path(path)


def run_vision_tower(path: str) -> Encoder:
    """The trained image encoder of the run (or checkpoint) at ``path``."""
    from polymodal.api import load_model
    from polymodal.errors import PolymodalError

    require_run(path)
    try:
        model, _ = load_model(Path(path))
    except PolymodalError as e:
        raise ConfigError(f"encoder run_vision: cannot load the run {path!r}: {e}") from None
    tower = image_tower_of(model)
    if tower is None:
        raise ConfigError(f"encoder run_vision: the model in {path!r} ({type(model).__name__}) has no image tower to take")
    return tower.train()
