"""The evaluation report: both files, every section, escaping, images, and life without matplotlib."""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from polymodal.report import (
    SECTIONS,
    CaptionExample,
    ClassificationResult,
    RankedImage,
    ReportData,
    RetrievalExample,
    VQAExample,
    format_value,
    load_training_curves,
    write_report,
)

METRICS = {
    "retrieval (test)": {"i2t_R@1": 0.7125, "t2i_R@5": 0.9375},
    "vqa (test)": {"accuracy": 0.84123, "num_questions": 1200},
    "vqa (held-out)": {"accuracy": 0.5, "CIDEr": 12.345},
}
EVIL = "a cat <script>alert('x')</script> & a dog"


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (160, 120)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture
def data(tmp_path: Path) -> ReportData:
    img = tmp_path / "imgs"
    img.mkdir()
    red, green, blue = (_png(img / f"{n}.png", c) for n, c in
                        [("red", (200, 0, 0)), ("green", (0, 200, 0)), ("blue", (0, 0, 200))])
    return ReportData(
        title="tiny <model> report",
        run_info={"model": "clip-tiny", "checkpoint": "ckpt.safetensors", "seconds": "12.5"},
        metrics=METRICS,
        training_curves={
            "train/loss": [(0, 2.0), (10, 1.0), (20, 0.5)],
            "lr": [(0, 0.0), (10, 3e-4), (20, 1e-4)],
            "val/i2t_R@1": [(10, 0.3), (20, 0.6)],
        },
        vqa_by_family={"test": {"color": 0.9, "shape": 0.8}, "held-out": {"color": 0.7, "shape": 0.4}},
        retrieval_examples=[
            RetrievalExample("a red square", [(green, 0.9), RankedImage(red, 0.8, hit=True)], gold_image=red),
            RetrievalExample("a blue square", [(green, 0.7, False), (red, 0.6, False)], gold_image=blue),
        ],
        caption_examples=[
            CaptionExample(red, EVIL, ["a red <b>square</b>", "red"], cider=1.25),
            CaptionExample(img / "nope" / "missing_caption.png", "no picture", ["none"]),
        ],
        vqa_examples=[
            VQAExample(blue, "what colour?", "Blue ", ["blue"], family="color"),
            VQAExample(green, "what shape?", "circle", ["square"], family="shape"),
        ],
        classification=ClassificationResult(
            ["cat", "dog", "bird"], [[5, 1, 0], [2, 6, 0], [0, 1, 7]],
            {"image+text": 0.82, "text only": 0.51, "image only": 0.47},
        ),
        robustness={"test": {"task": "classification", "headline": "accuracy", "levels": [0.0, 0.5, 1.0], "curves": {
            "image": {"noise": {"levels": [0.0, 0.5, 1.0], "headline": [0.9, 0.7, None]}}}}},
        notes=["held-out uses unseen <combinations>"],
    )


def _data_uri_pngs(html: str) -> list[Image.Image]:
    out = []
    for b64 in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html):
        im = Image.open(io.BytesIO(base64.b64decode(b64)))
        im.load()
        out.append(im)
    return out


def _no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg",
                "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, mod, None)


def test_writes_both_files_with_metrics_and_headings(data: ReportData, tmp_path: Path) -> None:
    html_path, md_path = write_report(data, tmp_path / "out")
    assert html_path == tmp_path / "out" / "report.html" and html_path.is_file()
    assert md_path == tmp_path / "out" / "report.md" and md_path.is_file()
    html, md = html_path.read_text(), md_path.read_text()
    for section, values in METRICS.items():
        assert f"<h3>{section}</h3>" in html
        assert section in md
        for name, value in values.items():
            assert name in html and name in md
            assert format_value(value) in html and format_value(value) in md
    assert "0.8412" in html and "1200" in html and "12.35" in html  # the formats themselves
    for heading in SECTIONS.values():
        assert f"<h2>{heading}</h2>" in html
        assert f"## {heading}" in md
    assert "clip-tiny" in html and "ckpt.safetensors" in md
    assert "<script" not in html.lower()  # no JavaScript at all, escaped user text included
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network


def test_user_text_is_escaped(data: ReportData, tmp_path: Path) -> None:
    html_path, md_path = write_report(data, tmp_path)
    html, md = html_path.read_text(), md_path.read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; a dog" in html
    assert "<title>tiny &lt;model&gt; report</title>" in html
    assert "a red &lt;b&gt;square&lt;/b&gt;" in html and "<b>square</b>" not in html
    assert "unseen &lt;combinations&gt;" in html
    assert "<script>" not in md and "&lt;script&gt;" in md


def test_images_are_embedded_valid_pngs(data: ReportData, tmp_path: Path) -> None:
    html_path, md_path = write_report(data, tmp_path / "out", thumb_size=64)
    html = html_path.read_text()
    images = _data_uri_pngs(html)
    thumbs = sorted((tmp_path / "out" / "report_files").glob("thumb_*.png"))
    assert len(thumbs) == 3  # red, green, blue: each thumbnailed once however often it is shown
    for t in thumbs:
        with Image.open(t) as im:
            assert im.format == "PNG" and max(im.size) == 64 and im.size == (64, 48)  # aspect kept
    assert sum(im.size == (64, 48) for im in images) == 8  # every shown occurrence embedded
    # The Markdown links to files that exist.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md_path.read_text())
    assert links and all((tmp_path / "out" / link).is_file() for link in links)


def test_missing_and_unreadable_images_become_placeholders(data: ReportData, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    data.vqa_examples = [VQAExample(broken, "q?", "a", ["a"]), VQAExample("rel/missing.png", "q2?", "b", ["c"])]
    html_path, md_path = write_report(data, tmp_path / "out")
    html, md = html_path.read_text(), md_path.read_text()
    assert "missing image" in html and "missing_caption.png" in html
    assert "unreadable image" in html and str(broken) in html
    assert "rel/missing.png" in html and "rel/missing.png" in md
    assert "(missing image:" in md and "(unreadable image:" in md


def test_relative_images_resolve_under_image_root(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", (1, 2, 3))
    data = ReportData("t", vqa_examples=[VQAExample("a.png", "q", "x", ["x"])], image_root=tmp_path)
    html = write_report(data, tmp_path / "out")[0].read_text()
    assert "missing image" not in html and len(_data_uri_pngs(html)) == 1


def test_retrieval_hits_and_misses_are_marked(data: ReportData, tmp_path: Path) -> None:
    html = write_report(data, tmp_path)[0].read_text()
    assert html.count('<figure class="hit">') == 1
    assert "hit at rank 2" in html
    assert html.count('<figure class="gold">') == 1 and "gold, not retrieved" in html  # only for the miss
    assert "miss (not in top 2)" in html


def test_vqa_correctness_and_classification_tables(data: ReportData, tmp_path: Path) -> None:
    assert data.vqa_examples is not None and data.vqa_examples[0].correct is True  # "Blue " matches "blue"
    assert data.vqa_examples[1].correct is False
    html = write_report(data, tmp_path)[0].read_text()
    assert '<tr class="correct">' in html and '<tr class="wrong">' in html
    assert "1 of 2 shown examples answered correctly" in html
    assert "image+text (model)" in html and "0.8200" in html and "0.3333" in html  # chance = 1/3 by default
    assert "22 examples, accuracy from the confusion matrix 0.8182" in html  # (5 + 6 + 7) / 22
    c = data.classification
    assert c is not None and c.total == 22


def test_without_matplotlib_tables_and_install_hint(data: ReportData, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _no_matplotlib(monkeypatch)
    html_path, md_path = write_report(data, tmp_path / "out")
    html, md = html_path.read_text(), md_path.read_text()
    assert "polymodal[eval]" in html and "polymodal[eval]" in md
    assert "matplotlib is not installed" in html
    assert not list((tmp_path / "out" / "report_files").glob("plot_*.png"))
    assert 'class="plot"' not in html
    for values in METRICS.values():
        for name, value in values.items():
            assert name in html and format_value(value) in html
    assert "train/loss" in html and "0.5000" in html  # curves still summarized as a table
    assert "true \\ predicted" in html  # the confusion matrix as a table
    assert len(_data_uri_pngs(html)) == 8  # thumbnails do not need matplotlib: 5 retrieval, 1 caption, 2 VQA


def test_plots_are_drawn_with_matplotlib(data: ReportData, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    html_path, md_path = write_report(data, tmp_path / "out")
    files = tmp_path / "out" / "report_files"
    for name in ("curves", "vqa_families", "confusion", "ablation", "robustness_0_0"):
        path = files / f"plot_{name}.png"
        assert path.is_file(), name
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 150
            assert len(im.convert("L").getcolors(1 << 16) or []) > 10  # something was drawn
    html, md = html_path.read_text(), md_path.read_text()
    assert html.count('class="plot"') == 5
    assert "polymodal[eval]" not in html
    assert "](report_files/plot_confusion.png)" in md and "](report_files/plot_curves.png)" in md


def test_link_mode_and_rewrite_removes_stale_files(data: ReportData, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_report(data, out)
    stale = out / "report_files" / "thumb_9999.png"
    _png(stale, (0, 0, 0))
    keep = out / "report_files" / "mine.txt"
    keep.write_text("not ours")
    html = write_report(data, out, embed=False)[0].read_text()
    assert not stale.exists() and keep.exists()
    assert "data:image/png" not in html
    srcs = re.findall(r'src="([^"]+)"', html)
    assert srcs and all((out / s).is_file() for s in srcs)


def test_training_curves_from_csv_long_and_wide(tmp_path: Path) -> None:
    long = tmp_path / "long.csv"
    long.write_text("step,epoch,name,value\n20,1,train/loss,0.5\n10,0,train/loss,1.0\n10,0,lr,3e-4\n"
                    "10,0,val/acc,\n15,0,val/acc,oops\n20,1,val/acc,0.7\n")
    assert load_training_curves(long) == {
        "train/loss": [(10, 1.0), (20, 0.5)], "lr": [(10, 3e-4)], "val/acc": [(20, 0.7)]}
    trainer = tmp_path / "log.csv"  # what polymodal's trainer writes: a split column prefixes the name
    trainer.write_text("step,epoch,split,name,value\n10,0,train,loss,1.5\n10,0,train,lr,0.0001\n"
                       "20,1,val,i2t_R@1,0.25\n20,1,,plain,3\n")
    assert load_training_curves(trainer) == {
        "train/loss": [(10, 1.5)], "train/lr": [(10, 1e-4)], "val/i2t_R@1": [(20, 0.25)], "plain": [(20, 3.0)]}
    wide = tmp_path / "wide.csv"
    wide.write_text("step,epoch,loss,val_acc\n0,0,2.0,\n10,0,1.5,0.4\n20,1,1.0,\n")
    assert load_training_curves(wide) == {"loss": [(0, 2.0), (10, 1.5), (20, 1.0)], "val_acc": [(10, 0.4)]}
    bad = tmp_path / "bad.csv"
    bad.write_text("iteration,loss\n1,2\n")
    with pytest.raises(ValueError, match="step"):
        load_training_curves(bad)
    html = write_report(ReportData("csv", training_curves=long), tmp_path / "out")[0].read_text()
    assert "<h2>Training curves</h2>" in html and "train/loss" in html and "10–20" in html


def test_absent_sections_are_left_out(tmp_path: Path) -> None:
    html_path, md_path = write_report(ReportData("bare"), tmp_path)
    html = html_path.read_text()
    assert "<h2>Summary</h2>" in html and "No metrics were recorded." in html
    for heading in ("Training curves", "Retrieval examples", "Classification", "Notes"):
        assert f"<h2>{heading}</h2>" not in html and f"## {heading}" not in md_path.read_text()


def test_format_value() -> None:
    assert format_value(0.71254) == "0.7125"
    assert format_value(12.345) == "12.35"
    assert format_value(12345.67) == "12,345.7"
    assert format_value(1200) == "1200"
    assert format_value(3e-4) == "3.00e-04"
    assert format_value(0.0) == "0.0000"
    assert format_value(float("nan")) == "nan"
    assert format_value(None) == "–"


def test_classification_validates_shape() -> None:
    with pytest.raises(ValueError, match="3x3"):
        ClassificationResult(["a", "b", "c"], [[1, 2], [3, 4]])
    c = ClassificationResult(["a", "b"], [[3, 1], [0, 4]])
    assert c.chance == 0.5 and c.accuracy == 7 / 8 and c.per_class_recall() == [0.75, 1.0]


def test_throughput_gets_its_own_panel_so_accuracies_stay_readable() -> None:
    from polymodal.report.plots import curve_group

    assert curve_group("train/samples_per_s") == "throughput"
    assert curve_group("train/acc_vqa") == "metrics"
    assert curve_group("train/loss_itc") == "loss" and curve_group("train/lr") == "learning rate"
