"""Seeded synthetic caption corpora for the metric tests (caption-like text, with the punctuation,
casing and oddities the tokenizer and scorers must agree on)."""

from __future__ import annotations

import random

SUBJECTS = [
    "a man", "a woman", "two dogs", "a cat", "a group of people", "a young boy", "an old lady",
    "a black and white dog", "three zebras", "a giraffe", "a red bus", "a plate of food",
    "a little girl", "a skateboarder", "a pizza", "a herd of sheep", "people", "a tennis player",
]
VERBS = [
    "is sitting on", "standing next to", "riding", "holding", "eating", "looking at", "walking down",
    "laying on", "playing with", "flying over", "parked near", "sits in front of", "is shown with",
]
OBJECTS = [
    "a bench", "the street", "a table", "a wave", "a surfboard", "a grassy field", "a large clock",
    "the beach", "a snowy hill", "a frisbee", "a cell phone", "an umbrella", "a wooden desk",
    "a white plate", "a city street", "the ocean", "a baseball bat", "some trees", "a brick wall",
]
TAILS = ["", "", " in the park", " on a sunny day", " at night", " near the water", " with a smile", " outside"]
ODDITIES = [
    " (with a hat)", " [red]", " {fast}", ' "big"', " 'small'", " -- really", "...", "?!", " etc.",
    " in the U.S.", " at 5 p.m.", " with 1/2 cup", " for $5", " at 50%", " & more", " café", " naïve",
    " Zürich", " it's", " don't", " 3,000", " e.g. this", " a t-shirt", " x-ray", " :)", " #tag",
]


def sentence(rng: random.Random, odd_rate: float = 0.0) -> str:
    s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}"
    if rng.random() < odd_rate:
        s += rng.choice(ODDITIES)
    if rng.random() < 0.5:
        s = s[0].upper() + s[1:]
    if rng.random() < 0.6:
        s += "."
    if rng.random() < 0.05:
        s = s.replace(" a ", " a, ", 1)
    return s


def caption_corpus(
    num_images: int, refs_per_image: int = 5, seed: int = 0, odd_rate: float = 0.0, vary_refs: bool = False
) -> tuple[dict[int, list[str]], dict[int, str]]:
    """``({image_id: [refs]}, {image_id: candidate})`` with ids in a shuffled (non-sorted) order."""
    rng = random.Random(seed)
    ids = list(range(num_images))
    rng.shuffle(ids)
    refs = {}
    for i in ids:
        k = rng.randint(1, refs_per_image) if vary_refs else refs_per_image
        refs[i] = [sentence(rng, odd_rate) for _ in range(k)]
    cands = {i: sentence(rng, odd_rate) for i in ids}
    return refs, cands


def tokenised_corpus(
    num_images: int, refs_per_image: int = 5, seed: int = 0, vary_refs: bool = True
) -> tuple[dict[int, list[str]], dict[int, str]]:
    """Already-tokenised text (lower case, no punctuation), as the scorers receive it."""
    rng = random.Random(seed)
    vocab = [w for p in SUBJECTS + VERBS + OBJECTS for w in p.split()] + ["-lrb-", "-rrb-", "5\xa01/2", "%"]
    def sent() -> str:
        n = rng.choice([0, 1, 2, 3] + list(range(4, 16)) * 3)
        return " ".join(rng.choice(vocab) for _ in range(n))
    refs = {}
    for i in range(num_images):
        k = rng.randint(1, refs_per_image) if vary_refs else refs_per_image
        refs[i] = [sent() for _ in range(k)]
    cands = {i: sent() for i in range(num_images)}
    return refs, cands


# ---------------------------------------------------------------------------------------------
# Noisy text for the tokenizer comparison: caption words mixed with every construct the PTB lexer
# has a rule for (abbreviations, contractions, numbers, URLs, quotes, brackets, SGML, unicode...).

WORDS = ["a", "an", "the", "man", "woman", "dog", "cat", "two", "three", "people", "group", "of", "sitting", "standing", "on", "in", "at", "with", "near", "next", "to", "riding", "holding", "eating", "looking", "walking", "playing", "flying", "parked", "bench", "street", "table", "wave", "surfboard", "field", "clock", "beach", "hill", "frisbee", "phone", "umbrella", "desk", "plate", "red", "blue", "green", "white", "black", "large", "small", "young", "old", "is", "are", "was", "it", "its", "this", "that", "there", "they", "he", "she", "we", "you", "I"]
SPECIAL = [
    "Mr.", "Mrs.", "Dr.", "St.", "etc.", "e.g.", "i.e.", "U.S.", "U.S.A.", "vs.", "a.m.", "p.m.", "Inc.", "Co.",
    "Ltd.", "No.", "fig.", "Jan.", "Calif.", "Ph.D.", "Jr.", "don't", "can't", "won't", "isn't", "it's", "I'm",
    "you're", "we've", "they'll", "he'd", "dogs'", "'90s", "o'clock", "rock'n'roll", "y'all", "'em", "cannot",
    "gonna", "gotta", "wanna", "'tis", "'twas", "3", "12", "1,000", "3.5", "10:30", "2020", "1/2", "5-4",
    "3/4/2020", "(800)", "555-1212", "-5", "+3", ".5", "2nd", "1990s", "$5", "US$5", "#1", "50%", "£5", "€5",
    "¥5", "½", "x²", "http://x.com/a", "www.google.com", "a@b.com", "@user", "#tag", "file.jpg", "c++", "c#",
    "t-shirt", "x-ray", "mother-in-law", "pre-war", "U.S.-based", "anti-war", "AT&T", "B&W", "S&P-500", ":)",
    ":-(", ";D", ":P", "<b>", "</b>", "&amp;", "&lt;", "&quot;", "&apos;", "--", "---", "...", "....", ". . .",
    "…", "—", "–", "-", "_", "__", "*", "**", "/", "\\", "|", "~", "^", "=", "+", "@", "#", "&", "(", ")", "[",
    "]", "{", "}", "<", ">", "<<", ">>", '"', "'", "`", "``", "''", "“", "”", "‘", "’", "«", "»", "„", "‹", "›",
    "´", ",", ";", ":", "!", "?", "?!", "!!!", ".", "café", "naïve", "Zürich", "ÉCOLE", "Ωmega", "ΣΟΦΟΣ", "日本",
    "中文", "😀", "🐶", "✓", "★", "♥", "→", "©", "°", "§", "•", "·", "\u00ad", "\u200b", "\u3000", "\u00a0", "\u2002",
]
PUNCT = list(".,;:!?\"'()[]{}-") + ["...", "'s", "n't", "--", '."', ".'", "?!", "!)", ".)"]
SOUP = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789     ..,,''\"\"--") + list(
    ".,;:!?'\"`()[]{}<>-_/\\|@#$%^&*+=~"
) + ["é", "É", "ñ", "ß", "ø", "Ω", "σ", "ж", "日", "ä", "\u00ad", "\u2019", "\u2018", "\u201c", "\u201d", "\u2013",
     "\u2014", "\u2026", "\u00a0", "€", "£", "½", "²", "°", "©", "✓", "😀", "\t", "&amp;", "&quot;", "&apos;", "n't",
     "'s", "'ll", "www.", "http://", ".com", "@", "Mr.", "etc.", "U.S.", "e.g.", "cannot", "gonna", " The", " A",
     " I", " 5", " 1/2"]


def _word(rng: random.Random) -> str:
    x = rng.random()
    if x < 0.6:
        w = rng.choice(WORDS)
    elif x < 0.85:
        w = rng.choice(SPECIAL)
    else:
        w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGH0123456789.-'&/_") for _ in range(rng.randint(1, 6)))
    y = rng.random()
    if y < 0.15:
        w = w.capitalize()
    elif y < 0.2:
        w = w.upper()
    if rng.random() < 0.15:
        w += rng.choice(PUNCT)
    if rng.random() < 0.07:
        w = rng.choice(PUNCT) + w
    return w


def noisy_lines(seed: int, n: int) -> list[str]:
    """Caption-like lines full of tokenizer corner cases."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(0, 14)
        parts = [_word(rng) for _ in range(k)]
        seps = [rng.choice([" "] * 20 + ["  ", "\t", " \u00a0", "   "]) for _ in range(max(k - 1, 0))]
        s = "".join(p + sep for p, sep in zip(parts, seps + [""]))
        if s and rng.random() < 0.5:
            s += rng.choice([".", ".", "!", "?", " .", "..", "", "."])
        out.append(s)
    return out


def soup_lines(seed: int, n: int) -> list[str]:
    """Random character soup from the tokenizer's interesting alphabet."""
    rng = random.Random(seed)
    return ["".join(rng.choice(SOUP) for _ in range(rng.randint(0, 30))) for _ in range(n)]
