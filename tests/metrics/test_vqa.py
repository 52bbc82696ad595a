"""VQA accuracy: every reference case computed with the official vqaEval.py, plus hand-worked ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polymodal.metrics import answer_accuracy, normalize_answer, official_percent, vqa_accuracy, vqa_scores
from polymodal.metrics.errors import MetricInputError
from polymodal.metrics.vqa import process_digit_article, process_punctuation

REFERENCE = Path("/work/shared/testdata/vqa_reference_cases.json")


def _cases():
    if not REFERENCE.is_file():
        return []
    return json.loads(REFERENCE.read_text())["cases"]


@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"{REFERENCE} not present")
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["id"])
def test_official_reference_cases(case):
    assert vqa_accuracy(case["prediction"], case["answers"]) == pytest.approx(case["accuracy"], abs=1e-9)


@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"{REFERENCE} not present")
def test_reference_file_is_complete():
    cases = _cases()
    assert len(cases) >= 100
    # the quirk this module documents is exercised by the reference data
    assert any("quirk_no_norm_when_gt_unanimous" in c["tags"] for c in cases)


# (prediction, answers, expected, why) -- worked by hand from vqaEval.py.
HAND = [
    # k matching humans -> mean over the 10 leave-one-out subsets of min(1, matches/3):
    ("cat", ["cat"] + ["dog"] * 9, (1 * 0 + 9 * (1 / 3)) / 10, "one human: 0.3"),
    ("cat", ["cat"] * 3 + ["dog"] * 7, (3 * (2 / 3) + 7 * 1) / 10, "three humans: 0.9"),
    ("two", ["2"] * 3 + ["3"] * 7, 0.9, "number words become digits"),
    ("Ten", ["10"] * 4 + ["9"] * 6, 1.0, "ten is the largest number word"),
    ("eleven", ["11"] * 6 + ["12"] * 4, 0.0, "no number word past ten"),
    ("isnt", ["isn't"] * 3 + ["no"] * 7, 0.9, "contraction without apostrophe"),
    ("Im", ["i'm"] * 3 + ["no"] * 7, 0.0, "'Im' key is capitalised and can never match"),
    ("the red car.", ["red car"] * 2 + ["blue car"] * 8, 0.6, "article and trailing period"),
    ("an apple", ["apple"] * 5 + ["pear"] * 5, 1.0, "'an' dropped"),
    ("yes", ["yes"] * 10, 1.0, "unanimous, exact"),
    ("Yes", ["yes"] * 10, 0.0, "unanimous: not even lower-cased"),
    ("yes ", ["yes"] * 10, 1.0, "unanimous: still stripped"),
    ("3.", ["3"] * 10, 0.0, "unanimous: trailing period kept"),
    ("3.", ["3"] * 9 + ["4"], 1.0, "non-unanimous: trailing period removed"),
    ("1,5", ["15"] * 3 + ["x"] * 7, 0.9, "digit-comma-digit: comma deleted"),
    ("red,blue", ["red blue"] * 3 + ["x"] * 7, 0.9, "comma without spaces -> space"),
    ("red, blue", ["redblue"] * 3 + ["red blue"] * 7, 1.0, "', ' present -> comma deleted, then split joins"),
    ("", ["yes", "no"] * 5, 0.0, "empty prediction"),
]


@pytest.mark.parametrize("pred,answers,expected,why", HAND, ids=[h[3] for h in HAND])
def test_hand_worked(pred, answers, expected, why):
    assert vqa_accuracy(pred, answers) == pytest.approx(expected, abs=1e-12), why


def test_hand_worked_comma_article_case():
    # 'a b' normalises to 'b'; 'a,b' -> 'a b' (comma replaced by space) -> 'b': they match.
    assert process_digit_article(process_punctuation("a,b")) == "b"
    assert vqa_accuracy("a,b", ["a b"] * 3 + ["x"] * 7) == pytest.approx(0.9)


def test_period_strip_quirks():
    assert process_punctuation("3.5.") == "3.5"  # a period followed by a digit stays
    assert process_punctuation("5.00") == "5.00"
    # re.UNICODE (32) passed as `count`: only the first 32 periods go.
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation("what?!") == "what  "
    assert process_punctuation("left - right") == "left  right"


def test_normalize_answer():
    assert normalize_answer(" Two  Dogs!\n") == "2 dogs"
    assert normalize_answer("The U.S.A.") == "usa"
    assert normalize_answer("dont") == "don't"


def test_batch_scores_per_answer_type():
    answers = {
        1: ["yes"] * 10,
        2: ["2"] * 5 + ["3"] * 5,
        3: ["red"] * 2 + ["blue"] * 8,
        4: ["no"] * 10,
    }
    preds = {1: "yes", 2: "two", 3: "red", 4: "yes"}
    types = {1: "yes/no", 2: "number", 3: "other", 4: "yes/no"}
    qtypes = {1: "is the", 2: "how many", 3: "what color", 4: "is the"}
    res = vqa_scores(preds, answers, types, qtypes)
    assert res["perQuestion"] == {1: 1.0, 2: 1.0, 3: pytest.approx(0.6), 4: 0.0}
    assert res["overall"] == pytest.approx((1 + 1 + 0.6 + 0) / 4)
    assert res["perAnswerType"] == {"yes/no": 0.5, "number": 1.0, "other": pytest.approx(0.6)}
    assert res["perQuestionType"]["is the"] == 0.5
    assert res["num_questions"] == 4
    assert official_percent(res["overall"]) == 65.0


def test_batch_errors():
    with pytest.raises(MetricInputError, match="no prediction for 1"):
        vqa_scores({1: "a"}, {1: ["a"] * 10, 2: ["b"] * 10})
    assert vqa_scores({1: "a"}, {1: ["a"] * 10, 2: ["b"] * 10}, allow_missing=True)["num_questions"] == 1
    with pytest.raises(MetricInputError, match="without annotations"):
        vqa_scores({1: "a", 9: "b"}, {1: ["a"] * 10})
    with pytest.raises(MetricInputError):
        vqa_accuracy("a", [])


def test_single_answer_questions_are_scored_by_exact_match_after_normalisation() -> None:
    from polymodal.metrics import answer_accuracy

    assert vqa_accuracy("yes", ["yes"]) == 0.0  # the official leave-one-out formula: no other human agrees
    assert answer_accuracy("yes", ["yes"]) == 1.0
    assert answer_accuracy("Two.", ["2"]) == 1.0  # punctuation and number words as the official code normalises
    assert answer_accuracy("a cube", ["cube"]) == 1.0
    assert answer_accuracy("cube", ["sphere"]) == 0.0
    answers = ["2"] * 3 + ["3"] * 7
    assert answer_accuracy("2", answers) == vqa_accuracy("2", answers)  # human-answer lists: the official score


def test_questions_with_2_to_9_answers_are_counted_in_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """VQA's formula caps an answer given by one or two of a few humans at 1/3 or 2/3: repeating the right
    answer changes the score. That is the official number, so it stays, but the count is said."""
    from polymodal.metrics.vqa import warn_about_few_answers

    assert answer_accuracy("red", ["red", "red"]) == pytest.approx(1 / 3) and answer_accuracy("red", ["red"]) == 1.0
    with caplog.at_level("WARNING", logger="polymodal"):
        assert warn_about_few_answers([["red"], ["red", "crimson"], ["yes"] * 10, ["a", "b", "c"]], "vqa evaluation") == 2
    assert "vqa evaluation: 2 question(s) have 2 to 9 answers" in caplog.text
    caplog.clear()
    assert warn_about_few_answers([["red"], ["no"] * 10], "vqa evaluation") == 0 and not caplog.text
