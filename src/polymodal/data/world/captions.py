"""Captions from a grammar: every caption names every object, in varied structures and words.

Naming every object keeps retrieval answerable (a caption identifies its image), while the variety
of structure (lists, counts, orderings, relations) and of words (synonyms, optional attributes) keeps
it from being a lookup.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from polymodal.data.world.lexicon import TRAIN_LEXICON, Lexicon, number_word, with_article
from polymodal.data.world.scene import Scene, SceneObject, holds

INTROS = ("", "there is ", "a picture of ", "a scene with ", "an image showing ", "we can see ")
UNSEEN_INTROS = ("this photo has ", "here you find ", "visible are ")


def _describe(obj: SceneObject, lex: Lexicon, rng: np.random.Generator) -> str:
    """Colour and shape always; size and material only sometimes (so captions differ in detail)."""
    words = []
    if rng.random() < 0.6:
        words.append(lex.say(obj.size, rng))
    words.append(lex.say(obj.color, rng))
    if rng.random() < 0.5:
        words.append(lex.say(obj.material, rng))
    words.append(lex.say(obj.shape, rng))
    return " ".join(words)


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def _listing(scene: Scene, lex: Lexicon, rng: np.random.Generator, intros: tuple[str, ...]) -> str:
    order = rng.permutation(len(scene.objects))
    phrases = [with_article(_describe(scene.objects[i], lex, rng)) for i in order]
    return intros[int(rng.integers(len(intros)))] + _join(phrases)


def _counted(scene: Scene, lex: Lexicon, rng: np.random.Generator) -> str:
    groups = Counter((o.color, o.shape) for o in scene.objects)
    parts = []
    for (color, shape), n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0])):
        noun = lex.say(shape, rng)
        if n == 1:
            parts.append(with_article(f"{lex.say(color, rng)} {noun}"))
        else:
            parts.append(f"{number_word(n)} {lex.say(color, rng)} {lex.plural(noun)}")
    n = len(scene.objects)
    head = f"{number_word(n)} {lex.plural(lex.say('object', rng)) if n != 1 else lex.say('object', rng)}"
    return f"{head}: {_join(parts)}"


def _ordered(scene: Scene, lex: Lexicon, rng: np.random.Generator) -> str:
    if rng.random() < 0.5:
        objs, lead = sorted(scene.objects, key=lambda o: o.x), "from left to right"
    else:
        objs, lead = sorted(scene.objects, key=lambda o: o.y), "from top to bottom"
    return f"{lead}: " + _join([with_article(_describe(o, lex, rng)) for o in objs])


def _relational(scene: Scene, lex: Lexicon, rng: np.random.Generator) -> str:
    if len(scene.objects) < 2:
        return _listing(scene, lex, rng, INTROS)
    i, j = rng.choice(len(scene.objects), size=2, replace=False)
    a, b = scene.objects[i], scene.objects[j]
    rels = [r for r in ("left", "right", "above", "below") if holds(a, r, b)]
    rel = rels[int(rng.integers(len(rels)))]
    text = f"{with_article(_describe(a, lex, rng))} {lex.relation(rel, rng)} {with_article(_describe(b, lex, rng))}"
    rest = [with_article(_describe(o, lex, rng)) for k, o in enumerate(scene.objects) if k not in (i, j)]
    if rest:
        text += ", with " + _join(rest)
    return text


def generate_captions(scene: Scene, n: int, rng: np.random.Generator, lex: Lexicon = TRAIN_LEXICON) -> list[str]:
    """``n`` distinct captions, cycling through the structures so each image gets several kinds."""
    makers = [
        lambda: _listing(scene, lex, rng, INTROS),
        lambda: _counted(scene, lex, rng),
        lambda: _ordered(scene, lex, rng),
        lambda: _relational(scene, lex, rng),
    ]
    start = int(rng.integers(len(makers)))
    captions: list[str] = []
    seen: set[str] = set()
    for k in range(n * 10):
        text = makers[(start + k) % len(makers)]() + "."
        if text not in seen:
            seen.add(text)
            captions.append(text)
        if len(captions) == n:
            break
    return captions


def generate_paraphrase_caption(scene: Scene, rng: np.random.Generator, lex: Lexicon) -> str:
    """A caption in words and an opening never used in training (for zero-shot paraphrase retrieval)."""
    return _listing(scene, lex, rng, UNSEEN_INTROS) + "."
