"""``evaluate_checkpoint`` and ``polymodal eval``: every split of a spec, eval.json, the report, the table."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.cli_runner import run_cli
from polymodal.errors import ConfigError, DataError
from polymodal.evaluate import _compact, evaluate_checkpoint, format_metrics
from polymodal.metrics import meteor
from polymodal.tasks import captioning
from tests.test_api import TinyRuns, tiny_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> TinyRuns:
    return tiny_runs(tmp_path_factory)


@pytest.fixture(autouse=True)
def _no_java(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(captioning, "meteor_available", lambda: False)  # METEOR starts a JVM: seconds per call
    monkeypatch.setattr(meteor, "meteor_available", lambda: False)  # nor does an evaluation's METEOR session




@pytest.fixture(scope="module")
def vqa_eval(runs: TinyRuns) -> dict:
    """The VQA run evaluated on the whole world folder, into the default folder RUN/eval."""
    return evaluate_checkpoint(runs.runs["vqa"], runs.world, num_workers=0)


def test_world_folder_evaluates_every_split_but_train(runs: TinyRuns, vqa_eval: dict) -> None:
    assert list(vqa_eval["metrics"]) == ["val", "test", "test_heldout"]
    out = runs.runs["vqa"] / "eval"
    assert Path(vqa_eval["eval_json"]) == out / "eval.json"
    saved = json.loads((out / "eval.json").read_text())
    assert saved["task"] == "vqa" and saved["model_type"] == "vqa" and saved["global_step"] == 3
    for split in ("val", "test", "test_heldout"):
        metrics = saved["splits"][split]["metrics"]
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert metrics == pytest.approx(vqa_eval["metrics"][split])
    assert saved["splits"]["test"]["samples"] > 0 and saved["splits"]["test_heldout"]["samples"] > 0


def test_vqa_accuracy_per_family_for_test_and_heldout(runs: TinyRuns, vqa_eval: dict) -> None:
    saved = json.loads(Path(vqa_eval["eval_json"]).read_text())
    fams = {s: saved["splits"][s]["details"]["by_family"] for s in ("test", "test_heldout")}
    assert {"count", "existence", "attribute"} <= set(fams["test"])
    assert fams["test_heldout"] and all(0.0 <= v <= 1.0 for v in fams["test_heldout"].values())
    html = Path(vqa_eval["report_html"]).read_text()
    assert "VQA accuracy by question family" in html
    for word in ("val", "test", "test_heldout", "accuracy", "acc_yes/no", "existence", "Training curves", "VQA examples"):
        assert word in html, word
    md = Path(vqa_eval["report_md"]).read_text()
    assert "| family | val | test | test_heldout |" in md


def test_metrics_equal_the_trainers_test_metrics(runs: TinyRuns, tmp_path: Path) -> None:
    """Evaluating the run config's test split reproduces metrics.json: same weights, same preprocessing."""
    for task in ("vqa", "classification", "retrieval", "multitask"):
        result = evaluate_checkpoint(runs.runs[task], runs.configs[task], out_dir=tmp_path / task, splits=["test"], num_workers=0, batch_size=7, report=False)
        trained = json.loads((runs.runs[task] / "metrics.json").read_text())["test"]
        assert result["metrics"]["test"] == pytest.approx(trained, abs=1e-6), task
        assert not (tmp_path / task / "report.html").exists()


@pytest.mark.parametrize(
    "task, metric, section",
    [("retrieval", "t2i_R@1", "Retrieval examples"), ("captioning", "CIDEr", "Caption examples"), ("classification", "macro_f1", "Confusion matrix")],
)
def test_each_task_gets_its_report_section(runs: TinyRuns, tmp_path: Path, task: str, metric: str, section: str) -> None:
    result = evaluate_checkpoint(runs.runs[task], runs.world, out_dir=tmp_path, splits=["test"], max_samples=10, num_workers=0)
    assert result["splits"]["test"]["samples"] <= 10
    html = (tmp_path / "report.html").read_text()
    assert section in html and metric in html and "test" in html
    assert metric in json.loads((tmp_path / "eval.json").read_text())["metrics"]["test"]


def test_a_multitask_run_is_evaluated_on_every_task_with_every_report_section(runs: TinyRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    import polymodal.evaluate

    sessions: list[str] = []
    real_session = polymodal.evaluate.meteor_session

    @contextlib.contextmanager
    def recorded_session():  # type: ignore[no-untyped-def]
        sessions.append("open")
        with real_session() as scorer:
            yield scorer
        sessions.append("closed")

    monkeypatch.setattr(polymodal.evaluate, "meteor_session", recorded_session)
    result = evaluate_checkpoint(runs.runs["multitask"], runs.world, out_dir=tmp_path, splits=["test", "test_heldout"], num_workers=0)
    assert sessions == ["open", "closed"]  # one METEOR jar for both splits, started before the model's work
    test = result["metrics"]["test"]
    for key in ("retrieval/t2i_R@1", "captioning/CIDEr", "vqa/accuracy", "classification/accuracy",
                "classification/text_only_accuracy", "classification/image_only_accuracy"):
        assert 0.0 <= test[key] <= 10.0, key
    assert list(result["metrics"]["test_heldout"]) == ["vqa/accuracy", *[k for k in result["metrics"]["test_heldout"] if k != "vqa/accuracy"]]
    assert all(k.startswith("vqa/") for k in result["metrics"]["test_heldout"])  # held-out split: questions only
    html = (tmp_path / "report.html").read_text()
    for section in ("Retrieval examples", "Caption examples", "VQA examples", "Confusion matrix", "text only", "image only", "existence"):
        assert section in html, section


def test_splits_without_samples_for_the_task_are_skipped_and_noted(
    runs: TinyRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import polymodal.evaluate

    caplog.set_level(logging.INFO, logger="polymodal")

    monkeypatch.setattr(polymodal.evaluate, "meteor_session", lambda: pytest.fail("retrieval scores no captions: no METEOR jar"))
    result = evaluate_checkpoint(runs.runs["retrieval"], runs.world, out_dir=tmp_path, splits=["test", "test_heldout"], max_samples=5, num_workers=0)
    assert list(result["metrics"]) == ["test"]
    assert "test_heldout" in result["skipped_splits"]
    assert "test_heldout" in (tmp_path / "report.md").read_text()
    # said once, by the summary (the CLI prints skipped_splits), not also as the split is reached
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "test_heldout" in r.getMessage()]


def test_an_unknown_split_names_the_ones_there_are(runs: TinyRuns, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'tset'.*val, test, test_heldout"):
        evaluate_checkpoint(runs.runs["vqa"], runs.world, out_dir=tmp_path, splits=["tset"])
    assert not (tmp_path / "eval.json").exists()


def test_cli_eval_prints_the_table_and_exits_0(runs: TinyRuns, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        capsys, "eval", "--checkpoint", str(runs.runs["vqa"]), "--data", str(runs.world),
        "--split", "test", "--split", "test_heldout", "--out", str(tmp_path), "--workers", "0", "--device", "cpu",
    )
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "test", "test_heldout"]
    assert any(line.startswith("accuracy ") for line in out.splitlines())
    assert str(tmp_path / "eval.json") in out and (tmp_path / "report.html").is_file()
    assert list(json.loads((tmp_path / "eval.json").read_text())["metrics"]) == ["test", "test_heldout"]


def test_cli_eval_on_a_folder_that_is_not_a_checkpoint_exits_2(runs: TinyRuns, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "eval", "--checkpoint", str(tmp_path), "--data", str(runs.world))
    assert code == 2 and err.startswith("error:") and str(tmp_path) in err and "Traceback" not in err


def test_cli_eval_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "eval", "--help")
    assert code == 0 and "--split" in out and "--max-samples" in out and "Example" in out


def test_format_metrics_is_one_column_per_split() -> None:
    table = format_metrics({"test": {"accuracy": 0.5, "f1": 0.25}, "val": {"accuracy": 0.75}}, {"test": 4, "val": 8})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "test", "val"]
    assert lines[2].split() == ["samples", "4", "8"]
    assert lines[3].split() == ["accuracy", "0.5000", "0.7500"]
    assert lines[4].split() == ["f1", "0.2500", "–"]


def test_huge_detail_arrays_are_not_written() -> None:
    compact = _compact({"ranks": list(range(5000)), "small": (1, 2.5, float("nan")), "nested": {"x": [[0] * 3] * 2}})
    assert compact["ranks"] == {"omitted": "list of 5000 items"}
    assert compact["small"] == [1, 2.5, None] and compact["nested"] == {"x": [[0, 0, 0], [0, 0, 0]]}
    json.dumps(compact, allow_nan=False)


def test_a_same_seed_world_of_another_size_warns_how_many_test_images_were_trained_on(
    runs: TinyRuns, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Scene i of a world does not depend on the world's size: a bigger world with the training world's
    seed shares its first scenes, so some of its test images are training images of the checkpoint."""
    from polymodal.data.world import WorldConfig, generate_world

    bigger = tmp_path / "bigger"
    generate_world(bigger, WorldConfig(num_scenes=90, seed=2, image_size=32), workers=1)  # the tiny runs' world: 60 scenes, seed 2
    def ids(folder: Path) -> set[int]:
        return {int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("*.png")}

    expected = len(ids(bigger / "images" / "test") & ids(runs.world / "images" / "train"))
    assert expected > 0  # the fixture really overlaps: the check below can fail
    with caplog.at_level("WARNING"):
        result = evaluate_checkpoint(runs.runs["vqa"], bigger, out_dir=tmp_path / "eval", splits=["test"], num_workers=0)
    seen = result["splits"]["test"]["seen_in_training"]
    assert seen["shared"] == expected and seen["of"] == len(ids(bigger / "images" / "test")) and seen["seed"] == 2
    assert f"{expected} of its {seen['of']} images are training images" in caplog.text and "--seed" in caplog.text
    assert f"{expected} of its {seen['of']} items were training items" in Path(result["report_md"]).read_text()  # and the report says so

    other_seed = tmp_path / "other_seed"
    generate_world(other_seed, WorldConfig(num_scenes=90, seed=3, image_size=32), workers=1)
    result = evaluate_checkpoint(runs.runs["vqa"], other_seed, out_dir=tmp_path / "eval2", splits=["test"], num_workers=0, report=False)
    assert "seen_in_training" not in result["splits"]["test"]


def test_the_training_world_itself_is_not_flagged(vqa_eval: dict) -> None:
    assert all("seen_in_training" not in split for split in vqa_eval["splits"].values())


def test_an_unreadable_gallery_image_from_a_shard_is_named_by_its_origin() -> None:
    """WebDataset samples carry their image as bytes, so the message named 'None' instead of the member."""
    import torch

    from polymodal.data.sample import Sample
    from polymodal.errors import DataError
    from polymodal.tasks import build_task

    samples = [Sample(f"s{i}", origin=f"shard-000.tar:s{i}", image_bytes=b"x", image_id=f"s{i}", text="a cube") for i in range(3)]

    def loader(items, with_images):  # the second image could not be decoded: the loader skipped it
        yield {"image": torch.zeros(2, 3, 8, 8), "samples": [items[0], items[2]], "num_skipped": 1}

    with pytest.raises(DataError, match=r"1 gallery image\(s\) could not be read \(e\.g\. shard-000\.tar:s1\)"):
        build_task("retrieval", None, 16).embed(None, samples, loader, torch.device("cpu"))


def test_an_out_folder_that_cannot_be_made_fails_before_the_work(runs: TinyRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--out naming a file used to crash with a bare FileExistsError after every split was evaluated."""
    import polymodal.evaluate

    monkeypatch.setattr(polymodal.evaluate, "select_samples", lambda *a, **k: pytest.fail("evaluated before checking --out"))
    taken = tmp_path / "a_file.png"
    taken.write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"cannot write the evaluation to .*a_file\.png/eval \(the --out folder\)"):
        evaluate_checkpoint(runs.runs["retrieval"], runs.world, out_dir=taken / "eval", splits=["test"], max_samples=5, num_workers=0)


def test_a_split_that_fails_keeps_the_splits_evaluated_before_it(runs: TinyRuns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a corrupt test image failed the run after val was evaluated, and --out was left empty."""
    import polymodal.evaluate
    from polymodal.data.selection import select_samples

    def select(sources: Any, task: Any, split: str, max_samples: int | None = None) -> Any:
        if split == "test":
            raise DataError("retrieval evaluation: 1 gallery image(s) could not be read")
        return select_samples(sources, task, split, max_samples)

    monkeypatch.setattr(polymodal.evaluate, "select_samples", select)
    (tmp_path / "eval.json").write_text('{"an earlier": "complete evaluation"}')  # its report matches it: kept
    with pytest.raises(DataError, match="could not be read"):
        evaluate_checkpoint(runs.runs["retrieval"], runs.world, out_dir=tmp_path, splits=["val", "test"], max_samples=5, num_workers=0)
    assert json.loads((tmp_path / "eval.json").read_text()) == {"an earlier": "complete evaluation"}
    kept = json.loads((tmp_path / "eval.partial.json").read_text())
    assert list(kept["metrics"]) == ["val"] and "t2i_R@1" in kept["metrics"]["val"]
    assert kept["failed_split"] == {"test": "retrieval evaluation: 1 gallery image(s) could not be read"}


def test_classifier_labels_outside_its_classes_are_named(runs: TinyRuns, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: labels 'true'/'false' for classes '0'/'1' scored accuracy 0 without a word; a CSV's '1.0'
    did not match the class '1'."""
    rows = [json.loads(line) for line in (runs.world / "classification/test.jsonl").read_text().splitlines()][:12]
    for i, row in enumerate(rows):
        row["image"] = str(runs.world / row["image"])
    (tmp_path / "words.jsonl").write_text("".join(json.dumps(r | {"label": "true" if r["label"] else "false"}) + "\n" for r in rows))
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r | {"label": float(r["label"]) if i % 2 else ("maybe" if i % 4 else r["label"])}) + "\n" for i, r in enumerate(rows)))
    for name in ("words", "mixed"):
        (tmp_path / f"{name}.yaml").write_text(f"format: jsonl\npath: {tmp_path / name}.jsonl\nid_field: id\n")
    with pytest.raises(DataError, match=r"none of the 12 \S+ samples has a label among the model's classes \('0', '1'\); their labels are '(true|false)', '(true|false)'"):
        evaluate_checkpoint(runs.runs["classification"], tmp_path / "words.yaml", out_dir=tmp_path / "a", num_workers=0)
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        result = evaluate_checkpoint(runs.runs["classification"], tmp_path / "mixed.yaml", out_dir=tmp_path / "b", num_workers=0)
    (split,) = result["splits"].values()
    assert split["details"]["outside_classes"] == 3  # the 'maybe' rows; the floats 1.0/0.0 are the classes '1'/'0'
    assert "3 of 12 samples have labels outside the model's classes ('0', '1'), e.g. 'maybe'; they count as wrong" in caplog.text
