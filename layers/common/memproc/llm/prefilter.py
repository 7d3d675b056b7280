"""Prefilters: for a list of regexes, which of them can match a text, found without running them
(none, for most text), so that the others are never run.

A prefilter looks for the regexes' pieces (``regex_pieces``: a piece of a match is a piece of the
text) as one trie, which re searches fast when each alternative starts with a literal: re skips in
C to the next position where one of the first characters is. So the pieces that start after a
non-word character are searched from one (a space, mostly: a few per text), and entered at their
rarest word; the others, which start with one, from that character. Each body ends in an empty
group that names the regexes that can match there: its own, and those of the alternatives re has
not tried when it gets there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from memproc.llm.regex_pieces import pieces
from memproc.llm.text_odds import entry, likeliness

# Where the search for pieces after a non-word character starts: every \W, and some word
# characters (a bitmap test, where \W looks each character up in Unicode's tables).
NONWORD = "[^a-zA-Z0-9_]"


class Prefilter:
    """Which of ``patterns`` can match a text: ``candidates`` has bit ``i`` set for every pattern
    ``i`` that matches it (and now and then one that does not)."""

    __slots__ = ("_searches",)

    def __init__(self, patterns: Sequence[re.Pattern[str]]) -> None:
        after_nonword: list[tuple[int, list[str]]] = []
        anywhere: list[tuple[int, list[str]]] = []
        for i, pattern in enumerate(patterns):
            for piece in pieces(pattern):
                for body in piece.bodies:
                    head, rest = body[0], [piece.trail] if piece.trail else []
                    for between, literal in reversed(list(zip(body[1::2], body[2::2], strict=True))):
                        rest = [between, *map(re.escape, literal), *rest]
                    written = "".join(map(re.escape, head))
                    k = entry(head, piece.bounded)
                    if k is None:
                        behind = [f"(?<={piece.lead}{written})"] if piece.lead else []
                        anywhere.append((1 << i, [*map(re.escape, head), *behind, *rest]))
                    else:  # the lead and what comes before the entry, where a common word has long failed
                        behind = [f"(?<={piece.padded_lead}{written})"] if piece.lead or k else []
                        after_nonword.append((1 << i, [*map(re.escape, head[k:]), *behind, *rest]))
        # the search after a non-word character runs in the text after a space: the start is one
        self._searches = tuple(
            (re.compile(start + regex).search, masks, padded)
            for start, entries, padded in ((NONWORD, after_nonword, True), ("", anywhere, False))
            if entries
            for regex, masks in [_trie(entries)]
        )

    def candidates(self, text: str) -> int:
        found = 0
        for search, masks, padded in self._searches:
            subject = " " + text if padded else text
            match = search(subject)
            while match is not None:  # every place some body starts at
                found |= masks[match.lastindex or 0]
                match = search(subject, match.start() + 1)
        return found


@dataclass
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    ends: int = 0  # the patterns of the bodies that end here
    below: int = 0  # the patterns of the bodies through here


def _trie(entries: Iterable[tuple[int, list[str]]]) -> tuple[str, tuple[int, ...]]:
    """The regex of a trie of tagged bodies, and the patterns each of its groups names."""
    root = _Node()
    for tag, tokens in entries:
        node = root
        for token in tokens:
            node.below |= tag
            node = node.children.setdefault(token, _Node())
        node.below |= tag
        node.ends |= tag
    masks = [root.below]  # group 0, the whole match, would name them all (each body ends in one)
    return _regex(root, 0, masks), tuple(masks)


def _regex(node: _Node, untried: int, masks: list[int]) -> str:
    if node.ends:  # a body ends here: a longer one adds nothing but its patterns
        masks.append(node.below | untried)
        return "()"
    tokens = sorted(node.children, key=_rank)
    alternatives = []
    for i, token in enumerate(tokens):
        later = untried  # ... but not a literal character other than this one
        for other in tokens[i + 1 :]:
            later |= 0 if _literal(token) and _literal(other) else node.children[other].below
        alternatives.append(token + _regex(node.children[token], later, masks))
    return alternatives[0] if len(alternatives) == 1 else f"(?:{'|'.join(alternatives)})"


def _literal(token: str) -> bool:
    """Whether ``token`` is one character as re.escape writes it (not regex text such as \\b)."""
    return len(token) == 1 or (len(token) == 2 and token[0] == "\\" and not token[1].isalnum())


def _rank(token: str) -> tuple[int, str]:
    """Likelier characters first (re tries alternatives in order), regex text (look-behinds) last."""
    return (likeliness(token[-1]) if len(token) <= 2 else 1000, token)
