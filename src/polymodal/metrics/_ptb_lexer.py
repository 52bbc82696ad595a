"""A pure-Python emulation of Stanford CoreNLP 3.4.1's ``PTBLexer`` (the JFlex scanner behind
``edu.stanford.nlp.process.PTBTokenizer``), the tokenizer pycocoevalcap runs through Java.

It is written from the lexer's documented rules and checked token for token against the 3.4.1
jar that pycocoevalcap ships (see ``tests/metrics/test_ptb_tokenizer.py``). Like JFlex it scans
the whole text with **longest match** over all rules (the length of a rule's trailing context
counts), ties going to the earlier rule. JFlex 1.5 reads 16-bit units: the caller
(:mod:`polymodal.metrics.ptb_tokenizer`) spells characters outside the Basic Multilingual Plane
(emoji...) as surrogate pairs, which no letter class matches (so an emoji alone is deleted as
untokenizable) but negated classes do (so one inside a URL stays).

Differences found between the documented CoreNLP grammar and the 3.4.1 jar were settled by
probing the jar (e.g. which abbreviations split off a sentence-final period, ASCII-only
contexts after ``'s`` and before ``"``, the e-mail and SGML patterns); comments mark them.

Speed: JFlex compiles all rules into one automaton; here each rule is a Python regex, tried in
turn, which is slow. :func:`lex_line` therefore caches the tokens of "safe" chunks (runs of
characters between spaces that no rule can tokenise differently depending on what follows) and
only scans the rest rule by rule.

Options reproduced are those pycocoevalcap uses (``-preserveLines -lowerCase``) with 3.4.1's
defaults: parentheses and brackets become ``-LRB-``/``-RRB-``/``-LSB-``/``-RSB-``/``-LCB-``/
``-RCB-``, quotes become LaTeX quotes (`` ` `` ``\\`\\``` ``'`` ``''``), ellipses ``...``, dashes
``--``, ``&amp;`` ``&``, ``£`` ``#``, ``€`` ``$``, ``½`` ``1/2``; a space inside a token (``5 1/2``,
phone numbers, SGML tags) becomes U+00A0; no americanisation, no escaping of ``/`` and ``*``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import cache, lru_cache
from typing import NamedTuple

# --------------------------------------------------------------------------------------------
# Character classes. JFlex's [:letter:], [:digit:], [:uppercase:] are Java's Character.isLetter,
# isDigit, isUpperCase over the BMP; they are built here from unicodedata.


def _class_body(codepoints: list[int]) -> str:
    """Regex character-class body (ranges) for sorted code points."""
    parts = []
    i = 0
    while i < len(codepoints):
        j = i
        while j + 1 < len(codepoints) and codepoints[j + 1] == codepoints[j] + 1:
            j += 1
        a, b = chr(codepoints[i]), chr(codepoints[j])
        parts.append(re.escape(a) if i == j else f"{re.escape(a)}-{re.escape(b)}")
        i = j + 1
    return "".join(parts)


@cache
def _classes() -> dict[str, str]:
    """Letter (L*), digit (Nd) and upper-case (Lu) classes over the BMP, surrogates excluded."""
    letter, digit, upper = [], [], []
    for cp in range(0x10000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        cat = unicodedata.category(chr(cp))
        if cat[0] == "L":
            letter.append(cp)
            if cat == "Lu":
                upper.append(cp)
        elif cat == "Nd":
            digit.append(cp)
    return {"letter": _class_body(letter), "digit": _class_body(digit), "upper": _class_body(upper)}


# --------------------------------------------------------------------------------------------
# Macros, following PTBLexer.flex. %caseless applies to literal letters only, never inside
# character classes; _ci() reproduces that.


def _ci(pattern: str) -> str:
    """Make every ASCII letter outside a character class and not escaped match both cases."""
    out = []
    i = 0
    depth = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if ch == "[" and depth == 0:
            depth = 1
            out.append(ch)
            # a ']' right after '[' or '[^' is literal
            j = i + 1
            if j < len(pattern) and pattern[j] == "^":
                out.append("^")
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                out.append("\\]")
                j += 1
            i = j
            continue
        if ch == "]" and depth:
            depth = 0
            out.append(ch)
            i += 1
            continue
        if depth == 0 and ch.isascii() and ch.isalpha():
            # skip (?P<name>...) group names
            if out and out[-1].endswith("(?P<"):
                k = pattern.index(">", i)
                out.append(pattern[i : k + 1])
                i = k + 1
                continue
            out.append(f"[{ch.lower()}{ch.upper()}]")
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _macros() -> dict[str, str]:
    c = _classes()
    m: dict[str, str] = {}
    L, D, U = c["letter"], c["digit"], c["upper"]
    m["SPLET"] = _ci(r"&[aeiouAEIOU](?:acute|grave|uml);")
    m["SPACE"] = r"[ \t\u00A0\u2000-\u200A\u3000]"
    m["NEWLINE"] = r"(?:\r\n|\r|\n|\u2028|\u2029|\u000B|\u000C|\u0085)"
    m["SPACENL"] = rf"(?:{m['SPACE']}|{m['NEWLINE']})"
    m["SPACENLS"] = rf"(?:{m['SPACENL']})+"
    m["SPACES"] = rf"{m['SPACE']}+"
    # Attribute values must be quoted (unlike later CoreNLP versions); no newline inside a tag.
    m["SGML"] = (
        r"<(?:[!?][A-Za-z\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\-]*[ ]*=[ ]*"
        r"(?:'[^']*'|\"[^\"]*\")|[A-Za-z][A-Za-z0-9_:.\-]*))*[ ]*\/?|\/[A-Za-z][A-Za-z0-9_:.\-]*)[ ]*>"
    )
    m["SENTEND"] = rf"{m['SPACENL']}(?:{m['SPACENL']}|[{U}]|{m['SGML']})"
    m["DIGIT"] = rf"[{D}\u07C0-\u07C9]"
    DIG = m["DIGIT"]
    m["DATE"] = rf"{DIG}{{1,2}}[\-\/]{DIG}{{1,2}}[\-\/]{DIG}{{2,4}}"
    m["NUM"] = rf"(?:{DIG}*(?:[.:,\u00AD\u066B\u066C]{DIG}+)+|{DIG}+)"
    m["NUMBER"] = rf"[\-+]?{m['NUM']}"
    m["SUBSUPNUM"] = r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)"
    m["FRAC"] = rf"(?:{DIG}{{1,4}}[- \u00A0])?{DIG}{{1,4}}(?:\\?\/|\u2044){DIG}{{1,4}}"
    m["FRAC2"] = r"[\u00BC\u00BD\u00BE\u2153-\u215E]"
    m["DOLSIGN"] = r"(?:[A-Z]*\$|#)"
    m["DOLSIGN2"] = r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]"
    letter_extra = (
        r"\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F\u0370-\u037D\u0384\u0385"
        r"\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD"
        r"\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670\u06D6-\u06EF"
        r"\u06FA-\u06FF\u070F\u0711\u0730-\u074F\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903"
        r"\u093C\u093E-\u094E\u0951-\u0955\u0962-\u0963\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD"
        r"\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2"
        r"\u0BC6-\u0BC8\u0BCA-\u0BCD\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A"
        r"\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD"
    )
    m["LETTER"] = rf"(?:[{L}{letter_extra}]|{m['SPLET']})"
    LET = m["LETTER"]
    m["WORD"] = rf"{LET}(?:{LET}|{DIG})*(?:[.!?]{LET}(?:{LET}|{DIG})*)*"
    m["APOS"] = r"(?:['\u0092\u2019]|" + _ci("&apos;") + ")"
    m["APOSETCETERA"] = rf"(?:{m['APOS']}|[`\u0091\u2018\u201B])"
    m["HYPHEN"] = r"[-_\u058A\u2010\u2011]"
    LD = f"[{L}{D}]"
    m["THING"] = (
        rf"(?:[dDoOlL]{m['APOSETCETERA']}{LD})?{LD}+"
        rf"(?:{m['HYPHEN']}(?:[dDoOlL]{m['APOSETCETERA']}{LD})?{LD}+)*"
    )
    m["THINGA"] = r"[A-Z]+(?:(?:[+&]|" + _ci("&amp;") + r")[A-Z]+)+"
    m["THING3"] = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?\/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
    m["ACRO"] = _ci(r"(?:U\.S\.-(?:U\.K|U\.S\.S\.R)|(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|[A-Za-z](?:\.[A-Za-z])*)")
    m["ACRO2"] = _ci(r"(?:U\.S\.-(?:U\.K|U\.S\.S\.R)|(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|[A-Za-z](?:\.[A-Za-z])+)")
    # ASCII only; the acronym alternative first so that "5-U.S." is one token (longest match).
    m["HTHING"] = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:{m['ACRO2']}\.|[A-Za-z0-9\u00AD]+))+"
    m["REDAUX"] = rf"{m['APOS']}(?:[msdMSD]|{_ci('re')}|{_ci('ve')}|{_ci('ll')})"
    m["SWORD"] = r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"
    m["SREDAUX"] = rf"[nN]{m['APOSETCETERA']}[tT]"
    APOS, APE = m["APOS"], m["APOSETCETERA"]
    m["APOWORD"] = (
        rf"{APOS}[nN]{APOS}?|[lLdDjJ]{APOS}|{_ci('Dunkin')}{APOS}|{_ci('somethin')}{APOS}|{_ci('ol')}{APOS}"
        rf"|{APOS}{_ci('em')}|{_ci('diff')}{APE}{_ci('rent')}|[A-HJ-XZn]{APE}[{L}]{{2}}[{L}]*|{APOS}[2-9]0[sS]"
        rf"|{APOS}{_ci('till?')}|[{L}][{L}]*[aeiouyAEIOUY]{APE}[aeiouA-Z][{L}]*|{APOS}{_ci('cause')}"
        rf"|{_ci('cont')}'{_ci('d')}\.?|{_ci('nor')}'{_ci('easter')}|{_ci('c')}'{_ci('mon')}|{_ci('e')}'{_ci('er')}"
        rf"|{_ci('s')}'{_ci('mores')}|{_ci('ev')}'{_ci('ry')}|{_ci('li')}'{_ci('l')}|{_ci('nat')}'{_ci('l')}"
        rf"|[oO]{APE}[oO]"
    )
    m["APOWORD2"] = rf"[yY]{APOS}"
    m["FULLURL"] = _ci(r"https?") + r":\/\/[^ \t\n\f\r\"<>|(){}]+[^ \t\n\f\r\"<>|.!?(){},-]"
    m["LIKELYURL"] = (
        r"(?:(?:" + _ci("www") + r"\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+"
        + _ci("(?:com|net|org|edu)")
        + r"))(?:\/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?"
    )
    m["EMAIL"] = (
        r"(?:" + _ci("&lt;") + r"|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0{}]*@(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*"
        r"(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+)(?:" + _ci("&gt;") + r"|>)?"
    )
    m["TWITTER"] = rf"@[a-zA-Z_][a-zA-Z_0-9]*|#{LET}+"
    m["ABMONTH"] = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
    m["ABDAYS"] = "Mon|Tue|Tues|Wed|Thu|Thurs|Fri"
    m["ABSTATE"] = (
        "Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans?|Ky|[L]a|[M]ass|Md|Mich|Minn"
        "|[M]iss|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc?|Wyo"
    )
    m["ABCOMP"] = "Inc|Cos?|Corp|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys"
    m["ABNUM"] = "tel|est|ext|sq"
    m["ABPTIT"] = r"Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq"
    m["ABBREV1"] = _ci(
        "(?:" + "|".join([m["ABMONTH"], m["ABDAYS"], m["ABSTATE"], m["ABCOMP"], m["ABNUM"], m["ABPTIT"], "etc|al|seq|Bldg"]) + r")\."
    )
    m["ABTITLE"] = (
        "Mr|Mrs|Ms|[M]iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|Cpl|Pvt"
        "|Capt|Ste?|Ave|Pres|Lieut|Rt|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|Insp"
        "|Mlle|Mme|Msgr|Sfc|Sr"
    )
    m["ABCOMP2"] = "Invt|Elec|Natl|M[ft]g|Dept|Blvd|Rd|Ave"
    # Top-level alternatives so that the rule takes the longest ("v.C." as an acronym, not "v.").
    abbrev4_alts = [_ci(m["ABTITLE"] + r"|vs|[v]|Alex|Wm|Jos|Cie|a\.k\.a|cf|TREAS|Ph|" + m["ABCOMP2"]), m["ACRO"]]
    m["ABBREV4"] = "|".join(f"(?:{a})" for a in abbrev4_alts)
    m["ABBREV2"] = "|".join(f"(?:{a})\\." for a in abbrev4_alts)
    m["ACRONYM"] = rf"(?:{m['ACRO']})\."
    # Probed on the 3.4.1 jar: only these, and only before a number.
    m["ABBREV3"] = _ci(r"(?:ca|figs?|prop|nos?|art|bldg|pp|op)\.")
    m["ABBREVSN"] = _ci(r"So\.|No\.")
    m["PHONE"] = (
        r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])[0-9]{3,4}[\- \u00A0]?[0-9]{3,5}"
        r"|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}"
    )
    m["LDOTS"] = r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]"
    m["INSENTP"] = r"[,;:\u3001]"
    # Longer alternatives first: Python takes the first alternative that matches, JFlex the longest.
    m["QUOTES"] = "''|" + _ci("&apos;") + r"|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}|['\u0092\u2019]"
    m["DBLQUOT"] = r'"|' + _ci("&quot;")
    m["TBSPEC"] = (
        r"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|" + _ci(r"C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls|Cap")
        + APOS + _ci("n|c") + APOS + _ci("est")
    )
    m["TBSPEC2"] = rf"{APOS}[0-9][0-9]"
    m["SMILEY"] = r"[<>]?[:;=][\-o\*']?[\(\)DPdpO\\{@\|\[\]]"
    m["ASIANSMILEY"] = (
        r"[\^x=~<>]\.\[\^x=~<>\]|[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)"
        r"|\([\^x=~<>']-[\^x=~<>'`]\)|\u00AF\\_\(\u30C4\)_\/\u00AF"
    )
    m["MISCSYMBOL"] = (
        "[+%&~\\^|\\\\¦\u00A7¨\u00A9\u00AC\u00AE¯\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0\u05C3"
        "\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D\u0703-\u070D\u07F6"
        "\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023\u2030-\u2038\u203B\u203E-\u2042\u2044"
        "\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20"
        "\uFF3B-\uFF40\uFF5B-\uFF65]"
    )
    m["FILENAME_EXT"] = _ci(
        "(?:bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png"
        "|ppt|ps|py|sql|tar|txt|wav|x|xml|zip)"
    )
    # Probed: soft hyphens and combining marks count, letter numbers (U+2160...) do not.
    FN = f"(?:{LET}|{DIG})"
    m["FILENAME"] = rf"{FN}+(?:\.{FN}+)*\.{m['FILENAME_EXT']}"
    m["LETTER_CLS"] = L
    m["DIGIT_CLS"] = D
    return m


# --------------------------------------------------------------------------------------------
# Token normalisations (the actions of the rules).

_LEFT_SQ = re.compile("[\u0091\u2018\u201B\u2039]")
_RIGHT_SQ = re.compile("[\u0092\u2019\u203A]")
_LEFT_DQ = re.compile("[\u0093\u201C\u00AB]")
_RIGHT_DQ = re.compile("[\u0094\u201D\u00BB]")


def _latex_quotes(tok: str, probably_left: bool) -> str:
    if probably_left:
        tok = re.sub("&apos;|'", "`", tok)
        tok = re.sub('"|&quot;', "``", tok)
    else:
        tok = re.sub("&apos;|'", "'", tok)
        tok = re.sub('"|&quot;', "''", tok)
    tok = _LEFT_SQ.sub("`", tok)
    tok = _RIGHT_SQ.sub("'", tok)
    tok = _LEFT_DQ.sub("``", tok)
    return _RIGHT_DQ.sub("''", tok)


def _remove_soft_hyphens(tok: str) -> str:
    out = tok.replace("\u00AD", "")
    return out if out else "-"


def _normalize_currency(tok: str) -> str:
    tok = tok.replace("\u00A2", "cents").replace("\u00A3", "#")
    return re.sub("[\u0080\u00A4\u20A0\u20AC]", "$", tok)


_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"}


def _normalize_fractions(tok: str) -> str:
    for k, v in _FRACTIONS.items():
        tok = tok.replace(k, v)
    return tok


def _paren(tok: str) -> str:
    return tok.replace("(", "-LRB-").replace(")", "-RRB-")


class _Rule(NamedTuple):
    name: str
    # One compiled pattern per top-level alternative of the rule: JFlex takes the longest match
    # over all of them, Python's alternation would stop at the first one that matches.
    regexes: tuple[re.Pattern, ...]
    main: re.Pattern  # the token part alone, without trailing context
    # action(text) -> (token or None, pushback)
    action: Callable[[str], tuple[str | None, int]]


def _keep(t: str) -> tuple[str | None, int]:
    return t, 0


def _drop(t: str) -> tuple[str | None, int]:
    return None, 0


def _const(s: str) -> Callable[[str], tuple[str | None, int]]:
    return lambda t: (s, 0)


def _nbsp(t: str) -> tuple[str | None, int]:
    return t.replace(" ", "\u00A0"), 0


def _with_period_pushback(t: str) -> tuple[str | None, int]:
    # "(reduplication:) also return a period for next time"
    return t, 1


def _acronym(t: str) -> tuple[str | None, int]:
    if len(t) == 2:  # "I.", "A.": the letter, then the period
        return t[:-1], 1
    return t, 1


def _rules() -> list[_Rule]:
    m = _macros()
    S, SNL, SNLS, SPACES = m["SPACE"], m["SPACENL"], m["SPACENLS"], m["SPACES"]
    NL = m["NEWLINE"]
    L, D = m["LETTER_CLS"], m["DIGIT_CLS"]
    acro_follow = (
        "(?:[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[D]id|[D]uring|[E]arlier|[H]e|[H]er"
        "|[H]ere|[H]ow|[H]owever|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\\.|[M]s\\.|[N]ow|[O]nce|[O]ne|[O]ther|[O]ur"
        "|[S]he|[S]ince|[S]o|[S]ome|[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|[T]hey|[T]his|[W]e|[W]hen"
        "|[W]hile|[W]hat|[W]ho|[W]hy|[Y]et|[Y]ou|" + m["SGML"] + ")"
    )
    acro_follow = _ci(acro_follow)
    # Rules in PTBLexer.flex order (the order breaks ties between equally long matches). Where
    # the 3.4.1 jar behaves unlike the later published grammar, probing the jar decided:
    # - contexts after 's/'ll (REDAUX), before "..." (DBLQUOT) and after smileys are ASCII-only;
    # - "'n'", "o'o" (APOWORD) and "o'clock"-like THINGs keep their raw apostrophes (no quote
    #   normalisation); "-5-4" is two numbers, not a THING;
    # - hashtags are "#" + letters only; e-mail addresses may hold almost any character;
    # - file names take a short fixed extension list and are followed by space or [.?!,];
    # - 3.4.1 has no "Yahoo!"/"E!" words, no "°C" token and no emoji rule (emoji are deleted);
    # - which abbreviations split a sentence-final period (ABBREV1: "etc.", "Inc.", "Sr.",
    #   "Blvd.", states, months...) and which never do (ABBREV2: titles "Mr.", "Dr.", "St."...).
    spec: list[tuple[str, str, str, Callable[[str], tuple[str | None, int]]]] = [
        # (name, main, trailing context, action)
        ("PROG_LANGS", _ci(r"c\+\+|(?:c|f)#"), "", _keep),
        ("ASSIM3", _ci("cannot") + "|" + m["APOS"] + _ci("twas"), "", lambda t: (t[:-3], 3)),
        ("ASSIM2", m["APOS"] + _ci("tis") + "|" + _ci("gonna|gotta|lemme|gimme|wanna"), "", lambda t: (t[:-2], 2)),
        ("SGML", m["SGML"], "", _nbsp),
        ("SPMDASH", _ci("&(?:MD|mdash|ndash);") + r"|[\u0096\u0097\u2013\u2014\u2015]", "", _const("--")),
        ("SPAMP", _ci("&amp;"), "", _const("&")),
        ("SPPUNC", _ci("&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);"), "", _keep),
        ("WORD_REDAUX", m["WORD"], m["REDAUX"], lambda t: (_remove_soft_hyphens(t), 0)),
        ("SWORD_SREDAUX", m["SWORD"], m["SREDAUX"], lambda t: (_remove_soft_hyphens(t), 0)),
        ("WORD", m["WORD"], "", lambda t: (_remove_soft_hyphens(t), 0)),
        ("APOWORD", m["APOWORD"], "", _keep),
        ("APOWORD2", m["APOWORD2"], f"[{L}]", _keep),
        ("FULLURL", m["FULLURL"], "", _keep),
        ("LIKELYURL", m["LIKELYURL"], "", _keep),
        ("EMAIL", m["EMAIL"], "", _keep),
        ("TWITTER", m["TWITTER"], "", _keep),
        ("REDAUX_CTX", m["REDAUX"], "[^A-Za-z]", lambda t: (_latex_quotes(t, False), 0)),
        ("SREDAUX", m["SREDAUX"], "", lambda t: (_latex_quotes(t, False), 0)),
        ("DATE", m["DATE"], "", _keep),
        ("NUMBER", m["NUMBER"], "", lambda t: (_remove_soft_hyphens(t), 0)),
        ("SUBSUPNUM", m["SUBSUPNUM"], "", _keep),
        ("FRAC", m["FRAC"], "", _nbsp),
        ("FRAC2", m["FRAC2"], "", lambda t: (_normalize_fractions(t), 0)),
        ("TBSPEC", m["TBSPEC"], "", lambda t: (re.sub("(?i:&amp;)", "&", t), 0)),
        ("THING3", m["THING3"], "", _keep),
        ("DOLSIGN", m["DOLSIGN"], "", _keep),
        ("DOLSIGN2", m["DOLSIGN2"], "", lambda t: (_normalize_currency(t), 0)),
        ("ACRONYM_SENT", m["ACRONYM"], f"{SNLS}{acro_follow}(?:{SNL}|[?!])", _acronym),
        ("ABBREV3", m["ABBREV3"], f"{SNL}?[{D}]", _keep),
        ("ABBREVSN", m["ABBREVSN"], f"{SNL}+" + _ci("(?:Africa|Korea|Cal)"), _keep),
        ("PTY", _ci(r"(?:pt[eyEY]|co)\."), f"{S}" + _ci("(?:ltd|lim)"), _keep),
        ("ABBREV1_SENT", m["ABBREV1"], m["SENTEND"], _with_period_pushback),
        ("ABBREV1_MID", m["ABBREV1"], r"[\s\S][\s\S]", _keep),
        ("ABBREV1_END", m["ABBREV1"], "", _with_period_pushback),
        ("ABBREV2", m["ABBREV2"], "", _keep),
        ("ABBREV4", m["ABBREV4"], S, _keep),
        ("ACRO", m["ACRO"], SNL, _keep),
        ("TBSPEC2", m["TBSPEC2"], SNL, _keep),
        ("FILENAME", m["FILENAME"], f"(?:{SNL}|[.?!,]|\\Z)", _keep),
        ("WORD_DOT", m["WORD"] + r"\.", m["INSENTP"], lambda t: (_remove_soft_hyphens(t), 0)),
        ("PHONE", m["PHONE"], "", lambda t: (_paren(t.replace(" ", "\u00A0")), 0)),
        ("DBLQUOT_LEFT", m["DBLQUOT"], "[A-Za-z0-9$]", lambda t: (_latex_quotes(t, True), 0)),
        ("DBLQUOT", m["DBLQUOT"], "", lambda t: (_latex_quotes(t, False), 0)),
        ("DEL", "\u007f", "", _drop),
        ("LESSTHAN", "<|" + _ci("&lt;"), "", _const("<")),
        ("GREATERTHAN", ">|" + _ci("&gt;"), "", _const(">")),
        ("SMILEY", m["SMILEY"], "[^A-Za-z0-9]", lambda t: (_paren(t), 0)),
        ("ASIANSMILEY", m["ASIANSMILEY"], "", lambda t: (_paren(t), 0)),
        ("LCB", r"\{", "", _const("-LCB-")),
        ("RCB", r"\}", "", _const("-RCB-")),
        ("LSB", r"\[", "", _const("-LSB-")),
        ("RSB", r"\]", "", _const("-RSB-")),
        ("LRB", r"\(", "", _const("-LRB-")),
        ("RRB", r"\)", "", _const("-RRB-")),
        ("HYPHENS", r"-+", "", lambda t: ("--" if 3 <= len(t) <= 4 else t, 0)),
        ("LDOTS", m["LDOTS"], "", _const("...")),
        ("FNMARKS", r"@+|#+|_+", "", _keep),
        ("ASTS", r"\*+|(?:\\\*){1,3}", "", _keep),
        ("INSENTP", m["INSENTP"], "", _keep),
        ("QMARKS", r"[?!]+", "", _keep),
        ("SENTP", "[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]", "", _keep),
        ("EQUALS", "=", "", _keep),
        ("SLASH", r"\/", "", _keep),
        ("HTHING_DOT", m["HTHING"] + r"\.", m["INSENTP"], lambda t: (_remove_soft_hyphens(t), 0)),
        ("HTHING", m["HTHING"], "", lambda t: (_remove_soft_hyphens(t), 0)),
        ("THING_DOT", m["THING"] + r"\.", m["INSENTP"], _keep),
        ("THING", m["THING"], "", _keep),
        ("THINGA_DOT", m["THINGA"] + r"\.", m["INSENTP"], lambda t: (re.sub("(?i:&amp;)", "&", t), 0)),
        ("THINGA", m["THINGA"], "", lambda t: (re.sub("(?i:&amp;)", "&", t), 0)),
        ("QUOTE_LEFT", "'", "[A-Za-z][^ \\t\\n\\r\u00A0]", lambda t: (_latex_quotes(t, True), 0)),
        ("REDAUX", m["REDAUX"], "", lambda t: (_latex_quotes(t, False), 0)),
        ("QUOTES", m["QUOTES"], "", lambda t: (_latex_quotes(t, False), 0)),
        ("FAKEDUCKFEET", "<<|>>", "", _keep),
        ("MISCSYMBOL", m["MISCSYMBOL"], "", _keep),
        ("CP1252", "[\u0086\u0087\u0089\u0095\u0098\u0099]", "", _keep),
        ("SPACES", "\u0000|" + SPACES + "|[\u200B\u200E-\u200F\uFEFF]", "", _drop),
        ("NEWLINE", NL, "", _const("\n")),
        ("NBSP", _ci("&nbsp;"), "", _drop),
    ]
    rules = []
    for name, main, ctx, action in spec:
        regexes = []
        for alt in _split_alternatives(main):
            # The trailing context counts for the longest match: capture it inside the look-ahead.
            pat = f"(?P<m>{alt})(?=(?P<c>{ctx}))" if ctx else f"(?P<m>{alt})"
            regexes.append(re.compile(pat))
        rules.append(_Rule(name, tuple(regexes), re.compile(main), action))
    return rules


def _split_alternatives(pattern: str) -> list[str]:
    """Split a regex at its top-level ``|`` (outside groups and character classes)."""
    parts = []
    depth = 0
    in_class = False
    start = 0
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
        elif ch == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "^":
                i += 1
            if pattern[i + 1 : i + 2] == "]":
                i += 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    parts.append(pattern[start:])
    return parts


@lru_cache(maxsize=1)
def _compiled_rules() -> list[_Rule]:
    return _rules()


def _lex_span(text: str, pos: int, stop: int, out: list[str]) -> int:
    """Lex tokens from ``pos`` until at least ``stop`` and at a chunk boundary; return the new position.

    A chunk boundary is an ASCII space, tab or newline, or the end of the text.
    """
    rules = _compiled_rules()
    n = len(text)
    while pos < n and (pos < stop or text[pos] not in " \t\n"):
        best_len = 0
        best = None
        best_rule = None
        for rule in rules:
            for rx in rule.regexes:
                mt = rx.match(text, pos)
                if mt is None:
                    continue
                total = mt.end() - pos
                if rx.groups > 1:
                    total += len(mt.group("c"))
                if total > best_len:
                    best_len, best, best_rule = total, mt, rule
        if best is None or best_rule is None:
            # Untokenizable: deleted (the "firstDelete" default). A character outside the BMP is
            # a surrogate pair to 16-bit JFlex; it can still sit inside a token whose class is
            # negated ("[^ ...]": URLs, e-mail addresses), which the BMP-only classes reproduce.
            pos += 1
            continue
        tok_text = best.group("m")
        tok, pushback = best_rule.action(tok_text)
        pos += max(1, len(tok_text) - pushback)
        if tok is not None:
            out.append(tok)
    return pos


# A chunk (maximal run without ASCII space/tab/newline) made only of these characters is
# tokenised the same wherever it occurs before whitespace: none of the rules that look past
# whitespace (abbreviations and acronyms with their period, numbers, fractions, phone numbers,
# SGML tags, spaced ellipses) can start or end in it. Its tokens are cached.
SAFE_CHARS = r"A-Za-z'\",;:!?()\[\]{}\-&/*=+%~^|\\_#$@>`\u00C0-\u024F\u0370-\u03FF\u0400-\u04FF"
_SAFE_CHUNK = re.compile(f"[{SAFE_CHARS}]+")
# "word." with a plain word: the word's tokens then "." unless word+"." is an abbreviation.
_DOT_WORD = re.compile(r"([A-Za-z]{2,})\.")
# (WORD_DOT needs [,;:] right after the period, impossible at the end of a chunk.)
_ABBREV_RULES = ("ACRONYM_SENT", "ABBREV3", "ABBREVSN", "PTY", "ABBREV1_SENT", "ABBREV2", "FILENAME", "TBSPEC")


@cache
def _abbrev_like(word_dot: str) -> bool:
    """True when ``word.`` could be one token (an abbreviation) in some context."""
    return any(rule.main.fullmatch(word_dot) for rule in _compiled_rules() if rule.name in _ABBREV_RULES)


_chunk_cache: dict[str, tuple[str, ...]] = {}


def _safe_chunk_tokens(chunk: str) -> tuple[str, ...]:
    toks = _chunk_cache.get(chunk)
    if toks is None:
        out: list[str] = []
        text = chunk + " "
        _lex_span(text, 0, len(chunk), out)
        toks = tuple(out)
        if len(_chunk_cache) < 1_000_000:
            _chunk_cache[chunk] = toks
    return toks


# A line made only of safe chunks and plain "word." chunks, separated by spaces/tabs, is
# tokenised chunk by chunk from the cache; any other line is lexed in place, from its start (the
# lexer carries no state from one line to the next, it only looks ahead).
FAST_LINE = re.compile(rf"[ \t]*(?:(?:[{SAFE_CHARS}]+|[A-Za-z]{{2,}}\.)(?:[ \t]+|\Z))*")


def fast_line_chunks(line: str) -> list[str] | None:
    """The chunks of a line the cache can tokenise ("word." kept whole), or ``None``."""
    if FAST_LINE.fullmatch(line) is None:
        return None
    chunks = line.split()
    for chunk in chunks:
        if chunk[-1] == "." and _abbrev_like(chunk):
            return None
    return chunks


_CHUNK = re.compile(r"[^ \t\n]+")
# Spaces the lexer's whitespace rule swallows together with a preceding ASCII space or tab.
_UNICODE_SPACES = frozenset("\u00A0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200A\u3000")


def lex_line(text: str, start: int, end: int, last: bool) -> list[str] | None:
    """Tokens of the line ``text[start:end]`` (``None`` if a token runs past its end).

    ``last`` marks the last line of the text, whose end is the end of the text.
    """
    if not last:
        chunks = fast_line_chunks(text[start:end])
        if chunks is not None:
            toks: list[str] = []
            for chunk in chunks:
                if chunk[-1] == ".":
                    toks.extend(_safe_chunk_tokens(chunk[:-1]))
                    toks.append(".")
                else:
                    toks.extend(_safe_chunk_tokens(chunk))
            return toks
    toks = []
    pos = start
    safe = _SAFE_CHUNK.fullmatch
    dot_word = _DOT_WORD.fullmatch
    for mt in _CHUNK.finditer(text, start, end):
        cs, ce = mt.span()
        if cs < pos:  # a token ran over the whitespace into this chunk
            if ce > pos:
                pos = _lex_span(text, pos, ce, toks)
            continue
        if cs > start and text[cs - 1] in " \t":
            while cs < ce and text[cs] in _UNICODE_SPACES:
                cs += 1
            if cs == ce:
                pos = ce
                continue
        chunk = text[cs:ce]
        if not (last and ce == end):  # chunks touching the end of the text meet end-of-text rules
            if safe(chunk):
                toks.extend(_safe_chunk_tokens(chunk))
                pos = ce
                continue
            dm = dot_word(chunk)
            if dm is not None and not _abbrev_like(chunk):
                toks.extend(_safe_chunk_tokens(dm.group(1)))
                toks.append(".")
                pos = ce
                continue
        pos = _lex_span(text, cs, ce, toks)
    return None if pos > end else toks


def lex_lines(text: str) -> list[list[str]] | None:
    """Tokens of each line of ``text``, or ``None`` when a token crosses a line break."""
    lines = text.split("\n")
    out: list[list[str]] = []
    start = 0
    last = len(lines) - 1
    for i, line in enumerate(lines):
        end = start + len(line)
        toks = lex_line(text, start, end, i == last)
        if toks is None:
            return None
        out.append(toks)
        start = end + 1
    return out


def lex(text: str) -> list[str]:
    """Tokens of ``text`` in order; each line break is a ``"\\n"`` token (``tokenizeNLs``)."""
    lines = lex_lines(text)
    if lines is None:
        return lex_reference(text)
    out: list[str] = []
    for i, toks in enumerate(lines):
        if i:
            out.append("\n")
        out.extend(toks)
    return out


def lex_reference(text: str) -> list[str]:
    """The same tokens from the plain longest-match scan of the whole text (slow; for tests)."""
    out: list[str] = []
    _lex_span(text, 0, len(text), out)
    return out
