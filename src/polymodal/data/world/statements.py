"""Statement verification: the world's multimodal classification label.

"Does this statement hold in this picture?" needs both inputs. Each image receives exactly one true
and one false statement, so an image-only model sees a 50/50 label; every false statement is a true
statement of another scene that happens to be false here, so true and false statements come from
nearly the same text distribution and a text-only model stays near chance too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from polymodal.data.world.lexicon import TRAIN_LEXICON, Lexicon, noun_phrase, number_word, with_article
from polymodal.data.world.programs import select, statement_holds
from polymodal.data.world.questions import random_filter
from polymodal.data.world.scene import COLORS, RELATIONS, SHAPES, Scene, holds


@dataclass(frozen=True)
class Statement:
    text: str
    program: dict[str, Any]


def true_statement(scene: Scene, rng: np.random.Generator, lex: Lexicon = TRAIN_LEXICON) -> Statement:
    kind = int(rng.integers(3))
    if kind == 2 and len(scene.objects) >= 2:
        i, j = rng.choice(len(scene.objects), size=2, replace=False)
        a, b = scene.objects[i], scene.objects[j]
        rel = [r for r in RELATIONS if holds(a, r, b)][int(rng.integers(2))]
        fa, fb = random_filter(rng, a, 2), random_filter(rng, b, 2)
        text = f"{with_article(noun_phrase(fa, lex, rng))} is {lex.relation(rel, rng)} {with_article(noun_phrase(fb, lex, rng))}."
        program = {"op": "relate_exists", "rel": rel, "a": fa, "b": fb}
    elif kind == 1:
        flt = random_filter(rng, scene.objects[int(rng.integers(len(scene.objects)))], 2)
        n = len(select(scene, flt))
        noun = noun_phrase(flt, lex, rng, plural=n != 1)
        text = f"there {'are' if n != 1 else 'is'} exactly {number_word(n)} {noun}."
        program = {"op": "count_eq", "filter": flt, "n": n}
    else:
        flt = random_filter(rng, scene.objects[int(rng.integers(len(scene.objects)))], 3)
        text = f"there is {with_article(noun_phrase(flt, lex, rng))}."
        program = {"op": "exist", "filter": flt}
    assert statement_holds(scene, program), program  # generator bug guard, cheap
    return Statement(text, program)


def false_statement(scene: Scene, others: Sequence[Scene], rng: np.random.Generator, lex: Lexicon = TRAIN_LEXICON) -> Statement:
    """A true statement of another scene that is false in this one.

    A split of one scene has no other scene to borrow from (a 10-scene world's test split): it then
    claims a colour and shape the scene lacks, which at most 10 objects leave among the 32 pairs.
    """
    for _ in range(100):
        other = others[int(rng.integers(len(others)))]
        if other.image_id == scene.image_id:
            continue
        st = true_statement(other, rng, lex)
        if not statement_holds(scene, st.program):
            return st
    pairs = [{"color": c, "shape": s} for c in COLORS for s in SHAPES]
    for k in rng.permutation(len(pairs)):
        program = {"op": "exist", "filter": pairs[k]}
        if not statement_holds(scene, program):
            return Statement(f"there is {with_article(noun_phrase(pairs[k], lex, rng))}.", program)
    raise RuntimeError(f"no false statement found for scene {scene.image_id}")
