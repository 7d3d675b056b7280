"""How often a string occurs in ordinary text, roughly: the estimate by which the injection
prefilter (``regex_pieces``, ``prefilter``) chooses what to look for. Only its speed depends on it."""

from __future__ import annotations

import math
import re
from functools import lru_cache


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# How often a character occurs in lowercase English (anything else _RARE) ...
_FREQUENCY = {
    **dict(zip(" etaoinshrdlucmwfgypbvkjxqz", (
        0.18, 0.10, 0.075, 0.065, 0.062, 0.057, 0.057, 0.053, 0.049, 0.05, 0.034, 0.033, 0.023, 0.022,
        0.02, 0.019, 0.018, 0.016, 0.016, 0.015, 0.012, 0.008, 0.006, 0.001, 0.0015, 0.001, 0.0007,
    ), strict=True)),
    **dict.fromkeys(".,", 0.01), "'": 0.004, "-": 0.002, **dict.fromkeys("0123456789", 0.002),
}  # fmt: skip
_RARE = 0.0003
# ... and words that letter frequencies make look rare (each about 1 in 100 positions), with those
# of memories ("The user prefers ...", "asked", "works"); memories rarely say "you".
_COMMON_WORDS = _words("""
    the of and to a in is it that he was for on are as with his they i at be this have from or one
    had by but not what all were we when can said there use an each which she do how their if will
    up other about out many then them these so some her would make like him into time has look two
    more go see no way could my than first been call who its now find long down day did get come made
    may part user users prefers prefer likes wants works work lives plans asked asks told needs never
    always over
""")
# A part of one of them is as common (a piece cut short must not look rare); so is a start.
_COMMON_PARTS = frozenset(w[i:j] for w in _COMMON_WORDS for i in range(len(w)) for j in range(i, len(w) + 1))
_COMMON_STARTS = frozenset(w[:j] for w in _COMMON_WORDS for j in range(len(w) + 1))
_TOKENS_RE = re.compile(r"\w+|\W")
_WORD_CHAR = re.compile(r"\w")


def is_word(char: str) -> bool:
    return _WORD_CHAR.fullmatch(char) is not None


@lru_cache(maxsize=4096)
def chance(string: str) -> float:
    """How often ``string`` occurs at a position (letter frequencies make a word look far rarer
    than it is, so a word has a floor by its length)."""
    return math.prod(
        max(
            0.01 if token in _COMMON_PARTS else 10 ** (-(len(token) + 1) / 1.5) if is_word(token[0]) else 0,
            math.prod(_FREQUENCY.get(c, _RARE) for c in token),
        )
        for token in _TOKENS_RE.findall(string)
    )


@lru_cache(maxsize=256)
def char_chance(regex: str) -> float:
    """How often a character matches the one-character ``regex``."""
    one = re.compile(regex)
    return sum(p for c, p in _FREQUENCY.items() if one.fullmatch(c)) + _RARE * bool(one.fullmatch("\u00e9"))


@lru_cache(maxsize=4096)
def start_chance(head: str, k: int) -> float:
    """How often a word starts like the one at ``head[k]`` (a search walks into it from there)."""
    word = _TOKENS_RE.match(head, k).group()  # type: ignore[union-attr]
    return 0.01 if word in _COMMON_STARTS else chance(word)


@lru_cache(maxsize=4096)
def entry(head: str, bounded: bool) -> int | None:
    """Where a search that stops at non-word characters enters a body that starts with ``head``:
    the rarest of its words with a non-word character before them (the first, when ``bounded``);
    None: at its first character, when there is no such word, or that is a rarer non-word one."""
    starts = [k for k in range(1, len(head)) if is_word(head[k]) and not is_word(head[k - 1])]
    starts = [0, *starts] if bounded and is_word(head[0]) else starts
    best = min(starts, key=lambda k: (start_chance(head, k), -k), default=None)
    if best is None or (not is_word(head[0]) and chance(head[0]) < start_chance(head, best)):
        return None
    return best


def likeliness(char: str) -> int:
    """The rank of ``char`` among the likeliest characters (0 the likeliest)."""
    return _LIKELY.get(char, len(_LIKELY))


_LIKELY = {c: i for i, c in enumerate(sorted(_FREQUENCY, key=lambda c: -_FREQUENCY[c]))}
