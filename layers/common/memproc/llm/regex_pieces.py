"""The pieces of a regex: contiguous parts one of which every match contains, read off the parse
tree re itself compiles, for the prefilters in ``prefilter``.

A piece is literal text (small alternations and classes expanded), with the one-character classes,
their repeats and the zero-width tests between, before (lead) and after it (trail) as written;
zero-width tests the reading does not follow are left out, which only widens a piece. A piece of a
match is a piece of the text, so a text without any of a pattern's pieces has no match. Which
pieces stand for a pattern decides only the speed: those least likely in ordinary text, by a rough
estimate (``text_odds``), and cheapest to look for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from re import _parser as sre  # type: ignore[attr-defined]
from typing import Any

from memproc.llm.text_odds import chance, char_chance, entry, is_word, start_chance

_ZERO_WIDTH = {  # how a zero-width test is written, and how often it holds at a position
    sre.AT_BOUNDARY: (r"\b", 0.35),
    sre.AT_NON_BOUNDARY: (r"\B", 0.65),
    sre.AT_BEGINNING: ("^", 0.01),
    sre.AT_BEGINNING_STRING: (r"\A", 0.01),
    sre.AT_END: ("$", 0.01),
    sre.AT_END_STRING: (r"\Z", 0.01),
}
_AT_START = {sre.AT_BEGINNING, sre.AT_BEGINNING_STRING}
# Zero-width tests after which a word character has no word character right before it.
_BOUNDS = {sre.AT_BOUNDARY, *_AT_START}
_CATEGORIES = {
    sre.CATEGORY_SPACE: r"\s",
    sre.CATEGORY_NOT_SPACE: r"\S",
    sre.CATEGORY_WORD: r"\w",
    sre.CATEGORY_NOT_WORD: r"\W",
    sre.CATEGORY_DIGIT: r"\d",
    sre.CATEGORY_NOT_DIGIT: r"\D",
}
_NONWORD_CATEGORIES = {sre.CATEGORY_SPACE, sre.CATEGORY_NOT_WORD}  # no \s is a \w: see the tests
_LOOKAROUNDS = {
    (sre.ASSERT, 1): "(?=",
    (sre.ASSERT, -1): "(?<=",
    (sre.ASSERT_NOT, 1): "(?!",
    (sre.ASSERT_NOT, -1): "(?<!",
}
_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT)
PADDED_START = "(?<=^ )"  # the start of the text, in the text after a space (see ``prefilter``)
_MAX_STRINGS = 256  # literal strings one piece may stand for
# The cost model, in microseconds per text of about 60 characters, for a piece: each string it
# looks for, each place the search tries it (times the chance per position of the word or
# character it is entered at, see ``entry``), and each text it lets through (times its chance).
_STRING_COST = 0.0001
_ENTRY_COST = 10.0
_HIT_COST = 2400.0

Item = tuple[Any, Any]  # (opcode, argument) in re's parse tree
Body = tuple[str, ...]  # literal text, then (regex text, literal text) pairs


@dataclass(frozen=True)
class Piece:
    """Where a pattern can match: one of the ``bodies``, right after ``lead`` (regex text of
    zero-width tests and one-character classes; ``padded_lead`` for the text after a space) and
    before ``trail``; ``bounded``: every match has a non-word character (or the start) right
    before a body that starts with a word character."""

    lead: str
    padded_lead: str
    bodies: frozenset[Body]
    trail: str
    bounded: bool
    cost: float


Pieces = tuple[Piece, ...]  # the pattern matches only where one of these does


@dataclass(frozen=True)
class _Lit:  # one of these strings (a superset of what the items match)
    strings: frozenset[str]


@dataclass(frozen=True)
class _Ctx:  # a zero-width test (width 0), a one-character class (1), or its repeat (2: a run)
    regex: str
    chance: float
    width: int
    ends: bool | None  # see _ends
    char: str = ""  # a run: its one-character class, ...
    nullable: bool = False  # ... and whether it can match nothing
    padded: str = ""  # a test that reads the start: as a lead in the text after a space


@dataclass(frozen=True)
class _Part:  # no piece runs across it: its own pieces, and what _ends says of it
    pieces: Pieces | None
    ends: bool | None


@dataclass(frozen=True)
class _Alts:  # a branch: each alternative is read with what is around it
    alternatives: list[Any]
    ends: bool | None


_Atom = _Lit | _Ctx | _Part | _Alts
_BOUNDED = _Part(None, ends=True)  # stands for a bounding context before an alternative


def pieces(pattern: re.Pattern[str]) -> Pieces:
    """The pieces one of which every match of ``pattern`` contains; ValueError when there are none
    (a pattern that can match without a literal would have to run on every text)."""
    if pattern.flags & ~(re.DOTALL | re.UNICODE):  # case, verbose, ...: the pieces would read otherwise
        raise ValueError(f"no pieces for flags {pattern.flags!r}: {pattern.pattern[:60]!r}")
    found = _pieces(_atoms(sre.parse(pattern.pattern, pattern.flags)))
    if found is None:
        raise ValueError(f"no literal every match needs: {pattern.pattern[:60]!r}")
    return found


# --- reading the parse tree -----------------------------------------------------------------------


def _strings(items: Iterable[Item]) -> frozenset[str] | None:
    """Every string ``items`` can match, or None when there are too many (or a zero-width test is
    among them: a context the caller keeps)."""
    result: frozenset[str] | None = frozenset({""})
    for op, av in items:
        item = _item_strings(op, av)
        result = _concat(result, item) if result is not None and item is not None else None
    return result


def _concat(left: frozenset[str], right: frozenset[str]) -> frozenset[str] | None:
    return frozenset(a + b for a in left for b in right) if len(left) * len(right) <= _MAX_STRINGS else None


def _item_strings(op: Any, av: Any) -> frozenset[str] | None:
    if op is sre.LITERAL:
        return frozenset({chr(av)})
    if op is sre.IN:
        chars: list[str] = []
        for o, a in av:
            if o is sre.LITERAL:
                chars.append(chr(a))
            elif o is sre.RANGE and a[1] - a[0] < 16:
                chars += map(chr, range(a[0], a[1] + 1))
            else:  # negated, a category (\s, \w), a long range
                return None
        return frozenset(chars) if len(chars) <= 16 else None
    if op is sre.BRANCH:
        union: set[str] = set()
        for alternative in av[1]:
            strings = _strings(alternative)
            if strings is None or len(union) + len(strings) > _MAX_STRINGS:
                return None
            union |= strings
        return frozenset(union)
    if op is sre.SUBPATTERN:
        return None if av[1] or av[2] else _strings(av[3])  # scoped flags: not as written
    if op in _REPEATS and av[1] <= 3 and (one := _strings(av[2])) is not None:
        repeated: set[str] = set()
        power: frozenset[str] | None = frozenset({""})
        for count in range(av[1] + 1):
            if power is None or len(repeated) + len(power) > _MAX_STRINGS:
                return None
            repeated |= power if count >= av[0] else set()
            power = _concat(power, one)
        return frozenset(repeated)
    return None


def _char_regex(op: Any, av: Any) -> str | None:
    """Regex text for an item that matches exactly one character, or None."""
    if op is sre.LITERAL:
        return re.escape(chr(av))
    if op is sre.NOT_LITERAL:
        return f"[^{re.escape(chr(av))}]"
    if op is not sre.IN:
        return None
    parts = []
    for o, a in av:
        if o is sre.NEGATE:
            parts.append("^")
        elif o is sre.LITERAL:
            parts.append(re.escape(chr(a)))
        elif o is sre.RANGE:
            parts.append(f"{re.escape(chr(a[0]))}-{re.escape(chr(a[1]))}")
        elif o is sre.CATEGORY and a in _CATEGORIES:
            parts.append(_CATEGORIES[a])
        else:
            return None
    return f"[{''.join(parts)}]"


def _nonword_char(op: Any, av: Any) -> bool:
    """Whether the one-character item matches only non-word characters."""
    if op is sre.LITERAL:
        return not is_word(chr(av))
    return op is sre.IN and all(
        (o is sre.LITERAL and not is_word(chr(a)))
        or (o is sre.RANGE and not any(map(is_word, map(chr, range(a[0], a[1] + 1)))))
        or (o is sre.CATEGORY and a in _NONWORD_CATEGORIES)
        for o, a in av
    )


def _ends(items: Iterable[Item]) -> bool | None:
    """Right after a match of ``items``, before a word character: True when no word character is
    right before it, None when that depends on what came before (it can match nothing), False
    when nothing is known."""
    for op, av in reversed(list(items)):
        ends = _item_ends(op, av)
        if ends is not None:
            return ends
    return None


def _item_ends(op: Any, av: Any) -> bool | None:
    if op is sre.AT:
        return True if av in _BOUNDS else None
    if op in (sre.ASSERT, sre.ASSERT_NOT):
        context = _context(op, av)
        return context.ends if context is not None else None
    if op in (sre.LITERAL, sre.NOT_LITERAL, sre.IN, sre.ANY):
        return _nonword_char(op, av)
    if op is sre.BRANCH:
        each = {_ends(alternative) for alternative in av[1]}
        return False if False in each else None if None in each else True
    if op is sre.SUBPATTERN and not av[1] and not av[2]:
        return _ends(av[3])
    if op in _REPEATS:
        ends = _ends(av[2])
        return ends if av[0] >= 1 or ends is False else None
    return False  # a back-reference, ...: nothing known


def _context(op: Any, av: Any) -> _Ctx | None:
    """A zero-width test as regex text (None: one the reading leaves out, which only widens it)."""
    if op is sre.AT:
        if av not in _ZERO_WIDTH:
            return None
        return _Ctx(
            *_ZERO_WIDTH[av], 0, True if av in _BOUNDS else None, padded=PADDED_START * (av in _AT_START)
        )
    direction, items = av
    char = _char_regex(*items[0]) if len(items) == 1 else None
    if char is None:
        return None
    (o, a), odds = items[0], char_chance(char)
    excludes_words = o is sre.IN and (sre.CATEGORY, sre.CATEGORY_WORD) in a and (sre.NEGATE, None) not in a
    bounds = direction == -1 and (_nonword_char(o, a) if op is sre.ASSERT else excludes_words)
    regex = f"{_LOOKAROUNDS[op, direction]}{char})"
    reads_start = (op, direction) == (sre.ASSERT_NOT, -1) and re.fullmatch(char, " ")  # holds at the start
    padded = f"(?:{PADDED_START}|{regex})" if reads_start else ""
    return _Ctx(regex, odds if op is sre.ASSERT else 1 - odds, 0, True if bounds else None, padded=padded)


def _atoms(items: Iterable[Item]) -> list[_Atom]:
    """``items`` as a sequence of atoms: what follows one atom in the text is what the next matches."""
    atoms: list[_Atom] = []
    for op, av in items:
        if op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
            context = _context(op, av)
            atoms += [context] if context is not None else []
        elif (strings := _item_strings(op, av)) is not None:
            atoms.append(_Lit(strings))
        elif (char := _char_regex(op, av)) is not None:
            atoms.append(_Ctx(char, char_chance(char), 1, _nonword_char(op, av)))
        elif op is sre.SUBPATTERN and not av[1] and not av[2]:
            atoms += _atoms(av[3])
        elif op is sre.BRANCH:
            atoms.append(_Alts(av[1], _item_ends(op, av)))
        elif op in _REPEATS and av[0] >= 1 and av[1] == 1:
            atoms += _atoms(av[2])
        elif op in _REPEATS and len(av[2]) == 1 and (char := _char_regex(*av[2][0])):
            quantifier = f"{{{av[0]},{'' if av[1] == sre.MAXREPEAT else av[1]}}}"
            atoms.append(_Ctx(char + quantifier, char_chance(char), 2, _item_ends(op, av), char, av[0] == 0))
        elif op in _REPEATS and av[0] >= 1:  # the first repetition begins it, the last ends it
            inner = _atoms(av[2])
            atoms += [*_edge(inner), _Part(_pieces(inner), False), *_edge(inner[::-1])[::-1]]
        else:  # optional, any character, a back-reference, ...
            atoms.append(_Part(None, _item_ends(op, av)))
    merged: list[_Atom] = []  # a word is one literal, not one per letter
    for atom in atoms:
        last = merged[-1] if merged else None
        if (
            isinstance(atom, _Lit)
            and isinstance(last, _Lit)
            and (joined := _concat(last.strings, atom.strings))
        ):
            merged[-1] = _Lit(joined)
        else:
            merged.append(atom)
    return merged


def _edge(atoms: Iterable[_Atom]) -> list[_Atom]:
    """The literals and contexts up to the first atom that is neither (in the order given)."""
    edge: list[_Atom] = []
    for atom in atoms:
        if not isinstance(atom, _Lit | _Ctx):
            break
        edge.append(atom)
    return edge


def _contexts(atoms: Iterable[_Atom]) -> list[_Ctx]:
    """The contexts next to a piece, in the order given: up to the first atom that is not one or can
    match nothing, or up to a run."""
    found: list[_Ctx] = []
    for atom in atoms:
        if not isinstance(atom, _Ctx) or atom.nullable:
            break
        found.append(atom)
        if atom.width == 2:  # a run: of it, only the character next to the piece is known
            break
    return found


def _bounded(before: Sequence[_Atom]) -> bool:
    """Whether, right before a word character, the atoms ``before`` it leave no word character."""
    for atom in reversed(before):
        if isinstance(atom, _Lit):
            last = {not is_word(s[-1]) if s else None for s in atom.strings}
            ends = False if False in last else None if None in last else True
        else:
            ends = atom.ends
        if ends is not None:
            return ends
    return False


# --- choosing the pieces --------------------------------------------------------------------------


def _pieces(atoms: Sequence[_Atom], own: range | None = None) -> Pieces | None:
    """The cheapest pieces one of which every match of ``atoms`` contains, or None; only those that
    take in an atom of ``own`` (the rest is context, whose pieces the caller has)."""
    own = range(len(atoms)) if own is None else own
    candidates: list[Pieces] = []
    start = 0
    for i, atom in enumerate([*atoms, _Part(None, False)]):
        if isinstance(atom, _Lit | _Ctx):
            continue
        candidates += _stretches(atoms, start, i, own)
        start = i + 1
        if isinstance(atom, _Part) and atom.pieces is not None:
            candidates.append(atom.pieces)
        elif isinstance(atom, _Alts):  # every alternative needs one, read with what is around it
            before, after = _edge(reversed(atoms[:i]))[::-1], _edge(atoms[i + 1 :])
            outside = [_BOUNDED] if _bounded(atoms[: i - len(before)]) else []
            found = []
            for alternative in map(_atoms, atom.alternatives):
                inside = range(len(outside) + len(before), len(outside) + len(before) + len(alternative))
                found.append(_pieces([*outside, *before, *alternative, *after], inside))
            if all(p is not None for p in found):
                candidates.append(tuple(dict.fromkeys(piece for p in found for piece in p or ())))
    return min(candidates, key=lambda p: sum(piece.cost for piece in p)) if candidates else None


def _stretches(atoms: Sequence[_Atom], start: int, end: int, own: range) -> list[Pieces]:
    """A piece for each stretch of ``atoms[start:end]`` (literals and contexts only) that starts and
    ends with a literal and takes in an atom of ``own``, with the contexts right around it (a run
    as its one character)."""
    found: list[Pieces] = []
    for first in range(start, min(end, own.stop)):
        if not isinstance(atoms[first], _Lit):
            continue
        lead = _contexts(reversed(atoms[start:first]))[::-1]
        bodies: frozenset[Body] | None = frozenset({("",)})
        between = ""
        for last in range(first, end):
            atom = atoms[last]
            if isinstance(atom, _Ctx):
                between += atom.regex
                continue
            assert isinstance(atom, _Lit) and bodies is not None
            bodies = _extend(bodies, between, atom.strings)
            if bodies is None:
                break
            between = ""
            if last >= own.start and all(b[0] for b in bodies):  # each starts with a literal character
                trail = _contexts(atoms[last + 1 : end])
                found.append((_piece(lead, bodies, trail, _bounded(atoms[:first])),))
    return found


def _extend(bodies: frozenset[Body], between: str, strings: frozenset[str]) -> frozenset[Body] | None:
    if len(bodies) * len(strings) > _MAX_STRINGS:
        return None
    if not between:
        return frozenset((*b[:-1], b[-1] + s) for b in bodies for s in strings)
    return frozenset((*b, between, s) for b in bodies for s in strings)


def _piece(lead: list[_Ctx], bodies: frozenset[Body], trail: list[_Ctx], bounded: bool) -> Piece:
    lead, trail = [_one(c) for c in lead], [_one(c) for c in trail]
    odds = math.prod(c.chance for c in [*lead, *trail]) * sum(math.prod(map(chance, b[::2])) for b in bodies)
    entered = 0.0  # a search tries a body wherever it enters it: a word, or a first character
    for head in {b[0] for b in bodies}:
        k = entry(head, bounded)
        entered += chance(head[0]) if k is None else start_chance(head, k)
    return Piece(
        lead="".join(c.regex for c in lead),
        padded_lead="".join(c.padded or c.regex for c in lead),
        bodies=bodies,
        trail="".join(c.regex for c in trail),
        bounded=bounded,
        cost=_STRING_COST * len(bodies) + _ENTRY_COST * entered + _HIT_COST * odds,
    )


def _one(context: _Ctx) -> _Ctx:
    """A context next to a piece: a run stands for the one character of it there."""
    return _Ctx(context.char, context.chance, 1, context.ends) if context.width == 2 else context
