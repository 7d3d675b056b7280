"""The fake LLM's answers for a run: each session's scripted extraction, and the committed vectors.

The fake (tests/fake_openai.py) calls ``reconciliation_for(transcript, shown)`` for every chat call,
with the ``(short id, text)`` pairs of the ``<memories>`` block memproc's prompt listed, and
``embedding_for(text)`` for every text of an embeddings call. ``ScriptedLLM`` answers both and keeps,
per session, what it answered (``Answer``), so the metrics count what the pipeline was actually
handed, fallbacks included, rather than what the script intended.

- naive mode: a model that ignores the shown memories: the session's ``naive`` memories, no
  operations. Whatever the pipeline does with them (the backstop) is the pipeline's decision.
- reconcile mode: ``reconcile_reply``: the session's scripted operations, each ``target`` text
  mapped to the short id the prompt shows for that memory.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from eval.cases import MODES, Case, Session

DEFAULT_CONFIDENCE = 0.9  # what a scripted op without a naive counterpart is answered with


class EvalError(RuntimeError):
    """The harness could not measure a case (a session failed, a script is missing): not a metric."""


@dataclass(frozen=True)
class Miss:
    """A candidate-retrieval miss: an operation whose target the prompt did not show."""

    session_id: str
    op: str
    target: str
    answered_as: str  # "add" (the statement as a new memory) or "dropped" (a retract)


@dataclass
class Answer:
    """What the scripted model answered for one session (the last chat call, should there be more)."""

    session_id: str
    shown: list[tuple[str, str]] = field(default_factory=list)  # the prompt's (short id, text) pairs
    submitted: list[str] = field(default_factory=list)  # new and changed texts handed to the store
    ops: Counter[str] = field(default_factory=Counter)  # answered: add, confirm, update, ...
    misses: list[Miss] = field(default_factory=list)
    chat_calls: int = 0


def _naive_memory(session: Session, text: str) -> dict[str, Any] | None:
    return next((m for m in session.naive["memories"] if m["text"] == text), None)


def _memory(session: Session, text: str, memory_type: str) -> dict[str, Any]:
    """A new memory in the extraction schema; confidence and tags from the naive answer's memory
    of the same text where there is one (the two modes differ by their operations, not wording)."""
    naive = _naive_memory(session, text)
    return {
        "text": text,
        "memory_type": memory_type,
        "confidence": naive["confidence"] if naive else DEFAULT_CONFIDENCE,
        "tags": list(naive["tags"]) if naive else [],
    }


def restatement(case: Case, session: Session, target: str) -> str:
    """What a model that was not shown `target` extracts from a session that confirms it: the
    session's own statement of the same fact (its naive memory of that fact), else the target's text."""
    fact = case.fact_of(target)
    for m in session.naive["memories"]:
        if fact is not None and case.fact_of(m["text"]) == fact:
            return str(m["text"])
    return target


def reconcile_reply(
    case: Case, session: Session, shown: list[tuple[str, str]]
) -> tuple[dict[str, Any], Answer]:
    """The chat answer of a reconciling extractor for `session`, in memproc's extraction schema.

    Each scripted operation's ``target`` text becomes the short id the prompt shows for a memory
    of exactly that text. A target the prompt does not show is a candidate-retrieval miss: the
    model could not express the operation, so it answers as it would without seeing the memory:
    a confirm, update or supersede becomes the statement as a new memory (a confirm's statement is
    the session's own wording of the fact), and a retract is left out (there is nothing to say).
    """
    ids: dict[str, str] = {}
    for short_id, text in shown:
        ids.setdefault(text, short_id)
    answer = Answer(session.session_id, shown=list(shown))
    memories: list[dict[str, Any]] = []
    operations: list[dict[str, Any]] = []
    for op in session.reconcile["operations"]:
        kind, memory_type = op["op"], op["memory_type"]
        if kind == "add":
            memories.append(_memory(session, op["text"], memory_type))
            continue
        shown_id = ids.get(op["target"])
        if shown_id is None:
            if kind == "retract":
                answer.misses.append(Miss(session.session_id, kind, op["target"], "dropped"))
                continue
            text = op.get("text") or restatement(case, session, op["target"])
            answer.misses.append(Miss(session.session_id, kind, op["target"], "add"))
            memories.append(_memory(session, text, memory_type))
            continue
        if kind in ("update", "supersede"):
            changed = _memory(session, op["text"], memory_type)
            operations.append({"op": kind, "id": shown_id, **changed})
            answer.submitted.append(op["text"])
        else:  # confirm, retract: the memory as it is
            operations.append(
                {
                    "op": kind,
                    "id": shown_id,
                    "text": None,
                    "memory_type": None,
                    "confidence": None,
                    "tags": [],
                }
            )
        answer.ops[kind] += 1
    answer.ops["add"] += len(memories)
    answer.submitted = [m["text"] for m in memories] + answer.submitted
    payload = {
        "memories": memories,
        "operations": operations,
        "summary": session.reconcile["summary"],
        "topics": list(session.reconcile["topics"]),
    }
    return payload, answer


def naive_reply(session: Session, shown: list[tuple[str, str]]) -> tuple[dict[str, Any], Answer]:
    """A model that ignores the shown memories: the naive extraction, new memories only."""
    payload = copy.deepcopy(session.naive)
    payload["operations"] = []
    texts = [m["text"] for m in session.naive["memories"]]
    answer = Answer(session.session_id, shown=list(shown), submitted=texts, ops=Counter(add=len(texts)))
    return payload, answer


class ScriptedLLM:
    """The fake's two hooks for one run: the scripted answer for the transcript of the current case's
    session, and the committed vector of a text (None, so HTTP 400, for a text without one).

    Hooks run on the fake's threads; an exception there becomes an HTTP 500, so it is also kept here
    for the harness to raise in its own thread with the real traceback.
    """

    def __init__(self, mode: str, vectors: dict[str, list[float]]) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.vectors = vectors
        self.case: Case | None = None
        self.answers: dict[str, Answer] = {}
        self.errors: list[BaseException] = []
        self.missing_vectors: list[str] = []

    def reconciliation_for(self, transcript: str, shown: list[tuple[str, str]]) -> dict[str, Any]:
        try:
            if self.case is None:
                raise EvalError("a chat call arrived outside a case")
            session = self._session(self.case, transcript)
            if self.mode == "naive":
                payload, answer = naive_reply(session, shown)
            else:
                payload, answer = reconcile_reply(self.case, session, shown)
            previous = self.answers.get(session.session_id)
            answer.chat_calls = (previous.chat_calls if previous else 0) + 1
            self.answers[session.session_id] = answer
            return payload
        except BaseException as exc:
            self.errors.append(exc)
            raise

    def embedding_for(self, text: str) -> list[float] | None:
        vector = self.vectors.get(text)
        if vector is None:
            self.missing_vectors.append(text)
        return vector

    @staticmethod
    def _session(case: Case, transcript: str) -> Session:
        for session in case.sessions:
            if session.transcript.strip() == transcript.strip():
                return session
        raise EvalError(f"case {case.id!r} has no session with transcript {transcript[:80]!r}")
