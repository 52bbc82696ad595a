"""CMU-MOSI / CMU-MOSEI aligned-feature pickles: text + audio + video feature sequences per utterance.

Two layouts of the widely shared pickles are read (``layout: auto`` tells them apart by their keys):

* **MMSA** (thuiar/MMSA, ``aligned_50.pkl`` / ``unaligned_50.pkl``; keys as read by MMSA's
  ``src/MMSA/data_loader.py``)::

      {"train" | "valid" | "test": {"id", "raw_text", "text" [N, T, Dt], "text_bert" [N, 3, T],
       "audio" [N, Ta, Fa], "vision" [N, Tv, Fv], "audio_lengths" [N], "vision_lengths" [N],
       "regression_labels" [N], ...}}

  Padding is at the *end* (right-padded): MMSA feeds ``audio_lengths`` / ``vision_lengths`` to
  ``pack_padded_sequence(..., batch_first=True)`` and reads ``text_bert[:, 1]`` (the BERT mask: "seq_len
  of 1, followed by padding of 0") for the text length. So the real frames are the *first* ``length``
  rows; the text keeps as many rows as the BERT mask has ones when ``text_bert`` is there.

* **MultiBench** (pliang279/MultiBench, ``mosi_raw.pkl`` / ``mosei_senti_data.pkl``; keys as read by
  ``datasets/affect/get_data.py``)::

      {"train" | "valid" | "test": {"text" [N, T, Dt], "audio" [N, T, Fa], "vision" [N, T, Fv],
       "labels" [N, 1, 1], "id" [N, ...]}}

  No lengths: the modalities are word-aligned and padded at the *start* (left-padded). As MultiBench
  does (``start = text.nonzero()[0][0]``), frames before the first non-zero text row are dropped
  from all three modalities.

Each utterance becomes one :class:`Sample` with ``label`` = the sentiment score (a float in [-3, 3]),
``text`` = ``raw_text`` when the layout has it, and ``features = {"text": [T, Dt], "audio": [T, Fa],
"video": [T, Fv]}`` as float32 (MOSI's "vision" is our "video"). NaN / inf values (MOSEI's COVAREP
audio has -inf) become 0 and are counted as ``nonfinite_values`` in the report; an utterance whose
modality has no real frame keeps one zero frame (counted as ``empty_sequences``) so that batches stay
rectangular and attention always has a key.

Pickles are unpickled with an allow-list (numpy arrays and plain containers only): a data file never
gets to run code.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from polymodal.data.formats._common import origin, require_file
from polymodal.data.report import DataReport
from polymodal.data.sample import Sample
from polymodal.data.sources import MosiSource
from polymodal.errors import DataError

FORMAT = "mosi"
SPLIT_KEYS = {"train": "train", "val": "valid", "test": "test"}  # our split -> the pickle's key
MODALITIES = (("text", "text"), ("audio", "audio"), ("video", "vision"))  # ours -> the pickle's key
MMSA_KEYS = ("id", "text", "audio", "vision", "regression_labels")
MULTIBENCH_KEYS = ("id", "text", "audio", "vision", "labels")

_NUMPY_NAMES = frozenset({"_reconstruct", "scalar", "_frombuffer", "ndarray", "dtype"})
_SAFE_BUILTINS = frozenset({"set", "frozenset", "slice", "range", "complex", "bytearray", "list", "dict", "tuple"})


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, numpy scalars and builtin containers; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if module == "collections" and name == "OrderedDict":
            return super().find_class(module, name)
        if module.split(".")[0] == "numpy":
            obj = super().find_class(module, name)
            if name in _NUMPY_NAMES or (
                isinstance(obj, type) and issubclass(obj, (np.dtype, np.generic, np.ndarray))
            ):
                return obj
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only numpy arrays and plain containers are read"
        )


def load_pickle(path: Any) -> Any:
    """Load a feature pickle with the allow-list; any failure is a DataError naming the file."""
    require_file(path, FORMAT, "path")
    try:
        data = path.read_bytes()
        # latin1 lets numpy arrays pickled by Python 2 (CMU-MultimodalSDK era) load; Python 3
        # pickles are unaffected.
        return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except OSError as e:
        raise DataError(f"{FORMAT} source: cannot read path file {path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a corrupt pickle raises almost anything
        raise DataError(
            f"{FORMAT} source: path file {path} is not a readable feature pickle: {type(e).__name__}: {e}"
        ) from None


def detect_layout(split: Mapping[str, Any], path: Any, key: str) -> str:
    """'mmsa' when the split has ``regression_labels``, 'multibench' when it has ``labels``."""
    if "regression_labels" in split:
        return "mmsa"
    if "labels" in split:
        return "multibench"
    raise DataError(
        f"{FORMAT} source: split '{key}' of {path} has neither 'regression_labels' (MMSA layout) nor "
        f"'labels' (MultiBench layout); keys: {sorted(map(str, split))}"
    )


def read(spec: MosiSource, report: DataReport) -> Iterator[Sample]:
    tree = load_pickle(spec.path)
    key = SPLIT_KEYS[spec.split]
    if not isinstance(tree, Mapping):
        raise DataError(
            f"{FORMAT} source: path file {spec.path} should hold a dict with 'train'/'valid'/'test', got "
            f"{type(tree).__name__}"
        )
    if key not in tree:
        raise DataError(
            f"{FORMAT} source: split '{spec.split}' needs key '{key}' in {spec.path}, which has keys "
            f"{sorted(map(str, tree))}"
        )
    split = tree[key]
    if not isinstance(split, Mapping):
        raise DataError(f"{FORMAT} source: '{key}' of {spec.path} should be a dict, got {type(split).__name__}")
    layout = detect_layout(split, spec.path, key) if spec.layout == "auto" else spec.layout
    required = MMSA_KEYS if layout == "mmsa" else MULTIBENCH_KEYS
    missing = [k for k in required if k not in split]
    if missing:
        raise DataError(
            f"{FORMAT} source: split '{key}' of {spec.path} ({layout} layout) lacks key(s) "
            f"{', '.join(repr(k) for k in missing)}; it has {sorted(map(str, split))}"
        )
    arrays = {ours: _sequences(split[theirs], spec, key, theirs) for ours, theirs in MODALITIES}
    label_key = "regression_labels" if layout == "mmsa" else "labels"
    try:
        labels = np.asarray(split[label_key], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{FORMAT} source: split '{key}' of {spec.path}: '{label_key}' should be numbers (sentiment scores): {e}") from None
    try:
        n = len(split["id"])
    except TypeError:
        raise DataError(
            f"{FORMAT} source: split '{key}' of {spec.path}: 'id' should be a list of utterance ids, got {type(split['id']).__name__}"
        ) from None
    labels = labels.reshape(n, -1)[:, 0] if labels.size == n else _bad_length(spec, key, "labels", labels.shape, n)
    for name, array in arrays.items():
        if len(array) != n:
            _bad_length(spec, key, name, array.shape, n)
    lengths = _lengths(split, layout, spec, key, n)
    return _samples(spec, split, key, layout, arrays, labels, lengths, report)


def _bad_length(spec: MosiSource, key: str, field: str, shape: Any, n: int) -> Any:
    raise DataError(
        f"{FORMAT} source: split '{key}' of {spec.path}: '{field}' has shape {tuple(shape)} but 'id' has "
        f"{n} entries"
    )


def _sequences(value: Any, spec: MosiSource, key: str, field: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.number):
        raise DataError(
            f"{FORMAT} source: split '{key}' of {spec.path}: '{field}' should be a numeric array "
            f"[utterances, frames, features], got shape {array.shape} dtype {array.dtype}"
        )
    return array


def _lengths(
    split: Mapping[str, Any], layout: str, spec: MosiSource, key: str, n: int
) -> dict[str, np.ndarray | None]:
    """Real frame counts per modality (MMSA) or None where the layout gives none."""
    if layout != "mmsa":
        return {"text": None, "audio": None, "video": None}
    out: dict[str, np.ndarray | None] = {"text": None, "audio": None, "video": None}
    bert = split.get("text_bert")
    if bert is not None:
        bert = np.asarray(bert)
        if bert.ndim == 3 and bert.shape[0] == n and bert.shape[1] == 3:
            out["text"] = bert[:, 1].sum(axis=1).astype(np.int64)  # row 1 is the attention mask
    for ours, theirs in (("audio", "audio_lengths"), ("video", "vision_lengths")):
        if theirs in split:
            lengths = np.asarray(split[theirs]).reshape(-1)
            if lengths.shape != (n,):
                _bad_length(spec, key, theirs, lengths.shape, n)
            out[ours] = lengths.astype(np.int64)
    return out


def _sample_id(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.ndim > 0 or isinstance(value, (list, tuple)):
        return "_".join(_sample_id(v) for v in value)
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text.strip() or None


def _samples(
    spec: MosiSource,
    split: Mapping[str, Any],
    key: str,
    layout: str,
    arrays: dict[str, np.ndarray],
    labels: np.ndarray,
    lengths: dict[str, np.ndarray | None],
    report: DataReport,
) -> Iterator[Sample]:
    raw_text = split.get("raw_text") if layout == "mmsa" else None
    for i in range(len(labels)):
        where = origin(spec.path, f"{key}[{i}]")
        label = float(labels[i])
        if not np.isfinite(label):
            report.add("bad_record", where, f"label is {label}")
            continue
        if layout == "multibench":
            # Left padding: drop the frames before the first non-zero text row (MultiBench's rule).
            nonzero = np.flatnonzero(np.any(arrays["text"][i] != 0, axis=1))
            start = int(nonzero[0]) if nonzero.size else 0
            spans = {m: (start, arrays[m].shape[1]) for m in arrays}
        else:
            spans = {}
            for m, array in arrays.items():
                real = lengths[m]
                end = array.shape[1] if real is None else int(np.clip(real[i], 0, array.shape[1]))
                spans[m] = (0, end)
        features: dict[str, np.ndarray] = {}
        for m, array in arrays.items():
            start, end = spans[m]
            if spec.max_length is not None:
                end = min(end, start + spec.max_length)
            frames = np.array(array[i, start:end], dtype=np.float32)  # a copy: the pickle stays untouched
            bad = ~np.isfinite(frames)
            if bad.any():
                report.count("nonfinite_values", int(bad.sum()))
                frames[bad] = 0.0
            if frames.shape[0] == 0:
                report.count("empty_sequences")
                frames = np.zeros((1, array.shape[2]), dtype=np.float32)
            features[m] = frames
        report.count("utterances")
        yield Sample(
            sample_id=_sample_id(split["id"][i]),
            origin=where,
            text=_text(raw_text[i]) if raw_text is not None and i < len(raw_text) else None,
            label=label,
            split=spec.split,
            meta={"layout": layout},
            features=features,
        )
