"""VQA accuracy exactly as the official evaluation (GT-Vision-Lab/VQA,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, the current version, commit a013f00).

Per question, the official code does (and so does :func:`vqa_accuracy`):

1. Every human answer and the prediction: ``\\n`` and ``\\t`` become spaces, then ``strip()``.
2. **Only if the 10 human answers are not all identical** (``len(set(gtAnswers)) > 1``, checked
   after step 1) are the human answers *and the prediction* normalised with
   ``processPunctuation`` then ``processDigitArticle``. When the humans are unanimous nothing is
   normalised, not even case: ``"Yes"`` or ``"yes."`` against ten ``"yes"`` scores 0. This is
   the official behaviour (older versions of the file normalised the prediction always) and the
   published numbers depend on it, so it is kept.
3. Accuracy is the mean over the 10 leave-one-out subsets of 9 humans of
   ``min(1, matches / 3)``, where ``matches`` counts exact string equality. (The official code
   builds the subsets by dict inequality of answer records; in VQA files every record has its own
   ``answer_id``, so that is leave-one-out by position, which is what is done here.)

Normalisation quirks kept verbatim:

* ``processPunctuation``: for each character of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``
  (not ``'``, ``:``, ``.``, ``%``, ``&``, ``*``, ``#``, ``$``), it is *deleted* if the original
  text contains it followed by a space or preceded by a space, or if the text contains
  digit-comma-digit anywhere (``(\\d)(,)(\\d)``); otherwise it is *replaced by a space*. The test
  looks at the input text, not the text as modified so far.
* Then periods are removed by ``(?!<=\\d)(\\.)(?!\\d)``: the ``(?!<=\\d)`` was meant as a
  look-behind but is a look-ahead for the literal ``<=``, so in effect every period not followed
  by a digit is removed ("3.5" keeps its period, "5.00" too). The reference passes ``re.UNICODE``
  as the positional ``count`` argument of ``sub``, so at most 32 (``re.UNICODE == 32``) periods
  are removed.
* ``processDigitArticle``: lower-case, split on whitespace, map number words ``none``/``zero``..
  ``ten`` to digits, drop ``a``/``an``/``the``, then map contractions written without apostrophe
  ("dont" -> "don't"). Some keys of the official contraction table can never match because they
  contain capitals ("Im", "Ive", "Id've") and one maps the wrong way ("somebody'd" ->
  "somebodyd"); both are kept.

The official tool reports ``round(100 * acc, 2)``; the functions here return raw fractions in
[0, 1] (use :func:`official_percent` for the rounded form).
"""

from __future__ import annotations

import functools
import logging
import re
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence

from polymodal.metrics.errors import MetricInputError

log = logging.getLogger(__name__)

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}  # fmt: skip

NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip

ARTICLES = frozenset({"a", "an", "the"})

PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip

# Look-ahead for "<=digit", not a look-behind: see the module docstring.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP_COUNT = re.UNICODE  # the reference passes re.UNICODE (== 32) as ``count``


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``."""
    out = text
    comma_digits = _COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or comma_digits:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=int(_PERIOD_STRIP_COUNT))


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


@functools.lru_cache(maxsize=1 << 16)
def normalize_answer(text: str) -> str:
    """Whitespace clean-up then both normalisation steps, as applied to non-unanimous questions.

    Cached: answer vocabularies, training targets and scoring normalise the same few thousand answers
    millions of times (ten annotators per question, every batch), and the regexes dominated setup."""
    return process_digit_article(process_punctuation(_clean(text)))


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def answer_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """:func:`vqa_accuracy` for human-answer lists, exact match for single-answer datasets.

    CLEVR, GQA and most JSONL question sets give one answer per question. The official formula leaves
    each human out in turn, so with one answer it scores every prediction 0; such questions are scored
    as CLEVR and GQA score them: 1 when the prediction equals the answer after the official
    normalisation, else 0.
    """
    if not isinstance(answers, str) and len(answers) == 1:
        if not isinstance(prediction, str):
            raise MetricInputError(f"a VQA prediction must be a string, got {type(prediction).__name__}")
        return float(normalize_answer(prediction) == normalize_answer(answers[0]))
    return vqa_accuracy(prediction, answers)


def warn_about_few_answers(answer_lists: Iterable[Sequence[str]], task: str) -> int:
    """Log, and return, how many questions have 2 to 9 answers.

    VQA's formula gives full credit when 3 of the other humans gave the answer. Listed once, an answer
    of a question with a few alternatives (['red', 'crimson']) scores 1/3 at best, and repeating the
    right answer changes the score; the numbers are then not what a reader of 'accuracy' expects, so
    the count is said. One answer is scored by exact match, ten as VQA v2."""
    few = sum(1 for answers in answer_lists if 1 < len(answers) < 10)
    if few:
        log.warning(
            "%s: %d question(s) have 2 to 9 answers; they are scored with VQA's formula (full credit when 3 of the "
            "other answers match, averaged over leaving each out), so an alternative listed once scores at most 1/3",
            task, few,
        )
    return few


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy of one predicted answer against the human answers (10 in VQA v1/v2).

    Args:
        prediction: the model's answer.
        answers: the human answers of the question.

    Returns:
        The official per-question accuracy as a fraction in [0, 1] (the official tool shows
        ``round(100 * acc, 2)``).
    """
    if not isinstance(prediction, str):
        raise MetricInputError(f"a VQA prediction must be a string, got {type(prediction).__name__}")
    if isinstance(answers, str) or len(answers) == 0:
        raise MetricInputError("a VQA question needs a non-empty list of human answers")
    gt = [_clean(a) for a in answers]
    res = _clean(prediction)
    if len(set(gt)) > 1:
        gt = [process_digit_article(process_punctuation(a)) for a in gt]
        res = process_digit_article(process_punctuation(res))
    total_matches = sum(1 for a in gt if a == res)
    acc = []
    for a in gt:
        # Leave this human out: the other humans' matches.
        matches = total_matches - (1 if a == res else 0)
        acc.append(min(1, float(matches) / 3))
    return float(sum(acc)) / len(acc)


def vqa_scores(
    predictions: Mapping[Hashable, str],
    answers: Mapping[Hashable, Sequence[str]],
    answer_types: Mapping[Hashable, str] | None = None,
    question_types: Mapping[Hashable, str] | None = None,
    *,
    allow_missing: bool = False,
) -> dict:
    """Overall, per answer type and per question type accuracy over a set of questions.

    Args:
        predictions: ``{question_id: answer}``.
        answers: ``{question_id: [human answers]}``; defines the evaluated questions.
        answer_types: ``{question_id: "yes/no" | "number" | "other"}`` (optional).
        question_types: ``{question_id: "what color is the" ...}`` (optional).
        allow_missing: evaluate only the questions that have a prediction instead of failing
            (the official tool refuses results that do not cover every question).

    Returns:
        ``{"overall": float, "perAnswerType": {...}, "perQuestionType": {...}, "perQuestion":
        {qid: float}, "num_questions": int}``, all accuracies fractions in [0, 1]. Averages are
        plain means over questions, as in the official ``setAccuracy``.
    """
    unknown = [q for q in predictions if q not in answers]
    if unknown:
        raise MetricInputError(
            f"{len(unknown)} prediction(s) for question ids without annotations, e.g. {unknown[:5]!r}"
        )
    qids = list(answers.keys())
    missing = [q for q in qids if q not in predictions]
    if missing and not allow_missing:
        raise MetricInputError(
            f"no prediction for {len(missing)} of {len(qids)} question(s), e.g. {missing[:5]!r} "
            "(pass allow_missing=True to score only the predicted ones)"
        )
    qids = [q for q in qids if q in predictions]
    if not qids:
        raise MetricInputError("no question to evaluate")
    per_q: dict[Hashable, float] = {}
    by_ans: dict[str, list[float]] = defaultdict(list)
    by_ques: dict[str, list[float]] = defaultdict(list)
    for q in qids:
        acc = vqa_accuracy(predictions[q], answers[q])
        per_q[q] = acc
        if answer_types is not None and q in answer_types:
            by_ans[answer_types[q]].append(acc)
        if question_types is not None and q in question_types:
            by_ques[question_types[q]].append(acc)
    accs = list(per_q.values())
    return {
        "overall": float(sum(accs)) / len(accs),
        "perAnswerType": {k: float(sum(v)) / len(v) for k, v in by_ans.items()},
        "perQuestionType": {k: float(sum(v)) / len(v) for k, v in by_ques.items()},
        "perQuestion": per_q,
        "num_questions": len(accs),
    }


def official_percent(fraction: float, ndigits: int = 2) -> float:
    """The official display form: ``round(100 * fraction, 2)``."""
    return round(100 * fraction, ndigits)
