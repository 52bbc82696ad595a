"""The caption tokenisation of pycocoevalcap (``pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer``).

pycocoevalcap writes all captions, one per line, to a file, runs Stanford CoreNLP 3.4.1's
``PTBTokenizer -preserveLines -lowerCase`` on it in a Java subprocess, and then drops every
token that is in a fixed punctuation list. Two backends give the same strings:

* ``"python"`` (default): :mod:`polymodal.metrics._ptb_lexer`, a pure-Python emulation of that
  lexer, checked token for token against the jar. No Java needed, and faster than starting a JVM.
* ``"java"``: the jar itself, exactly as pycocoevalcap runs it (needs Java and pycocoevalcap).

Quirks of the reference reproduced here, on purpose:

* Captions are lower-cased *after* tokenisation, so the punctuation list, which holds
  ``"-LRB-"``, ``"-RRB-"``, ``"-LCB-"``, ``"-RCB-"`` in upper case, never matches the lower-cased
  ``-lrb-`` ... tokens: brackets survive as ``-lrb-``, ``-rrb-``, ``-lsb-``, ``-rsb-``, ``-lcb-``,
  ``-rcb-`` words, while ``'' ' `` ` . ? ! , : - -- ... ;`` are removed. Tokens such as ``?!``,
  ``!!``, ``%``, ``&``, ``$``, ``#``, ``/`` are not in the list and stay.
* All captions of a call are tokenised as one text, so the lexer's look-ahead crosses caption
  boundaries, exactly as in pycocoevalcap: "There is a." keeps the token "a." (an initial) unless
  the next caption starts with a word such as "A" or "The", in which case "a" and "." are split
  (and "." is then filtered out). References and candidates are two separate calls.
* Tokens may contain U+00A0 (the tokenizer joins "5 1/2", phone numbers and SGML tags with a
  no-break space); BLEU/CIDEr later split on it, ROUGE-L does not.

One deliberate deviation: pycocoevalcap replaces only ``"\\n"`` inside a caption by a space; any
other line separator (``\\r``, U+2028, U+2029, U+0085, ``\\v``, ``\\f``) makes the Java tokenizer
emit an extra output line and every later caption of the call is then paired with the wrong
image. Both backends here replace those characters by a space too, so each caption keeps its own
tokens (identical output whenever the reference is not misaligned).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from polymodal.metrics import _ptb_lexer
from polymodal.metrics.errors import MetricInputError, MetricUnavailableError

PUNCTUATIONS: frozenset[str] = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Characters the lexer treats as a line break (its NEWLINE macro).
_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\u2028\u2029\u0085\u000b\u000c"})


_ASTRAL = re.compile("[\U00010000-\U0010FFFF]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _to_utf16_units(text: str) -> str:
    """Spell characters outside the BMP as surrogate pairs, the 16-bit units JFlex sees."""

    def pair(m: re.Match) -> str:
        cp = ord(m.group()) - 0x10000
        return chr(0xD800 + (cp >> 10)) + chr(0xDC00 + (cp & 0x3FF))

    return _ASTRAL.sub(pair, text)


def _from_utf16_units(text: str) -> str:
    """Join surrogate pairs back; a lone half is written as "?" (Java's UTF-8 encoder does so)."""
    try:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError:
        out = []
        i = 0
        while i < len(text):
            c = text[i]
            if "\ud800" <= c <= "\udbff" and i + 1 < len(text) and "\udc00" <= text[i + 1] <= "\udfff":
                out.append(text[i : i + 2].encode("utf-16-le", "surrogatepass").decode("utf-16-le"))
                i += 2
                continue
            out.append("?" if "\ud800" <= c <= "\udfff" else c)
            i += 1
        return "".join(out)


def _clean(captions: Sequence[str], utf16: bool = False) -> list[str]:
    out = []
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise MetricInputError(f"caption #{i} is {type(c).__name__}, not a string: {c!r:.80}")
        c = c.translate(_LINE_BREAKS)
        if utf16 and _ASTRAL.search(c):
            c = _to_utf16_units(c)
        out.append(c)
    return out


def _finish(line_tokens: list[list[str]], count: int) -> list[str]:
    if len(line_tokens) < count:
        raise RuntimeError(f"tokenizer returned {len(line_tokens)} lines for {count} captions")
    result = []
    for toks in line_tokens[:count]:
        result.append(" ".join(t for t in toks if t not in PUNCTUATIONS))
    return [_from_utf16_units(r) if _SURROGATE.search(r) else r for r in result]


def _format(tokens: list[str] | tuple[str, ...]) -> str:
    """The Java output line (lower-cased tokens, space-separated) through pycocoevalcap's
    ``line.rstrip().split(' ')`` and punctuation filter. ``rstrip`` also strips Unicode spaces,
    e.g. a U+00A0 that ends the last token of a line."""
    line = " ".join(x.lower() for x in tokens).rstrip()
    return " ".join(t for t in line.split(" ") if t not in PUNCTUATIONS)


_final_cache: dict[str, str] = {}


def _final_chunk(chunk: str) -> str:
    """Lower-cased tokens of a safe chunk without punctuation, space-joined (cached)."""
    out = _final_cache.get(chunk)
    if out is None:
        out = _format(_ptb_lexer._safe_chunk_tokens(chunk))
        if len(_final_cache) < 1_000_000:
            _final_cache[chunk] = out
    return out


def tokenize_python(captions: Sequence[str]) -> list[str]:
    """Tokenise with the pure-Python emulation of PTBTokenizer 3.4.1."""
    caps = _clean(captions, utf16=True)
    if not caps:
        return []
    text = "\n".join(caps)
    result: list[str] = []
    start = 0
    last = len(caps) - 1
    for i, line in enumerate(caps):
        end = start + len(line)
        chunks = _ptb_lexer.fast_line_chunks(line) if i < last else None  # last line: end-of-text rules
        if chunks is not None:
            # "word." -> the word's tokens then "." (which the filter drops)
            parts = [_final_chunk(c[:-1] if c[-1] == "." else c) for c in chunks]
            result.append(" ".join(p for p in parts if p))
        else:
            toks = _ptb_lexer.lex_line(text, start, end, i == last)
            if toks is None:
                # A token ran over the line break (only a quoted SGML attribute can): lex the
                # whole text the slow way instead.
                return _tokenize_whole(text, len(caps))
            out = _format(toks)
            result.append(_from_utf16_units(out) if _SURROGATE.search(out) else out)
        start = end + 1
    return result


def _tokenize_whole(text: str, count: int) -> list[str]:
    lines: list[list[str]] = [[]]
    for t in _ptb_lexer.lex_reference(text):
        if t == "\n":
            lines.append([])
        else:
            lines[-1].append(t)
    if len(lines) < count:
        raise RuntimeError(f"tokenizer returned {len(lines)} lines for {count} captions")
    out = [_format(toks) for toks in lines[:count]]
    return [_from_utf16_units(r) if _SURROGATE.search(r) else r for r in out]


def find_corenlp_jar() -> Path | None:
    """pycocoevalcap's ``stanford-corenlp-3.4.1.jar``, or ``None``."""
    import importlib.util

    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        jar = Path(loc) / "tokenizer" / "stanford-corenlp-3.4.1.jar"
        if jar.is_file():
            return jar
    return None


def tokenize_java(captions: Sequence[str]) -> list[str]:
    """Tokenise by running the CoreNLP 3.4.1 jar like pycocoevalcap does.

    Raises:
        MetricUnavailableError: Java or the jar is missing.
    """
    caps = _clean(captions)
    if not caps:
        return []
    java = shutil.which("java")
    jar = find_corenlp_jar()
    if java is None or jar is None:
        missing = " and ".join(
            x for x, ok in (("Java (`java` on PATH)", java), ("pycocoevalcap (`pip install polymodal[eval]`)", jar)) if not ok
        )
        raise MetricUnavailableError(
            f"the Java PTB tokenizer needs {missing}; use tokenizer='python' (the default) instead"
        )
    # pycocoevalcap writes the file next to the jar; a private temp dir works the same.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "captions.txt")
        with open(path, "wb") as f:
            f.write("\n".join(caps).encode())
        cmd = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", path]
        proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise MetricUnavailableError(f"the Java PTB tokenizer failed: {proc.stderr.decode(errors='replace')[-1000:]}")
    lines = proc.stdout.decode().split("\n")
    return _finish([line.rstrip().split(" ") for line in lines], len(caps))


def ptb_tokenize(captions: Sequence[str], backend: str = "python") -> list[str]:
    """Tokenise captions exactly like pycocoevalcap's ``PTBTokenizer`` (one call = one text).

    Args:
        captions: raw captions.
        backend: ``"python"`` (pure Python, default) or ``"java"`` (the CoreNLP jar).

    Returns:
        One space-joined, lower-cased string per caption, punctuation tokens removed.
    """
    if backend == "python":
        return tokenize_python(captions)
    if backend == "java":
        return tokenize_java(captions)
    raise ValueError(f"backend must be 'python' or 'java', got {backend!r}")
