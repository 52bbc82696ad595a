"""Render a ``ReportData`` into ``report.html`` and ``report.md`` in one folder.

Both files show the same sections in the same order; a section whose data is absent is left out. Plots
and thumbnails are PNGs in ``report_files/``; the HTML also embeds them as data URIs, so it is a single
self-contained file (no JavaScript, no network) and the Markdown renders wherever the folder goes.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from polymodal.atomic import write_text
from polymodal.report import plots
from polymodal.report.assets import Asset, AssetStore, Missing
from polymodal.report.data import ImagePath, ReportData, format_value, union_in_order

log = logging.getLogger(__name__)

HTML_NAME = "report.html"
MD_NAME = "report.md"

# (id, heading) in page order.
SECTIONS = {
    "summary": "Summary",
    "curves": "Training curves",
    "vqa-families": "VQA accuracy by question family",
    "retrieval": "Retrieval examples",
    "captions": "Caption examples",
    "vqa-examples": "VQA examples",
    "classification": "Classification",
    "robustness": "Robustness",
    "notes": "Notes",
}


@dataclass
class _Prepared:
    """What both renderers share: the data, the plots drawn once, and the thumbnail store."""

    data: ReportData
    store: AssetStore
    curves: dict[str, list[tuple[int, float]]]
    have_mpl: bool
    plots: dict[str, Asset] = field(default_factory=dict)
    plot_errors: dict[str, str] = field(default_factory=dict)
    generated: str = ""

    def thumb(self, image: ImagePath) -> Asset | Missing:
        return self.store.thumbnail(self.data.resolve_image(image), str(image))

    def sections(self) -> list[str]:
        d = self.data
        present = {
            "summary": True,
            "curves": bool(self.curves),
            "vqa-families": bool(d.vqa_by_family),
            "retrieval": bool(d.retrieval_examples),
            "captions": bool(d.caption_examples),
            "vqa-examples": bool(d.vqa_examples),
            "classification": d.classification is not None,
            "robustness": bool(d.robustness),
            "notes": bool(d.notes),
        }
        return [s for s in SECTIONS if present[s]]


def _draw(prep: _Prepared, key: str, fn: Callable[[], bytes]) -> None:
    try:
        prep.plots[key] = prep.store.add_png(f"plot_{key}.png", fn())
    except Exception as e:  # noqa: BLE001 - a plot failing on odd data must not take the tables down
        log.warning("report: could not draw the %s plot: %s", key, e)
        prep.plot_errors[key] = f"{type(e).__name__}: {e}"


def _prepare(data: ReportData, out_dir: Path, thumb_size: int) -> _Prepared:
    prep = _Prepared(
        data=data,
        store=AssetStore(out_dir, thumb_size=thumb_size),
        curves=data.curves(),
        have_mpl=plots.available(),
        generated=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip(),
    )
    if prep.have_mpl:
        if prep.curves:
            _draw(prep, "curves", lambda: plots.plot_training_curves(prep.curves))
        if data.vqa_by_family:
            _draw(prep, "vqa_families", lambda: plots.plot_vqa_by_family(data.vqa_by_family or {}))
        c = data.classification
        if c is not None and c.class_names:
            _draw(prep, "confusion", lambda: plots.plot_confusion(c))
        if c is not None and c.accuracies:
            _draw(prep, "ablation", lambda: plots.plot_ablation(c))
        for split, modality, key in _robustness_plots(data):
            run = (data.robustness or {})[split]
            _draw(prep, key, lambda run=run, m=modality, s=split: plots.plot_robustness(
                run["curves"][m], run.get("headline", "metric"), f"{m} ({s})"))
    return prep


def _robustness_plots(data: ReportData) -> list[tuple[str, str, str]]:
    """``(split, modality, plot key)`` of every robustness plot: one per modality and split."""
    out = []
    for split, run in (data.robustness or {}).items():
        for i, modality in enumerate(run.get("curves") or {}):
            out.append((split, modality, f"robustness_{len(out)}_{i}"))
    return out


ROBUSTNESS_HEADER = ["modality", "corruption"]


def _robustness_tables(data: ReportData) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per split: (caption, header, rows) with the headline metric at every level."""
    tables = []
    for split, run in (data.robustness or {}).items():
        levels = [float(v) for v in run.get("levels") or []]
        header = ROBUSTNESS_HEADER + [f"level {v:g}" for v in levels]
        rows = [[m, kind] + [format_value(v) for v in curve["headline"]]
                for m, kinds in (run.get("curves") or {}).items() for kind, curve in kinds.items()]
        caption = f"{split}: {run.get('headline', 'metric')} of the {run.get('task', '')} task by corruption level (level 0: clean)"
        tables.append((caption, header, rows))
    return tables


def _html_robustness(prep: _Prepared, embed: bool) -> str:
    parts = ['<div class="two">' + "".join(
        _html_plot(prep, key, embed, f"robustness of {m} ({s})") for s, m, key in _robustness_plots(prep.data)) + "</div>"]
    for caption, header, rows in _robustness_tables(prep.data):
        parts.append(f"<h3>{_e(caption)}</h3>" + _html_table([_e(h) for h in header], [[_e(c) for c in r] for r in rows],
                                                             num_cols=set(range(2, len(header)))))
    return "".join(parts)


def write_report(data: ReportData, out_dir: str | os.PathLike[str], *, thumb_size: int = 96,
                 embed: bool = True) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` (and ``report_files/*.png``) into ``out_dir``.

    ``embed=True`` puts every image into the HTML as a data URI (one file, works anywhere); ``False``
    links to ``report_files/`` instead (smaller HTML that must travel with its folder). Returns the
    paths of the HTML and the Markdown file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prep = _prepare(data, out, thumb_size)
    html_path, md_path = out / HTML_NAME, out / MD_NAME
    write_text(html_path, render_html(prep, embed=embed))
    write_text(md_path, render_markdown(prep))
    return html_path, md_path


# ----------------------------------------------------------------------------------------------- HTML

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#eef1f4;color:#1f2328;font:15px/1.5 -apple-system,"Segoe UI",Roboto,
 "Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;background:#fff;padding:28px 36px 40px;min-height:100vh}
h1{font-size:26px;margin:0 0 4px}
h2{font-size:20px;margin:38px 0 12px;padding-bottom:5px;border-bottom:2px solid #e3e7ec}
h3{font-size:15px;margin:0 0 6px;color:#3d4650}
.sub{color:#667085;font-size:13px;margin:0 0 14px}
nav{font-size:13px;margin:8px 0 4px}
nav a{color:#1f5fbf;text-decoration:none;margin-right:14px}
nav a:hover{text-decoration:underline}
table{border-collapse:collapse;font-size:14px}
th,td{padding:5px 10px;border-bottom:1px solid #e3e7ec;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{background:none;color:#667085;font-weight:500;white-space:nowrap}
.cards{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.card{border:1px solid #e3e7ec;border-radius:8px;padding:10px 14px 8px;min-width:240px}
.card table{width:100%}
.notice{background:#fff8e1;border:1px solid #f0d48a;border-radius:6px;padding:8px 12px;margin:14px 0}
.plot{display:block;max-width:100%;height:auto;margin:6px 0 14px}
.muted{color:#667085;font-size:13px}
figure{margin:0;text-align:center;font-size:12px;color:#3d4650}
figure.hit .thumb{border-color:#2e7d32}
figure.gold .thumb,figure.gold .ph{border:3px dashed #2e7d32}
.thumb{display:block;width:102px;height:102px;object-fit:contain;background:#f6f8fa;
 border:3px solid #d5dbe1;border-radius:5px}
.ph{width:102px;height:102px;border:2px dashed #c62828;border-radius:5px;background:#fdf3f3;
 color:#8a1c1c;font-size:10px;line-height:1.25;padding:4px;display:flex;flex-direction:column;
 justify-content:center;align-items:center;overflow:hidden;overflow-wrap:anywhere;text-align:center}
.ph code{font-size:9px}
.ret{display:flex;gap:18px;align-items:flex-start;padding:10px 0;border-bottom:1px solid #eef1f4}
.ret .q{width:230px;flex:none;font-size:14px}
.ret .q b{display:block;margin-bottom:4px}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}
.ok{color:#2e7d32;font-weight:600}
.bad{color:#c62828;font-weight:600}
tr.correct td:first-child{box-shadow:inset 4px 0 #2e7d32}
tr.wrong td:first-child{box-shadow:inset 4px 0 #c62828}
ul.refs{margin:0;padding-left:18px}
.two{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
footer{margin-top:40px;color:#98a2b3;font-size:12px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
"""


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _img_src(asset: Asset, embed: bool) -> str:
    return asset.data_uri if embed else asset.rel


def _html_thumb(prep: _Prepared, image: ImagePath | None, embed: bool, alt: str = "") -> str:
    if image is None:
        return '<div class="ph">no image</div>'
    t = prep.thumb(image)
    if isinstance(t, Missing):
        return f'<div class="ph"><b>{t.reason} image</b><code>{_e(t.original)}</code></div>'
    return f'<img class="thumb" src="{_img_src(t, embed)}" alt="{_e(alt)}" title="{_e(image)}">'


def _html_plot(prep: _Prepared, key: str, embed: bool, alt: str) -> str:
    if key in prep.plots:
        return f'<img class="plot" src="{_img_src(prep.plots[key], embed)}" alt="{_e(alt)}">'
    if key in prep.plot_errors:
        return f'<p class="muted">Plot could not be drawn: {_e(prep.plot_errors[key])}</p>'
    if not prep.have_mpl:
        return f'<p class="muted">Plot skipped: matplotlib is not installed (<code>{plots.INSTALL_HINT}</code>).</p>'
    return ""


def _html_table(header: list[str], rows: list[list[str]], num_cols: set[int] = frozenset(),
                cls: str = "") -> str:
    """``rows`` hold already-escaped HTML; ``num_cols`` are right-aligned."""
    def cell(tag: str, i: int, content: str) -> str:
        c = ' class="num"' if i in num_cols else ""
        return f"<{tag}{c}>{content}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    cls_attr = f' class="{cls}"' if cls else ""
    return f"<table{cls_attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_summary(prep: _Prepared) -> str:
    metrics = prep.data.metrics
    if not metrics:
        return '<p class="muted">No metrics were recorded.</p>'
    cards = []
    for section, values in metrics.items():
        rows = [[_e(k), _e(format_value(v))] for k, v in values.items()]
        table = _html_table(["metric", "value"], rows, num_cols={1})
        cards.append(f'<div class="card"><h3>{_e(section)}</h3>{table}</div>')
    return f'<div class="cards">{"".join(cards)}</div>'


def _curve_rows(curves: dict[str, list[tuple[int, float]]]) -> list[list[str]]:
    rows = []
    for name, pts in curves.items():
        vals = [v for _, v in pts]
        finite = [v for v in vals if math.isfinite(v)] or vals  # min/max of a list with NaN is arbitrary
        rows.append([name, str(len(pts)), f"{pts[0][0]}–{pts[-1][0]}", format_value(vals[0]),
                     format_value(vals[-1]), format_value(min(finite)), format_value(max(finite))])
    return rows


CURVE_HEADER = ["series", "points", "steps", "first", "last", "min", "max"]


def _html_curves(prep: _Prepared, embed: bool) -> str:
    rows = [[_e(c) for c in r] for r in _curve_rows(prep.curves)]
    return (_html_plot(prep, "curves", embed, "training curves")
            + _html_table(CURVE_HEADER, rows, num_cols={1, 3, 4, 5, 6}))


def _family_table(by_split: dict[str, dict[str, float]]) -> tuple[list[str], list[list[str]]]:
    splits = list(by_split)
    families = union_in_order(list(by_split.values()))
    rows = [[f] + [format_value(by_split[s].get(f)) for s in splits] for f in families]
    return ["family"] + splits, rows


def _html_vqa_families(prep: _Prepared, embed: bool) -> str:
    header, rows = _family_table(prep.data.vqa_by_family or {})
    table = _html_table([_e(h) for h in header], [[_e(c) for c in r] for r in rows],
                        num_cols=set(range(1, len(header))))
    plot = _html_plot(prep, "vqa_families", embed, "VQA accuracy by question family")
    return f'<div class="two">{plot}{table}</div>' if "vqa_families" in prep.plots else plot + table


def _html_retrieval(prep: _Prepared, embed: bool) -> str:
    out = []
    for ex in prep.data.retrieval_examples or []:
        figs = []
        for rank, r in enumerate(ex.results, 1):
            score = f" · {format_value(r.score)}" if r.score is not None else ""
            mark = ' <span class="ok">✓</span>' if r.hit else ""
            figs.append(f'<figure class="{"hit" if r.hit else ""}">'
                        f'{_html_thumb(prep, r.image, embed, f"rank {rank}")}'
                        f"<figcaption>#{rank}{_e(score)}{mark}</figcaption></figure>")
        if ex.gold_image is not None and not ex.any_hit:
            figs.append(f'<figure class="gold">{_html_thumb(prep, ex.gold_image, embed, "gold")}'
                        f'<figcaption class="bad">gold, not retrieved</figcaption></figure>')
        verdict = (f'<span class="ok">hit at rank {ex.first_hit}</span>' if ex.any_hit
                   else f'<span class="bad">miss (not in top {len(ex.results)})</span>' if ex.results
                   else '<span class="bad">no results</span>')
        out.append(f'<div class="ret"><div class="q"><b>“{_e(ex.query)}”</b>{verdict}</div>'
                   f'<div class="thumbs">{"".join(figs)}</div></div>')
    return ('<p class="muted">Text-to-image: each query with its top-ranked images and scores; '
            "a green border marks the correct image.</p>" + "".join(out))


def _html_captions(prep: _Prepared, embed: bool) -> str:
    exs = prep.data.caption_examples or []
    with_cider = any(ex.cider is not None for ex in exs)
    rows = []
    for ex in exs:
        refs = "".join(f"<li>{_e(r)}</li>" for r in ex.references) or '<span class="muted">none</span>'
        row = [_html_thumb(prep, ex.image, embed, "image"), f"<b>{_e(ex.generated)}</b>",
               f'<ul class="refs">{refs}</ul>']
        if with_cider:
            row.append(_e(format_value(ex.cider)))
        rows.append(row)
    header = ["image", "generated", "references"] + (["CIDEr"] if with_cider else [])
    return _html_table(header, rows, num_cols={3})


def _html_vqa_examples(prep: _Prepared, embed: bool) -> str:
    exs = prep.data.vqa_examples or []
    with_family = any(ex.family for ex in exs)
    n_ok = sum(bool(ex.correct) for ex in exs)
    body = []
    for ex in exs:
        cls = "correct" if ex.correct else "wrong"
        verdict = '<span class="ok">✓ correct</span>' if ex.correct else '<span class="bad">✗ wrong</span>'
        cells = [_html_thumb(prep, ex.image, embed, "image"), _e(ex.question)]
        if with_family:
            cells.append(_e(ex.family or ""))
        cells += [f"<b>{_e(ex.predicted)}</b>", _e(", ".join(map(str, ex.gold_answers))), verdict]
        body.append(f'<tr class="{cls}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = ["image", "question"] + (["family"] if with_family else []) + ["predicted", "gold", ""]
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    return (f'<p class="muted">{n_ok} of {len(exs)} shown examples answered correctly.</p>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _acc_rows(prep: _Prepared) -> list[list[str]]:
    c = prep.data.classification
    assert c is not None
    rows = [[name + (" (model)" if i == 0 else ""), format_value(v)]
            for i, (name, v) in enumerate(c.accuracies.items())]
    if c.chance is not None:
        rows.append(["chance", format_value(c.chance)])
    return rows


def _confusion_rows(prep: _Prepared) -> tuple[list[str], list[list[str]]]:
    c = prep.data.classification
    assert c is not None
    header = ["true \\ predicted"] + c.class_names + ["recall"]
    recall = c.per_class_recall()
    rows = [[name] + [str(v) for v in row] + [format_value(recall[i])]
            for i, (name, row) in enumerate(zip(c.class_names, c.confusion))]
    return header, rows


def _html_classification(prep: _Prepared, embed: bool) -> str:
    c = prep.data.classification
    assert c is not None
    parts = []
    acc = c.accuracy
    if acc is not None:
        parts.append(f'<p class="muted">{c.total} examples, accuracy from the confusion matrix '
                     f"{_e(format_value(acc))}.</p>")
    plots_html = (_html_plot(prep, "confusion", embed, "confusion matrix")
                  + (_html_plot(prep, "ablation", embed, "accuracy: model vs ablations")
                     if c.accuracies else ""))
    parts.append(f'<div class="two">{plots_html}</div>')
    tables = []
    if c.accuracies:
        acc_rows = [[_e(a) for a in r] for r in _acc_rows(prep)]
        tables.append("<div><h3>Model vs ablations</h3>"
                      + _html_table(["variant", "accuracy"], acc_rows, num_cols={1}) + "</div>")
    header, rows = _confusion_rows(prep)
    n = len(c.class_names)
    tables.append("<div><h3>Confusion matrix (rows: true class)</h3>"
                  + _html_table([_e(h) for h in header], [[_e(x) for x in r] for r in rows],
                                num_cols=set(range(1, n + 2))) + "</div>")
    parts.append(f'<div class="two">{"".join(tables)}</div>')
    return "".join(parts)


def render_html(prep: _Prepared, embed: bool = True) -> str:
    d = prep.data
    sections = prep.sections()
    nav = "".join(f'<a href="#{s}">{SECTIONS[s]}</a>' for s in sections)
    head = [f"<h1>{_e(d.title)}</h1>", f'<p class="sub">Generated {_e(prep.generated)}</p>']
    if d.run_info:
        rows = [[_e(k), _e(v if isinstance(v, str) else format_value(v))] for k, v in d.run_info.items()]
        head.append(_html_table(["", ""], rows, cls="kv").replace("<thead><tr><th></th><th></th></tr></thead>", ""))
    head.append(f"<nav>{nav}</nav>")
    if not prep.have_mpl:
        head.append('<div class="notice">Plots are not included: matplotlib is not installed. '
                    f"Plots need <code>{plots.INSTALL_HINT}</code>.</div>")

    body_of: dict[str, Callable[[], str]] = {
        "summary": lambda: _html_summary(prep),
        "curves": lambda: _html_curves(prep, embed),
        "vqa-families": lambda: _html_vqa_families(prep, embed),
        "retrieval": lambda: _html_retrieval(prep, embed),
        "captions": lambda: _html_captions(prep, embed),
        "vqa-examples": lambda: _html_vqa_examples(prep, embed),
        "classification": lambda: _html_classification(prep, embed),
        "robustness": lambda: _html_robustness(prep, embed),
        "notes": lambda: "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in d.notes) + "</ul>",
    }
    parts = [f'<section id="{s}"><h2>{SECTIONS[s]}</h2>{body_of[s]()}</section>' for s in sections]
    from polymodal import __version__

    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(d.title)}</title><style>{CSS}</style></head>\n<body><main>\n"
        + "\n".join(head) + "\n" + "\n".join(parts)
        + f"\n<footer>polymodal {__version__} · report written {_e(prep.generated)}</footer>"
        + "\n</main></body></html>\n"
    )


# ------------------------------------------------------------------------------------------- Markdown


def _m(text: object) -> str:
    """User text in a Markdown table cell: one line, pipes escaped, no raw HTML."""
    s = " ".join(str(text).split())
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for ch in "\\|*`[]":
        s = s.replace(ch, "\\" + ch)
    return s


def _md_table(header: list[str], rows: list[list[str]], num_cols: set[int] = frozenset()) -> str:
    """Cells must already be Markdown-safe."""
    align = ["---:" if i in num_cols else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _md_thumb(prep: _Prepared, image: ImagePath | None) -> str:
    if image is None:
        return "*(no image)*"
    t = prep.thumb(image)
    if isinstance(t, Missing):
        return f"*({t.reason} image: {_m(t.original)})*"
    return f"![]({t.rel})"


def _md_plot(prep: _Prepared, key: str, alt: str) -> str:
    if key in prep.plots:
        return f"![{alt}]({prep.plots[key].rel})\n"
    if key in prep.plot_errors:
        return f"*Plot could not be drawn: {_m(prep.plot_errors[key])}*\n"
    if not prep.have_mpl:
        return f"*Plot skipped: matplotlib is not installed (`{plots.INSTALL_HINT}`).*\n"
    return ""


def render_markdown(prep: _Prepared) -> str:
    d = prep.data
    out = [f"# {_m(d.title)}", "", f"Generated {prep.generated}", ""]
    if d.run_info:
        out += [_md_table(["run", ""], [[_m(k), _m(v if isinstance(v, str) else format_value(v))]
                                         for k, v in d.run_info.items()]), ""]
    if not prep.have_mpl:
        out += [f"> Plots are not included: matplotlib is not installed. Plots need `{plots.INSTALL_HINT}`.", ""]

    for s in prep.sections():
        out += [f"## {SECTIONS[s]}", ""]
        if s == "summary":
            if not d.metrics:
                out += ["No metrics were recorded.", ""]
            for section, values in d.metrics.items():
                out += [f"### {_m(section)}", "",
                        _md_table(["metric", "value"], [[_m(k), format_value(v)] for k, v in values.items()],
                                  num_cols={1}), ""]
        elif s == "curves":
            out += [_md_plot(prep, "curves", "training curves"),
                    _md_table(CURVE_HEADER, [[_m(c) for c in r] for r in _curve_rows(prep.curves)],
                              num_cols={1, 3, 4, 5, 6}), ""]
        elif s == "vqa-families":
            header, rows = _family_table(d.vqa_by_family or {})
            out += [_md_plot(prep, "vqa_families", "VQA accuracy by question family"),
                    _md_table([_m(h) for h in header], [[_m(c) for c in r] for r in rows],
                              num_cols=set(range(1, len(header)))), ""]
        elif s == "retrieval":
            rows = []
            for ex in d.retrieval_examples or []:
                cells = []
                for rank, r in enumerate(ex.results, 1):
                    score = f" {format_value(r.score)}" if r.score is not None else ""
                    cells.append(f"{_md_thumb(prep, r.image)}<br>#{rank}{score}{' **✓ hit**' if r.hit else ''}")
                if ex.gold_image is not None and not ex.any_hit:
                    cells.append(f"{_md_thumb(prep, ex.gold_image)}<br>**gold, not retrieved**")
                verdict = (f"hit at rank {ex.first_hit}" if ex.any_hit
                           else f"**miss**, not in top {len(ex.results)}" if ex.results else "**no results**")
                rows.append([f"“{_m(ex.query)}” ({verdict})", " ".join(cells)])
            out += ["Text-to-image: each query with its top-ranked images and scores; ✓ marks the correct image.",
                    "", _md_table(["query", "top results"], rows), ""]
        elif s == "captions":
            exs = d.caption_examples or []
            with_cider = any(ex.cider is not None for ex in exs)
            rows = []
            for ex in exs:
                row = [_md_thumb(prep, ex.image), f"**{_m(ex.generated)}**",
                       "<br>".join(f"• {_m(r)}" for r in ex.references) or "*none*"]
                if with_cider:
                    row.append(format_value(ex.cider))
                rows.append(row)
            out += [_md_table(["image", "generated", "references"] + (["CIDEr"] if with_cider else []), rows,
                              num_cols={3}), ""]
        elif s == "vqa-examples":
            exs = d.vqa_examples or []
            with_family = any(ex.family for ex in exs)
            rows = []
            for ex in exs:
                row = [_md_thumb(prep, ex.image), _m(ex.question)]
                if with_family:
                    row.append(_m(ex.family or ""))
                row += [f"**{_m(ex.predicted)}**", _m(", ".join(map(str, ex.gold_answers))),
                        "✓ correct" if ex.correct else "✗ **wrong**"]
                rows.append(row)
            n_ok = sum(bool(ex.correct) for ex in exs)
            header = ["image", "question"] + (["family"] if with_family else []) + ["predicted", "gold", "result"]
            out += [f"{n_ok} of {len(exs)} shown examples answered correctly.", "", _md_table(header, rows), ""]
        elif s == "classification":
            c = d.classification
            assert c is not None
            if c.accuracy is not None:
                out += [f"{c.total} examples, accuracy from the confusion matrix {format_value(c.accuracy)}.", ""]
            out += [_md_plot(prep, "confusion", "confusion matrix")]
            if c.accuracies:
                out += [_md_plot(prep, "ablation", "accuracy: model vs ablations"), "### Model vs ablations", "",
                        _md_table(["variant", "accuracy"], [[_m(a) for a in r] for r in _acc_rows(prep)],
                                  num_cols={1}), ""]
            header, rows = _confusion_rows(prep)
            out += ["### Confusion matrix (rows: true class)", "",
                    _md_table([_m(h) for h in header], [[_m(x) for x in r] for r in rows],
                              num_cols=set(range(1, len(c.class_names) + 2))), ""]
        elif s == "robustness":
            out += [_md_plot(prep, key, f"robustness of {m} ({sp})") for sp, m, key in _robustness_plots(d)]
            for caption, header, rows in _robustness_tables(d):
                out += [f"### {_m(caption)}", "", _md_table([_m(h) for h in header], [[_m(c) for c in r] for r in rows],
                                                            num_cols=set(range(2, len(header)))), ""]
        elif s == "notes":
            out += [f"- {_m(n)}" for n in d.notes] + [""]
    from polymodal import __version__

    out += ["---", f"*polymodal {__version__} · report written {prep.generated}*", ""]
    return "\n".join(out)
