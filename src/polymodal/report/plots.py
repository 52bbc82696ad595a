"""The report's plots, drawn with matplotlib's Agg canvas straight to PNG bytes.

No pyplot: the figures never touch matplotlib's global backend, so rendering a report inside a notebook
or a GUI process changes nothing there. Every function here needs matplotlib; ``available()`` says
whether it is installed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

from polymodal.report.data import ClassificationResult, Curves, union_in_order

INSTALL_HINT = "pip install 'polymodal[eval]'"

GREEN = "#2e7d32"
RED = "#c62828"
BLUE = "#1f77b4"
GREY = "#9aa5b1"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float):
    import matplotlib  # noqa: F401  (fails first when matplotlib is absent, even if submodules are cached)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def _label(text: str) -> str:
    """User text as a matplotlib label: no mathtext from '$', not hidden from legends by a leading '_'."""
    text = str(text).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def _style(ax) -> None:
    ax.grid(True, alpha=0.3, linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def curve_group(name: str) -> str:
    """Which panel a training series goes in: 'loss', 'learning rate', 'throughput' or 'metrics'.

    Throughput (samples/s, in the hundreds) gets its own panel so accuracies (0-1) stay readable.
    """
    low = name.lower()
    last = low.replace("\\", "/").split("/")[-1]
    if "loss" in low:
        return "loss"
    if last in ("lr", "learning_rate", "learning-rate") or last.startswith("lr_") or low.startswith("lr"):
        return "learning rate"
    if "per_s" in last or "per_sec" in last or last in ("throughput", "samples_s"):
        return "throughput"
    return "metrics"


def plot_training_curves(curves: Curves) -> bytes:
    groups: dict[str, list[str]] = {"loss": [], "learning rate": [], "metrics": [], "throughput": []}
    for name in curves:
        groups[curve_group(name)].append(name)
    panels = [(title, names) for title, names in groups.items() if names]
    fig = _figure(max(4.2 * len(panels), 5.5), 3.3)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    color_of = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(curves)}
    for ax, (title, names) in zip(axes, panels):
        for name in names:
            steps = [p[0] for p in curves[name]]
            values = [p[1] for p in curves[name]]
            few = len(steps) <= 30
            ax.plot(steps, values, label=_label(name), color=color_of[name], linewidth=1.6,
                    marker="o" if few else None, markersize=3)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("step")
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        values = [p[1] for name in names for p in curves[name]]
        if title == "loss" and values and min(values) > 0 and max(values) / min(values) > 50:
            ax.set_yscale("log")  # a summed multi-task loss next to its parts spans decades
        _style(ax)
        ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def _bar_labels(ax, bars, values: Sequence[float], fontsize: int = 7) -> None:
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=fontsize)


def plot_vqa_by_family(by_split: Mapping[str, Mapping[str, float]]) -> bytes:
    splits = list(by_split)
    families = union_in_order(list(by_split.values()))
    n_f, n_s = len(families), max(len(splits), 1)
    fig = _figure(min(max(5.0, 0.75 * n_f * max(n_s, 2) / 2 + 2.0), 12.0), 3.6)
    ax = fig.subplots()
    width = 0.8 / n_s
    all_values: list[float] = []
    for k, split in enumerate(splits):
        xs, vs = [], []
        for i, fam in enumerate(families):
            if fam in by_split[split]:
                xs.append(i - 0.4 + width * (k + 0.5))
                vs.append(float(by_split[split][fam]))
        all_values += vs
        bars = ax.bar(xs, vs, width=width * 0.95, label=_label(split), color=PALETTE[k % len(PALETTE)])
        if n_f * n_s <= 24:
            _bar_labels(ax, bars, vs)
    ax.set_xticks(range(n_f))
    ax.set_xticklabels([_label(f) for f in families], rotation=30 if n_f > 5 else 0,
                       ha="right" if n_f > 5 else "center")
    ax.set_ylabel("accuracy")
    if all_values and min(all_values) >= 0 and max(all_values) <= 1:
        ax.set_ylim(0, 1.08)
    _style(ax)
    ax.grid(False, axis="x")
    ax.legend(fontsize=8, frameon=False, ncols=min(n_s, 4), loc="upper left", bbox_to_anchor=(0, 1.16))
    return _png(fig)


def plot_confusion(result: ClassificationResult) -> bytes:
    n = len(result.class_names)
    side = min(max(3.8, 0.5 * n + 2.2), 11.0)
    fig = _figure(side + 0.8, side)
    ax = fig.subplots()
    matrix = result.confusion
    im = ax.imshow(matrix, cmap="Blues", vmin=0)
    peak = max((max(r) for r in matrix), default=0)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                v = matrix[i][j]
                ax.text(j, i, str(v), ha="center", va="center", fontsize=9 if n <= 10 else 7,
                        color="white" if peak and v > peak / 2 else "#1f2328")
    labels = [_label(c) for c in result.class_names]
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center", fontsize=8)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (counts)", fontsize=11)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _png(fig)


def plot_ablation(result: ClassificationResult) -> bytes:
    names = list(result.accuracies)
    values = [result.accuracies[k] for k in names]
    fig = _figure(max(4.5, 1.1 * len(names) + 2.0), 3.4)
    ax = fig.subplots()
    colors = [BLUE] + [GREY] * (len(names) - 1)
    bars = ax.bar(range(len(names)), values, color=colors, width=0.6)
    _bar_labels(ax, bars, values, fontsize=9)
    if result.chance is not None:
        ax.axhline(result.chance, color=RED, linestyle="--", linewidth=1.2,
                   label=f"chance ({result.chance:.2f})")
        ax.legend(fontsize=8, frameon=False, loc="upper right")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([_label(n) for n in names], fontsize=9)
    ax.set_ylabel("accuracy")
    ax.set_title("model vs ablations", fontsize=11)
    top = max(values + [result.chance or 0.0], default=1.0)
    if top <= 1:
        ax.set_ylim(0, 1.12)
    _style(ax)
    ax.grid(False, axis="x")
    return _png(fig)


def plot_robustness(kinds: Mapping[str, Mapping[str, Sequence[float | None]]], metric: str, title: str) -> bytes:
    """One modality's robustness: ``metric`` against corruption level, one line per corruption kind.

    ``kinds`` is ``{kind: {"levels": [...], "headline": [...]}}`` (a None value, e.g. NaN in eval.json,
    leaves a gap in its line).
    """
    fig = _figure(5.2, 3.4)
    ax = fig.subplots()
    values: list[float] = []
    for i, (kind, curve) in enumerate(kinds.items()):
        ys = [float("nan") if v is None else float(v) for v in curve["headline"]]
        values += [v for v in ys if not math.isnan(v)]
        ax.plot(list(curve["levels"]), ys, label=_label(kind), color=PALETTE[i % len(PALETTE)], linewidth=1.6,
                marker="o", markersize=4)
    ax.set_xlabel("corruption level")
    ax.set_ylabel(_label(metric))
    ax.set_title(_label(title), fontsize=11)
    ax.set_xlim(-0.03, 1.03)
    if values and min(values) >= 0 and max(values) <= 1:
        ax.set_ylim(0, 1.05)
    _style(ax)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)
