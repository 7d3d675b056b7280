"""Prefilters: for a set of regexes, a cheap test that passes every text one of them matches, so
that ordinary text is turned away by two searches instead of running all of them.

A prefilter looks for the regexes' pieces (``regex_pieces``: a piece of a match is a piece of the text)
as one trie, which re searches fast when each alternative starts with a literal: re skips in C to
the next position where one of the first characters is. So the pieces that start after a
non-word character are found from one (a space, mostly: a few per text), and entered at their
rarest word; the rest, which start with one, from that character.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from memproc.llm.regex_pieces import Piece, pieces
from memproc.llm.text_odds import entry, likeliness

# Where the search for pieces after a non-word character starts: every \W, and some word
# characters (a bitmap test, where \W looks each character up in Unicode's tables).
NONWORD = "[^a-zA-Z0-9_]"


class Prefilter:
    """Passes (``passes``) every text that one of ``patterns`` matches, and few others."""

    __slots__ = ("_after_nonword", "_anywhere")

    def __init__(self, patterns: Iterable[re.Pattern[str]]) -> None:
        self._after_nonword, self._anywhere = _searches([piece for p in patterns for piece in pieces(p)])

    def passes(self, text: str) -> bool:
        # the space stands for the start of the text: a body there has a non-word character before it
        return self._after_nonword(" " + text) is not None or self._anywhere(text) is not None


def _searches(found: Sequence[Piece]) -> tuple[Callable[[str], object], Callable[[str], object]]:
    """The search after a non-word character, in the text after a space: that character, then each
    body from its entry on, and the lead and what comes before the entry as a look-behind at the
    end of the body's first literal (where a common word has long failed); the search for the
    others, in the text itself: each from its first character."""
    after_nonword: list[list[str]] = []
    anywhere: list[list[str]] = []
    for piece in found:
        for body in piece.bodies:
            head, rest = body[0], [piece.trail] if piece.trail else []
            for between, literal in reversed(list(zip(body[1::2], body[2::2], strict=True))):
                rest = [between, *map(re.escape, literal), *rest]
            written = "".join(map(re.escape, head))
            k = entry(head, piece.bounded)
            if k is None:
                behind = [f"(?<={piece.lead}{written})"] if piece.lead else []
                anywhere.append([*map(re.escape, head), *behind, *rest])
            else:
                behind = [f"(?<={piece.padded_lead}{written})"] if piece.lead or k else []
                after_nonword.append([*map(re.escape, head[k:]), *behind, *rest])
    return (
        re.compile(NONWORD + _trie(after_nonword)).search if after_nonword else _nowhere,
        re.compile(_trie(anywhere)).search if anywhere else _nowhere,
    )


def _nowhere(text: str) -> None:
    return None


def _trie(entries: Iterable[list[str]]) -> str:
    root: dict[str, Any] = {}
    for tokens in entries:
        node = root
        for token in tokens:
            node = node.setdefault(token, {})
        node[""] = {}  # a body ends here
    return _trie_regex(root)


def _trie_regex(node: dict[str, Any]) -> str:
    if "" in node:  # a body ends here: a longer one adds nothing
        return ""
    alternatives = [token + _trie_regex(node[token]) for token in sorted(node, key=_rank)]
    return alternatives[0] if len(alternatives) == 1 else f"(?:{'|'.join(alternatives)})"


def _rank(token: str) -> tuple[int, str]:
    """Likelier characters first (re tries alternatives in order), regex text (look-behinds) last."""
    return (likeliness(token[-1]) if len(token) <= 2 else 1000, token)
