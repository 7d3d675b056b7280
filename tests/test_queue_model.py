"""A Hypothesis state machine drives the queue protocol on a real Redis against a simple model.

Rules: submit (new sessions, longer re-posts, duplicates), claim, commit, fail (retryable or not),
a lease running out, redrive, cleanup, erasure of a session, and stale workers (whose lease ran
out and was reclaimed, or whose item was dead-lettered and redriven) trying to commit or fail.
After every step: each submission is in exactly one state, in the Redis sets that state implies;
a session never has two submissions in flight and they are claimed in submission order; fencing
tokens never repeat; the counts the API reports equal the model's. Each claim hands out its items'
processing input (transcript, session summary, memory state) as the model holds them, and what a
claim read of the summary is still the summary when that claim commits (so a worker may run an
item claimed ahead on it).

`make test` runs a modest number of examples; `make chaos` sets MEMPROC_MODEL_EXAMPLES higher.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from memproc import keys, retention, submissions
from memproc.dal import queue
from memproc.dal.connection import get_store
from memproc.errors import NotFound
from memproc.reads import stats as stats_reads
from memproc.reads import status as status_reads
from memproc.schemas.requests import CleanupQuery, StoreRawRequest
from memproc.settings import Settings, load_settings
from tests.memory_helpers import commit_payload
from tests.redis_server import RedisServer

VECTORSTORES = ("alice", "bob")
SESSIONS = ("s-1", "s-2", "s-3")
EXAMPLES = int(os.environ.get("MEMPROC_MODEL_EXAMPLES", "40"))
PER_VECTORSTORE = 2  # items of one vectorstore in flight at once


@dataclass
class Item:
    raw_id: str
    vs: str
    sid: str
    order: int  # submission order within its session
    text: str
    state: str = "queued"  # queued | processing | processed | dead | erased
    attempts: int = 0
    tokens: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Held:
    claim: queue.Claim
    expired: bool = False  # its lease ran out: the worker is stale unless nobody reclaimed it


class QueueModel(RuleBasedStateMachine):
    server: RedisServer

    def __init__(self) -> None:
        super().__init__()
        self.r: redis.Redis = self.server.client()
        self.r.flushall()
        self.settings: Settings = load_settings(
            redis_url=self.server.url,
            max_attempts=3,
            retry_base_seconds=0,
            retry_max_seconds=0,
            vectorstore_concurrency=PER_VECTORSTORE,
        )
        self.store = get_store(self.settings)
        self.items: dict[str, Item] = {}
        self.held: list[Held] = []
        self.transcripts: dict[tuple[str, str], str] = {}
        # Each session's summary as the commits left it: (processed_length, processed_sha256).
        self.summaries: dict[tuple[str, str], tuple[int, str]] = {}
        self.submitted = 0

    # -- helpers -----------------------------------------------------------------------------

    def of_session(self, vs: str, sid: str) -> list[Item]:
        return sorted((i for i in self.items.values() if (i.vs, i.sid) == (vs, sid)), key=lambda i: i.order)

    def eligible(self) -> list[Item]:
        """Queued items first in their session's line of unfinished submissions."""
        out = []
        for item in self.items.values():
            if item.state != "queued":
                continue
            line = [i for i in self.of_session(item.vs, item.sid) if i.state in ("queued", "processing")]
            if line and line[0] is item:
                out.append(item)
        return out

    # -- rules ---------------------------------------------------------------------------------

    def summary_of(self, claim: queue.Claim) -> tuple[int, str] | None:
        """The summary a claim's input holds, as the model tracks it."""
        summary = claim.input().summary
        return None if summary is None else (summary.processed_length or 0, summary.processed_sha256 or "")

    @rule(
        vs=st.sampled_from(VECTORSTORES),
        sid=st.sampled_from(SESSIONS),
        repost=st.booleans(),
        big=st.booleans(),
    )
    def submit(self, vs: str, sid: str, repost: bool, big: bool) -> None:
        text = self.transcripts.get((vs, sid), "")
        if not (repost and text):
            # A big one is stored compressed (from COMPRESS_MIN_BYTES): the claim hands it out as stored.
            text += f"user: fact number {self.submitted}.\n" + ("user: and so on.\n" * 600 if big else "")
        self.transcripts[(vs, sid)] = text
        self.submitted += 1
        res = submissions.submit(
            self.store, self.settings, vs, StoreRawRequest(session_data=text, session_id=sid)
        )
        known = self.items.get(res.raw_memory_id)
        if known is not None and known.state != "erased":
            assert res.duplicate
            return
        assert not res.duplicate and res.status == "queued"
        self.items[res.raw_memory_id] = Item(res.raw_memory_id, vs, sid, self.submitted, text)

    @rule(n=st.integers(1, 4))
    def claim(self, n: int) -> None:
        eligible = {i.raw_id for i in self.eligible()}
        room = {
            vs: PER_VECTORSTORE - sum(i.state == "processing" for i in self.items.values() if i.vs == vs)
            for vs in VECTORSTORES
        }
        claimable = sum(min(room[vs], sum(self.items[e].vs == vs for e in eligible)) for vs in VECTORSTORES)
        batch = queue.claim(self.store, self.settings, n)
        assert batch.lost == 0
        assert len(batch.items) == min(n, claimable), (len(batch.items), n, eligible, room)
        for vs in VECTORSTORES:
            assert sum(c.vectorstore == vs for c in batch.items) <= room[vs]
        for c in batch.items:
            item = self.items[c.raw_id]
            assert c.raw_id in eligible and (c.vectorstore, c.session_id) == (item.vs, item.sid)
            assert c.token not in item.tokens  # a fencing token is never reissued
            item.tokens.append(c.token)
            item.attempts += 1
            assert c.attempt == item.attempts
            loaded = c.input()
            assert (loaded.transcript, loaded.state.memories, loaded.state.seq) == (item.text, 0, 0)
            assert self.summary_of(c) == self.summaries.get((item.vs, item.sid))
            item.state = "processing"
            self.held.append(Held(c))

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        held = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        item = self.items[held.claim.raw_id]
        payload, _ = commit_payload()
        sha = hashlib.sha256(item.text.encode()).hexdigest()
        payload.update(ops=[], processed_length=len(item.text), processed_sha256=sha)
        current = item.state == "processing" and item.tokens[-1] == held.claim.token
        if current:  # what the claim read is what a worker decides on: nothing changed it since
            assert self.summary_of(held.claim) == self.summaries.get((item.vs, item.sid))
        result = queue.commit(self.store, held.claim, payload, [])
        assert result.outcome == ("ok" if current else "stale"), (result, item, held)
        if current:
            item.state = "processed"
            done = self.summaries.get((item.vs, item.sid))
            if done is None or len(item.text) >= done[0]:  # a session's summary never moves backwards
                self.summaries[(item.vs, item.sid)] = (len(item.text), sha)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), retryable=st.booleans())
    def fail(self, data: st.DataObject, retryable: bool) -> None:
        held = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        item = self.items[held.claim.raw_id]
        outcome, _ = queue.fail(self.store, self.settings, held.claim, "boom", retryable=retryable)
        current = item.state == "processing" and item.tokens[-1] == held.claim.token
        if not current:
            assert outcome == "stale"
        elif retryable and item.attempts < self.settings.max_attempts:
            assert outcome == "retry"
            item.state = "queued"
        else:
            assert outcome == "dead"
            item.state = "dead"

    @precondition(lambda self: any(not h.expired for h in self.held))
    @rule(data=st.data())
    def lease_runs_out(self, data: st.DataObject) -> None:
        """The worker froze: its lease expires; the next claim reaps it (and the worker is stale)."""
        live = [h for h in self.held if not h.expired]
        held = live[data.draw(st.integers(0, len(live) - 1))]
        item = self.items[held.claim.raw_id]
        if item.state == "processing" and item.tokens[-1] == held.claim.token:
            self.r.zadd(keys.INFLIGHT, {keys.VectorstoreKeys(item.vs).raw(item.raw_id): 0})
            # Reaped inside the next claim: back to the queue, or dead after the last attempt.
            item.state = "queued" if item.attempts < self.settings.max_attempts else "dead"
            queue.claim(self.store, self.settings, 0)
        self.held[self.held.index(held)] = Held(held.claim, expired=True)

    @precondition(lambda self: any(i.state == "dead" for i in self.items.values()))
    @rule(data=st.data())
    def redrive(self, data: st.DataObject) -> None:
        dead = [i for i in self.items.values() if i.state == "dead"]
        item = dead[data.draw(st.integers(0, len(dead) - 1))]
        assert queue.redrive(self.store, item.vs, item.raw_id)[0] == "queued"
        item.state, item.attempts = "queued", 0
        self.submitted += 1
        item.order = self.submitted  # a redrive is a resubmission: behind what its session has waiting

    @rule(vs=st.sampled_from(VECTORSTORES))
    def cleanup(self, vs: str) -> None:
        """Retention (nothing is old enough) and reconciliation change nothing that is consistent."""
        if not any(i.vs == vs for i in self.items.values()):  # never written
            with pytest.raises(NotFound):
                retention.cleanup(self.store, self.settings, vs, CleanupQuery(retention_days=30))
            return
        receipt = retention.cleanup(self.store, self.settings, vs, CleanupQuery(retention_days=30))
        assert receipt.deleted_count == 0 and receipt.reconciled.total == 0

    @rule(vs=st.sampled_from(VECTORSTORES), sid=st.sampled_from(SESSIONS))
    def erase_session(self, vs: str, sid: str) -> None:
        items = [i for i in self.of_session(vs, sid) if i.state != "erased"]
        try:
            retention.erase_session(self.store, vs, sid)
        except Exception as exc:  # only "no such session" (or no such vectorstore) is acceptable
            written = any(i.vs == vs for i in self.items.values())
            expected = "session_not_found" if written else "unknown_vectorstore"
            assert not items and getattr(exc, "code", "") == expected, exc
        for item in items:
            item.state = "erased"
        self.transcripts.pop((vs, sid), None)
        self.summaries.pop((vs, sid), None)

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def every_item_is_where_its_state_says(self) -> None:
        queue_set = set(self.r.zrange(keys.RAW_MEMORY_QUEUE, 0, -1))
        inflight = set(self.r.zrange(keys.INFLIGHT, 0, -1))
        dead = set(self.r.zrange(keys.DEAD, 0, -1))
        for item in self.items.values():
            vk = keys.VectorstoreKeys(item.vs)
            key = vk.raw(item.raw_id)
            status = self.r.hget(key, "status")
            where = (key in queue_set, key in inflight, key in dead)
            expected = {
                "queued": ("queued", (True, False, False)),
                "processing": ("processing", (False, True, False)),
                "processed": ("processed", (False, False, False)),
                "dead": ("error", (False, False, True)),
                "erased": (None, (False, False, False)),
            }[item.state]
            assert (status, where) == expected, (item, status, where)
            assert (self.r.zscore(vk.pending, item.raw_id) is not None) == (item.state == "queued"), item

    @invariant()
    def a_session_has_at_most_one_submission_in_flight(self) -> None:
        for vs in VECTORSTORES:
            for sid in SESSIONS:
                line = self.of_session(vs, sid)
                assert sum(i.state == "processing" for i in line) <= 1
                unfinished = [i for i in line if i.state in ("queued", "processing")]
                if unfinished and any(i.state == "processing" for i in unfinished):
                    assert unfinished[0].state == "processing"  # the one in flight is the first

    @invariant()
    def the_api_counts_what_the_model_holds(self) -> None:
        for vs in VECTORSTORES:
            mine = [i for i in self.items.values() if i.vs == vs]
            if not mine:  # never written: every route answers 404 unknown_vectorstore
                for read in (
                    lambda: status_reads.processing_status(self.store, self.settings, vs),  # noqa: B023
                    lambda: stats_reads.stats(self.store, vs),  # noqa: B023
                ):
                    with pytest.raises(NotFound):
                        read()
                continue
            count = {s: sum(i.state == s for i in mine) for s in ("queued", "processing", "dead")}
            status = status_reads.processing_status(self.store, self.settings, vs).vectorstore
            assert (status.pending, status.in_flight, status.dead) == (
                count["queued"],
                count["processing"],
                count["dead"],
            )
            raws = stats_reads.stats(self.store, vs).counts.raw_memories
            assert (raws.queued, raws.processing, raws.error) == (
                count["queued"],
                count["processing"],
                count["dead"],
            )
            assert raws.processed == sum(i.state == "processed" for i in mine)


def test_the_queue_protocol_matches_its_model(queue_server: RedisServer) -> None:
    """On every queue engine: Redis 8, Valkey 9, and both as one-node clusters (cluster clients)."""
    QueueModel.server = queue_server
    QueueModel.TestCase.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    QueueModel.TestCase().runTest()
