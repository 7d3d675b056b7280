"""The evaluation cases (eval/cases/*.json) as typed objects, checked on load.

Stdlib only: eval/embed.py imports this from the model's own venv (.eval-venv), which has no memproc.
A mistake in the data (a `target` that names no memory, a text that belongs to no fact) fails here,
with the file, case and session in the message, instead of skewing a metric.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

CASES_DIR = Path(__file__).resolve().parent / "cases"
KINDS = ("paraphrase", "near_miss", "update", "retrieval", "budget")
MODES = ("naive", "reconcile")
OPS = ("add", "confirm", "update", "supersede", "retract")
TEXT_OPS = ("add", "update", "supersede")  # the ops that submit a new memory text
MEMORY_TYPES = ("fact", "preference", "insight", "event", "goal", "relationship")
USER_PREFIX = "user:"
ASSISTANT_PREFIX = "assistant:"
NAIVE_KEYS = {"memories", "summary", "topics"}
NAIVE_MEMORY_KEYS = {"text", "memory_type", "confidence", "tags"}


class CaseError(ValueError):
    """The case data is inconsistent; the message says where."""


def user_turns(transcript: str) -> list[str]:
    """The rule for what the reconciling pipeline embeds of a transcript: every line that starts with
    ``user:``, with the prefix removed and the rest stripped (blank turns are skipped)."""
    turns = []
    for line in transcript.splitlines():
        if line.startswith(USER_PREFIX):
            text = line[len(USER_PREFIX) :].strip()
            if text:
                turns.append(text)
    return turns


@dataclass(frozen=True)
class Question:
    """A search query with the facts whose texts count as its answer (and, for updates, the stale ones)."""

    q: str
    answer: tuple[str, ...]
    stale: tuple[str, ...] = ()


@dataclass(frozen=True)
class Session:
    session_id: str
    timestamp: str
    transcript: str
    naive: dict[
        str, Any
    ]  # today's Extraction: memories [{text, memory_type, confidence, tags}], summary, topics
    reconcile: dict[str, Any]  # operations [{op, text?, target?, memory_type}], summary, topics

    def submitted(self, mode: str) -> list[str]:
        """The memory texts this session hands to the store in `mode` (confirm and retract hand none)."""
        if mode == "naive":
            return [m["text"] for m in self.naive["memories"]]
        return [op["text"] for op in self.reconcile["operations"] if op["op"] in TEXT_OPS]


@dataclass(frozen=True)
class Case:
    kind: str
    id: str
    description: str
    facts: dict[str, tuple[str, ...]]  # fact id -> every text that states it (paraphrases share one id)
    sessions: tuple[Session, ...]
    questions: tuple[Question, ...] = ()
    pair: tuple[str, ...] = ()  # near_miss: the two facts that must both survive

    def fact_of(self, text: str) -> str | None:
        for fact, texts in self.facts.items():
            if text in texts:
                return fact
        return None

    def texts_of(self, facts: tuple[str, ...]) -> set[str]:
        return {text for fact in facts for text in self.facts[fact]}

    def subset(
        self, session_ids: Iterable[str] | None = None, questions: Iterable[str] | None = None
    ) -> Case:
        """This case with only some sessions (and the facts they state) and questions, for small runs."""
        wanted = set(session_ids) if session_ids is not None else {s.session_id for s in self.sessions}
        sessions = tuple(s for s in self.sessions if s.session_id in wanted)
        said = {t for s in sessions for mode in MODES for t in s.submitted(mode)}
        facts = {f: texts for f, texts in self.facts.items() if said & set(texts)}
        asked = set(questions) if questions is not None else {q.q for q in self.questions}
        kept = tuple(q for q in self.questions if q.q in asked and set(q.answer + q.stale) <= set(facts))
        return replace(self, sessions=sessions, facts=facts, questions=kept)


def _load_case(kind: str, raw: dict[str, Any], where: str) -> Case:
    def fail(message: str) -> CaseError:
        return CaseError(f"{where}: {message}")

    facts = {str(f): tuple(texts) for f, texts in raw.get("facts", {}).items()}
    owners: dict[str, str] = {}
    for fact, texts in facts.items():
        for text in texts:
            if text in owners:
                raise fail(f"text {text!r} belongs to facts {owners[text]!r} and {fact!r}")
            if " ".join(text.split()) != text:
                raise fail(f"text {text!r} is not whitespace-normalised (the parser would change it)")
            owners[text] = fact
    sessions = tuple(
        Session(s["session_id"], s["timestamp"], s["transcript"], s["naive"], s["reconcile"])
        for s in raw["sessions"]
    )
    questions = tuple(
        Question(q["q"], tuple(q["answer"]), tuple(q.get("stale", ()))) for q in raw.get("questions", ())
    )
    case = Case(
        kind, raw["id"], raw.get("description", ""), facts, sessions, questions, tuple(raw.get("pair", ()))
    )
    used: set[str] = set()
    live: dict[str, str] = {}  # reconcile replay: current memory texts (value: memory_type)
    for s in sessions:
        at = f"session {s.session_id!r}"
        try:
            datetime.fromisoformat(s.timestamp)
        except ValueError:
            raise fail(f"{at}: timestamp {s.timestamp!r} is not ISO 8601") from None
        for line in s.transcript.splitlines():
            if not line.startswith((USER_PREFIX, ASSISTANT_PREFIX)):
                raise fail(f"{at}: transcript line {line!r} starts with neither 'user:' nor 'assistant:'")
        if not user_turns(s.transcript):
            raise fail(f"{at}: transcript has no user turn")
        if set(s.naive) != NAIVE_KEYS:
            raise fail(f"{at}: naive answer must have exactly {sorted(NAIVE_KEYS)}")
        for m in s.naive["memories"]:
            if set(m) != NAIVE_MEMORY_KEYS or m["memory_type"] not in MEMORY_TYPES:
                raise fail(f"{at}: naive memory {m!r} is not in today's schema")
        for op in s.reconcile["operations"]:
            kind_ = op.get("op")
            if kind_ not in OPS or op.get("memory_type") not in MEMORY_TYPES:
                raise fail(f"{at}: operation {op!r} has an unknown op or memory_type")
            if ("text" in op) != (kind_ in TEXT_OPS) or ("target" in op) != (kind_ != "add"):
                raise fail(
                    f"{at}: {kind_} takes {'a text' if kind_ in TEXT_OPS else 'no text'} and "
                    f"{'no target' if kind_ == 'add' else 'a target'}: {op!r}"
                )
            if kind_ != "add" and op["target"] not in live:
                raise fail(
                    f"{at}: target {op['target']!r} is no memory at this point of the reconcile replay"
                )
            if kind_ in ("update", "supersede", "retract"):
                del live[op["target"]]
            if kind_ in TEXT_OPS:
                live[op["text"]] = op["memory_type"]
        for mode in MODES:
            for text in s.submitted(mode):
                if text not in owners:
                    raise fail(f"{at}: {mode} text {text!r} belongs to no fact")
                used.add(text)
    for fact, texts in facts.items():
        if not any(t in used for t in texts):
            raise fail(f"fact {fact!r} is stated by no session")
    for q in questions:
        for fact in (*q.answer, *q.stale):
            if fact not in facts:
                raise fail(f"question {q.q!r} names unknown fact {fact!r}")
    if kind == "near_miss" and (len(case.pair) != 2 or not set(case.pair) <= set(facts)):
        raise fail("a near_miss case needs 'pair': two of its fact ids")
    if kind in ("update", "retrieval") and not questions:
        raise fail(f"a {kind} case needs questions")
    if kind == "update" and not all(q.stale for q in questions):
        raise fail("every update question names the stale fact")
    return case


def load_cases(root: Path = CASES_DIR) -> list[Case]:
    """Every case, in the order of KINDS and then of the files."""
    cases: list[Case] = []
    for kind in KINDS:
        path = root / f"{kind}.json"
        doc = json.loads(path.read_text())
        if doc.get("kind") != kind:
            raise CaseError(f"{path.name}: 'kind' must be {kind!r}")
        cases.extend(_load_case(kind, raw, f"{path.name} case {raw.get('id')!r}") for raw in doc["cases"])
    seen: set[str] = set()
    for case in cases:
        for name in (f"case {case.id}", *(f"session {s.session_id}" for s in case.sessions)):
            if name in seen:
                raise CaseError(f"{name} appears twice")
            seen.add(name)
    return cases


def texts_to_embed(cases: list[Case]) -> list[str]:
    """Every text the pipeline can send to the embeddings endpoint for these cases, sorted: memory texts
    of both modes (and reconcile targets), questions, and user turns (see `user_turns`)."""
    texts: set[str] = set()
    for case in cases:
        for s in case.sessions:
            texts.update(s.submitted("naive"))
            texts.update(s.submitted("reconcile"))
            texts.update(op["target"] for op in s.reconcile["operations"] if "target" in op)
            texts.update(user_turns(s.transcript))
        texts.update(q.q for q in case.questions)
    return sorted(texts)
