"""Words of the world. Two lexicons: the one every training text uses, and an 'unseen' one.

The unseen lexicon (synonyms and phrasings that never occur in training captions or questions) feeds
the paraphrase test captions: a model with a pretrained language tower should handle them, a text
tower trained from scratch cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from polymodal.data.world.programs import NUMBER_WORDS


@dataclass(frozen=True)
class Lexicon:
    words: dict[str, tuple[str, ...]]  # canonical value -> surface forms
    plurals: dict[str, str] = field(default_factory=dict)  # surface noun -> plural
    relations: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def say(self, value: str, rng: np.random.Generator) -> str:
        forms = self.words.get(value, (value,))
        return forms[int(rng.integers(len(forms)))]

    def plural(self, noun: str) -> str:
        return self.plurals.get(noun, noun + "s")

    def relation(self, rel: str, rng: np.random.Generator) -> str:
        forms = self.relations[rel]
        return forms[int(rng.integers(len(forms)))]


TRAIN_LEXICON = Lexicon(
    words={
        "large": ("large", "big"),
        "small": ("small",),
        "metal": ("metal", "shiny"),
        "rubber": ("rubber", "matte"),
        "object": ("object", "thing"),
    },
    relations={
        "left": ("left of", "to the left of"),
        "right": ("right of", "to the right of"),
        "above": ("above",),
        "below": ("below",),
    },
)

UNSEEN_LEXICON = Lexicon(
    words={
        "large": ("huge",),
        "small": ("tiny",),
        "metal": ("metallic",),
        "rubber": ("dull",),
        "cube": ("block",),
        "sphere": ("ball",),
        "cylinder": ("tube",),
        "cone": ("pyramid",),
        "gray": ("grey",),
        "purple": ("violet",),
        "object": ("item",),
    },
    plurals={"box": "boxes"},
    relations={
        "left": ("on the left side of",),
        "right": ("on the right side of",),
        "above": ("higher up than",),
        "below": ("lower down than",),
    },
)


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def noun_phrase(flt: dict[str, str], lex: Lexicon, rng: np.random.Generator, plural: bool = False) -> str:
    """'large red metal cube' from a filter; an absent shape becomes 'object'/'thing'."""
    words = [lex.say(flt[a], rng) for a in ("size", "color", "material") if a in flt]
    noun = lex.say(flt.get("shape", "object"), rng)
    words.append(lex.plural(noun) if plural else noun)
    return " ".join(words)


def with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"
