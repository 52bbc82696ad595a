"""caption_scores (raw text in) against pycocoevalcap's full pipeline: PTBTokenizer + all scorers."""

from __future__ import annotations

import numpy as np
import pytest

from polymodal.metrics import caption_scores, meteor_available
from polymodal.metrics.caption import resolve_metrics
from polymodal.metrics.errors import MetricInputError, MetricUnavailableError

from ._synth import caption_corpus
from .conftest import requires_java

TOL = 1e-6


def _corpus():
    refs, cands = caption_corpus(120, seed=21, odd_rate=0.4, vary_refs=True)
    # edge images: punctuation only, empty, unicode, brackets, one reference, shared nothing
    refs.update({
        "empty": ["A dog.", "A brown dog on grass."],
        "dots": ["Nothing to see here."],
        "uni": ["Un café à Zürich 😀", "A café in Zürich."],
        "brackets": ["A man (with a hat) rides a [red] bike {fast}.", "A man rides a bike."],
        "nothing": ["A cat sleeps on a mat.", "The cat is asleep."],
    })
    cands.update({
        "empty": "", "dots": "...", "uni": "Café in Zürich!", "brackets": "A man (in a hat) on a [red] bike.",
        "nothing": "Quantum chromodynamics.",
    })
    return refs, cands


def _pycocoevalcap_scores(refs, cands, with_meteor):
    tok = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = tok.PTBTokenizer().tokenize({i: [{"caption": c} for c in rs] for i, rs in refs.items()})
    res = tok.PTBTokenizer().tokenize({i: [{"caption": cands[i]}] for i in refs})
    out, per = {}, {}
    b, bp = Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        out[f"Bleu_{k + 1}"], per[f"Bleu_{k + 1}"] = b[k], bp[k]
    if with_meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        m = Meteor()
        out["METEOR"], per["METEOR"] = m.compute_score(gts, res)
        del m
    out["ROUGE_L"], per["ROUGE_L"] = Rouge().compute_score(gts, res)
    out["CIDEr"], per["CIDEr"] = Cider().compute_score(gts, res)
    return out, per


def _compare(ours, ours_per, ref, ref_per, ids):
    assert set(ours) == set(ref)
    for k in ref:
        assert abs(ours[k] - ref[k]) <= TOL, (k, ours[k], ref[k])
        theirs = np.asarray(ref_per[k], dtype=float)
        mine = np.array([ours_per[i][k] for i in ids])
        assert np.allclose(mine, theirs, atol=TOL, rtol=0), k


@requires_java
def test_all_metrics_match_pycocoevalcap_including_meteor():
    if not meteor_available():
        pytest.skip("pycocoevalcap's METEOR jar not installed")
    refs, cands = _corpus()
    ref, ref_per = _pycocoevalcap_scores(refs, cands, with_meteor=True)
    ours, per = caption_scores(refs, cands, return_per_image=True)
    _compare(ours, per, ref, ref_per, list(refs))
    assert list(ours) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]
    assert 0.05 < ours["CIDEr"] < 5 and per["empty"]["CIDEr"] == 0.0
    # the Java tokenizer backend gives the same numbers
    java = caption_scores(refs, cands, ["bleu", "cider", "rouge_l"], tokenizer="java")
    for k, v in java.items():
        assert v == pytest.approx(ours[k], abs=1e-12)


@requires_java
@pytest.mark.parametrize("seed", [1, 2])
def test_random_corpora_without_meteor(seed):
    refs, cands = caption_corpus(250, seed=seed, odd_rate=0.2, vary_refs=True)
    ref, ref_per = _pycocoevalcap_scores(refs, cands, with_meteor=False)
    ours, per = caption_scores(refs, cands, ["Bleu", "ROUGE_L", "CIDEr"], return_per_image=True)
    _compare(ours, per, ref, ref_per, list(refs))


def test_one_image_and_pretokenised_input():
    s = caption_scores({7: ["a dog runs"]}, {7: "a dog runs"}, ["bleu", "cider", "rouge"], tokenizer="none")
    assert s["Bleu_1"] == pytest.approx(1.0) and s["ROUGE_L"] == pytest.approx(1.0)
    assert s["CIDEr"] == 0.0  # one-image corpus: idf is zero


def test_meteor_without_java_is_a_clear_error(monkeypatch):
    import polymodal.metrics.meteor as meteor_module

    monkeypatch.setattr(meteor_module, "find_java", lambda: None)
    refs, cands = {1: ["a dog"]}, {1: "a dog"}
    with pytest.raises(MetricUnavailableError, match="Java") as err:
        caption_scores(refs, cands)
    assert "metrics=" in str(err.value)  # tells how to leave METEOR out
    s = caption_scores(refs, cands, metrics=["Bleu_4", "CIDEr", "ROUGE_L"])
    assert set(s) == {"Bleu_4", "CIDEr", "ROUGE_L"}


def test_metric_names_and_input_errors():
    assert resolve_metrics(["cider", "BLEU_4"]) == ("Bleu_4", "CIDEr")
    assert resolve_metrics("bleu") == ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")
    with pytest.raises(ValueError, match="unknown caption metric"):
        resolve_metrics(["spice"])
    with pytest.raises(MetricInputError, match="no candidate"):
        caption_scores({1: ["a"], 2: ["b"]}, {1: "a"}, ["bleu"])
    with pytest.raises(ValueError, match="tokenizer"):
        caption_scores({1: ["a"]}, {1: "a"}, ["bleu"], tokenizer="spacy")


@requires_java
def test_a_meteor_session_starts_one_jar_for_every_corpus(monkeypatch: pytest.MonkeyPatch):
    """The jar takes seconds to start: inside a session every caption_scores call (an evaluation's splits)
    uses the session's, with the numbers a fresh jar gives; the jar stops when the session ends."""
    if not meteor_available():
        pytest.skip("pycocoevalcap's METEOR jar not installed")
    from polymodal.metrics import meteor

    refs, cands = _corpus()
    alone = caption_scores(refs, cands, ["meteor"])
    started: list[object] = []
    real_init = meteor.MeteorScorer.__init__

    def counting_init(self: object, *args: object, **kwargs: object) -> None:
        started.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(meteor.MeteorScorer, "__init__", counting_init)
    with meteor.meteor_session() as scorer:
        assert scorer is not None and meteor.session_scorer() is scorer
        with meteor.meteor_session() as inner:  # a nested session reuses the jar
            assert inner is scorer
        first = caption_scores(refs, cands, ["meteor"])
        second = caption_scores(dict(list(refs.items())[:3]), dict(list(cands.items())[:3]), ["meteor"])
    assert started == [scorer] and first == alone and 0.0 <= second["METEOR"] <= 1.0
    assert meteor.session_scorer() is None and scorer._proc is None  # stopped
    monkeypatch.setattr(meteor, "meteor_available", lambda: False)  # no Java: nothing starts, scoring raises as before
    with meteor.meteor_session() as nothing:
        assert nothing is None and len(started) == 1
