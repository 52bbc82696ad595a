"""Atomic, self-describing checkpoints: safetensors weights, JSON configs, a weights-only training state.

A checkpoint is one folder, ``RUN_DIR/checkpoints/step_<global_step:08d>/``::

    model.safetensors    the weights (tied/shared tensors stored once; the aliases are in its metadata)
    model_config.json    the model config, enough to rebuild the architecture
    processors.json      the preprocessing the weights were trained with (image processor, answer
                         vocabulary, text max_length, ...), plus ``"tokenizer": "tokenizer.json"``
                         when a tokenizer was saved
    tokenizer.json       the text tokenizer (only when one was given)
    training_state.pt    optimizer / scheduler / GradScaler state, the RNG states and the trainer's
                         ``train_state``; written with ``torch.save``, read with ``weights_only=True``
    meta.json            versions, time, global step, model type, sha256 of model.safetensors and the
                         list of files; written last, so its presence marks the folder complete

``RUN_DIR/checkpoints/latest`` and ``.../best`` are one-line text files naming a step folder.

Why it is built this way:

* **Nothing is unpickled.** Weights are safetensors, configs are JSON, and the training state holds only
  tensors and plain containers, checked *when saving* so a resume a week later cannot fail on an object
  ``torch.load(weights_only=True)`` refuses. Inference never touches ``training_state.pt``.
* **A crash never corrupts.** Everything is written and fsynced into ``step_X.tmp-<pid>`` next to the
  final folder, which is then renamed into place (one atomic ``rename``), and only then is ``latest``
  rewritten (temp file + rename). Killed at any instant, the run keeps its previous checkpoint and a
  ``latest`` pointing at a complete one; leftovers (``*.tmp-*``, ``*.old-*``, ``*.trash-*``) are never
  taken for checkpoints and are cleaned by the next save.
* **Errors say what and where.** Every failure is a :class:`CheckpointError` naming the file and what was
  expected: not a checkpoint, the wrong model type, a missing tokenizer, a shape mismatch, a corrupt
  weights file (sha256 mismatch).

One process saves into a run folder at a time (rank 0 under DDP); readers may run alongside.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

import polymodal
from polymodal.atomic import fsync_path, replace_dir
from polymodal.data.tokenizers import TextTokenizer, load_tokenizer
from polymodal.errors import DataError, PolymodalError

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "best_checkpoint",
    "get_rng_state",
    "latest_checkpoint",
    "load_checkpoint",
    "mark_best",
    "resolve_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
BEST = "best"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
PROCESSORS_FILE = "processors.json"
TOKENIZER_FILE = "tokenizer.json"
TRAINING_FILE = "training_state.pt"
META_FILE = "meta.json"
# What a folder needs to load for inference; training_state.pt is only needed to resume.
REQUIRED_FILES: tuple[str, ...] = (MODEL_FILE, CONFIG_FILE, PROCESSORS_FILE, META_FILE)
_EXPECTED = ", ".join(
    (MODEL_FILE, CONFIG_FILE, PROCESSORS_FILE, META_FILE, f"optionally {TOKENIZER_FILE} and {TRAINING_FILE}")
)

_STEP_RE = re.compile(r"^step_(\d{8,})$")
# Scratch names: an unfinished save (tmp), a step folder being replaced (old), one being deleted (trash).
_SCRATCH_RE = re.compile(r"^(?P<base>.+)\.(?P<kind>tmp|old|trash)-(?P<pid>\d+)$")
_ALIASES_KEY = "polymodal.aliases"


class CheckpointError(PolymodalError):
    """A checkpoint cannot be saved or loaded; the message names the file and what was expected."""


# ----- small file-system helpers ---------------------------------------------------------------------


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _json_bytes(obj: Any, path: Path, what: str) -> bytes:
    try:
        return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path.name}: {what} must be JSON-serialisable (dicts, lists, str, finite numbers, bool, None): {e}"
        ) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: a polymodal checkpoint folder holds {_EXPECTED}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the checkpoint is damaged") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this machine. On Windows ``os.kill`` would terminate it, so assume alive."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    except OSError:
        return False
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def _clean_scratch(root: Path) -> None:
    """Remove leftovers of killed saves (ours or of dead processes) and finish interrupted replacements.

    A ``step_X.old-<pid>`` whose ``step_X`` is missing means a save died between moving the old folder
    aside and moving the new one in: the old folder is complete, so it is put back.
    """
    me = os.getpid()
    for entry in sorted(root.iterdir()):
        m = _SCRATCH_RE.match(entry.name)
        if m is None:
            continue
        pid = int(m["pid"])
        if pid != me and _pid_alive(pid):
            continue  # another live process owns it (should not happen: one saver per run)
        base = root / m["base"]
        if m["kind"] == "old" and _STEP_RE.match(m["base"]) and not base.exists():
            os.replace(entry, base)
            fsync_path(root)
        else:
            _remove(entry)


def _step_name(global_step: int) -> str:
    return f"step_{global_step:08d}"


def _step_dirs(root: Path) -> list[Path]:
    """Step folders (never scratch folders) sorted by step number."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _missing_files(step_dir: Path) -> list[str]:
    """Files a complete checkpoint folder lacks: the required ones, then any that meta.json lists."""
    missing = [f for f in REQUIRED_FILES if not (step_dir / f).is_file()]
    if META_FILE not in missing:
        try:
            listed = json.loads((step_dir / META_FILE).read_text(encoding="utf-8")).get("files", [])
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return [*missing, f"{META_FILE} (unreadable)"]
        missing += [
            f for f in listed if isinstance(f, str) and f not in missing and not (step_dir / f).is_file()
        ]
    return missing


def _is_complete(step_dir: Path) -> bool:
    return step_dir.is_dir() and not _missing_files(step_dir)


def _read_pointer(root: Path, which: str) -> str | None:
    """The step-folder name in ``root/which``, or None when absent or not a step name."""
    try:
        name = (root / which).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name if _STEP_RE.match(name) else None


def _write_pointer(root: Path, which: str, name: str) -> None:
    tmp = root / f"{which}.tmp-{os.getpid()}"
    _write_bytes(tmp, (name + "\n").encode("utf-8"))
    os.replace(tmp, root / which)
    fsync_path(root)


# ----- what goes into the files ----------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare module under DDP/DataParallel and ``torch.compile``, so keys carry no wrapper prefix."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def _view_key(t: torch.Tensor) -> tuple[Any, ...] | None:
    """Identity of a tensor view: equal keys mean the very same memory (a tied/shared parameter)."""
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _tensors_for_save(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """CPU, contiguous tensors with each shared tensor stored once, and ``{dropped name: kept name}``.

    safetensors refuses tensors that share memory; tied weights (an LM head reusing the embedding)
    are therefore stored under their first name and the others recorded as aliases. Distinct views
    of one storage (rare) are stored as separate copies.
    """
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple[Any, ...], str] = {}
    storages: set[tuple[Any, ...]] = set()
    for name, t in _unwrap(model).state_dict().items():
        t = t.detach()
        if t.device.type == "meta":
            raise CheckpointError(
                f"{MODEL_FILE}: cannot save {name!r}: it is on the meta device (never materialised)"
            )
        key = _view_key(t)
        if key is not None:
            if key in views:
                aliases[name] = views[key]
                continue
            views[key] = name
            storage = key[:2]
            if storage in storages:
                t = t.clone()
            storages.add(storage)
        out[name] = t.to("cpu").contiguous()
    return out, aliases


_PLAIN = (type(None), bool, int, float, str, bytes)


def _plain(obj: Any) -> Any:
    """numpy scalars/arrays -> Python numbers/lists, recursively: a best metric is often ``np.float64``."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        items = [_plain(v) for v in obj]
        return tuple(items) if type(obj) is tuple else items
    return obj


def _check_loadable(obj: Any, where: str) -> None:
    """Raise now if ``torch.load(weights_only=True)`` could not read ``obj`` back at resume time."""
    t = type(obj)
    if t in _PLAIN or isinstance(obj, (torch.Tensor, torch.Size, torch.dtype, torch.device)):
        return
    if t in (list, tuple):
        for i, v in enumerate(obj):
            _check_loadable(v, f"{where}[{i}]")
        return
    if t in (dict, collections.OrderedDict):
        for k, v in obj.items():
            if type(k) not in _PLAIN:
                raise CheckpointError(
                    f"{TRAINING_FILE}: {where} has a key of type {type(k).__name__}; only str/int/float/bool keys can be saved"
                )
            _check_loadable(v, f"{where}[{k!r}]")
        return
    raise CheckpointError(
        f"{TRAINING_FILE}: {where} is a {t.__module__}.{t.__qualname__}, which torch.load(weights_only=True) cannot read; "
        "keep the training state to tensors, numbers, strings, lists and dicts"
    )


def get_rng_state() -> dict[str, Any]:
    """Python, numpy (legacy global), torch CPU and initialised CUDA RNG states, as plain data and tensors."""
    version, internal, gauss_next = random.getstate()
    bit_gen, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(bit_gen),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    # Only when CUDA is in use: querying it would otherwise create a context on a GPU the run ignores.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured, so a resumed run draws the numbers it would have."""
    if state.get("python") is not None:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    if state.get("numpy") is not None:
        npy = state["numpy"]
        keys = npy["keys"].numpy() if isinstance(npy["keys"], torch.Tensor) else np.asarray(npy["keys"])
        np.random.set_state(
            (
                npy["bit_generator"],
                keys.astype(np.uint32),
                npy["pos"],
                npy["has_gauss"],
                npy["cached_gaussian"],
            )
        )
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if n != len(cuda):
            warnings.warn(
                f"checkpoint has CUDA RNG states for {len(cuda)} devices, this machine has {n}: restoring the first {min(n, len(cuda))}",
                stacklevel=2,
            )
        for i, s in enumerate(cuda[:n]):
            torch.cuda.set_rng_state(s, i)


# ----- save --------------------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: str | Path,
    *,
    model: nn.Module,
    model_config: Mapping[str, Any],
    global_step: int,
    processors: Mapping[str, Any] | None = None,
    tokenizer: TextTokenizer | None = None,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    train_state: Mapping[str, Any] | None = None,
    keep_last: int = 2,
    is_best: bool = False,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write ``RUN_DIR/checkpoints/step_<global_step:08d>/`` atomically, point ``latest`` at it, prune.

    ``model_config`` is a dict or a pydantic model (dumped to JSON). ``processors`` is any JSON-able
    dict describing preprocessing (``{"image": ImageProcessor.to_dict(), "answer_vocab": vocab.to_dict(),
    "text_max_length": 32}``); the key ``"tokenizer"`` is reserved: pass the tokenizer itself.
    ``train_state`` is the trainer's bookkeeping (epoch, step_in_epoch, best metric, patience counter,
    sampler seed, ...): tensors, numbers, strings, lists, dicts (numpy scalars are converted);
    ``global_step`` is added to it. ``keep_last`` keeps that many newest step folders (0 keeps all);
    the folders named by ``best`` and ``latest`` are never deleted. ``is_best`` also points ``best``
    at the new checkpoint. Saving the same step twice replaces that folder. ``extra_files`` are more
    files to store, by relative path (``{"hf/config.json": b"..."}``: a Hugging Face model's config and
    tokenizer, so a fine-tuned checkpoint reloads without the original folder).

    Everything that can fail on bad input (non-JSON config, an unpicklable train_state) fails before
    anything is written. Returns the checkpoint folder.
    """
    if isinstance(global_step, np.integer):
        global_step = int(global_step)
    if isinstance(global_step, bool) or not isinstance(global_step, int) or global_step < 0:
        raise ValueError(f"save_checkpoint: global_step must be an int >= 0, got {global_step!r}")
    if keep_last < 0:
        raise ValueError(
            f"save_checkpoint: keep_last must be >= 0 (0 keeps every checkpoint), got {keep_last}"
        )
    if hasattr(model_config, "model_dump"):  # a pydantic model config
        model_config = model_config.model_dump(mode="json")
    if not isinstance(model_config, Mapping):
        raise TypeError(f"save_checkpoint: model_config must be a dict, got {type(model_config).__name__}")
    processors = dict(processors or {})
    if "tokenizer" in processors:
        raise ValueError(
            "save_checkpoint: processors['tokenizer'] is reserved; pass the TextTokenizer as tokenizer="
        )
    state = dict(_plain(dict(train_state or {})))
    if state.setdefault("global_step", global_step) != global_step:
        raise ValueError(
            f"save_checkpoint: train_state['global_step']={state['global_step']} disagrees with global_step={global_step}"
        )

    # Serialise everything in memory first: bad input fails here, with nothing on disk.
    model_type = model_config.get("type")
    tensors, aliases = _tensors_for_save(model)
    st_meta = {
        "format": "pt",
        "polymodal.model_type": str(model_type),
        _ALIASES_KEY: json.dumps(aliases, sort_keys=True),
    }
    model_bytes = safetensors.torch.save(tensors, metadata=st_meta)
    del tensors
    files: dict[str, bytes] = {
        MODEL_FILE: model_bytes,
        CONFIG_FILE: _json_bytes(dict(model_config), Path(CONFIG_FILE), "the model config"),
        PROCESSORS_FILE: _json_bytes(
            {**processors, **({"tokenizer": TOKENIZER_FILE} if tokenizer is not None else {})},
            Path(PROCESSORS_FILE),
            "processors",
        ),
    }
    if tokenizer is not None:
        files[TOKENIZER_FILE] = tokenizer.tokenizer.to_str(pretty=True).encode("utf-8")
    for rel, data in (extra_files or {}).items():
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or not parts or rel in files or rel in (TRAINING_FILE, META_FILE):
            raise ValueError(f"save_checkpoint: extra file {rel!r} must be a new relative path inside the checkpoint folder")
        files[Path(rel).as_posix()] = bytes(data)
    training = {
        "format_version": FORMAT_VERSION,
        "global_step": global_step,
        "train_state": state,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": get_rng_state(),
    }
    _check_loadable(training, "training state")
    now = datetime.datetime.now(datetime.timezone.utc)
    meta = {
        "format_version": FORMAT_VERSION,
        "polymodal_version": polymodal.__version__,
        "torch_version": torch.__version__,
        "safetensors_version": safetensors.__version__,
        "created": now.isoformat(timespec="seconds"),
        "global_step": global_step,
        "model_type": model_type,
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
        "tied": aliases,
        "files": sorted([*files, TRAINING_FILE]),
    }

    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    _clean_scratch(root)
    name = _step_name(global_step)
    final, tmp = root / name, root / f"{name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        for fname, data in files.items():
            (tmp / fname).parent.mkdir(parents=True, exist_ok=True)
            _write_bytes(tmp / fname, data)
        for sub in sorted({(tmp / f).parent for f in files} - {tmp}):
            fsync_path(sub)
        with open(tmp / TRAINING_FILE, "wb") as f:
            torch.save(training, f)
            f.flush()
            os.fsync(f.fileno())
        _write_bytes(tmp / META_FILE, _json_bytes(meta, Path(META_FILE), "meta"))  # last: marks completeness
        fsync_path(tmp)
        replace_dir(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
    _write_pointer(root, LATEST, name)
    if is_best:
        _write_pointer(root, BEST, name)
    if keep_last:
        _prune(root, keep_last, protect={name})
    return final


def _prune(root: Path, keep_last: int, protect: set[str]) -> None:
    """Delete step folders beyond the newest ``keep_last`` complete ones, sparing best/latest/protect.

    A folder is renamed to ``*.trash-<pid>`` before deletion, so a crash mid-delete never leaves a
    half-deleted folder under a step name. Failures only warn: the new checkpoint is already safe.
    """
    protect = protect | {n for n in (_read_pointer(root, BEST), _read_pointer(root, LATEST)) if n}
    complete = [p for p in _step_dirs(root) if _is_complete(p)]
    keep = protect | {p.name for p in complete[-keep_last:]}
    for p in _step_dirs(root):
        if p.name in keep:
            continue
        try:
            trash = root / f"{p.name}.trash-{os.getpid()}"
            os.replace(p, trash)
            _remove(trash)
        except OSError as e:
            warnings.warn(f"could not delete old checkpoint {p}: {e}", stacklevel=3)


def mark_best(run_dir: str | Path, step_dir: str | Path) -> Path:
    """Point ``RUN_DIR/checkpoints/best`` at ``step_dir`` (a path or a ``step_XXXXXXXX`` name), atomically.

    The best checkpoint is spared by retention, and a run folder given to :func:`resolve_checkpoint`
    resolves to it.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    step = Path(step_dir)
    target = root / step.name
    if not _STEP_RE.match(step.name):
        raise CheckpointError(
            f"mark_best: {step} is not a step folder (expected a name like step_00001000 in {root})"
        )
    if len(step.parts) > 1 and step.resolve() != target.resolve():
        raise CheckpointError(
            f"mark_best: {step} is not inside {root}; best must name a checkpoint of this run"
        )
    if not _is_complete(target):
        raise CheckpointError(
            f"mark_best: {target} is not a complete checkpoint (missing: {', '.join(_missing_files(target)) or 'the folder'})"
        )
    _write_pointer(root, BEST, target.name)
    return target


# ----- find ----------------------------------------------------------------------------------------------


def _latest(root: Path) -> Path | None:
    name = _read_pointer(root, LATEST)
    if name is not None and _is_complete(root / name):
        return root / name
    complete = [p for p in _step_dirs(root) if _is_complete(p)]
    if not complete:
        return None
    if (root / LATEST).exists():
        warnings.warn(
            f"{root / LATEST} names {name or 'nothing valid'}, which is not a complete checkpoint; using {complete[-1].name}",
            stacklevel=3,
        )
    return complete[-1]


def _best(root: Path) -> Path | None:
    name = _read_pointer(root, BEST)
    if name is not None and _is_complete(root / name):
        return root / name
    if (root / BEST).exists():
        warnings.warn(
            f"{root / BEST} names {name or 'nothing valid'}, which is not a complete checkpoint; ignoring it",
            stacklevel=3,
        )
    return None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: the one ``latest`` names if complete, else the newest complete one.

    Never returns an unfinished (``*.tmp-*``) or incomplete folder; None when the run has none.
    """
    return _latest(Path(run_dir) / CHECKPOINTS_DIR)


def best_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint :func:`mark_best` named, if it is complete; otherwise None."""
    return _best(Path(run_dir) / CHECKPOINTS_DIR)


def _require_complete(step_dir: Path) -> None:
    if _SCRATCH_RE.match(step_dir.name):
        raise CheckpointError(
            f"{step_dir} is an unfinished or discarded save, not a checkpoint; use {step_dir.parent} to pick the latest complete one"
        )
    if not (step_dir / MODEL_FILE).is_file():
        raise CheckpointError(
            f"no {MODEL_FILE} in {step_dir}: not a polymodal checkpoint (expected {_EXPECTED})"
        )
    missing = _missing_files(step_dir)
    if missing:
        raise CheckpointError(
            f"{step_dir} is an incomplete checkpoint: missing {', '.join(missing)} (expected {_EXPECTED})"
        )


def resolve_checkpoint(path: str | Path) -> Path:
    """A complete checkpoint folder from a step folder, a ``checkpoints/`` folder or a run folder.

    A run or ``checkpoints/`` folder resolves to its best checkpoint, else its latest; a file inside a
    checkpoint resolves to its folder. Anything else is a :class:`CheckpointError` naming the path.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"{p} does not exist: expected a checkpoint folder ({_EXPECTED}), a {CHECKPOINTS_DIR}/ folder or a run folder"
        )
    if p.is_file():
        if p.name not in (MODEL_FILE, CONFIG_FILE, PROCESSORS_FILE, TOKENIZER_FILE, TRAINING_FILE, META_FILE):
            raise CheckpointError(
                f"{p} is a file, not a polymodal checkpoint: expected a folder holding {_EXPECTED}"
            )
        p = p.parent
    if (
        any((p / f).exists() for f in (MODEL_FILE, CONFIG_FILE, META_FILE))
        or _STEP_RE.match(p.name)
        or _SCRATCH_RE.match(p.name)
    ):
        _require_complete(p)
        return p
    if (p / CHECKPOINTS_DIR).is_dir():
        root = p / CHECKPOINTS_DIR
    elif p.name == CHECKPOINTS_DIR or (p / LATEST).exists() or (p / BEST).exists() or _step_dirs(p):
        root = p
    else:
        raise CheckpointError(
            f"no {MODEL_FILE} in {p}: not a polymodal checkpoint (expected {_EXPECTED} in a step folder, "
            f"a {CHECKPOINTS_DIR}/ folder of step_* folders, or a run folder holding one)"
        )
    found = _best(root) or _latest(root)
    if found is None:
        raise CheckpointError(
            f"{root} holds no complete checkpoint (no valid '{BEST}'/'{LATEST}' pointer and no complete step_* folder)"
        )
    return found


# ----- load ----------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A loaded checkpoint's configs; weights and training state are read on demand (they are large)."""

    path: Path
    model_config: dict[str, Any]
    processors: dict[str, Any]
    tokenizer: TextTokenizer | None
    meta: dict[str, Any]

    @property
    def model_type(self) -> str | None:
        """The task model type (``dual_encoder``, ``captioner``, ...); a fine-tuned Hugging Face model
        (config type ``pretrained``) serves as the type its processors name."""
        return _served_type(self.model_config, self.processors)

    @property
    def global_step(self) -> int | None:
        return self.meta.get("global_step")

    def model_state(self) -> dict[str, torch.Tensor]:
        """The weights on CPU, after checking model.safetensors against meta.json's sha256; aliases filled in."""
        path = self.path / MODEL_FILE
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{path}: cannot be read ({e})") from None
        want = self.meta.get("model_sha256")
        got = hashlib.sha256(data).hexdigest()
        if want is not None and got != want:
            raise CheckpointError(
                f"{path} is corrupt: its sha256 is {got[:16]}..., {self.path / META_FILE} expects {str(want)[:16]}... "
                "(truncated copy or modified file); use another checkpoint of the run"
            )
        try:
            tensors = safetensors.torch.load(data)
            # the header is 8 bytes of little-endian length, then JSON (safetensors' documented format)
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
            aliases = json.loads((header.get("__metadata__") or {}).get(_ALIASES_KEY, "{}"))
        except Exception as e:  # noqa: BLE001 - safetensors/json raise assorted types for malformed files
            raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None
        for alias, kept in aliases.items():
            if kept in tensors:
                tensors.setdefault(alias, tensors[kept])
        return tensors

    def load_model_state(self, model: nn.Module, strict: bool = True) -> None:
        """Copy the weights into ``model`` (built from ``model_config``), checking every shape first.

        A shape mismatch always raises, naming the tensor, the file and both shapes; with ``strict``,
        missing or unexpected tensors raise too. Tied weights need only one stored copy.
        """
        path = self.path / MODEL_FILE
        tensors = self.model_state()
        target = _unwrap(model).state_dict()
        bad = [
            f"{k!r}: checkpoint {tuple(tensors[k].shape)}, model expects {tuple(t.shape)}"
            for k, t in target.items()
            if k in tensors and tuple(tensors[k].shape) != tuple(t.shape)
        ]
        if bad:
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise CheckpointError(
                f"{path}: tensor shapes do not match the model: {'; '.join(bad[:5])}{more}. "
                f"Build the model from this checkpoint's {CONFIG_FILE} and {PROCESSORS_FILE} (vocabulary and answer sizes)"
            )
        # A tensor the file lacks is fine when the model ties it to one the file has.
        present = {key for k, t in target.items() if k in tensors and (key := _view_key(t)) is not None}
        missing = [k for k, t in target.items() if k not in tensors and _view_key(t) not in present]
        unexpected = [k for k in tensors if k not in target]
        if strict and (missing or unexpected):
            raise CheckpointError(
                f"{path}: the checkpoint does not match the model: "
                f"missing {missing[:8] or 'none'}{' ...' if len(missing) > 8 else ''}, "
                f"unexpected {unexpected[:8] or 'none'}{' ...' if len(unexpected) > 8 else ''} "
                f"(checkpoint of a {self.model_type!r} model; pass strict=False to load the overlap)"
            )
        _unwrap(model).load_state_dict({k: v for k, v in tensors.items() if k in target}, strict=False)

    def load_training_state(
        self, optimizer: Any = None, scheduler: Any = None, scaler: Any = None, *, restore_rng: bool = True
    ) -> dict[str, Any]:
        """Restore optimizer, scheduler, GradScaler and RNG states; return the trainer's ``train_state``.

        Call after ``load_model_state`` and after building the optimizer/scheduler the same way as the
        saving run. Asking for a state the checkpoint lacks (e.g. an optimizer when it was saved
        without one) raises rather than silently starting fresh.
        """
        path = self.path / TRAINING_FILE
        if not path.is_file():
            raise CheckpointError(
                f"no {TRAINING_FILE} in {self.path}: this checkpoint holds weights only and cannot resume training"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError...
            raise CheckpointError(
                f"{path}: cannot be read with torch.load(weights_only=True) ({str(e).splitlines()[0]}); the file is corrupt or not from polymodal"
            ) from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: expected a dict of training state, found {type(state).__name__}")
        for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
            if obj is None:
                continue
            if state.get(key) is None:
                raise CheckpointError(
                    f"{path} holds no {key} state (the run was saved without one), but a {key} was given to restore"
                )
            try:
                obj.load_state_dict(state[key])
            except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as e:
                raise CheckpointError(
                    f"{path}: cannot restore the {key} state ({e}); build the {key} as the saving run did"
                ) from None
        if restore_rng and state.get("rng"):
            set_rng_state(state["rng"])
        return dict(state.get("train_state") or {})


def _served_type(model_config: Mapping[str, Any], processors: Mapping[str, Any]) -> str | None:
    kind = model_config.get("type")
    return processors.get("model_type", kind) if kind == "pretrained" else kind


def load_checkpoint(path: str | Path, *, expect_type: str | None = None) -> Checkpoint:
    """Resolve ``path`` (step, ``checkpoints/`` or run folder) and read the configs and tokenizer.

    ``expect_type`` (e.g. ``"vqa"``) rejects a checkpoint of another model type with an error naming
    both. Weights are read (and verified against their sha256) by :meth:`Checkpoint.load_model_state`.
    """
    step = resolve_checkpoint(path)
    meta = _read_json(step / META_FILE)
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(
            f"{step / META_FILE}: format_version is {version!r}; polymodal writes a whole number from 1 (this one reads up to "
            f"{FORMAT_VERSION}), so the file was edited or not written by polymodal"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{step / META_FILE}: checkpoint format {version!r} is newer than this polymodal reads ({FORMAT_VERSION}); upgrade polymodal"
        )
    model_config = _read_json(step / CONFIG_FILE)
    processors = _read_json(step / PROCESSORS_FILE)
    model_type = _served_type(model_config, processors)
    if expect_type is not None and model_type != expect_type:
        raise CheckpointError(
            f"{step / CONFIG_FILE}: this checkpoint holds a {model_type!r} model, but a {expect_type!r} model is being loaded; pick a {expect_type} checkpoint"
        )
    tokenizer = None
    tok_name = processors.pop("tokenizer", None)
    if tok_name is not None:
        tok_path = step / str(tok_name)
        if Path(str(tok_name)).name != str(tok_name) or not tok_path.is_file():
            raise CheckpointError(
                f"{step / PROCESSORS_FILE} says the text tokenizer is in {tok_name!r}, but {tok_path} is missing; copy the whole checkpoint folder"
            )
        try:
            tokenizer = load_tokenizer(tok_path)
        except DataError as e:
            raise CheckpointError(str(e)) from None
    return Checkpoint(
        path=step, model_config=model_config, processors=processors, tokenizer=tokenizer, meta=meta
    )
