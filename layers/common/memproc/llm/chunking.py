"""Long transcripts: split at message boundaries, extract chunk by chunk with a running summary,
merge.

Both providers extract the same way so that a long session gives the same shape of result
whichever is configured; each only supplies the call for one chunk (``ChunkedExtractor``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from memproc.jsontext import loads
from memproc.llm.base import Usage
from memproc.llm.safety import sanitize
from memproc.llm.schema import (
    MAX_MEMORIES,
    MAX_TOPICS,
    Candidate,
    ExtractedMemory,
    Extraction,
    MemoryOperation,
)

# A line that starts a message: "user: ...", "[assistant]: ...". Chunks are cut before such lines.
ROLE_PREFIX_RE = re.compile(
    r"^\s*\[?(?P<role>user|human|assistant|ai|bot|system|developer|tool|agent|model)\]?\s*:\s?(?P<text>.*)$",
    re.IGNORECASE,
)
USER_ROLES = frozenset({"user", "human"})


def _parse_json_turns(transcript: str) -> list[tuple[str, str]] | None:
    """Turns of a transcript given as JSON (a list of {role, content} or {"messages": [...]})."""
    stripped = transcript.lstrip()
    if not stripped.startswith(("[", "{")):
        return None
    try:
        data = loads(stripped)
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
        if isinstance(content, str) and (content := content.strip()):
            turns.append((str(item.get("role", "")).lower(), content))
    return turns


def parse_turns(transcript: str) -> list[tuple[str, str]]:
    """(role, text) per message. Without any user-role prefix, every unprefixed line is the user's."""
    structured = _parse_json_turns(transcript)
    if structured is not None:
        return structured
    lines = [line for line in transcript.splitlines() if line and not line.isspace()]  # line.strip()
    matches = [ROLE_PREFIX_RE.match(line) for line in lines]
    roles = [m["role"].lower() if m else "" for m in matches]
    if USER_ROLES.isdisjoint(roles):
        # No user turns marked: every plain line is the user's; lines labelled with another role are not.
        return [("other" if role else "user", line.strip()) for line, role in zip(lines, roles, strict=True)]
    turns: list[list[str]] = []
    for line, m, role in zip(lines, matches, roles, strict=True):
        if m:
            turns.append([role, m["text"].strip()])
        elif turns:
            turns[-1][1] += "\n" + line.strip()
        else:
            turns.append(["other", line.strip()])
    return [(role, text) for role, text in turns]


def user_turns(transcript: str) -> list[str]:
    """What the user said, one text per message: the texts the related memories are looked up by."""
    # (a turn's text is stripped, or a stripped text and lines: it is blank only when empty)
    return [text for role, text in parse_turns(transcript) if role in USER_ROLES and text]


def _hard_split(text: str, max_chars: int) -> list[str]:
    """Split one over-long line, at whitespace when there is some in the last fifth of a piece."""
    pieces: list[str] = []
    while len(text) > max_chars:
        cut = text.rfind(" ", int(max_chars * 0.8), max_chars)
        cut = cut + 1 if cut > 0 else max_chars
        pieces.append(text[:cut])
        text = text[cut:]
    if text:
        pieces.append(text)
    return pieces


def chunk_transcript(transcript: str, max_chars: int) -> list[str]:
    """Split a transcript into pieces of at most ``max_chars``, on message boundaries where possible.

    A message is a line with a role prefix plus its continuation lines; without role prefixes every
    line is a message. ``"".join(chunks) == transcript`` always holds.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be >= 1")
    if len(transcript) <= max_chars:
        return [transcript]
    lines = transcript.splitlines(keepends=True)
    has_roles = any(ROLE_PREFIX_RE.match(line) for line in lines)
    messages: list[str] = []
    for line in lines:
        if messages and has_roles and not ROLE_PREFIX_RE.match(line):
            messages[-1] += line
        else:
            messages.append(line)

    chunks: list[str] = []
    current: list[str] = []
    size = 0

    def add(piece: str) -> None:
        nonlocal size
        if current and size + len(piece) > max_chars:
            chunks.append("".join(current))
            current.clear()
            size = 0
        current.append(piece)
        size += len(piece)

    for message in messages:
        if len(message) <= max_chars:
            add(message)
            continue
        for line in message.splitlines(keepends=True):
            for piece in [line] if len(line) <= max_chars else _hard_split(line, max_chars):
                add(piece)
    if current:
        chunks.append("".join(current))
    return chunks


_WORD_RE = re.compile(r"\w+")
# Per byte: a word character (as \w matches in ASCII) stays, any other becomes a space.
_ASCII_WORDS = bytes(c if _WORD_RE.match(chr(c)) and c < 128 else 0x20 for c in range(256))


def norm_key(text: str) -> str:
    """What two memory texts are duplicates by: their words (runs of word characters), lowercased.
    ASCII text, the common case, is split by a byte table instead of the regex engine (a third of
    the time: ~12 memories a reply); what is left between its words is spaces, whose runs are
    halved until none is left (a split into word objects and a join cost twice that)."""
    lowered = text.lower()
    if lowered.isascii():
        spaced = lowered.encode().translate(_ASCII_WORDS).decode()
        while "  " in spaced:
            spaced = spaced.replace("  ", " ")
        return spaced.strip(" ")
    return " ".join(_WORD_RE.findall(lowered))


class ChunkedExtractor:
    """What both providers share: ``extract`` runs ``_extract_one`` per chunk and merges the parts."""

    chunk_chars: int

    def _extract_one(
        self,
        chunk: str,
        session_timestamp: datetime,
        previous_summary: str | None,
        candidates: Sequence[Candidate],
    ) -> tuple[Extraction, Usage]:
        raise NotImplementedError

    def extract(
        self,
        transcript: str,
        *,
        session_timestamp: datetime,
        previous_summary: str | None = None,
        candidates: Sequence[Candidate] = (),
    ) -> tuple[Extraction, Usage]:
        """One call per chunk with the running summary and the same candidates; memories merged and
        deduplicated, a memory's operations reduced to the last one a chunk made, all sanitized."""
        if not transcript.strip():
            return sanitize(Extraction(summary=previous_summary or "Empty conversation.")), Usage()
        summary = previous_summary
        memories: list[ExtractedMemory] = []
        operations: dict[str, MemoryOperation] = {}
        topics: list[str] = []
        seen: set[str] = set()
        usage = Usage()
        for chunk in chunk_transcript(transcript, self.chunk_chars):
            part, part_usage = self._extract_one(chunk, session_timestamp, summary, candidates)
            usage += part_usage
            for memory in part.memories:
                key = norm_key(memory.text)
                if key not in seen:
                    seen.add(key)
                    memories.append(memory)
            for operation in part.operations:
                operations.pop(operation.id, None)
                operations[operation.id] = operation
            topics.extend(t for t in part.topics if t not in topics)
            summary = part.summary
        if len(memories) > MAX_MEMORIES:
            ranked = sorted(range(len(memories)), key=lambda i: -memories[i].confidence)[:MAX_MEMORIES]
            memories = [memories[i] for i in sorted(ranked)]
        assert summary is not None  # at least one chunk ran
        merged = Extraction(
            memories=memories,
            operations=list(operations.values()),
            summary=summary,
            topics=topics[:MAX_TOPICS],
        )
        return sanitize(merged), usage
