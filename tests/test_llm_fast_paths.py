"""The cheaper rewrites of the LLM side's per-session work (a reply's repairs, the turns of a
transcript, duplicate keys, the prompt's memory lines, the injection filter's folded forms) against
their former implementations, kept here as the reference, on generated inputs hostile ones among
them: each must give the same result, or the same error, for every input."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from memproc.llm import chunking, normalise, parsing, prompt
from memproc.llm.schema import (
    MAX_MEMORIES_PER_CALL,
    MAX_MEMORY_CHARS,
    MAX_SUMMARY_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TOPIC_CHARS,
    MAX_TOPICS,
    Candidate,
    Extraction,
)
from memproc.records import MEMORY_TYPES, MemoryRecord

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that fold, case or split unusually: white space Python's str.split knows and JSON
# does not, line breaks splitlines knows, letters whose lowercase is longer or another script's
# (Kelvin sign, long s, dotted I, final sigma), invisible and non-ASCII word characters.
ODD = (
    " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u2028\u2029\u3000\u200b"
    "\u212a\u017f\u0130\u03a3\u00df\u00e9\u4e2d<>[]:'"
)
ODD_TEXT = st.text(alphabet=st.sampled_from(ODD) | st.characters(), max_size=30) | st.text(
    alphabet=st.sampled_from(ODD + "abcXYZ019_-.,"), max_size=30
)


# --- the reference: the implementations before this rewrite --------------------------------------


def old_clean_labels(values: list[Any], max_items: int, max_chars: int) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if len(out) == max_items:
            break
        if isinstance(value, str):
            value = " ".join(value.split()).lower()
            if len(value) > max_chars:
                value = parsing.truncate(value, max_chars)
            if not value or value in out:
                continue
        out.append(value)
    return out


def old_repair(item: dict[str, Any]) -> None:
    kind = item.get("memory_type")
    if isinstance(kind, str):
        kind = kind.strip().lower()
        item["memory_type"] = kind if kind in MEMORY_TYPES else "fact"
    conf = item.get("confidence")
    if isinstance(conf, (int, float)) and not isinstance(conf, bool):
        item["confidence"] = 0.5 if math.isnan(conf) else min(1.0, max(0.0, float(conf)))
    tags = item.get("tags")
    if isinstance(tags, list):
        item["tags"] = old_clean_labels(tags, MAX_TAGS, MAX_TAG_CHARS)


def old_coerce(data: dict[str, Any], *, fallback_summary: str, max_memories: int) -> dict[str, Any]:
    memories = data.get("memories")
    if isinstance(memories, list):
        cleaned: list[Any] = []
        for item in memories:
            if len(cleaned) == max_memories:
                break
            if isinstance(item, dict):
                text = item.get("text")
                if isinstance(text, str):
                    text = " ".join(text.split())
                    if not text:
                        continue
                    item["text"] = (
                        parsing.truncate(text, MAX_MEMORY_CHARS) if len(text) > MAX_MEMORY_CHARS else text
                    )
                old_repair(item)
            cleaned.append(item)
        data["memories"] = cleaned
    summary = data.get("summary")
    if isinstance(summary, str):
        summary = summary.strip()
        data["summary"] = parsing.truncate(summary, MAX_SUMMARY_CHARS) if summary else fallback_summary
    topics = data.get("topics")
    if isinstance(topics, list):
        data["topics"] = old_clean_labels(topics, MAX_TOPICS, MAX_TOPIC_CHARS)
    operations = data.get("operations")
    if operations is None:
        data["operations"] = []
    elif isinstance(operations, list):
        data["operations"] = [old_operation(op) for op in operations if parsing._usable_operation(op)]
    return data


def old_operation(op: dict[str, Any]) -> dict[str, Any]:
    out = {"text": None, "memory_type": None, "confidence": None, "tags": [], **op}
    if isinstance(out["text"], str):
        out["text"] = parsing.truncate(" ".join(out["text"].split()), MAX_MEMORY_CHARS) or None
    old_repair(out)
    return {k: out[k] for k in ("op", "id", "text", "memory_type", "confidence", "tags")}


def old_parse_extraction(content: str | None, *, fallback_summary: str) -> Extraction:
    if content is None or not content.strip():
        raise ValueError("empty response content")
    data = json.loads(content)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return Extraction.model_validate(
        old_coerce(data, fallback_summary=fallback_summary, max_memories=MAX_MEMORIES_PER_CALL)
    )


def old_parse_turns(transcript: str) -> list[tuple[str, str]]:
    structured = old_json_turns(transcript)
    if structured is not None:
        return structured
    lines = [line for line in transcript.splitlines() if line.strip()]
    matches = [chunking.ROLE_PREFIX_RE.match(line) for line in lines]
    if not any(m and m.group("role").lower() in chunking.USER_ROLES for m in matches):
        return [
            ("other", line.strip()) if m else ("user", line.strip())
            for line, m in zip(lines, matches, strict=True)
        ]
    turns: list[list[str]] = []
    for line, m in zip(lines, matches, strict=True):
        if m:
            turns.append([m.group("role").lower(), m.group("text").strip()])
        elif turns:
            turns[-1][1] += "\n" + line.strip()
        else:
            turns.append(["other", line.strip()])
    return [(role, text) for role, text in turns]


def old_json_turns(transcript: str) -> list[tuple[str, str]] | None:
    stripped = transcript.lstrip()
    if not stripped.startswith(("[", "{")):
        return None
    try:
        data = json.loads(stripped)
    except ValueError:
        return None
    if isinstance(data, dict):
        data = data.get("messages")
    if not isinstance(data, list):
        return None
    turns: list[tuple[str, str]] = []
    for item in data:
        if not isinstance(item, dict):
            return None
        content = item.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        if isinstance(content, str) and content.strip():
            turns.append((str(item.get("role", "")).lower(), content.strip()))
    return turns


def old_user_turns(transcript: str) -> list[str]:
    return [
        text for role, text in old_parse_turns(transcript) if role in chunking.USER_ROLES and text.strip()
    ]


def old_norm_key(text: str) -> str:
    lowered = text.lower()
    if lowered.isascii():
        return " ".join(lowered.encode().translate(chunking._ASCII_WORDS).decode().split())
    return " ".join(chunking._WORD_RE.findall(lowered))


def old_neutralise(text: str) -> str:
    return prompt._DELIMITER_RE.sub(lambda m: f"[{m.group(1)}{m.group(2).lower()}]", text)


def old_candidate_line(c: Candidate) -> str:
    date = c.memory.valid_from_date
    since = f", since {date}" if date else ""
    return f"[{c.short_id}] ({c.memory.memory_type or 'fact'}{since}) {old_neutralise(c.memory.text)}"


def old_matching_forms(text: str) -> tuple[str, ...]:
    text = normalise._decoded(text)
    joined, spaced = normalise._ascii_forms(text) if text.isascii() else normalise._unicode_forms(text)
    return (joined,) if spaced == joined else (joined, spaced)


def outcome(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """What a call gives: its result, or its error's type and message (a model as its dump)."""
    try:
        result = fn(*args, **kwargs)
    except (ValueError, ValidationError, TypeError) as exc:
        return ("raised", type(exc), str(exc))
    return result.model_dump() if isinstance(result, Extraction) else result


# --- a reply's repairs ------------------------------------------------------------------------------

KINDS = st.sampled_from(
    [*MEMORY_TYPES, " Fact ", "PREFERENCE", "goal\n", "\u017fact", "opinion", "", "EVENT\u3000"]
)
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 0.5, 1e-300, 1.0000001, -1e-9]),
    st.integers(-3, 3),
    st.booleans(),
)
LABEL = st.one_of(
    ODD_TEXT,
    st.sampled_from(
        ["tea", "Tea", " tea ", "TEA", "road  bike", "doesn't", "x" * 45, "y " * 30, "", "\u212a"]
    ),
    st.integers(),
    st.none(),
    st.floats(allow_nan=False),
)
LABELS = st.lists(LABEL, max_size=25)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return strategy | st.none() | st.integers() | st.just([]) | st.just({})


MEMORY = st.fixed_dictionaries(
    {},
    optional={
        "text": maybe(ODD_TEXT | st.sampled_from(["The user likes tea.", "  ", "w " * 600])),
        "memory_type": maybe(KINDS),
        "confidence": maybe(NUMBERS),
        "tags": maybe(LABELS),
        "extra": st.just(1),
    },
)
OPERATION = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from(["confirm", "update", "supersede", "retract", "merge", 3]),
        "id": st.sampled_from(["m1", "m2", 7]),
        "text": maybe(ODD_TEXT),
        "memory_type": maybe(KINDS),
        "confidence": maybe(NUMBERS),
        "tags": maybe(LABELS),
    },
)
PAYLOAD = st.fixed_dictionaries(
    {},
    optional={
        "memories": st.lists(MEMORY | st.integers() | st.text(max_size=3), max_size=55)
        | st.none()
        | st.just({}),
        "operations": st.lists(OPERATION | st.none(), max_size=6) | st.none() | st.just("x"),
        "summary": maybe(ODD_TEXT | st.just("s" * 4100)),
        "topics": maybe(LABELS),
        "other": st.just("x"),
    },
)
# Mostly well-formed, so that what the repairs made of each value reaches the result
WORDS = st.text(alphabet=st.sampled_from("ab Z\t\u00e9\u212a'-"), min_size=1, max_size=12)
VALID_MEMORY = st.fixed_dictionaries(
    {
        "text": WORDS | ODD_TEXT,
        "memory_type": KINDS,
        "confidence": NUMBERS,
        "tags": st.lists(WORDS | st.sampled_from(["tea", "Tea", "x" * 45]), max_size=12),
    }
)
VALID_OPERATION = st.fixed_dictionaries(
    {
        "op": st.sampled_from(["confirm", "update", "supersede", "retract"]),
        "id": st.just("m1"),
        "text": WORDS | st.none(),
        "memory_type": KINDS | st.none(),
        "confidence": NUMBERS | st.none(),
        "tags": st.lists(WORDS, max_size=3),
    }
)
WELL_FORMED = st.fixed_dictionaries(
    {
        "memories": st.lists(VALID_MEMORY, max_size=6),
        "operations": st.lists(VALID_OPERATION, max_size=2),
        "summary": WORDS,
        "topics": st.lists(WORDS, max_size=22),
    }
)
CONTENT = (
    WELL_FORMED.map(json.dumps)
    | PAYLOAD.map(json.dumps)
    | st.sampled_from(["", "  ", "\n\t", "[]", "1", "null", '{"summary": "a"} x', "{", "\u3000"])
    | st.none()
)


@SETTINGS
@given(values=LABELS, max_items=st.integers(0, 12), max_chars=st.integers(1, 50))
def test_labels_are_cleaned_as_before(values: list[Any], max_items: int, max_chars: int) -> None:
    assert parsing._clean_labels(list(values), max_items, max_chars) == old_clean_labels(
        list(values), max_items, max_chars
    )


@SETTINGS
@given(CONTENT)
def test_a_reply_parses_as_before(content: str | None) -> None:
    new = outcome(parsing.parse_extraction, content, fallback_summary="none")
    old = outcome(old_parse_extraction, content, fallback_summary="none")
    assert new == old
    if isinstance(new, dict):  # the same values to the sign of a zero
        assert repr(new) == repr(old)


def test_no_character_is_both_alphanumeric_and_white_space() -> None:
    # _clean_labels lowercases an alphanumeric label without collapsing its white space
    every = "".join(map(chr, range(0x110000)))
    assert not [c for c in every if c.isalnum() and c.isspace()]


# --- a transcript's turns and a memory's duplicate key --------------------------------------------

ROLE = st.sampled_from(
    [
        "user:",
        "User :",
        " [USER]: ",
        "human:",
        "assistant:",
        "[assistant]:",
        "system:",
        "u\u017fer:",
        "user",
        "user:\t",
    ]
)
LINE = st.tuples(ROLE | st.just(""), ODD_TEXT).map("".join) | st.sampled_from(["", "  ", "\u3000"])
BREAK = st.sampled_from(["\n", "\r\n", "\r", "\x0b", "\x1c", "\x85", "\u2028", "\n\n"])
PLAIN = st.lists(st.tuples(LINE, BREAK), max_size=12).map(lambda ls: "".join(a + b for a, b in ls))
TURN = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "USER", "assistant", "human", ""]) | st.integers(),
        "content": ODD_TEXT | st.lists(st.fixed_dictionaries({"text": ODD_TEXT}) | st.integers(), max_size=3),
    },
)
STRUCTURED = st.lists(TURN | st.integers(), max_size=6).flatmap(
    lambda turns: st.sampled_from(
        [json.dumps(turns), json.dumps({"messages": turns}), " " + json.dumps(turns)]
    )
)
TRANSCRIPT = PLAIN | STRUCTURED | st.sampled_from(["[", "{}", '{"messages": 3}', "[1, 2]"])


@SETTINGS
@given(TRANSCRIPT)
def test_a_transcript_has_the_turns_it_had(transcript: str) -> None:
    assert chunking.parse_turns(transcript) == old_parse_turns(transcript)
    assert chunking.user_turns(transcript) == old_user_turns(transcript)


@SETTINGS
@given(ODD_TEXT | st.text(alphabet=" .,'-_aZ9\t", max_size=40) | st.text())
def test_duplicates_are_keyed_as_before(text: str) -> None:
    assert chunking.norm_key(text) == old_norm_key(text)


# --- the prompt's memory lines ----------------------------------------------------------------------

TAGS_TEXT = st.lists(
    st.sampled_from(["<transcript>", "</ TRANSCRIPT x>", "<memories", ">", "<previous_summary/>", "<b>"])
    | ODD_TEXT,
    max_size=5,
).map("".join)


@SETTINGS
@given(TAGS_TEXT)
def test_delimiters_are_neutralised_as_before(text: str) -> None:
    assert prompt._neutralise_delimiters(text) == old_neutralise(text)


@SETTINGS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["m1", "m12"]),
            st.sampled_from(["The user likes tea.", "A <transcript> tag", ""]) | TAGS_TEXT,
            st.sampled_from([None, "fact", "event", ""]),
            st.sampled_from([None, 0.0, 1773144000.0, 1773144000.5, -86400.0]),
            st.sampled_from([None, 0.5, 0.9]),
        ),
        max_size=8,
    )
)
def test_memory_lines_read_as_before(
    rows: list[tuple[str, str, str | None, float | None, float | None]],
) -> None:
    # the same (type, valid_from, text) again, with other fields: a remembered line is still right
    for short_id, text, kind, valid_from, confidence in rows + rows[::-1]:
        memory = MemoryRecord.model_validate(
            {
                "memory_id": short_id,
                "text": text,
                "memory_type": kind,
                "valid_from": valid_from,
                "confidence": confidence,
            }
        )
        candidate = Candidate(short_id, memory)
        assert prompt._candidate_line(candidate) == old_candidate_line(candidate)


def test_remembered_lines_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompt, "_SHOWN_MAX", 3)
    prompt._SHOWN.clear()
    for i in range(10):
        candidate = Candidate("m1", MemoryRecord(memory_id="x", text=f"fact {i}", valid_from=0.0))
        assert prompt._candidate_line(candidate) == f"[m1] (fact, since 1970-01-01) fact {i}"
        assert len(prompt._SHOWN) <= 3


# --- the injection filter's folded forms -------------------------------------------------------------


@SETTINGS
@given(
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=60)
    | st.text(alphabet=st.sampled_from("aZ &%;#x20\t\x00\x7f.<"), max_size=30)
    | ODD_TEXT
)
def test_folded_forms_are_as_before(text: str) -> None:
    assert normalise.matching_forms(text) == old_matching_forms(text)
