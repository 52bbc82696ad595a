"""Instruction-tuning conversations (LLaVA layout) about each scene: describe, ask, follow up.

A multimodal LLM learns to *talk about* an image from conversations, not from captions and VQA pairs
alone. Every conversation is built from the same ground truth as the rest of the world: descriptions
are the scene's own captions, question turns come from the world's question generator, and follow-ups
("Is there a red cube?" - "yes" - "What size is it?") are built from the scene graph with a functional
program per answer. So every gpt turn is exact, short ("2", "yes", "cube") and scored like a VQA
answer, and each conversation keeps its programs so anyone can recompute the answers.

Conversations never use held-out templates or colour-shape combinations (in any split): the held-out
generalisation test stays the VQA ``test_heldout`` split, and test conversations measure the same
in-distribution skills as the training ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from polymodal.data.world.lexicon import TRAIN_LEXICON, Lexicon, noun_phrase, with_article
from polymodal.data.world.programs import Undefined, execute, filters_in, resolve
from polymodal.data.world.questions import FAMILIES, HELD_OUT_COMBOS, generate_question, refer
from polymodal.data.world.scene import ATTRIBUTES, RELATIONS, VALUES, Scene

IMAGE_TOKEN = "<image>"
KINDS: tuple[str, ...] = ("describe", "qa", "follow-up")
# The token opens the first human turn most of the time, as in LLaVA's own instruction data.
IMAGE_FIRST_PROBABILITY = 0.8

DESCRIBE_PROMPTS: tuple[str, ...] = (
    "describe the image.",
    "what do you see in this picture?",
    "give a short description of the scene.",
    "describe this picture briefly.",
    "what is shown in this image?",
    "write a caption for this image.",
)

Turn = tuple[str, dict[str, Any] | None]  # (human question, program of the answer; None: free text)
FollowUp = Callable[[Scene, np.random.Generator, Lexicon], "list[Turn] | None"]


def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _uses_held_out_combo(program: dict[str, Any]) -> bool:
    return any((f.get("color"), f.get("shape")) in HELD_OUT_COMBOS for f in filters_in(program))


# --- follow-ups: a second question that only makes sense after the first ---------------------------
def _exists_then_attribute(scene: Scene, rng: np.random.Generator, lex: Lexicon) -> list[Turn] | None:
    """'Is there a red cube?' - 'yes' - 'What size is it?' (the reference names exactly one object)."""
    obj, attr = _pick(rng, scene.objects), _pick(rng, ATTRIBUTES)
    ref = refer(scene, obj, rng, exclude=(attr,))
    if ref is None:
        return None
    follow = _pick(rng, ("what {attr} is it?", "what {attr} does it have?", "and what is its {attr}?"))
    return [
        (f"is there {with_article(noun_phrase(ref, lex, rng))}?", {"op": "exist", "filter": ref}),
        (follow.format(attr=attr), {"op": "query", "attr": attr, "ref": {"filter": ref}}),
    ]


def _count_then_count(scene: Scene, rng: np.random.Generator, lex: Lexicon) -> list[Turn] | None:
    """'How many spheres are there?' - '2' - 'And how many cubes?' (the second may well be 0)."""
    attr = _pick(rng, ATTRIBUTES)
    first = _pick(rng, scene.objects).attr(attr)
    second = _pick(rng, [v for v in VALUES[attr] if v != first])
    a, b = {attr: first}, {attr: second}
    follow = _pick(rng, ("and how many {np}?", "how about {np}?", "and how many {np} are there?"))
    return [
        (f"how many {noun_phrase(a, lex, rng, plural=True)} are there?", {"op": "count", "filter": a}),
        (follow.format(np=noun_phrase(b, lex, rng, plural=True)), {"op": "count", "filter": b}),
    ]


def _count_then_any(scene: Scene, rng: np.random.Generator, lex: Lexicon) -> list[Turn] | None:
    """'How many cubes are there?' - '3' - 'Are any of them metal?' (the group is never empty)."""
    obj = _pick(rng, scene.objects)
    attr = _pick(rng, ("shape", "color"))
    group = {attr: obj.attr(attr)}
    extra = _pick(rng, [a for a in ("size", "color", "material") if a != attr])
    value = _pick(rng, VALUES[extra])
    follow = _pick(rng, ("are any of them {v}?", "is any of them {v}?"))
    return [
        (f"how many {noun_phrase(group, lex, rng, plural=True)} are there?", {"op": "count", "filter": group}),
        (follow.format(v=lex.say(value, rng)), {"op": "exist", "filter": group | {extra: value}}),
    ]


def _attribute_then_attribute(scene: Scene, rng: np.random.Generator, lex: Lexicon) -> list[Turn] | None:
    """'What color is the large cube?' - 'red' - 'And what material is it?'."""
    obj = _pick(rng, scene.objects)
    first, second = (str(a) for a in rng.choice(ATTRIBUTES, size=2, replace=False))
    ref = refer(scene, obj, rng, exclude=(first, second))
    if ref is None:
        return None
    follow = _pick(rng, ("and what {attr} is it?", "what about its {attr}?", "and its {attr}?"))
    return [
        (f"what {first} is the {noun_phrase(ref, lex, rng)}?", {"op": "query", "attr": first, "ref": {"filter": ref}}),
        (follow.format(attr=second), {"op": "query", "attr": second, "ref": {"filter": ref}}),
    ]


def _spatial_then_attribute(scene: Scene, rng: np.random.Generator, lex: Lexicon) -> list[Turn] | None:
    """'How many objects are left of the blue sphere?' - '2' - 'What shape is the one directly left of it?'."""
    anchor = _pick(rng, scene.objects)
    ref = refer(scene, anchor, rng)
    if ref is None:
        return None
    rel, attr = _pick(rng, RELATIONS), _pick(rng, ATTRIBUTES)
    try:
        resolve(scene, {"nearest": rel, "of": {"filter": ref}})
    except Undefined:
        return None  # nothing there: 'the one directly left of it' would name no object
    phrase = lex.relation(rel, rng)
    return [
        (f"how many {lex.plural(lex.say('object', rng))} are {phrase} the {noun_phrase(ref, lex, rng)}?", {"op": "count_relate", "rel": rel, "of": {"filter": ref}}),
        (f"what {attr} is the one directly {phrase} it?", {"op": "query", "attr": attr, "ref": {"nearest": rel, "of": {"filter": ref}}}),
    ]


FOLLOW_UPS: tuple[FollowUp, ...] = (
    _exists_then_attribute,
    _count_then_count,
    _count_then_any,
    _attribute_then_attribute,
    _spatial_then_attribute,
)


# --- the three kinds of conversation ---------------------------------------------------------------
def _describe(captions: Sequence[str], rng: np.random.Generator) -> list[Turn] | None:
    if not captions:
        return None
    return [(_pick(rng, DESCRIBE_PROMPTS), None)]


def _qa(scene: Scene, rng: np.random.Generator, lex: Lexicon) -> list[Turn] | None:
    """2-3 questions of different families from the world's generator (never held-out ones)."""
    wanted = int(rng.integers(2, 4))
    turns: list[Turn] = []
    for k in rng.permutation(len(FAMILIES)):
        q = generate_question(scene, FAMILIES[k], rng, allow_held_out=False, lex=lex)
        if q is not None and q.text not in {t for t, _ in turns}:
            turns.append((q.text, q.program))
        if len(turns) == wanted:
            break
    return turns or None


def _follow_up(scene: Scene, rng: np.random.Generator, lex: Lexicon, tries: int = 20) -> list[Turn] | None:
    for _ in range(tries):
        turns = _pick(rng, FOLLOW_UPS)(scene, rng, lex)
        if turns is None or any(_uses_held_out_combo(p) for _, p in turns if p is not None):
            continue
        try:
            for _, program in turns:
                execute(scene, program)  # every answer must be defined
        except Undefined:
            continue
        return turns
    return None


def _messages(turns: list[Turn], answers: list[str], rng: np.random.Generator) -> list[dict[str, str]]:
    """Alternate human/gpt turns; the image token goes once into the first human turn."""
    messages: list[dict[str, str]] = []
    image_first = rng.random() < IMAGE_FIRST_PROBABILITY
    for k, ((question, _), answer) in enumerate(zip(turns, answers)):
        text = _sentence(question)
        if k == 0:
            text = f"{IMAGE_TOKEN}\n{text}" if image_first else f"{text}\n{IMAGE_TOKEN}"
        messages += [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]
    return messages


def conversations_for_scene(
    scene: Scene,
    captions: Sequence[str],
    rng: np.random.Generator,
    image: str,
    id_prefix: str,
    lex: Lexicon = TRAIN_LEXICON,
) -> list[dict[str, Any]]:
    """Up to three conversations about ``scene`` (describe, qa, follow-up), in the LLaVA layout.

    ``image`` is the image path relative to the world root, ``id_prefix`` the stem of each id
    (``{id_prefix}_c{k}``). Besides LLaVA's ``id``/``image``/``conversations`` each record holds its
    ``kind`` and ``programs``: one per gpt turn, the program behind the answer (None for a description).
    """
    out: list[dict[str, Any]] = []
    for kind in KINDS:
        if kind == "describe":
            turns = _describe(captions, rng)
        elif kind == "qa":
            turns = _qa(scene, rng, lex)
        else:
            turns = _follow_up(scene, rng, lex)
        if turns is None:
            continue
        if kind == "describe":
            answers = [_pick(rng, captions)]
        else:
            answers = [execute(scene, program) for _, program in turns]
        out.append(
            {
                "id": f"{id_prefix}_c{len(out)}",
                "image": image,
                "conversations": _messages(turns, answers, rng),
                "kind": kind,
                "programs": [program for _, program in turns],
            }
        )
    return out


def count_turns(conversations: Sequence[dict[str, Any]]) -> int:
    """Question-answer rounds (one human turn and its gpt reply) over ``conversations``."""
    return sum(len(c["conversations"]) // 2 for c in conversations)


__all__ = ["IMAGE_TOKEN", "KINDS", "conversations_for_scene", "count_turns"]
