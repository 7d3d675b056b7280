"""Checking a finished migration (`memproc migrate`): counts and ids on both sides, every memory's
record byte for byte (status, times, history and all) with a vector of the right size, the stored
vectors of the texts its updates replaced (what erasing the updating session restores), its entry
in its type's category listing, and the target's index answering for them.

Walks the source's sorted-set indexes in batches like the copy (one round trip per side and batch),
so it costs what the copy costs, and reports what differs with a few example ids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memproc.dal import migration as dal
from memproc.dal.memory_index import MemoryFilter
from memproc.records import MEMORY_TYPES, MemoryRecord

if TYPE_CHECKING:
    from memproc.migration import Migration

EXAMPLES = 5
KNN_PROBES = 3  # memories whose own vector must find them in the target's index


def _examples(ids: list[str]) -> str:
    more = f" and {len(ids) - EXAMPLES} more" if len(ids) > EXAMPLES else ""
    return ", ".join(ids[:EXAMPLES]) + more


def _current(memory_id: str, text: str) -> bool:
    record = MemoryRecord.from_attrs(memory_id, text)
    return record is not None and record.status == "current"


def verify(m: Migration) -> list[str]:
    """What differs between source and target (empty: verified)."""
    problems: list[str] = []
    vk, src_store, tgt_store = m.vk, m.source, m.target
    src, tgt = dal.state(src_store, vk), dal.state(tgt_store, vk)
    if src.fingerprint() != m.progress.fingerprint:
        problems.append(
            f"the source changed during the migration ({m.progress.fingerprint} -> {src.fingerprint()}): "
            "stop its writers and run migrate again (it copies again from the start)"
        )
    problems += _memories(m, src.memories, tgt.memories)
    if not m.same_store:
        problems += _indexed(m, "raw submissions", vk.raw_index, vk.raw, src.raws, tgt.raws)
        problems += _indexed(m, "sessions", vk.session_index, vk.session_summary, src.sessions, tgt.sessions)
        if src.dead != tgt.dead:
            problems.append(f"dead letters: source {src.dead}, target {tgt.dead}")
        for name in ("embedding_model", "dimensions", "memory_seq"):
            if src.config.get(name) != tgt.config.get(name):
                problems.append(
                    f"config {name}: source {src.config.get(name)!r}, target {tgt.config.get(name)!r}"
                )
        if src.counters != tgt.counters:
            problems.append(f"counters differ: source {src.counters}, target {tgt.counters}")
    if src.config and tgt.config.get("backend") != m.to:
        problems.append(f"config backend on the target is {tgt.config.get('backend')!r}, not {m.to!r}")
    return problems


def _memories(m: Migration, src_count: int, tgt_count: int) -> list[str]:
    vk, dims = m.vk, m.dimensions
    missing: list[str] = []
    differs: list[str] = []
    unindexed: list[str] = []
    dangling = 0
    probes: list[tuple[str, bytes]] = []
    versions: list[str] = []  # stored vectors of replaced texts missing on the target
    uncategorised: list[str] = []  # not in their type's category listing at their index score
    by_type = dict.fromkeys(MEMORY_TYPES, 0)
    after: dal.Row | None = None
    while True:
        rows = dal.page(m.source, vk.memory_index, after, m.batch_size)
        if not rows:
            break
        after = rows[-1]
        ids = [mid for mid, _ in rows]
        mine = dal.export_memories(m.source, m.vectorstore, m.progress.from_backend, ids)
        theirs = dal.export_memories(m.target, m.vectorstore, m.to, ids)
        present = []
        attrs: list[dict[str, object]] = []
        for mid, a, b in zip(ids, mine, theirs, strict=True):
            if a is None:
                dangling += 1
                continue
            present.append(mid)
            attrs.append(dal.attrs_of(a[0]))
            if b is None:
                missing.append(mid)
            elif a[0] != b[0] or len(b[1]) != 4 * dims:
                differs.append(mid)
            elif len(probes) < KNN_PROBES and _current(mid, b[0]):
                probes.append((mid, b[1]))
        if not m.same_store:
            unindexed += dal.missing_members(m.target, vk.memory_index, present)
            named = [n for a in attrs for n in dal.versions_of(a)]
            kept = dal.read_versions(m.source, vk, named)
            there = dal.read_versions(m.target, vk, list(kept))
            versions += sorted(n for n, blob in kept.items() if there.get(n) != blob)
        scores = dict(rows)
        typed = [(mid, str(a.get("memory_type"))) for mid, a in zip(present, attrs, strict=True)
                 if a.get("memory_type") in by_type]  # fmt: skip
        for (mid, memory_type), score in zip(typed, dal.category_scores(m.target, vk, typed), strict=True):
            by_type[memory_type] += 1
            if score != scores[mid]:
                uncategorised.append(mid)
        if len(rows) < m.batch_size:
            break
    problems = []
    expected = src_count - dangling
    if missing:
        problems.append(f"memories missing on the target: {_examples(missing)}")
    if differs:
        problems.append(f"memories whose record or vector differs on the target: {_examples(differs)}")
    if unindexed:
        problems.append(f"memories not in the target's memory index: {_examples(unindexed)}")
    if versions:
        problems.append(
            f"vectors of replaced texts missing or different on the target: {_examples(versions)}"
        )
    if uncategorised:
        problems.append(f"memories not in their category listing on the target: {_examples(uncategorised)}")
    for memory_type, held in dal.category_counts(m.target, vk, MEMORY_TYPES).items():
        if held != by_type[memory_type]:
            problems.append(
                f"category {memory_type}: source {by_type[memory_type]:,} memories, target listing {held:,}"
            )
    if not m.same_store and tgt_count != expected:
        problems.append(f"memory index: source {expected:,} memories, target {tgt_count:,} entries")
    if m.to == "vectorset" and (held := dal.vector_count(m.target, vk)) != expected:
        problems.append(f"the target's vector set holds {held:,} memories, the source {expected:,}")
    if probes:
        hits = m.target.index.nearest(m.vectorstore, [blob for _, blob in probes], 10, MemoryFilter())
        lost = [mid for (mid, _), found in zip(probes, hits, strict=True) if mid not in {h[0] for h in found}]
        if lost:
            problems.append(
                f"the target's {m.to} index does not find memories by their own vector: {_examples(lost)}"
            )
    if dangling:
        m.say(f"  note: {dangling} memory-index entries of the source have no memory (not copied)")
    return problems


def _indexed(
    m: Migration, what: str, index: str, key_of: object, src_count: int, tgt_count: int
) -> list[str]:
    """Same ids in the index on both sides, and every record the source still has on the target."""
    absent: list[str] = []
    unindexed: list[str] = []
    after: dal.Row | None = None
    while True:
        rows = dal.page(m.source, index, after, m.batch_size)
        if not rows:
            break
        after = rows[-1]
        ids = [i for i, _ in rows]
        unindexed += dal.missing_members(m.target, index, ids)
        keys = [key_of(i) for i in ids]  # type: ignore[operator]
        for i, there, here in zip(
            ids, dal.existing(m.source, keys), dal.existing(m.target, keys), strict=True
        ):
            if there and not here:
                absent.append(i)
        if len(rows) < m.batch_size:
            break
    problems = []
    if src_count != tgt_count:
        problems.append(f"{what}: source index {src_count:,}, target index {tgt_count:,}")
    if unindexed:
        problems.append(f"{what} missing from the target's index: {_examples(unindexed)}")
    if absent:
        problems.append(f"{what} missing on the target: {_examples(absent)}")
    return problems
