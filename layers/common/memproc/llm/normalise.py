"""The form text is matched in by the injection filter: what a reader (human or model) sees, in
plain lowercase ASCII where the text only looks like it.

An attacker spells "admin" with a Cyrillic a, hides a zero-width space inside it, writes it in
fullwidth letters or percent-encodes it; a pattern written for ASCII misses all of them, while
the model that later reads the memory does not. ``matching_forms`` undoes each disguise so one set
of ASCII patterns sees through them. The forms are for matching only: what is stored is the
original text (or nothing, when a form matches).
"""

from __future__ import annotations

import html
import re
import unicodedata
from functools import lru_cache
from urllib.parse import unquote

# Look-alikes of Latin letters, by the letter they pass for: the ones attacks use (Cyrillic,
# Greek, Armenian, Latin small capitals and IPA letters), not all of Unicode's confusables.txt;
# then of the punctuation the patterns look for.
# Capitals are folded before lowercasing because some differ from their small letters (Greek
# capital eta looks like H, small eta like n). Written as escapes: the letters look like ASCII.
LOOKALIKES: dict[str, str] = {
    "a": "\u0430\u03b1\u0251\u1d00",  # Cyrillic a, Greek alpha, Latin alpha, small capital A
    "A": "\u0410\u0391",  # Cyrillic A, Greek Alpha
    "b": "\u0432\u044c\u0299",  # Cyrillic ve and soft sign (small-capital B shapes), small capital B
    "B": "\u0412\u0392",  # Cyrillic Ve, Greek Beta
    "c": "\u0441\u1d04",  # Cyrillic es, small capital C (NFKC turns Greek lunate sigma into sigma)
    "C": "\u0421",  # Cyrillic Es
    "d": "\u0501\u1d05",  # Cyrillic komi de, small capital D
    "e": "\u0435\u03b5\u04bd\u1d07",  # Cyrillic ie, Greek epsilon, Cyrillic abkhasian che, small capital E
    "E": "\u0415\u0395",  # Cyrillic Ie, Greek Epsilon
    "g": "\u0261\u0581\u0262",  # Latin script g, Armenian co, small capital G
    # Cyrillic shha, Armenian ho, Cyrillic en (a small-capital H shape), small capital H
    "h": "\u04bb\u0570\u043d\u029c",
    "H": "\u041d\u0397",  # Cyrillic En, Greek Eta
    "i": "\u0456\u03b9\u0131\u026a",  # Cyrillic i, Greek iota, dotless i, small capital I
    "I": "\u0406\u0399\u04c0",  # Cyrillic I, Greek Iota, Cyrillic palochka
    "j": "\u0458\u0237\u1d0a",  # Cyrillic je, dotless j, small capital J
    "J": "\u0408",  # Cyrillic Je
    "k": "\u043a\u03ba\u1d0b",  # Cyrillic ka, Greek kappa, small capital K
    "K": "\u041a\u039a",  # Cyrillic Ka, Greek Kappa
    "l": "\u04cf\u029f",  # Cyrillic small palochka, small capital L
    "m": "\u043c\u1d0d",  # Cyrillic em (small-capital M), small capital M
    "M": "\u041c\u039c",  # Cyrillic Em, Greek Mu
    "n": "\u043f\u03b7\u0578\u0274",  # Cyrillic pe, Greek eta, Armenian vo, small capital N
    "N": "\u039d",  # Greek Nu
    "o": "\u043e\u03bf\u0585\u1d0f",  # Cyrillic o, Greek omicron, Armenian oh, small capital O
    "O": "\u041e\u039f",  # Cyrillic O, Greek Omicron
    "p": "\u0440\u03c1\u1d18",  # Cyrillic er, Greek rho, small capital P
    "P": "\u0420\u03a1",  # Cyrillic Er, Greek Rho
    "q": "\u051b\u0566",  # Cyrillic qa, Armenian za
    "r": "\u0433\u0280",  # Cyrillic ghe, small capital R
    "s": "\u0455\ua731",  # Cyrillic dze, small capital S
    "S": "\u0405",  # Cyrillic Dze
    "t": "\u0442\u03c4\u1d1b",  # Cyrillic te (small-capital T), Greek tau, small capital T
    "T": "\u0422\u03a4",  # Cyrillic Te, Greek Tau
    "u": "\u03c5\u03bc\u057d\u1d1c",  # Greek upsilon, Greek mu, Armenian seh, small capital U
    "v": "\u03bd\u1d20",  # Greek nu, small capital V
    "w": "\u051d\u03c9\u1d21",  # Cyrillic we, Greek omega, small capital W
    "x": "\u0445\u03c7",  # Cyrillic ha, Greek chi
    "X": "\u0425\u03a7",  # Cyrillic Ha, Greek Chi
    "y": "\u0443\u04af\u03b3\u028f",  # Cyrillic u, Cyrillic straight u, Greek gamma, small capital Y
    "Y": "\u0423\u04ae\u03a5",  # Cyrillic U, Cyrillic Straight U, Greek Upsilon
    "z": "\u1d22",  # small capital Z
    "Z": "\u0396",  # Greek Zeta
    # punctuation the patterns rely on: apostrophes and quotes, role-label colons, tag brackets, slashes
    "'": "\u2018\u2019\u02bc\u2032",  # curly single quotes, modifier apostrophe, prime
    '"': "\u201c\u201d",  # curly double quotes
    ":": "\ua789\u02d0\u0589\u2236",  # modifier colon, IPA length mark, Armenian full stop, ratio
    "<": "\u2039\u02c2\u1438\u3008",  # single angle quote, modifier arrowhead, syllabics pa, CJK bracket
    ">": "\u203a\u02c3\u1433\u3009",  # the closing ones
    "/": "\u2044\u2215\u29f8",  # fraction slash, division slash, big solidus
}
_LOOKALIKE_TABLE = {ord(char): latin for latin, chars in LOOKALIKES.items() for char in chars}

# Letters that render as blank space without being whitespace (Hangul fillers, Braille blank).
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# Unicode tag characters (U+E0020..U+E007E) mirror ASCII invisibly; models read them ("ASCII
# smuggling"), so they are read back as the ASCII they hide rather than dropped.
_TAG_BASE = 0xE0000
_TAG_RE = re.compile("[\U000e0020-\U000e007e]+")
_PERCENT_RE = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
# The characters _folded_char may change: all but ASCII's printable ones and its white space.
_FOLDABLE_RE = re.compile("[^\t-\r\x1c-\x7e]")
# Where an invisible character was, in a text folded once for both forms; nothing else folds to it
# (NUL itself is invisible), and the look-alike table and casefold leave it as it is.
_MARK = "\x00"


@lru_cache(maxsize=4096)
def _folded_char(char: str) -> str:
    """Marks (accents, variation selectors) go; invisible characters become ``_MARK``: every
    format character (Unicode category Cf: zero-width spaces and joiners U+200B-U+200D, direction
    marks and bidi controls U+200E/F, U+202A-U+202E, U+2066-U+2069, word joiner and invisible
    operators U+2060-U+2064, BOM U+FEFF, soft hyphen U+00AD, ...), control characters other than
    whitespace, and blank letters."""
    category = unicodedata.category(char)
    if category in ("Mn", "Me"):
        return ""
    if category == "Cf" or (category == "Cc" and not char.isspace()) or char in _BLANK_LETTERS:
        return _MARK
    return char


# ASCII's invisible characters: the controls that are not whitespace (NUL, BEL, ESC, DEL, ...).
_ASCII_INVISIBLE = [chr(c) for c in (*range(0x20), 0x7F) if not chr(c).isspace()]
_ASCII_TABLES = {blank: str.maketrans(dict.fromkeys(_ASCII_INVISIBLE, blank)) for blank in ("", " ")}


def _decoded(text: str) -> str:
    text = html.unescape(text)  # "&lt;script&gt;", "&#8203;"
    if "%" in text:
        text = _PERCENT_RE.sub(lambda m: unquote(m.group()), text)  # "ignore%20previous"
    return text


def _spaced(text: str) -> str:
    """Runs of white space as one space, none at the ends (``str.split`` and ``\\s`` agree on
    what white space is: see the tests)."""
    return " ".join(text.split())


def _fold_ascii(text: str, invisible_as: str) -> str:
    if not text.isprintable():  # control characters (or merely tabs and line breaks)
        text = text.translate(_ASCII_TABLES[invisible_as])
    return _spaced(text.lower())


def _ascii_forms(text: str) -> tuple[str, str]:
    """What ``_unicode_forms`` makes of ASCII (most text), a few times faster: NFKC, NFD, tag
    characters and look-alikes leave it as it is, casefold is lower, and of its characters only
    the controls that are not whitespace are invisible."""
    joined = _fold_ascii(text, "")
    return joined, joined if text.isprintable() else _fold_ascii(text, " ")


def _unicode_forms(text: str) -> tuple[str, str]:
    """(invisible characters removed, read as spaces), from one fold of ``text``."""
    marked = _fold_marked(text)
    joined = _spaced(marked.replace(_MARK, ""))
    return joined, _spaced(marked.replace(_MARK, " ")) if _MARK in marked else joined


def _fold_marked(text: str) -> str:
    """``text`` folded, with ``_MARK`` where an invisible character was."""
    text = _TAG_RE.sub(lambda m: " " + "".join(chr(ord(c) - _TAG_BASE) for c in m.group()) + " ", text)
    # NFKC: fullwidth, mathematical and circled letters, ligatures and odd spaces become plain ones;
    # NFD then parts accents from their letters, so an accented "admin" matches as "admin".
    text = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text))
    text = _FOLDABLE_RE.sub(lambda m: _folded_char(m.group()), text)
    return text.translate(_LOOKALIKE_TABLE).casefold()


def matching_forms(text: str) -> tuple[str, ...]:
    """The folded forms of ``text`` to match patterns against: invisible characters removed
    ("ad\u200bmin" reads "admin") and, when there are any, also read as spaces
    ("ignore\u200bprevious\u200binstructions" reads as three words)."""
    if text.isascii() and text.isprintable() and "&" not in text and "%" not in text:
        # most text, and what the steps below make of it: nothing to decode, nothing invisible
        return (_spaced(text.lower()),)
    text = _decoded(text)
    joined, spaced = _ascii_forms(text) if text.isascii() else _unicode_forms(text)
    return (joined,) if spaced == joined else (joined, spaced)
