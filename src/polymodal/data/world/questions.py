"""Question/answer generation in six families, each from several templates.

Every question comes with its functional program (see ``programs.py``) and its template id. Some
templates, and some colour-shape combinations, are *held out*: they never appear in a training
question and form the ``test_heldout`` split, which measures generalisation to new phrasings and
new compositions rather than memorised ones.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from polymodal.data.world.lexicon import TRAIN_LEXICON, Lexicon, noun_phrase, with_article
from polymodal.data.world.programs import Undefined, execute, filters_in, select
from polymodal.data.world.scene import ATTRIBUTES, OPPOSITE, RELATIONS, VALUES, Scene, SceneObject

FAMILIES: tuple[str, ...] = ("existence", "count", "attribute", "comparison", "spatial", "compositional")

# Templates per family; "{...}" slots are filled by the family's builder. The last entries of each
# family (listed in HELD_OUT_TEMPLATES) are never used for training questions.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "existence": (
        "is there {a_f}?",
        "are there any {fp}?",
        "does the picture contain {a_f}?",
        "can you see {a_f} in the image?",
    ),
    "count": (
        "how many {fp} are there?",
        "what number of {fp} are there?",
        "how many {fp} are in the picture?",
        "what is the total number of {fp}?",
    ),
    "attribute": (
        "what {attr} is the {r}?",
        "what is the {attr} of the {r}?",
        "the {r} has what {attr}?",
        "which {attr} does the {r} have?",
    ),
    "comparison": (
        "are there more {ap} than {bp}?",
        "are there fewer {ap} than {bp}?",
        "are there the same number of {ap} and {bp}?",
        "is the {r1} the same {attr} as the {r2}?",
        "is the number of {ap} greater than the number of {bp}?",
        "do the {r1} and the {r2} have the same {attr}?",
    ),
    "spatial": (
        "is the {r1} {rel} the {r2}?",
        "how many objects are {rel} the {r}?",
        "what {attr} is the object directly {rel} the {r}?",
        "there is a {r}; how many objects are {rel} it?",
    ),
    "compositional": (
        "what {attr} is the object directly {rel1} the object directly {rel2} the {r}?",
        "what is the {attr} of the thing directly {rel1} the thing directly {rel2} the {r}?",
        "is the object directly {rel1} the {r1} {rel2} the {r2}?",
        "the object directly {rel1} the object directly {rel2} the {r} has what {attr}?",
    ),
}
HELD_OUT_TEMPLATES: frozenset[str] = frozenset(
    {"existence/3", "count/3", "attribute/3", "comparison/4", "comparison/5", "spatial/3", "compositional/3"}
)
# Colour-shape pairs never named together in a training question (CLEVR-CoGenT in spirit).
HELD_OUT_COMBOS: frozenset[tuple[str, str]] = frozenset(
    {("red", "sphere"), ("blue", "cube"), ("green", "cone"), ("yellow", "cylinder")}
)


@dataclass(frozen=True)
class Question:
    text: str
    answer: str
    family: str
    template: str  # "family/index"
    program: dict[str, Any]

    @property
    def held_out(self) -> bool:
        return is_held_out(self.template, self.program)


def is_held_out(template: str, program: dict[str, Any]) -> bool:
    if template in HELD_OUT_TEMPLATES:
        return True
    return any((f.get("color"), f.get("shape")) in HELD_OUT_COMBOS for f in filters_in(program))


def refer(scene: Scene, obj: SceneObject, rng: np.random.Generator, exclude: tuple[str, ...] = ()) -> dict[str, str] | None:
    """The shortest description that picks out ``obj`` alone (random among equally short ones)."""
    attrs = [a for a in ATTRIBUTES if a not in exclude]
    for k in range(1, len(attrs) + 1):
        options = [c for c in itertools.combinations(attrs, k) if len(select(scene, {a: obj.attr(a) for a in c})) == 1]
        if options:
            # prefer descriptions with a noun ("the red cube" over "the red thing") when there is one
            with_shape = [c for c in options if "shape" in c]
            pool = with_shape or options
            chosen = pool[int(rng.integers(len(pool)))]
            return {a: obj.attr(a) for a in chosen}
    return None


def random_filter(rng: np.random.Generator, base: SceneObject | None = None, max_attrs: int = 2) -> dict[str, str]:
    """A filter of 1..max_attrs attributes: taken from ``base`` (so it matches) or drawn at random."""
    k = int(rng.integers(1, max_attrs + 1))
    attrs = list(rng.choice(ATTRIBUTES, size=k, replace=False))
    if base is not None:
        return {a: base.attr(a) for a in attrs}
    return {a: VALUES[a][int(rng.integers(len(VALUES[a])))] for a in attrs}


def _pick(rng: np.random.Generator, seq: Any) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _two_refs(scene: Scene, rng: np.random.Generator, exclude: tuple[str, ...] = ()) -> tuple[dict[str, str], dict[str, str]] | None:
    """Descriptions of two different objects, or None when the scene has no such pair to offer."""
    if len(scene.objects) < 2:
        return None
    i, j = rng.choice(len(scene.objects), size=2, replace=False)
    r1, r2 = refer(scene, scene.objects[i], rng, exclude), refer(scene, scene.objects[j], rng, exclude)
    return None if r1 is None or r2 is None else (r1, r2)


Builder = Callable[[Scene, np.random.Generator, int, Lexicon], "tuple[dict[str, str], dict[str, Any]] | None"]


def _existence(scene: Scene, rng: np.random.Generator, t: int, lex: Lexicon):
    base = _pick(rng, scene.objects) if rng.random() < 0.5 else None
    flt = random_filter(rng, base, max_attrs=3)
    return {"a_f": with_article(noun_phrase(flt, lex, rng)), "fp": noun_phrase(flt, lex, rng, plural=True)}, {"op": "exist", "filter": flt}


def _count(scene: Scene, rng: np.random.Generator, t: int, lex: Lexicon):
    base = _pick(rng, scene.objects) if rng.random() < 0.8 else None
    flt = {} if rng.random() < 0.1 else random_filter(rng, base, max_attrs=2)
    return {"fp": noun_phrase(flt, lex, rng, plural=True)}, {"op": "count", "filter": flt}


def _attribute(scene: Scene, rng: np.random.Generator, t: int, lex: Lexicon):
    attr = _pick(rng, ("color", "shape", "size", "material"))
    obj = _pick(rng, scene.objects)
    ref = refer(scene, obj, rng, exclude=(attr,))
    if ref is None:
        return None
    return {"attr": attr, "r": noun_phrase(ref, lex, rng)}, {"op": "query", "attr": attr, "ref": {"filter": ref}}


def _comparison(scene: Scene, rng: np.random.Generator, t: int, lex: Lexicon):
    if t in (3, 5):  # same-attribute question about two referred objects
        attr = _pick(rng, ("color", "shape", "size", "material"))
        pair = _two_refs(scene, rng, exclude=(attr,))
        if pair is None:
            return None
        r1, r2 = pair
        slots = {"attr": attr, "r1": noun_phrase(r1, lex, rng), "r2": noun_phrase(r2, lex, rng)}
        return slots, {"op": "same_attr", "attr": attr, "a": {"filter": r1}, "b": {"filter": r2}}
    a = random_filter(rng, _pick(rng, scene.objects), max_attrs=1)
    b = random_filter(rng, _pick(rng, scene.objects), max_attrs=1)
    if a == b:
        return None
    cmp = {0: "more", 1: "fewer", 2: "equal", 4: "more"}[t]
    slots = {"ap": noun_phrase(a, lex, rng, plural=True), "bp": noun_phrase(b, lex, rng, plural=True)}
    return slots, {"op": "compare_count", "cmp": cmp, "a": a, "b": b}


def _spatial(scene: Scene, rng: np.random.Generator, t: int, lex: Lexicon):
    rel = _pick(rng, RELATIONS)
    if t == 0:
        pair = _two_refs(scene, rng)
        if pair is None:
            return None
        r1, r2 = pair
        slots = {"r1": noun_phrase(r1, lex, rng), "r2": noun_phrase(r2, lex, rng), "rel": lex.relation(rel, rng)}
        return slots, {"op": "relate", "rel": rel, "a": {"filter": r1}, "b": {"filter": r2}}
    ref = refer(scene, _pick(rng, scene.objects), rng)
    if ref is None:
        return None
    if t in (1, 3):
        return {"r": noun_phrase(ref, lex, rng), "rel": lex.relation(rel, rng)}, {"op": "count_relate", "rel": rel, "of": {"filter": ref}}
    attr = _pick(rng, ("color", "shape", "size", "material"))
    slots = {"attr": attr, "r": noun_phrase(ref, lex, rng), "rel": lex.relation(rel, rng)}
    return slots, {"op": "query", "attr": attr, "ref": {"nearest": rel, "of": {"filter": ref}}}


def _compositional(scene: Scene, rng: np.random.Generator, t: int, lex: Lexicon):
    rel1, rel2 = _pick(rng, RELATIONS), _pick(rng, RELATIONS)
    if rel1 == OPPOSITE[rel2]:
        return None  # 'right of the thing left of X' is usually X itself: a trivial question
    if t == 2:
        pair = _two_refs(scene, rng)
        if pair is None:
            return None
        r1, r2 = pair
        slots = {"r1": noun_phrase(r1, lex, rng), "r2": noun_phrase(r2, lex, rng), "rel1": lex.relation(rel1, rng), "rel2": lex.relation(rel2, rng)}
        return slots, {"op": "relate", "rel": rel2, "a": {"nearest": rel1, "of": {"filter": r1}}, "b": {"filter": r2}}
    ref = refer(scene, _pick(rng, scene.objects), rng)
    if ref is None:
        return None
    attr = _pick(rng, ("color", "shape", "size", "material"))
    slots = {"attr": attr, "r": noun_phrase(ref, lex, rng), "rel1": lex.relation(rel1, rng), "rel2": lex.relation(rel2, rng)}
    return slots, {"op": "query", "attr": attr, "ref": {"nearest": rel1, "of": {"nearest": rel2, "of": {"filter": ref}}}}


BUILDERS: dict[str, Builder] = {
    "existence": _existence,
    "count": _count,
    "attribute": _attribute,
    "comparison": _comparison,
    "spatial": _spatial,
    "compositional": _compositional,
}


def generate_question(
    scene: Scene,
    family: str,
    rng: np.random.Generator,
    allow_held_out: bool,
    lex: Lexicon = TRAIN_LEXICON,
    tries: int = 30,
) -> Question | None:
    """One well-defined question of ``family`` about ``scene``, or None when the scene cannot host one."""
    n_templates = len(TEMPLATES[family])
    for _ in range(tries):
        t = int(rng.integers(n_templates))
        template = f"{family}/{t}"
        built = BUILDERS[family](scene, rng, t, lex)
        if built is None:
            continue
        slots, program = built
        if not allow_held_out and is_held_out(template, program):
            continue
        try:
            answer = execute(scene, program)
        except Undefined:
            continue
        text = TEMPLATES[family][t].format(**slots)
        return Question(text=text, answer=answer, family=family, template=template, program=program)
    return None
