"""Functional programs over a scene graph (CLEVR-style): the ground truth behind every question.

Each question and statement carries its program in JSON, so anyone can recompute its answer from the
scene graph alone; the tests do exactly that with an interpreter of their own.

A *filter* is ``{attr: value}`` (a subset of size/color/material/shape). A *reference* names one
object: ``{"filter": f}`` (exactly one object matches) or ``{"nearest": rel, "of": ref}`` (the object
adjacent to ``of`` in direction ``rel``: among those strictly ``rel`` of it, the closest along that axis).
"""

from __future__ import annotations

from typing import Any

from polymodal.data.world.scene import ATTRIBUTES, Scene, SceneObject, holds

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


class Undefined(Exception):
    """A reference that names no object, or more than one: the question is not asked."""


def matches(obj: SceneObject, flt: dict[str, str]) -> bool:
    return all(obj.attr(k) == v for k, v in flt.items())


def select(scene: Scene, flt: dict[str, str]) -> list[SceneObject]:
    return [o for o in scene.objects if matches(o, flt)]


def _axis_distance(a: SceneObject, b: SceneObject, rel: str) -> float:
    return abs(a.x - b.x) if rel in ("left", "right") else abs(a.y - b.y)


def resolve(scene: Scene, ref: dict[str, Any]) -> SceneObject:
    if "filter" in ref:
        found = select(scene, ref["filter"])
        if len(found) != 1:
            raise Undefined(f"filter {ref['filter']} matches {len(found)} objects")
        return found[0]
    anchor = resolve(scene, ref["of"])
    rel = ref["nearest"]
    candidates = [o for o in scene.objects if o is not anchor and holds(o, rel, anchor)]
    if not candidates:
        raise Undefined(f"nothing is {rel} of the anchor")
    return min(candidates, key=lambda o: _axis_distance(o, anchor, rel))


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def execute(scene: Scene, program: dict[str, Any]) -> str:
    """The answer of a question program, as the answer string a VQA annotation holds."""
    op = program["op"]
    if op == "exist":
        return yes_no(bool(select(scene, program["filter"])))
    if op == "count":
        return str(len(select(scene, program["filter"])))
    if op == "query":
        return resolve(scene, program["ref"]).attr(program["attr"])
    if op == "compare_count":
        a, b = len(select(scene, program["a"])), len(select(scene, program["b"]))
        return yes_no({"more": a > b, "fewer": a < b, "equal": a == b}[program["cmp"]])
    if op == "same_attr":
        a, b = resolve(scene, program["a"]), resolve(scene, program["b"])
        return yes_no(a.attr(program["attr"]) == b.attr(program["attr"]))
    if op == "relate":
        a, b = resolve(scene, program["a"]), resolve(scene, program["b"])
        if a is b:
            raise Undefined("an object related to itself")
        return yes_no(holds(a, program["rel"], b))
    if op == "count_relate":
        anchor = resolve(scene, program["of"])
        return str(sum(1 for o in scene.objects if o is not anchor and holds(o, program["rel"], anchor)))
    raise ValueError(f"unknown program op {op!r}")


def grounding(scene: Scene, program: dict[str, Any]) -> list[int]:
    """Indices (in ``scene.objects``) of the objects a question's or statement's answer is about.

    A VQA answer is one label per question, so a model learns *which* objects a question selects only
    as far as that label reveals it. The selected set is dense supervision for the reasoning itself
    (GQA ships the same kind of annotation): the object a query names, the objects a count counts
    (for "how many objects are left of the cube", those left of it, not the cube), both objects of a
    comparison or relation, and for "a is <rel> some b" statements every a and b that make it hold.
    """
    ids = {id(o): i for i, o in enumerate(scene.objects)}
    op = program["op"]
    if op in ("exist", "count", "count_eq"):
        chosen = select(scene, program["filter"])
    elif op == "query":
        chosen = [resolve(scene, program["ref"])]
    elif op == "compare_count":
        chosen = select(scene, program["a"]) + select(scene, program["b"])
    elif op in ("same_attr", "relate"):
        chosen = [resolve(scene, program["a"]), resolve(scene, program["b"])]
    elif op == "count_relate":
        anchor = resolve(scene, program["of"])
        chosen = [o for o in scene.objects if o is not anchor and holds(o, program["rel"], anchor)]
    elif op == "relate_exists":
        pairs = [(a, b) for a in select(scene, program["a"]) for b in select(scene, program["b"]) if a is not b and holds(a, program["rel"], b)]
        chosen = [o for pair in pairs for o in pair]
    else:
        raise ValueError(f"unknown program op {op!r}")
    return sorted({ids[id(o)] for o in chosen})


def _chain(scene: Scene, ref: dict[str, Any]) -> tuple[SceneObject, list[str]]:
    """The object a reference's filter names, and the relations that lead from it to the referred object
    (innermost first): "the object directly left of the object above the cube" is the cube, then
    ["directly above", "directly left"]."""
    if "filter" in ref:
        return resolve(scene, ref), []
    anchor, hops = _chain(scene, ref["of"])
    return anchor, [*hops, f"directly {ref['nearest']}"]


def reasoning_plan(scene: Scene, program: dict[str, Any]) -> dict[str, Any]:
    """How a question's or statement's program reads as two selections and the relations between them:
    ``first`` (indices into ``scene.objects``) is what the words describe; ``hops`` are the relations
    followed from it, innermost first ("directly left" for "the object directly left of", "left" for
    "the objects left of"); ``second`` is the other side of a comparison or relation; ``relation``
    is the one "first <relation> second" asks about (None when it asks none).

    The answer of every world question is a function of these (a count, a count difference, an overlap,
    the selected object's attribute), so a model that gets the plan right and counts right answers
    right; supervising it is what CLEVR's and GQA's programs are shipped for.
    """
    ids = {id(o): i for i, o in enumerate(scene.objects)}
    op = program["op"]
    first: list[SceneObject] = []
    second: list[SceneObject] = []
    hops: list[str] = []
    relation = None
    if op in ("exist", "count", "count_eq"):
        first = select(scene, program["filter"])
    elif op == "query":
        anchor, hops = _chain(scene, program["ref"])
        first = [anchor]
    elif op == "compare_count":
        first, second = select(scene, program["a"]), select(scene, program["b"])
    elif op in ("same_attr", "relate"):
        anchor, hops = _chain(scene, program["a"])
        first, second = [anchor], [resolve(scene, program["b"])]
        relation = program.get("rel")
    elif op == "count_relate":
        anchor, hops = _chain(scene, program["of"])
        first, hops = [anchor], [*hops, program["rel"]]
    elif op == "relate_exists":
        first, second, relation = select(scene, program["a"]), select(scene, program["b"]), program["rel"]
    else:
        raise ValueError(f"unknown program op {op!r}")
    return {
        "first": sorted(ids[id(o)] for o in first),
        "hops": hops,
        "second": sorted(ids[id(o)] for o in second),
        "relation": relation,
    }


def statement_holds(scene: Scene, program: dict[str, Any]) -> bool:
    """Truth of a statement program; statements use existential semantics, so they are always defined."""
    op = program["op"]
    if op == "exist":
        return bool(select(scene, program["filter"]))
    if op == "count_eq":
        return len(select(scene, program["filter"])) == program["n"]
    if op == "relate_exists":
        return any(
            a is not b and holds(a, program["rel"], b)
            for a in select(scene, program["a"])
            for b in select(scene, program["b"])
        )
    raise ValueError(f"unknown statement op {op!r}")


def filters_in(program: dict[str, Any]) -> list[dict[str, str]]:
    """Every filter a program mentions (used to keep held-out attribute combinations out of training)."""
    found: list[dict[str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node and set(node) <= set(ATTRIBUTES) and all(isinstance(v, str) for v in node.values()):
                found.append(node)
                return
            for v in node.values():
                walk(v)

    walk(program)
    return found
