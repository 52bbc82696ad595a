"""The pure-Python PTB tokenizer against the CoreNLP 3.4.1 jar that pycocoevalcap runs."""

from __future__ import annotations

import pytest

from polymodal.metrics import ptb_tokenize
from polymodal.metrics._ptb_lexer import lex, lex_reference
from polymodal.metrics.errors import MetricInputError
from polymodal.metrics.ptb_tokenizer import PUNCTUATIONS, find_corenlp_jar

from ._synth import caption_corpus, noisy_lines, soup_lines
from .conftest import requires_java

# Expected strings were produced by pycocoevalcap's PTBTokenizer (Java) and are also checked
# against it below when Java is available.
KNOWN = [
    ("A man (with a hat) rides a [red] bike {fast}.", "a man -lrb- with a hat -rrb- rides a -lsb- red -rsb- bike -lcb- fast -rcb-"),
    ('The dog\'s ball isn\'t "big" -- it\'s \'small\'... really?!', "the dog 's ball is n't big it 's small really ?!"),
    ("I can't, won't, don't. cannot gonna wanna", "i ca n't wo n't do n't can not gon na wan na"),
    ("Price is $3.50 & 50% off at U.S.A. e.g. Mr. Smith's dog etc.", "price is $ 3.50 & 50 % off at u.s.a. e.g. mr. smith 's dog etc."),
    ("5 1/2 cups and 3-4 dogs", "5\xa01/2 cups and 3-4 dogs"),
    ("Café über naïve — “quoted” ‘single’ …  emoji 😀 ok", "café über naïve quoted single emoji ok"),
    ("A B&W photo :) of a dog #tag @user. ", "a b&w photo :-rrb- of a dog #tag @user"),
    ("<b>bold</b> &amp; &lt; &gt; &quot;", "<b> bold </b> & < >"),
    ("ΣΟΦΟΣ ÉCOLE", "σοφος école"),
    ("", ""),
    ("...", ""),
]


def test_known_outputs_without_java():
    caps = [c for c, _ in KNOWN]
    assert ptb_tokenize(caps) == [e for _, e in KNOWN]


def test_lookahead_crosses_caption_boundaries():
    # "a." ends a sentence when the next caption starts with "A": the period becomes a token.
    assert ptb_tokenize(["There is a.", "A B."]) == ["there is a", "a b."]
    assert ptb_tokenize(["There is a.", "two dogs"]) == ["there is a.", "two dogs"]


def test_punctuation_filter_quirk():
    # The filter list holds "-LRB-" etc. in upper case but tokens are lower-cased first.
    assert "-LRB-" in PUNCTUATIONS and "-lrb-" not in PUNCTUATIONS
    assert ptb_tokenize(["(a) {b} [c] d -- e; f: g! h? i, jj."]) == ["-lrb- a -rrb- -lcb- b -rcb- -lsb- c -rsb- d e f g h i jj"]
    # A single letter keeps its period (an initial, "j."), so that "." is not a punctuation token.
    assert ptb_tokenize(["plan b."]) == ["plan b."]


def test_line_separators_inside_a_caption_do_not_shift_captions():
    out = ptb_tokenize(["one\ntwo", "three\rfour", "five\u2028six", "seven"])
    assert out == ["one two", "three four", "five six", "seven"]


def test_chunk_cache_equals_plain_scan():
    text = "\n".join(noisy_lines(1, 400) + soup_lines(2, 400))
    assert lex(text) == lex_reference(text)


def test_bad_input():
    with pytest.raises(MetricInputError, match="caption #1"):
        ptb_tokenize(["ok", None])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        ptb_tokenize(["a"], backend="perl")


@requires_java
def test_known_outputs_with_java():
    if find_corenlp_jar() is None:
        pytest.skip("pycocoevalcap not installed")
    caps = [c for c, _ in KNOWN]
    assert ptb_tokenize(caps, backend="java") == [e for _, e in KNOWN]


@requires_java
@pytest.mark.parametrize("kind", ["noisy", "soup", "captions"])
def test_python_equals_java_on_random_text(kind):
    if find_corenlp_jar() is None:
        pytest.skip("pycocoevalcap not installed")
    if kind == "noisy":
        caps = noisy_lines(11, 1200)
    elif kind == "soup":
        caps = soup_lines(12, 1200)
    else:
        refs, cands = caption_corpus(300, seed=13, odd_rate=0.5)
        caps = [r for rs in refs.values() for r in rs] + list(cands.values())
    py = ptb_tokenize(caps)
    java = ptb_tokenize(caps, backend="java")
    bad = [(c, p, j) for c, p, j in zip(caps, py, java) if p != j]
    assert not bad, f"{len(bad)} of {len(caps)} captions differ, e.g. {bad[:3]!r}"


@requires_java
def test_java_backend_equals_pycocoevalcap_class():
    tok = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    caps = [c for c, _ in KNOWN if c] + noisy_lines(5, 100)
    data = {i: [{"caption": c}] for i, c in enumerate(caps)}
    theirs = tok.PTBTokenizer().tokenize(data)
    ours = ptb_tokenize(caps)
    assert [theirs[i][0] for i in range(len(caps))] == ours
