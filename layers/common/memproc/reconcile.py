"""Reconciliation: which of the user's memories a session may be about, and what its extraction
does to them, decided in the one extraction call.

Before the call: the session's user turns are embedded (one embeddings call) and their nearest
current memories looked up with their records (two round trips), deduplicated and capped by a prompt
budget; the model sees them under short ids. After it: its operations are checked against the ids it
was shown (unknown ones are dropped and counted), new and changed texts are embedded (the second and
last embeddings call), and a new memory that is a near-identical restatement of one the model was
*not* shown becomes a confirmation instead (a backstop: the model could not decide it; the new text
is kept in the memory's history, so no statement is lost).
"""

from __future__ import annotations

import logging
from array import array
from dataclasses import dataclass, field
from typing import Any

from memproc.dal import reads
from memproc.dal.connection import Store
from memproc.dal.memory_index import MemoryFilter, MemoryState
from memproc.embedding_batch import Embed
from memproc.keys import VectorstoreKeys
from memproc.llm import Extraction, LLMProvider, Usage
from memproc.llm.base import Vector
from memproc.llm.chunking import user_turns
from memproc.llm.schema import MAX_CANDIDATE_CHARS, MAX_CANDIDATES, Candidate

log = logging.getLogger("memproc.reconcile")

MAX_TURNS = 16  # user turns embedded per session; more are grouped
MAX_TURN_CHARS = 2000
NEIGHBOURS_PER_TURN = 8


def fp32(vector: Vector) -> bytes:
    """The FP32 blob VADD / VSIM / FT.SEARCH take (an array("f") off the wire already is one)."""
    blob = vector if isinstance(vector, array) and vector.typecode == "f" else array("f", vector)
    if blob.itemsize != 4:  # pragma: no cover - every supported platform has 32-bit floats
        raise RuntimeError("float32 arrays are required")
    return blob.tobytes()


def lookup_texts(text: str) -> list[str]:
    """The user's turns as embedding inputs: at most MAX_TURNS, consecutive ones grouped when more."""
    turns = [t[:MAX_TURN_CHARS] for t in user_turns(text)]
    if len(turns) <= MAX_TURNS:
        return turns
    size = -(-len(turns) // MAX_TURNS)
    return [" ".join(turns[i : i + size])[:MAX_TURN_CHARS] for i in range(0, len(turns), size)]


@dataclass(frozen=True)
class Lookup:
    """What a decision is made against: the vectorstore's memory sequence and size, the lookup
    vectors, the memories shown, and whether related memories were left out for the budget."""

    seq: int
    memories: int
    vectors: tuple[bytes, ...] = ()
    candidates: tuple[Candidate, ...] = ()
    truncated: bool = False

    def shown(self) -> dict[str, int]:
        return {c.memory.memory_id: c.memory.seq for c in self.candidates}


class EmbeddingMismatch(Exception):
    """The vectorstore's memories were embedded by another model or dimension than this processor's."""


def find(
    store: Store,
    provider: LLMProvider,
    vectorstore: str,
    text: str,
    previous: Lookup | None = None,
    embed: Embed | None = None,
    state: MemoryState | None = None,
) -> tuple[Lookup, Usage]:
    """The memories a session's text may be about. The text is embedded once: when the vectorstore
    had no memories yet (no embeddings call then), and again only if it has some now. `embed`
    replaces the provider's (the processor's batcher); `state` is the memory state the caller read
    with its input (else it is read here when the text still needs embedding). The lookup reads
    the state again, in the round trip of its queries and before them: a commit after the view
    was read is noticed by the seq."""
    vectors = previous.vectors if previous else ()
    usage = Usage()
    if not vectors:
        state = state or reads.memory_state(store, vectorstore)
        _check(state, provider)
        texts = lookup_texts(text) if state.memories else []
        if texts:
            embedded, usage = (embed or provider.embed)(texts)
            vectors = tuple(fp32(v) for v in embedded)
        if not vectors:
            return Lookup(state.seq, state.memories), usage
    known = state or previous  # its memories when last read: the index may search a small set cheaper
    memories = known.memories if known else None
    related = store.index.related(
        vectorstore, list(vectors), NEIGHBOURS_PER_TURN, MAX_CANDIDATES, MemoryFilter(), memories
    )
    state = related.state
    _check(state, provider)
    candidates: list[Candidate] = []
    chars = 0
    for memory, _ in related.memories:
        if memory.status != "current":
            continue
        chars += len(memory.text)
        if chars > MAX_CANDIDATE_CHARS:
            break
        candidates.append(Candidate(f"m{len(candidates) + 1}", memory))
    truncated = len(candidates) < related.distinct
    return Lookup(state.seq, state.memories, vectors, tuple(candidates), truncated), usage


def _check(state: MemoryState, provider: LLMProvider) -> None:
    """The vectorstore's memories must be embedded as this processor embeds."""
    if state.dimensions and (state.dimensions, state.embedding_model) != (
        provider.dimensions,
        provider.embedding_model,
    ):
        raise EmbeddingMismatch(
            f"vectorstore uses embedding model {state.embedding_model!r} with {state.dimensions} dimensions"
        )


def same_view(a: Lookup, b: Lookup) -> bool:
    """Whether a decision made against `a` still holds against `b`: the same memories, unchanged."""
    return a.shown() == b.shown()


@dataclass
class Decision:
    """The extraction's operations against real memory ids; `texts` are what needs a vector (the
    text of every add/update/supersede, and the text an update replaces, in operation order)."""

    ops: list[dict[str, Any]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    dropped: int = 0
    backstopped: int = 0


def decide(extraction: Extraction, lookup: Lookup) -> Decision:
    """Operations on shown memories (by their real id and the seq they were shown at) and adds."""
    by_short = {c.short_id: c.memory for c in lookup.candidates}
    decision = Decision()
    for op in extraction.operations:
        memory = by_short.get(op.id)
        if memory is None:
            decision.dropped += 1
            log.warning("dropped a %s of memory %r the model was not shown", op.op, op.id[:20])
            continue
        entry: dict[str, Any] = {"op": op.op, "target": memory.memory_id, "seq": memory.seq, "text": op.text}
        if op.op in ("update", "supersede"):
            entry.update(
                memory_type=op.memory_type or memory.memory_type, confidence=op.confidence, tags=op.tags
            )
            entry["vector"] = len(decision.texts)
            decision.texts.append(op.text or "")
            if op.op == "update":  # the replaced text's vector, kept so erasure can restore it
                entry["prior_vector"] = len(decision.texts)
                decision.texts.append(memory.text)
        elif op.op == "confirm" and not op.text:
            entry["text"] = memory.text
        decision.ops.append(entry)
    for m in extraction.memories:
        decision.ops.append(
            {
                "op": "add",
                "text": m.text,
                "memory_type": m.memory_type,
                "confidence": m.confidence,
                "tags": m.tags,
            }
        )
        decision.ops[-1]["vector"] = len(decision.texts)
        decision.texts.append(m.text)
    return decision


def backstop(
    store: Store,
    vectorstore: str,
    decision: Decision,
    vectors: list[bytes],
    lookup: Lookup,
    *,
    reconciles: bool,
    threshold: float,
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The operations to commit and the vectors they use: an add within `threshold` cosine of a
    current memory the model did not see (or could not judge: the offline provider) is that memory
    restated, so it is confirmed, its text kept in the memory's history, and its vector dropped."""
    adds = [op for op in decision.ops if op["op"] == "add"]
    if not adds or not lookup.memories:
        return decision.ops, vectors
    shown = lookup.shown()
    hits = store.index.nearest(
        vectorstore, [vectors[op["vector"]] for op in adds], 1, MemoryFilter(), lookup.memories
    )
    targets = {h[0][0] for h in hits if h and h[0][1] >= threshold}
    if not targets:
        return decision.ops, vectors
    found = reads.records(store, VectorstoreKeys(vectorstore), memory_ids=sorted(targets)).memories
    ops: list[dict[str, Any]] = []
    confirmed: set[str] = set()
    replaced = {id(op): h for op, h in zip(adds, hits, strict=True)}
    for op in decision.ops:
        hit = replaced.get(id(op))
        if hit and hit[0][1] >= threshold and hit[0][0] in found:
            target = found[hit[0][0]]
            if (not reconciles or target.memory_id not in shown) and target.memory_id not in confirmed:
                confirmed.add(target.memory_id)
                ops.append(
                    {"op": "confirm", "target": target.memory_id, "seq": target.seq, "text": op["text"]}
                )
                decision.backstopped += 1
                continue
        ops.append(op)
    return _renumbered(ops, vectors)


def _renumbered(ops: list[dict[str, Any]], vectors: list[bytes]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The vectors the operations still use, each operation pointing at its own by position (the
    commit refuses a vector no operation uses)."""
    used: list[bytes] = []
    out: list[dict[str, Any]] = []
    for op in ops:
        if "vector" in op:
            used.append(vectors[op["vector"]])
            op = {**op, "vector": len(used) - 1}
        out.append(op)
    return out, used
