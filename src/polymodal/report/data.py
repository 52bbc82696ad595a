"""What a report is made of: plain dataclasses, no model objects, no torch.

Every field is optional except the title, so the same renderer serves a full ``polymodal eval`` run and a
quick retrieval-only check. Image fields are paths (``str`` or ``Path``); a relative path is looked up
under ``ReportData.image_root`` when that is set, else under the current directory. A path that does not
exist is drawn as a placeholder, never an error.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

ImagePath = Union[str, "os.PathLike[str]"]
Curves = dict[str, list[tuple[int, float]]]

# Columns of a wide training log that are never series of their own.
_WIDE_SKIP = {"step", "epoch", "time", "wall_time", "timestamp", "elapsed", "elapsed_s"}


@dataclass
class RankedImage:
    """One retrieved image: where it ranked is its position in ``RetrievalExample.results``."""

    image: ImagePath
    score: float | None = None
    hit: bool = False


@dataclass
class RetrievalExample:
    """A text query and the images the model returned for it, best first.

    ``results`` takes ``RankedImage`` objects or plain tuples ``(image, score)`` / ``(image, score, hit)``.
    ``gold_image`` is shown after the ranked list when none of the results is a hit, so a reader sees
    what the model should have found.
    """

    query: str
    results: list[RankedImage] = field(default_factory=list)
    gold_image: ImagePath | None = None

    def __post_init__(self) -> None:
        normalized = []
        for r in self.results:
            if isinstance(r, RankedImage):
                normalized.append(r)
            elif isinstance(r, (tuple, list)) and 1 <= len(r) <= 3:
                normalized.append(RankedImage(*r))
            else:
                raise ValueError(f"retrieval result must be RankedImage or (image, score[, hit]), got {r!r}")
        self.results = normalized

    @property
    def any_hit(self) -> bool:
        return any(r.hit for r in self.results)

    @property
    def first_hit(self) -> int | None:
        """1-based rank of the first hit, None when there is none."""
        return next((i for i, r in enumerate(self.results, 1) if r.hit), None)


@dataclass
class CaptionExample:
    image: ImagePath
    generated: str
    references: list[str] = field(default_factory=list)
    cider: float | None = None


@dataclass
class VQAExample:
    """``correct=None`` means: decide it here, by case- and space-insensitive match against the gold answers."""

    image: ImagePath
    question: str
    predicted: str
    gold_answers: list[str] = field(default_factory=list)
    correct: bool | None = None
    family: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.gold_answers, str):
            self.gold_answers = [self.gold_answers]
        if self.correct is None:
            pred = " ".join(str(self.predicted).lower().split())
            self.correct = any(pred == " ".join(str(g).lower().split()) for g in self.gold_answers)


@dataclass
class ClassificationResult:
    """A classifier's confusion matrix and how it compares with its ablations.

    ``confusion[i][j]`` counts examples of true class ``i`` predicted as class ``j`` (rows: truth).
    ``accuracies`` maps a variant name to its accuracy; the first entry is the model itself, the rest are
    ablations (e.g. ``{"image+text": .93, "text only": .51, "image only": .50}``). ``chance`` defaults
    to ``1 / len(class_names)``.
    """

    class_names: list[str]
    confusion: list[list[int]]
    accuracies: dict[str, float] = field(default_factory=dict)
    chance: float | None = None

    def __post_init__(self) -> None:
        self.class_names = [str(c) for c in self.class_names]
        n = len(self.class_names)
        rows = [[int(x) for x in row] for row in self.confusion]
        if len(rows) != n or any(len(r) != n for r in rows):
            shape = f"{len(rows)}x{len(rows[0]) if rows else 0}"
            raise ValueError(f"confusion matrix is {shape} but there are {n} class names; it must be {n}x{n}")
        self.confusion = rows
        self.accuracies = {str(k): float(v) for k, v in dict(self.accuracies).items()}
        if self.chance is None and n:
            self.chance = 1.0 / n

    @property
    def total(self) -> int:
        return sum(sum(r) for r in self.confusion)

    @property
    def accuracy(self) -> float | None:
        """Accuracy read off the confusion matrix (trace / total)."""
        total = self.total
        return sum(self.confusion[i][i] for i in range(len(self.confusion))) / total if total else None

    def per_class_recall(self) -> list[float | None]:
        return [row[i] / sum(row) if sum(row) else None for i, row in enumerate(self.confusion)]


@dataclass
class ReportData:
    """Everything one report shows. See ``polymodal.report`` for the training-curve formats."""

    title: str
    run_info: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    training_curves: Curves | ImagePath | None = None
    vqa_by_family: dict[str, dict[str, float]] | None = None
    retrieval_examples: list[RetrievalExample] | None = None
    caption_examples: list[CaptionExample] | None = None
    vqa_examples: list[VQAExample] | None = None
    classification: ClassificationResult | None = None
    # {split: polymodal.robustness.robustness_curves(...) output}: metric vs corruption level per modality
    robustness: dict[str, dict] | None = None
    notes: list[str] = field(default_factory=list)
    image_root: ImagePath | None = None

    def curves(self) -> Curves:
        """The training curves as ``{name: [(step, value), ...]}``, sorted by step, read from CSV if a path."""
        tc = self.training_curves
        if tc is None:
            return {}
        if isinstance(tc, (str, os.PathLike)):
            return load_training_curves(tc)
        if not isinstance(tc, Mapping):
            raise TypeError(f"training_curves must be a dict or a CSV path, got {type(tc).__name__}")
        out: Curves = {}
        for name, points in tc.items():
            pts = [(int(s), float(v)) for s, v in points]
            if pts:
                out[str(name)] = sorted(pts, key=lambda p: p[0])
        return out

    def resolve_image(self, path: ImagePath) -> Path:
        p = Path(path).expanduser()
        if not p.is_absolute() and self.image_root is not None:
            p = Path(self.image_root).expanduser() / p
        return p


def _to_float(text: str | None) -> float | None:
    if text is None or not str(text).strip():
        return None
    try:
        return float(text)
    except ValueError:
        return None


def load_training_curves(path: ImagePath) -> Curves:
    """Read a trainer's CSV log into ``{name: [(step, value), ...]}``.

    Two layouts, told apart by the header:

    * long (what the trainer's ``log.csv`` is): columns ``step,name,value`` and optionally ``split``, one
      row per logged scalar; a non-empty ``split`` prefixes the name (``train`` + ``loss`` ->
      ``train/loss``); any other column (``epoch``, ``time``) is ignored::

          step,epoch,split,name,value
          100,0,train,loss,2.31
          100,0,train,lr,0.0003
          500,1,val,i2t_R@1,0.42

    * wide: a ``step`` column and one column per series; empty cells are skipped (a validation metric
      logged every 500 steps next to a loss logged every 10).

    Values that are not numbers are skipped; each series comes back sorted by step.
    """
    path = Path(path)
    curves: Curves = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return {}
        cols = [h.strip() for h in header]
        if "step" not in cols:
            raise ValueError(f"{path}: training log needs a 'step' column, header is {cols}")
        i_step = cols.index("step")
        long = "name" in cols and "value" in cols
        i_name = cols.index("name") if long else -1
        i_value = cols.index("value") if long else -1
        i_split = cols.index("split") if long and "split" in cols else -1
        for row in reader:
            if len(row) <= i_step:
                continue
            step_f = _to_float(row[i_step])
            if step_f is None or not math.isfinite(step_f):
                continue
            step = int(step_f)
            if long:
                if len(row) <= max(i_name, i_value):
                    continue
                v = _to_float(row[i_value])
                name = row[i_name].strip()
                split = row[i_split].strip() if 0 <= i_split < len(row) else ""
                if split and name:
                    name = f"{split}/{name}"
                if v is not None and name:
                    curves.setdefault(name, []).append((step, v))
            else:
                for i, col in enumerate(cols):
                    if col in _WIDE_SKIP or i >= len(row) or not col:
                        continue
                    v = _to_float(row[i])
                    if v is not None:
                        curves.setdefault(col, []).append((step, v))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in curves.items()}


def format_value(v: object) -> str:
    """How a number appears in every table: 4 decimals below 10 (scientific below 0.001), 2 below 1000,
    thousands separated above; integers as they are."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    a = abs(f)
    if 0 < a < 1e-3:
        return f"{f:.2e}"
    if a >= 1000:
        return f"{f:,.1f}"
    if a >= 10:
        return f"{f:.2f}"
    return f"{f:.4f}"


def union_in_order(groups: Sequence[Mapping[str, object]]) -> list[str]:
    """Keys of several dicts, each once, in order of first appearance."""
    seen: dict[str, None] = {}
    for g in groups:
        for k in g:
            seen.setdefault(k, None)
    return list(seen)
