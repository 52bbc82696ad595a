"""``polymodal.predict`` and ``polymodal predict``: caption, answer, rank-texts, rank-images, classify."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from polymodal import predict
from polymodal.api import load_model
from tests.cli_runner import run_cli
from polymodal.data.images import open_image
from polymodal.errors import DataError
from tests.test_api import TinyRuns, tiny_runs, vqa_samples


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> TinyRuns:
    return tiny_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def images(runs: TinyRuns) -> list[Path]:
    return sorted((runs.world / "images/test").iterdir())[:4]




# ------------------------------------------------------------------------------------------- Python API


def test_caption_matches_the_captioning_tasks_generation(runs: TinyRuns, images: list[Path]) -> None:
    model, proc = load_model(runs.runs["captioning"])
    got = predict.caption(model, proc, images[:2])
    assert isinstance(got, list) and len(got) == 2 and all(isinstance(c, str) for c in got)
    trainer = runs.trainers["captioning"]
    trainer.model.eval()
    pixels = torch.stack([trainer.eval_processor(open_image(p)) for p in images[:2]])
    seqs = trainer.model.generate(pixels, max_length=trainer.task.max_new_tokens, method=trainer.task.method).sequences
    assert got == [trainer.tokenizer.decode(s) for s in seqs]
    assert predict.caption(model, proc, images[0]) == got[:1]  # a single image is a batch of one


def test_answer_and_top_k_agree(runs: TinyRuns) -> None:
    model, proc = load_model(runs.runs["vqa"])
    samples = vqa_samples(runs, n=6)
    answers = predict.answer(model, proc, [s.image_path for s in samples], [s.text for s in samples])
    top = predict.answer_top_k(model, proc, [s.image_path for s in samples], [s.text for s in samples], k=3)
    assert len(answers) == 6 and all(isinstance(a, str) for a in answers)
    assert [t[0][0] for t in top] == answers
    assert all(len(t) == 3 and t[0][1] >= t[1][1] >= t[2][1] for t in top)
    assert all(a in model.vocab.answers for a in answers)
    # one image for several questions is broadcast
    one = predict.answer(model, proc, samples[0].image_path, [samples[0].text, samples[0].text])
    assert one == [answers[0], answers[0]]


def test_rank_texts_and_images_use_cosine_similarity(runs: TinyRuns, images: list[Path]) -> None:
    model, proc = load_model(runs.runs["retrieval"])
    texts = ["a red cube", "two blue spheres", "a small green cylinder"]
    ranked = predict.rank_texts(model, proc, images[0], texts)
    assert [r.item for r in ranked] == [texts[r.index] for r in ranked] and sorted(r.index for r in ranked) == [0, 1, 2]
    assert all(a.score >= b.score for a, b in itertools.pairwise(ranked))
    sim = predict.similarity(model, proc, images, texts)
    assert sim.shape == (4, 3)
    assert [r.score for r in ranked] == pytest.approx(sorted(sim[0].tolist(), reverse=True), abs=1e-6)
    by_image = predict.rank_images(model, proc, texts[1], images, top_k=2)
    assert len(by_image) == 2 and by_image[0].score == pytest.approx(float(sim[:, 1].max()), abs=1e-6)
    assert by_image[0].item == images[by_image[0].index]


def test_classify_returns_a_label_and_probabilities(runs: TinyRuns, images: list[Path]) -> None:
    model, proc = load_model(runs.runs["classification"])
    statements = ["there is a red cube", "there are no spheres"]
    preds = predict.classify(model, proc, images[:2], statements)
    classes = runs.trainers["classification"].task.classes
    assert len(preds) == 2
    for p in preds:
        assert p.label in classes and set(p.scores) == set(classes)
        assert sum(p.scores.values()) == pytest.approx(1.0) and p.score == max(p.scores.values())
    ids, mask = proc.texts(statements)
    trainer = runs.trainers["classification"]
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model({"image": proc.images(images[:2]), "text_ids": ids, "text_mask": mask}).logits
    assert [p.label for p in preds] == [classes[i] for i in logits.argmax(-1).tolist()]
    with pytest.raises(DataError, match="text"):
        predict.classify(model, proc, images[:1], None)


def test_wrong_model_type_names_both_types(runs: TinyRuns, images: list[Path]) -> None:
    model, proc = load_model(runs.runs["vqa"])
    with pytest.raises(predict.WrongModelType, match=r"needs a dual encoder.*'vqa' model.*predict answer"):
        predict.rank_texts(model, proc, images[0], ["a cube"])
    with pytest.raises(predict.WrongModelType, match="captioner"):
        predict.caption(model, proc, images[:1])


def test_corrupt_image_is_named(runs: TinyRuns, images: list[Path], tmp_path: Path) -> None:
    model, proc = load_model(runs.runs["captioning"])
    bad = tmp_path / "broken.png"
    bad.write_bytes(images[0].read_bytes()[:40])
    with pytest.raises(DataError, match="broken.png"):
        predict.caption(model, proc, [images[0], bad])


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_caption(runs: TinyRuns, images: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "predict", "caption", "--checkpoint", str(runs.runs["captioning"]), str(images[0]), str(images[1]))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(images[0]), str(images[1])]
    model, proc = load_model(runs.runs["captioning"])
    assert [line.split("\t", 1)[1] for line in lines] == predict.caption(model, proc, images[:2])


def test_cli_answer(runs: TinyRuns, capsys: pytest.CaptureFixture[str]) -> None:
    s = vqa_samples(runs, n=1)[0]
    code, out, err = run_cli(capsys, "predict", "answer", "--checkpoint", str(runs.runs["vqa"]), "--image", str(s.image_path), "--question", s.text, "--json")
    assert code == 0, err
    result = json.loads(out)
    model, proc = load_model(runs.runs["vqa"])
    assert result[0]["question"] == s.text and result[0]["answer"] == predict.answer(model, proc, [s.image_path], [s.text])[0]
    code, out, _ = run_cli(capsys, "predict", "answer", "-c", str(runs.runs["vqa"]), "-i", str(s.image_path), "-q", s.text)
    assert code == 0 and f"Q: {s.text}" in out and f"A: {result[0]['answer']}" in out


def test_cli_rank_texts_from_arguments_and_a_file(runs: TinyRuns, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = str(runs.runs["retrieval"])
    code, out, err = run_cli(capsys, "predict", "rank-texts", "--checkpoint", ckpt, "--image", str(images[0]), "--texts", "a red cube", "two blue spheres", "--json")
    assert code == 0, err
    ranked = json.loads(out)
    assert sorted(r["text"] for r in ranked) == ["a red cube", "two blue spheres"] and ranked[0]["score"] >= ranked[1]["score"]
    (tmp_path / "cands.txt").write_text("a red cube\n\ntwo blue spheres\na green cylinder\n")
    code, out, _ = run_cli(capsys, "predict", "rank-texts", "--checkpoint", ckpt, "--image", str(images[0]), "--texts", str(tmp_path / "cands.txt"))
    lines = out.rstrip().splitlines()
    assert code == 0 and len(lines) == 3 and [line.split()[0] for line in lines] == ["1.", "2.", "3."]
    assert {line.split("  ", 2)[-1] for line in lines} == {"a red cube", "two blue spheres", "a green cylinder"}


def test_cli_texts_file_that_does_not_exist_is_named_not_ranked_as_a_text(
    runs: TinyRuns, images: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = str(runs.runs["retrieval"])
    code, _, err = run_cli(capsys, "predict", "rank-texts", "--checkpoint", ckpt, "--image", str(images[0]), "--texts", str(tmp_path / "nope.txt"))
    assert code == 2 and "texts file not found" in err and "nope.txt" in err
    # a sentence that happens to end in .txt is still a text
    code, out, err = run_cli(capsys, "predict", "rank-texts", "--checkpoint", ckpt, "--image", str(images[0]), "--texts", "see notes.txt", "a red cube", "--json")
    assert code == 0, err
    assert sorted(r["text"] for r in json.loads(out)) == ["a red cube", "see notes.txt"]


def test_zero_shot_refuses_one_string_of_labels_and_a_template_with_two_slots(runs: TinyRuns, images: list[Path]) -> None:
    model, proc = load_model(runs.runs["retrieval"])
    with pytest.raises(DataError, match=r"labels must be a list of class names, got the single string 'red'"):
        predict.zero_shot(model, proc, images[0], "red")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="exactly one '{}'"):
        predict.zero_shot(model, proc, images[0], ["red", "blue"], templates=["a {} {}"])
    one = predict.zero_shot(model, proc, images[0], ["red", "blue"], templates="a photo of a {} thing")  # one template as a string
    assert set(one[0].scores) == {"red", "blue"}


def test_cli_rank_images(runs: TinyRuns, images: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "predict", "rank-images", "--checkpoint", str(runs.runs["retrieval"]), "--text", "a red cube", *map(str, images), "--top-k", "3")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3 and all(any(str(p) in line for p in images) for line in lines)


def test_cli_classify(runs: TinyRuns, images: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "predict", "classify", "--checkpoint", str(runs.runs["classification"]), "--image", str(images[0]), "--text", "there is a red cube", "--json")
    assert code == 0, err
    [result] = json.loads(out)
    assert result["label"] in runs.trainers["classification"].task.classes and result["image"] == str(images[0])


def test_a_multitask_model_does_every_predict_command(runs: TinyRuns, images: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = str(runs.runs["multitask"])
    trainer = runs.trainers["multitask"]
    model, proc = load_model(ckpt)
    [caption] = predict.caption(model, proc, [images[0]])
    with torch.no_grad():
        expected = trainer.tokenizer.decode(trainer.model.generate(proc.images([images[0]]), max_length=30).sequences[0])
    assert caption == expected
    code, out, err = run_cli(capsys, "predict", "answer", "-c", ckpt, "-i", str(images[0]), "-q", "how many cubes are there?", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["answer"] in model.vqa.vocab.answers
    code, out, err = run_cli(capsys, "predict", "classify", "-c", ckpt, "-i", str(images[0]), "-t", "there is a red cube.", "--json")
    assert code == 0, err
    result = json.loads(out)[0]
    assert result["label"] in trainer.task.classification.classes and abs(sum(result["scores"].values()) - 1) < 1e-4
    code, out, err = run_cli(capsys, "predict", "rank-images", "-c", ckpt, "-t", "a red cube", *map(str, images), "-k", "2")
    assert code == 0 and len(out.strip().splitlines()) == 2, err
    code, _, err = run_cli(capsys, "predict", "match", "-c", ckpt, "-i", str(images[0]), "-t", "a red cube")
    assert code == 2 and "trained without the 'itm' objective" in err  # this one was: itc, lm, vqa, cls


def test_match_scores_come_from_a_fusion_encoders_itm_head(images: list[Path], runs: TinyRuns) -> None:
    from polymodal.models.factory import BuildContext, build_model

    _, proc = load_model(runs.runs["retrieval"])
    vit = {"name": "vit", "image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "heads": 2}
    text = {"name": "text_transformer", "max_length": 32, "width": 32, "depth": 1, "heads": 2, "causal": False}
    model = build_model({"type": "fusion_encoder", "vision": vit, "text": text, "fusion_depth": 1, "weights": {"itc": 1.0, "itm": 1.0}},
                        BuildContext(tokenizer=proc.tokenizer)).eval()
    texts = ["a red cube", "two blue spheres"]
    ids, mask = proc.texts(texts)
    expected = model.itm_score(proc.images([images[0]] * 2), ids, mask)
    assert predict.match(model, proc, images[0], texts) == pytest.approx(expected.tolist(), abs=1e-6)


def test_cli_wrong_model_type_exits_2_with_one_paragraph(runs: TinyRuns, images: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "predict", "caption", "--checkpoint", str(runs.runs["retrieval"]), str(images[0]))
    assert code == 2 and out == ""
    assert err.startswith("error:") and "'dual_encoder' model" in err and "captioner" in err and "rank-texts" in err
    assert "Traceback" not in err and err.strip().count("\n") == 0


def test_cli_missing_image_exits_2_naming_it(runs: TinyRuns, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.png"
    code, _, err = run_cli(capsys, "predict", "answer", "--checkpoint", str(runs.runs["vqa"]), "--image", str(missing), "--question", "what color is the cube?")
    assert code == 2 and str(missing) in err and "Traceback" not in err


def test_cli_folder_that_is_not_a_checkpoint_exits_2_naming_it(tmp_path: Path, images: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "predict", "caption", "--checkpoint", str(tmp_path), str(images[0]))
    assert code == 2 and str(tmp_path) in err and "not a polymodal checkpoint" in err


def test_cli_predict_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "predict", "--help")
    assert code == 0 and "Example" in out
    for action in ("caption", "answer", "rank-texts", "rank-images", "classify"):
        assert action in out


@pytest.mark.parametrize("args, message", [
    (["answer", "--image", "IMG", "--question", "   "], "--question was given an empty text"),
    (["rank-texts", "--image", "IMG", "--texts", "a red cube", "--texts", ""], "--texts was given an empty text"),
    (["caption", "IMG", "--method", "foo"], "--method 'foo': choose greedy, beam or nucleus"),
])
def test_empty_texts_and_unknown_methods_are_refused_before_loading(images: list[Path], capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    """Before: an empty question was answered ('yes (0.548)'), an empty candidate ranked, and an unknown
    --method was a ValueError traceback after the weights were loaded."""
    args = [str(images[0]) if a == "IMG" else a for a in args]
    code, _, err = run_cli(capsys, "predict", *args, "--checkpoint", "no/such/run")  # never read: the request fails first
    assert code == 2 and message in err
