"""Moving a vectorstore to another memory-index backend, usually in another store (`memproc migrate`).

The realistic move is from a Redis 8 (vector sets) to ElastiCache or MemoryDB for Valkey (the Query
Engine). Everything memproc keeps per vectorstore comes along, so the target is a working store:
memories with their vectors and every attribute (one id, one JSON shape in both backends: status,
times and history), the vectors of the texts their updates replaced (erasing the updating session
restores them), their category listings, raw submissions with their transcripts, expiries and
dedupe keys, dead letters, summaries, session sets and indexes, counters, daily stats, and the
config (embedding model, dimensions, memory sequence) naming the new backend. Deployment-wide
state (the processor's heartbeat, global daily stats) belongs to the target's own deployment and
is not moved. Work still queued or in flight is refused: it would be processed in one store while
being copied to the other; so is a vectorstore being re-embedded (its staged vectors stay behind).

Resumable: progress (phase, cursor, counts, the source's fingerprint) is kept in `{<vs>}:migration`
on the target after every batch; a re-run continues from it, and every write is keyed by id, so
nothing is ever duplicated. A source that changed since (a session received, processed or erased)
is copied again from the start. Nothing is deleted from the source, ever.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import BaseModel

from memproc.dal import migration as dal
from memproc.dal.connection import Store
from memproc.dal.memory_index import offers
from memproc.keys import VectorstoreKeys
from memproc.validation import require_vectorstore

Backend = Literal["vectorset", "search"]
PHASES = ("memories", "raws", "sessions", "finish", "verify")
ENGINE = {"vectorset": "vector sets (Redis 8)", "search": "Query Engine (FT.SEARCH)"}
STATS_DAYS = 90  # daily stats live 90 days (STATS_TTL in common.lua)


class MigrationRefused(Exception):
    """The vectorstore cannot be moved now, or not to that target; nothing was written."""


class VerificationFailed(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Progress(BaseModel):
    """What `{<vs>}:migration` on the target holds: where a re-run continues."""

    source: str
    from_backend: Backend
    to_backend: Backend
    fingerprint: str
    state: Literal["running", "done", "verify_failed"] = "running"
    phase: str = PHASES[0]
    cursor_member: str | None = None
    cursor_score: float | None = None
    memories: int = 0
    skipped_memories: int = 0  # index entries without a memory in the source
    raws: int = 0
    dead_letters: int = 0
    sessions: int = 0
    batches: int = 0
    started_at: float = 0.0
    finished_at: float | None = None

    def to_hash(self) -> dict[str, str]:
        return {k: "" if v is None else str(v) for k, v in self.model_dump().items()}

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> Progress:
        return cls.model_validate(
            {k: (None if v == "" else v) for k, v in h.items() if k in cls.model_fields}
        )


class MigrationReport(BaseModel):
    vectorstore: str
    source: str
    target: str
    from_backend: Backend
    to_backend: Backend
    same_store: bool
    complete: bool
    verified: bool
    resumed: bool
    memories: int
    skipped_memories: int
    raws: int
    dead_letters: int
    sessions: int
    batches: int
    batches_this_run: int


@dataclass
class Migration:
    """One run of `memproc migrate` for one vectorstore."""

    source: Store
    target: Store
    vectorstore: str
    to: Backend
    batch_size: int = 500
    max_batches: int | None = None
    say: Callable[[str], None] = print
    vk: VectorstoreKeys = field(init=False)
    progress: Progress = field(init=False)
    same_store: bool = field(init=False)
    dimensions: int = field(init=False)
    ran: int = 0
    resumed: bool = False

    def __post_init__(self) -> None:
        self.vk = require_vectorstore(self.vectorstore)
        if self.batch_size < 1 or (self.max_batches is not None and self.max_batches < 1):
            raise MigrationRefused("--batch-size and --max-batches must be at least 1")

    # ---------------------------------------------------------------- start: refuse or resume
    def start(self) -> None:
        src = dal.state(self.source, self.vk)
        if not src.exists:
            raise MigrationRefused(f"vectorstore {self.vectorstore!r} does not exist on the source")
        if src.pending or src.inflight:
            raise MigrationRefused(
                f"vectorstore {self.vectorstore!r} has {src.pending} submission(s) queued and {src.inflight} "
                "in flight: stop sending it sessions and let the processor drain them (GET "
                "/processing_status shows pending 0 and in_flight 0), then run migrate again"
            )
        if src.config.get("reembed_model"):
            raise MigrationRefused(
                f"vectorstore {self.vectorstore!r} is being re-embedded (memproc reembed, to "
                f"{src.config['reembed_model']}): finish that run first, then migrate"
            )
        from_backend = src.config.get("backend") or self.source.index.name
        self.same_store = dal.server_identity(self.source) == dal.server_identity(self.target)
        if self.same_store and src.migration and from_backend == self.to:
            # One keyspace: a finished run already switched the config; it moved from the recorded one.
            from_backend = Progress.from_hash(src.migration).from_backend
        if from_backend == self.to and self.same_store:
            raise MigrationRefused(
                f"vectorstore {self.vectorstore!r} already keeps its memories in {self.to}"
            )
        if not offers(self.target, self.to):
            raise MigrationRefused(
                f"the target store has no {ENGINE[self.to]}: it cannot hold memories in {self.to!r}"
                + ("; give the other store with --target-url" if self.same_store else "")
            )
        self.dimensions = int(src.config.get("dimensions") or self.target.dimensions)
        # Each side's memory index as this vectorstore needs it, whatever the stores' settings say.
        self.source = replace(self.source, vector_backend=from_backend, dimensions=self.dimensions)
        self.target = replace(self.target, vector_backend=self.to, dimensions=self.dimensions)
        describe = dal.address(self.source)
        fresh = Progress(
            source=describe,
            from_backend=from_backend,
            to_backend=self.to,
            fingerprint=src.fingerprint(),
            started_at=dal.server_time(self.target),
        )
        tgt = src if self.same_store else dal.state(self.target, self.vk)
        if not tgt.migration:
            if tgt.exists and not self.same_store:
                raise MigrationRefused(
                    f"vectorstore {self.vectorstore!r} already exists on the target: migrate never merges "
                    "into another vectorstore (if it is a leftover, erase it there with DELETE "
                    f"/api/memory/{self.vectorstore} first)"
                )
            self._begin(fresh, "starting")
        else:
            seen = Progress.from_hash(tgt.migration)
            if (seen.source, seen.from_backend, seen.to_backend) != (describe, from_backend, self.to):
                raise MigrationRefused(
                    f"the target records another migration of {self.vectorstore!r}: from {seen.source} "
                    f"({seen.from_backend} -> {seen.to_backend}); finish or erase that one first"
                )
            if seen.fingerprint != fresh.fingerprint:
                changed = f"the source changed since the last run ({seen.fingerprint} -> {fresh.fingerprint})"
                self._begin(fresh, f"{changed}: copying again from the start (overwrites, never duplicates)")
            elif seen.state == "verify_failed":
                self._begin(fresh, "the last verification failed: copying again from the start")
            else:
                self.progress, self.resumed = seen, True
                if seen.state == "done":
                    self.progress.phase = "verify"
                    self.say("already migrated: verifying again")
                else:
                    self.say(f"resuming at {seen.phase} after {seen.batches} batch(es)")
        if self.to == "search" and src.memories:
            self.target.index.ensure(self.dimensions)

    def _begin(self, progress: Progress, why: str) -> None:
        self.progress = progress
        dal.save_progress(self.target, self.vk, progress.to_hash(), reset=True)
        self.say(
            f"{why}: {self.vectorstore!r} {progress.from_backend} at {progress.source} -> {self.to}"
            + (" in the same store" if self.same_store else f" at {dal.address(self.target)}")
        )

    # ---------------------------------------------------------------- the copy, batch by batch
    def run(self) -> MigrationReport:
        """Copy what is left, then verify; stops early (complete False) after `max_batches`."""
        self.start()
        steps = {"memories": self._memories, "raws": self._raws, "sessions": self._sessions}
        while self.progress.phase != "verify":
            phase = self.progress.phase
            if phase == "finish":
                self._finish()
                self._next_phase()
                continue
            if self.same_store and phase in ("raws", "sessions"):
                self._next_phase()  # one keyspace: only the memories change backend
                continue
            if self.max_batches is not None and self.ran >= self.max_batches:
                self._save()
                return self.report(complete=False)
            done = steps[phase]()
            self.progress.batches += 1
            self.ran += 1
            if done:
                self._next_phase()
            self._save()
        from memproc.migration_verify import verify

        problems = verify(self)
        self.progress.state = "verify_failed" if problems else "done"
        self.progress.finished_at = dal.server_time(self.target)
        self._save()
        if problems:
            raise VerificationFailed(problems)
        return self.report(complete=True)

    def _save(self) -> None:
        dal.save_progress(self.target, self.vk, self.progress.to_hash())

    def _next_phase(self) -> None:
        self.progress.phase = PHASES[PHASES.index(self.progress.phase) + 1]
        self.progress.cursor_member = self.progress.cursor_score = None

    def _page(self, key: str) -> list[dal.Row]:
        p = self.progress
        known = p.cursor_member is not None and p.cursor_score is not None
        after = (str(p.cursor_member), float(p.cursor_score or 0)) if known else None
        rows = dal.page(self.source, key, after, self.batch_size)
        if rows:
            p.cursor_member, p.cursor_score = rows[-1]
        return rows

    def _memories(self) -> bool:
        rows = self._page(self.vk.memory_index)
        exported = dal.export_memories(
            self.source, self.vectorstore, self.progress.from_backend, [m for m, _ in rows]
        )
        batch = [(m, s, e[0], e[1]) for (m, s), e in zip(rows, exported, strict=True) if e is not None]
        dal.import_memories(self.target, self.vectorstore, self.to, self.dimensions, batch)
        if not self.same_store:  # the vectors of texts updates replaced, which erasure restores
            names = [name for _, _, text, _ in batch for name in dal.versions_of(dal.attrs_of(text))]
            dal.write_versions(self.target, self.vk, dal.read_versions(self.source, self.vk, names))
        self.progress.memories += len(batch)
        self.progress.skipped_memories += len(rows) - len(batch)
        self.say(f"  memories: {self.progress.memories:,} copied")
        return len(rows) < self.batch_size

    def _raws(self) -> bool:
        vk = self.vk
        rows = self._page(vk.raw_index)
        ids = [m for m, _ in rows]
        records = dal.read_keys(self.source, [(vk.raw(i), "hash") for i in ids])
        for rid, rec in zip(ids, records, strict=True):
            status = (rec.content or {}).get(b"status", b"").decode()
            if status in ("queued", "processing"):
                raise MigrationRefused(
                    f"submission {rid} of {self.vectorstore!r} is {status}: the vectorstore received work "
                    "during the migration; let the processor drain it, then run migrate again"
                )
        digests = sorted({rec.content[b"dedupe_digest"].decode() for rec in records
                          if rec.content and rec.content.get(b"dedupe_digest")})  # fmt: skip
        dedupes = dal.read_keys(self.source, [(vk.dedupe(d), "string") for d in digests])
        dead = dal.dead_scores(self.source, vk, ids)
        pipe = self.target.rb.pipeline(transaction=False)
        dal.queue_write(pipe, [r for r in records if r.content is not None] + dedupes)
        for rid, (mine, everyone) in zip(ids, dead, strict=True):
            dal.queue_dead(pipe, vk, rid, mine, everyone)
        dal.queue_index(pipe, vk.raw_index, rows)
        pipe.execute()
        self.progress.raws += len(rows)
        self.progress.dead_letters += sum(1 for mine, _ in dead if mine is not None)
        self.say(
            f"  raw submissions: {self.progress.raws:,} copied ({self.progress.dead_letters} dead letters)"
        )
        return len(rows) < self.batch_size

    def _sessions(self) -> bool:
        vk = self.vk
        rows = self._page(vk.session_index)
        specs: list[tuple[str, dal.KeyType]] = []
        for sid, _ in rows:
            specs += [(vk.session_summary(sid), "string"), (vk.session_memories(sid), "set"),
                      (vk.session_raws(sid), "zset")]  # fmt: skip
        values = dal.read_keys(self.source, specs)
        pipe = self.target.rb.pipeline(transaction=False)
        dal.queue_write(pipe, values)
        dal.queue_index(pipe, vk.session_index, rows)
        pipe.execute()
        self.progress.sessions += len(rows)
        self.say(f"  sessions: {self.progress.sessions:,} copied")
        return len(rows) < self.batch_size

    def _finish(self) -> None:
        """The config last: it names the new backend, and commits check it."""
        vk = self.vk
        src = dal.state(self.source, vk)
        config = {**src.config, "backend": self.to}
        if self.same_store:
            dal.set_config(self.target, vk, {"backend": self.to})
        else:
            today = dt.datetime.fromtimestamp(dal.server_time(self.source), dt.UTC).date()
            days = [(today - dt.timedelta(days=d)).isoformat() for d in range(STATS_DAYS + 1)]
            values = dal.read_keys(
                self.source, [(vk.counters, "hash"), *[(vk.daily_stats(d), "hash") for d in days]]
            )
            pipe = self.target.rb.pipeline(transaction=False)
            dal.queue_write(pipe, [v for v in values if v.content is not None])
            pipe.execute()
            if src.config:  # none yet: the target's first commit writes it, as for any new vectorstore
                dal.set_config(self.target, vk, config)
            dal.list_vectorstore(self.target, vk, src.listed_at or self.progress.started_at)
        self.say(f"  config: backend {self.to}, memory_seq {config.get('memory_seq', '0')}")

    def report(self, *, complete: bool) -> MigrationReport:
        p = self.progress
        return MigrationReport(
            vectorstore=self.vectorstore, source=p.source, target=dal.address(self.target),
            from_backend=p.from_backend, to_backend=p.to_backend, same_store=self.same_store,
            complete=complete, verified=complete, resumed=self.resumed, memories=p.memories,
            skipped_memories=p.skipped_memories, raws=p.raws, dead_letters=p.dead_letters,
            sessions=p.sessions, batches=p.batches, batches_this_run=self.ran,
        )  # fmt: skip
