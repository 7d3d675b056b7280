"""The prefilter of the injection filter (memproc.llm.prefilter, regex_pieces): ``injection_reason``
against the plain ordered loop over every pattern (the reference) on the adversarial corpus, every
text in the safety tests, texts made from the patterns' own words and strings the patterns
generate; the prefilter names every pattern that matches a text; and what it relies on."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from memproc.llm import INJECTION_PATTERNS, injection_reason, safety, sanitize_summary
from memproc.llm.normalise import LOOKALIKES, matching_forms
from memproc.llm.prefilter import NONWORD, Prefilter
from memproc.llm.regex_pieces import pieces

TESTS = Path(__file__).parent
CORPUS = json.loads((TESTS / "data" / "hostile_memories.json").read_text())
PATTERNS = [*INJECTION_PATTERNS, ("link", safety._URL_RE)]


def reference_reason(text: str) -> str | None:
    """``injection_reason`` as it reads: every pattern, in order, on every folded form; then links."""
    forms = matching_forms(text)
    for form in forms:
        for reason, pattern in INJECTION_PATTERNS:
            if pattern.search(form):
                return reason
    if any(safety._URL_RE.search(f) and not safety._link_stays(text, f) for f in forms):
        return "link"
    return None


def reference_summary(summary: str) -> str:
    """``sanitize_summary`` with the reference: each sentence, then what is left as a whole."""
    pieces_ = safety._SENTENCE_BREAK_RE.split(summary)
    kept = [
        sentence + gap
        for sentence, gap in zip(pieces_[::2], [*pieces_[1::2], ""], strict=True)
        if not sentence.strip() or reference_reason(sentence) is None
    ]
    result = summary if len(kept) == len(pieces_[::2]) else "".join(kept).strip()
    if not result:
        return safety.SUMMARY_WITHHELD
    forms = matching_forms(result)
    matched = any(pattern.search(form) for form in forms for _, pattern in INJECTION_PATTERNS)
    return safety.SUMMARY_WITHHELD if matched else result


def safety_test_strings() -> list[str]:
    """Every string written in the safety tests (inputs and expectations alike)."""
    strings: list[str] = []
    for name in ("test_safety.py", "test_llm.py"):
        tree = ast.parse((TESTS / name).read_text())
        strings += [
            n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
    return strings


def eval_texts() -> list[str]:
    """Ordinary memory texts: the facts, memories, summaries and topics of the evaluation cases."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("text", "summary", "q", "transcript") and isinstance(value, str):
                    found.append(value)
                elif key == "facts":
                    found.extend(fact for facts in value.values() for fact in facts)
                elif key == "topics":
                    found.extend(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for path in sorted((TESTS.parent / "eval" / "cases").glob("*.json")):
        walk(json.loads(path.read_text()))
    return found


HOSTILE = [e["text"] for e in CORPUS["hostile"]]
BIT = {reason: 1 << i for i, (reason, _) in enumerate(PATTERNS)}  # the order of safety._PREFILTER
KNOWN = list(dict.fromkeys([*HOSTILE, *CORPUS["benign"], *safety_test_strings(), *eval_texts()]))


def test_the_known_texts_cover_every_reason_and_ordinary_text() -> None:
    reasons = [reference_reason(text) for text in KNOWN]
    assert set(reasons) == {reason for reason, _ in PATTERNS} | {None}
    assert reasons.count(None) >= 300 and len(eval_texts()) >= 200


@pytest.mark.parametrize("text", KNOWN, ids=[f"{i:04d}" for i in range(len(KNOWN))])
def test_every_known_text_gets_the_reference_reason_and_the_prefilter_names_what_matches(text: str) -> None:
    assert injection_reason(text) == reference_reason(text)
    for form in matching_forms(text):
        for reason, pattern in PATTERNS:
            if pattern.search(form):
                assert safety._PREFILTER.candidates(form) & BIT[reason], (reason, form)


def test_summaries_of_known_texts_are_sanitized_as_the_reference_does() -> None:
    for i in range(0, len(KNOWN) - 3, 3):
        for gap in (" ", "\n", ". ", " ; "):
            summary = gap.join(KNOWN[i : i + 3])
            assert sanitize_summary(summary) == reference_summary(summary), summary


# --- generated texts ------------------------------------------------------------------------------

SOURCES = " ".join(pattern.pattern for _, pattern in PATTERNS)
WORDS = sorted(set(re.findall(r"[a-z]+(?:'[a-z]+)?", SOURCES)) - {"s", "w", "b"})
MARKS = sorted(set(re.findall(r"[^\w\s\\]", SOURCES)) | set(".,;:!?'\"()[]{}<>|#*-/=@&%"))
GAPS = [" ", "  ", "\n", "\t", "", "\u200b", "\u00a0", ". ", ", ", "\u3000", "\u2014", "\u00bf"]
LOOK = {latin: chars for latin, chars in LOOKALIKES.items() if latin.isalpha()}


def disguised(word: str) -> st.SearchStrategy[str]:
    """``word`` as written, in capitals, or with some letters swapped for their look-alikes."""
    swapped = st.lists(st.integers(0, 3), min_size=len(word), max_size=len(word)).map(
        lambda picks: "".join(
            LOOK[c][p % len(LOOK[c])] if p and c in LOOK else c for c, p in zip(word, picks, strict=True)
        )
    )
    return st.one_of(st.just(word), st.just(word.upper()), swapped)


TOKEN = st.one_of(
    st.sampled_from(WORDS).flatmap(disguised),
    st.sampled_from(MARKS),
    st.sampled_from(GAPS),
    st.text(max_size=3),
)
VOCABULARY_TEXT = st.lists(TOKEN, max_size=14).map(" ".join) | st.lists(TOKEN, max_size=14).map("".join)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(VOCABULARY_TEXT)
def test_texts_of_the_patterns_words_get_the_reference_reason(text: str) -> None:
    assert injection_reason(text) == reference_reason(text)


@pytest.mark.parametrize(("reason", "pattern"), PATTERNS, ids=[reason for reason, _ in PATTERNS])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_prefilter_names_every_pattern_that_matches_a_text(
    reason: str, pattern: re.Pattern[str], data: st.DataObject
) -> None:
    around = data.draw(st.sampled_from(["", " ", "the user said ", "x", "\u00e9", "-", "\u4e2d"]))
    text = around + data.draw(st.from_regex(pattern)) + data.draw(st.sampled_from(["", ".", " ok", "x"]))
    assume(pattern.search(text))
    assert safety._PREFILTER.candidates(text) & BIT[reason]
    assert injection_reason(text) == reference_reason(text)


# Small patterns with each construct the prefilters read: literals and their alternatives, classes,
# repeats, optional parts, boundaries, look-arounds, the start and the end.
CONSTRUCTS = [
    r"admin", r"x\s+admin", r"(?:ab|cd)e", r"\bfoo(?:bar)?", r"(?<!\w)fo+o", r"(?<=[ab])cd", r"foo$", r"^foo",
    r"(?:the )?cat\b", r"[ab]{2}z", r"q\w+z", r"a.{0,3}b", r"(?:ab)+c", r"x(?=y)z?", r"(?:^|[.;]\s)\W*go\b",
    r"it's\s*(?:on|off)", r"\B\d{2,}%", r"(?:\s|^)#{2,}\s*sys\b", r"[^a-z]in\b", r"(?:you|the bot)\s+must\b",
    r"a(?:\B|-)(?:\s\s)?foo", r"a(?:b\s)?foo", r"(?<![-+])foo", r"(?:x\s*|y\W)+foo", r"\b(?<![a-c ])foo",
    r"[0-9]+foo", r"(?<![a-z])[a-z]+c", r"\bx+y", r"(?<![\w@.-])(?:[a-z0-9-]+\.)+com/",
]  # fmt: skip
CONSTRUCTS_PREFILTER = Prefilter([re.compile(p, re.DOTALL) for p in CONSTRUCTS])
EACH_PREFILTER = {p: Prefilter([re.compile(p, re.DOTALL)]) for p in CONSTRUCTS}


@pytest.mark.parametrize("source", CONSTRUCTS)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(data=st.data())
def test_the_prefilter_of_small_patterns_names_each_that_matches(source: str, data: st.DataObject) -> None:
    pattern = re.compile(source, re.DOTALL)
    edge = st.text(
        alphabet=st.sampled_from("ab x.;\n\u00e9_9\u2014\u00a0\u00bf") | st.characters(), max_size=3
    )
    match = st.from_regex(pattern, fullmatch=True) | st.from_regex(pattern)  # as it is, or in a text
    text = data.draw(edge) + data.draw(match) + data.draw(edge)
    assume(pattern.search(text))
    assert EACH_PREFILTER[source].candidates(text) == 1  # alone, and among the others:
    assert CONSTRUCTS_PREFILTER.candidates(text) >> CONSTRUCTS.index(source) & 1


# --- what the prefilters rely on -----------------------------------------------------------------------

ALL_CHARACTERS = "".join(map(chr, range(0x110000)))


def test_no_white_space_character_is_a_word_character() -> None:
    # a \s before a word is a word boundary: the prefilters read "\s" and "[\s]" as non-word characters
    assert not re.findall(r"(?=\s)\w", ALL_CHARACTERS)


def test_the_search_after_a_non_word_character_starts_at_every_one() -> None:
    assert not re.findall(rf"(?!{NONWORD})\W", ALL_CHARACTERS)


def test_a_pattern_without_a_literal_every_match_needs_has_no_pieces() -> None:
    with pytest.raises(ValueError, match="no literal"):
        pieces(re.compile(r"\w+\s*=|[a-z]+\d"))
    with pytest.raises(ValueError, match="flags"):
        pieces(re.compile("admin", re.IGNORECASE))


def test_the_prefilter_names_no_pattern_for_ordinary_memories() -> None:
    ordinary = [t for t in eval_texts() if reference_reason(t) is None]
    turned_away = [t for t in ordinary if not any(map(safety._PREFILTER.candidates, matching_forms(t)))]
    for text in (
        "The user prefers window seats on long flights.",
        "The user works as a nurse at the city hospital.",
        "The user asked for help planning a birthday party for their son, who turns seven next week.",
    ):
        assert not safety._PREFILTER.candidates(matching_forms(text)[0]), text
    assert len(turned_away) >= 0.85 * len(ordinary)
