"""Turns queued raw memories into the memory hierarchy: claim, reconcile, extract, embed, commit.

Per session: one load (pipelined), the related memories (an embeddings call over the user's turns
and one pipelined lookup), one LLM call (per chunk) that decides new memories and what happens to
related ones, one embeddings call for new and changed texts, and one commit (an atomic call that
writes everything and acks). Claims and heartbeats are shared by a batch, so Redis round trips per
session stay constant however large the vectorstore grows; the workers' embeddings calls are
coalesced (``embedding_batch``), so HTTP requests per session fall as concurrency grows.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import datetime
from queue import Empty, SimpleQueue
from typing import Any

from memproc import __version__, reconcile
from memproc import events as ev
from memproc.dal import queue as q
from memproc.dal import reads
from memproc.dal.connection import Store, StoreError
from memproc.dal.memory_index import IndexUnavailable
from memproc.embedding_batch import EmbeddingBatcher
from memproc.llm import Extraction, LLMError, LLMProvider, RetryableLLMError, Usage, gate
from memproc.llm.base import Vector
from memproc.llm.schema import Candidate
from memproc.settings import Settings
from memproc.timeutil import session_time

log = logging.getLogger("memproc.processor")


@dataclass
class Outcome:
    item: q.Claim
    result: str  # processed | retry | dead | stale
    memories_created: int = 0
    memories_merged: int = 0
    usage: Usage = field(default_factory=Usage)
    error: str = ""
    seconds: float = 0.0
    commit: q.CommitResult | None = None  # what the commit wrote, when it was processed

    def event(self) -> ev.Event | None:
        """SessionProcessed for a commit, SessionFailed for a dead letter, else nothing."""
        if self.result == "processed" and self.commit is not None:
            return ev.processed_event(self.item, self.commit, self.usage.tokens_in, self.usage.tokens_out)
        if self.result == "dead":
            return ev.failed_event(self.item, self.error, self.usage.tokens_in, self.usage.tokens_out)
        return None


@dataclass
class DrainReport:
    processed: int = 0
    retried: int = 0
    dead: int = 0
    stale: int = 0  # fenced out: the item was reclaimed or erased while this worker held it
    reaped: int = 0
    lost: int = 0  # queue entries whose raw record was gone (evicted?), dead-lettered as such
    renewed: int = 0
    memories_created: int = 0
    memories_merged: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    # The queue as this drain found it (its first heartbeat), for the scale metrics.
    backlog: int = 0
    backlog_age_seconds: float = 0.0
    processors_running: int = 0
    admitted: bool = True  # False: MAX_PROCESSORS were already running, so this one left at once
    # Seconds from submission to processed, one per processed item (summarised as percentiles).
    waits: list[float] = field(default_factory=list, repr=False)
    # Rate limiting (llm/gate.py): LLM requests that waited for the shared limit and how long in
    # all, items sent back to the queue because the wait would outlast the invocation, and the
    # 429s the provider answered (the SDK's own retries included).
    rate_limit_waits: int = 0
    rate_limit_wait_seconds: float = 0.0
    rate_limit_deferred: int = 0
    llm_throttled: int = 0
    events_published: int = 0
    events_retried: int = 0  # entries sent again (a failed PutEvents call or entry)
    events_failed: int = 0  # entries given up on, logged with their ids

    @property
    def handled(self) -> int:
        return self.processed + self.retried + self.dead + self.stale

    @property
    def rate(self) -> float | None:
        return self.processed / self.seconds if self.processed and self.seconds > 0 else None

    @property
    def wait_p50(self) -> float | None:
        return percentile(self.waits, 0.50)

    @property
    def wait_p95(self) -> float | None:
        return percentile(self.waits, 0.95)

    def summary(self) -> dict[str, Any]:
        """The drain as its log line and JSON output show it: the waits as percentiles."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "waits"}
        out["seconds"] = round(self.seconds, 3)
        out["rate_per_second"] = round(self.rate, 3) if self.rate else None
        out["queue_wait_p50_seconds"] = self.wait_p50
        out["queue_wait_p95_seconds"] = self.wait_p95
        return out

    def add(self, o: Outcome) -> None:
        if o.result == "processed":
            self.processed += 1
            self.waits.append(o.item.waited + o.seconds)
        elif o.result == "retry":
            self.retried += 1
        elif o.result == "dead":
            self.dead += 1
        else:
            self.stale += 1
        self.memories_created += o.memories_created
        self.memories_merged += o.memories_merged
        self.tokens_in += o.usage.tokens_in
        self.tokens_out += o.usage.tokens_out


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: a value that was observed (None for none)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)


@dataclass(frozen=True)
class Work:
    """What one item asks of the LLM: the whole transcript, or only what is new since its
    session's summary (a re-posted, longer version of a processed session costs its delta)."""

    transcript: str
    text: str
    mode: str  # full | delta | covered (a longer version of it was already processed)
    previous_summary: str | None
    session_time: datetime


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# A session whose related memories keep changing under it (other sessions of the vectorstore
# committing) is re-decided at most this often, then retried later from the queue.
MAX_EXTRACTIONS = 3
MAX_COMMITS = 8
HISTORY_LIMIT = 50


class Processor:
    """Processes claimed items; thread-safe, so one instance serves a worker pool."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        provider: LLMProvider,
        publishers: ev.PublisherFactory | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.provider = provider
        self.publishers = publishers or ev.publisher_factory(settings)
        # The workers' embeddings calls, coalesced: one request for every session asking at once.
        self.embedder = EmbeddingBatcher(provider.embed)

    def process(self, item: q.Claim) -> Outcome:
        started = time.monotonic()
        try:
            outcome = self._process(item, started)
        except LLMError as exc:
            error = f"{type(exc).__name__}: {exc}"
            result, _ = q.fail(
                self.store,
                self.settings,
                item,
                error,
                retryable=exc.retryable,
                min_delay=exc.retry_after or 0.0,
                counts_attempt=exc.counts_attempt,
            )
            outcome = Outcome(item, result, error=error)
        except IndexUnavailable as exc:  # the engine is (re)building its index: decide later, not blind
            log.warning("memory index unavailable for %s/%s: %s", item.vectorstore, item.raw_id, exc)
            error = f"IndexUnavailable: {exc}"
            result, _ = q.fail(
                self.store, self.settings, item, error, retryable=True, min_delay=exc.retry_after
            )
            outcome = Outcome(item, result, error=error)
        except Exception as exc:  # a bug or an outage: retried, and dead after the last attempt
            log.exception("processing %s/%s failed", item.vectorstore, item.raw_id)
            error = f"{type(exc).__name__}: {exc}"
            try:
                result, _ = q.fail(self.store, self.settings, item, error, retryable=True)
            except StoreError:
                result = "stale"  # the lease will expire and the reaper re-queues the item
            outcome = Outcome(item, result, error=error)
        outcome.seconds = time.monotonic() - started
        return outcome

    def _process(self, item: q.Claim, started: float) -> Outcome:
        loaded = reads.processing_input(self.store, item.vectorstore, item.raw_id, item.session_id)
        if loaded.transcript is None:
            return Outcome(item, "stale")  # erased while we held it; nothing to write
        work = self.plan(item, loaded)
        if not work.text.strip():  # covered, or nothing new: no LLM call, no memory operation
            extraction = Extraction.model_construct(memories=[], operations=[], summary="", topics=[])
            payload = self._payload(work, extraction, [], reconcile.Lookup(0, 0), Usage(), started)
            return self._outcome(item, self.commit(item, payload, []), Usage())
        try:
            lookup, usage = reconcile.find(
                self.store, self.provider, item.vectorstore, work.text, embed=self.embedder.embed
            )
        except reconcile.EmbeddingMismatch as exc:
            return self._outcome(item, q.CommitResult("mismatch", detail=str(exc)), Usage())
        for _ in range(MAX_EXTRACTIONS):
            extraction, extract_usage = self.extract(work, lookup.candidates)
            decision = reconcile.decide(extraction, lookup)
            vectors, embed_usage = self.embed(decision.texts)
            usage += extract_usage + embed_usage
            blobs = [reconcile.fp32(v) for v in vectors]
            for _ in range(MAX_COMMITS):
                ops, used = reconcile.backstop(
                    self.store,
                    item.vectorstore,
                    decision,
                    blobs,
                    lookup,
                    reconciles=self.provider.reconciles,
                    threshold=self.settings.merge_similarity_threshold,
                )
                payload = self._payload(work, extraction, ops, lookup, usage, started)
                result = self.commit(item, payload, used)
                if result.outcome not in ("moved", "conflict"):
                    return self._outcome(item, result, usage)
                # Another session of this vectorstore changed its memories meanwhile: if none of
                # those this session is about changed, the decision holds; else decide again.
                fresh, lookup_usage = reconcile.find(
                    self.store,
                    self.provider,
                    item.vectorstore,
                    work.text,
                    previous=lookup,
                    embed=self.embedder.embed,
                )
                usage += lookup_usage
                held = result.outcome == "moved" and reconcile.same_view(lookup, fresh)
                lookup = fresh
                if not held:
                    break
            else:
                break
        raise RetryableLLMError("the vectorstore's related memories kept changing; retried later")

    def _payload(
        self,
        work: Work,
        extraction: Extraction,
        ops: list[dict[str, Any]],
        lookup: reconcile.Lookup,
        usage: Usage,
        started: float,
    ) -> dict[str, Any]:
        return {
            "ops": ops,
            "seen_seq": lookup.seq,
            "backend": self.store.index.name,
            "valid_from": work.session_time.timestamp(),
            "history_limit": HISTORY_LIMIT,
            "summary": extraction.summary if extraction.summary else (work.previous_summary or ""),
            "topics": extraction.topics,
            "tokens_in": usage.tokens_in,
            "tokens_out": usage.tokens_out,
            "processed_length": len(work.transcript),
            "processed_sha256": _sha256(work.transcript),
            "raw_retention": self.settings.raw_retention_seconds,
            "session_retention": self.settings.session_retention_seconds,
            "embedding_model": self.provider.embedding_model,
            "dimensions": self.provider.dimensions,
            "processing_ms": int((time.monotonic() - started) * 1000),
            "mode": work.mode if work.text.strip() or work.mode == "covered" else "unchanged",
        }

    def _outcome(self, item: q.Claim, result: q.CommitResult, usage: Usage) -> Outcome:
        if result.outcome == "mismatch":
            failed, _ = q.fail(
                self.store,
                self.settings,
                item,
                f"embedding mismatch: this processor embeds with {self.provider.embedding_model!r} "
                f"({self.provider.dimensions} dimensions) but the {result.detail}",
                retryable=False,
            )
            return Outcome(item, failed, usage=usage, error=f"embedding mismatch: {result.detail}")
        if result.outcome != "ok":
            return Outcome(item, "stale", usage=usage)
        return Outcome(item, "processed", result.created, result.merged, usage, commit=result)

    def plan(self, item: q.Claim, loaded: reads.ProcessingInput) -> Work:
        """Full, delta or nothing: a re-posted, longer version of a processed session costs only its
        new part; an older, shorter one processed after it (a late redrive) costs nothing when the
        processed transcript starts with it."""
        transcript, summary = loaded.transcript or "", loaded.summary
        when = session_time(loaded.metadata, loaded.created_at)
        if summary and summary.processed_length:
            done = summary.processed_length
            if done <= len(transcript) and _sha256(transcript[:done]) == summary.processed_sha256:
                return Work(transcript, transcript[done:], "delta", summary.summary, when)
            if done > len(transcript) and summary.processed_raw_id not in (None, item.raw_id):
                longer = reads.transcript(self.store, item.vectorstore, summary.processed_raw_id)
                if longer is not None and longer.startswith(transcript):
                    return Work(transcript, "", "covered", summary.summary, when)
        return Work(transcript, transcript, "full", None, when)

    def extract(self, work: Work, candidates: Sequence[Candidate]) -> tuple[Extraction, Usage]:
        """The LLM call that decides one item (one per chunk), shown the related memories."""
        return self.provider.extract(
            work.text,
            session_timestamp=work.session_time,
            previous_summary=work.previous_summary,
            candidates=candidates,
        )

    def embed(self, texts: list[str]) -> tuple[list[Vector], Usage]:
        """One embeddings call for every new or changed text (none when there is none), shared
        with the other workers' calls waiting at that moment."""
        return self.embedder.embed(texts) if texts else ([], Usage())

    def commit(self, item: q.Claim, payload: dict[str, Any], vectors: list[bytes]) -> q.CommitResult:
        """Everything the item produced, and its ack, in one atomic call fenced by its token. The
        memory index must exist before the first memory is written (the Query Engine's is created on
        first use, once per process; a vector set needs nothing)."""
        if payload["ops"]:
            self.store.index.ensure(payload["dimensions"])
        return q.commit(self.store, item, payload, vectors)

    def _process_within(self, budget: gate.Budget, item: q.Claim) -> Outcome:
        """`process` on a worker thread, its LLM requests waiting within the drain's budget."""
        with gate.within(budget):
            return self.process(item)

    def drain(
        self,
        *,
        concurrency: int | None = None,
        batch_size: int | None = None,
        remaining_seconds: Callable[[], float] | None = None,
        max_items: int | None = None,
        stop: threading.Event | None = None,
        progress: Callable[[DrainReport], None] | None = None,
        admit: Callable[[q.Beat], bool] | None = None,
    ) -> DrainReport:
        """Process until the queue has nothing eligible, time runs short, or `stop` is set.

        Leases of items held longer than a third of LEASE_SECONDS are renewed, so long work is
        never reaped while this worker lives, and a dead worker's items come back within a lease.
        The drain counts as a live processor meanwhile (renewed the same way); `admit` sees the
        first heartbeat's figures and may end the drain before it claims anything (fan-out).
        Each commit and dead letter is handed to this drain's event publisher (EVENT_BUS_NAME),
        which sends from its own thread; the drain's end flushes what it has not sent yet.
        """
        publisher = self.publishers()
        try:
            report = self._drain(
                publisher, concurrency, batch_size, remaining_seconds, max_items, stop, progress, admit
            )
        finally:
            # Flush within what the invocation has left, less a margin for the heartbeat and logs.
            left = remaining_seconds() - 3.0 if remaining_seconds else 30.0
            sent = publisher.close(timeout=max(1.0, min(30.0, left))) if publisher else None
        if sent is not None:
            report.events_published, report.events_retried = sent.published, sent.retried
            report.events_failed = sent.failed
        return report

    def _drain(
        self,
        publisher: ev.EventPublisher | None,
        concurrency: int | None,
        batch_size: int | None,
        remaining_seconds: Callable[[], float] | None,
        max_items: int | None,
        stop: threading.Event | None,
        progress: Callable[[DrainReport], None] | None,
        admit: Callable[[q.Beat], bool] | None,
    ) -> DrainReport:
        concurrency = concurrency or self.settings.concurrency
        batch_size = batch_size or self.settings.batch_size
        report = DrainReport()
        started = time.monotonic()
        # What an item's LLM requests may wait for the shared rate limit: never past this drain's
        # time budget (less one LLM timeout for the request itself) and not once `stop` is set.
        budget = gate.Budget(remaining_seconds, stop or threading.Event(), self.settings.llm_timeout_seconds)
        me, live_for = uuid.uuid4().hex, float(self.settings.lease_seconds)

        def beat(**kw: Any) -> q.Beat:
            """The heartbeat as this processor: live for `ttl` more seconds, or leaving (no ttl)."""
            return q.heartbeat(self.store, self.settings, __version__, processor=me, **kw)

        first = beat(starting=True, ttl=live_for)
        report.backlog, report.backlog_age_seconds = first.backlog, first.backlog_age
        report.processors_running = first.processors
        if first.policy != "noeviction":
            log.warning(
                "the store's maxmemory-policy is %r: an evicting store can delete queued sessions; "
                "set it to noeviction (store_raw refuses new sessions until then)",
                first.policy,
            )
        if admit is not None and not admit(first):
            report.admitted = False
            beat()
            return report
        running: dict[Future[Outcome], tuple[q.Claim, float]] = {}
        # Workers hand in their futures as they finish: taking them from a queue costs the same
        # however many are running (concurrent.futures.wait locks every running future per call).
        finished: SimpleQueue[Future[Outcome]] = SimpleQueue()
        mean_seconds = 0.0
        renew_after = self.settings.lease_seconds / 3
        next_renewal = math.inf  # when the earliest lease is due for renewal (monotonic)
        beat_at = started + renew_after

        def may_claim() -> bool:
            if stop is not None and stop.is_set():
                return False
            if max_items is not None and report.handled + len(running) >= max_items:
                return False
            # Leave time for the slowest item we expect, and never less than 10 s.
            return remaining_seconds is None or remaining_seconds() > max(10.0, 3 * mean_seconds)

        def renew_leases() -> float:
            """Renew the leases due (and this processor's registration); seconds until the next is due."""
            nonlocal next_renewal, beat_at
            now = time.monotonic()
            if now >= beat_at:
                beat(ttl=live_for)
                beat_at = now + renew_after
            if now >= next_renewal:  # else no lease is due: no need to look at each
                due = [(fut, claim) for fut, (claim, at) in running.items() if now - at >= renew_after]
                if due:
                    gone = q.renew(self.store, self.settings, [claim for _, claim in due])
                    report.renewed += len(due) - len(gone)
                    for fut, claim in due:
                        running[fut] = (claim, now)
                next_renewal = min((at + renew_after for _, at in running.values()), default=math.inf)
            return max(0.1, min(next_renewal - now, beat_at - now))

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="memproc") as pool:
            # handled-count when a claim last came back short: nothing more was eligible then.
            empty_at: int | None = None
            while True:
                free = concurrency - len(running)
                if free > 0 and may_claim() and (empty_at is None or report.handled > empty_at):
                    # Claim while the queue has work; after a short claim, look again once an item
                    # is done: its vectorstore (held to VECTORSTORE_CONCURRENCY) may have more.
                    want = min(free, batch_size)
                    if max_items is not None:
                        want = min(want, max_items - report.handled - len(running))
                    batch = q.claim(self.store, self.settings, want)
                    report.reaped += batch.reaped
                    report.lost += batch.lost
                    if publisher is not None:  # dead-lettered by the claim (expired last lease, lost)
                        for d in batch.dead:
                            publisher.publish(ev.failed_event(d, d.error))
                    claimed_at = time.monotonic()
                    for item in batch.items:
                        fut = pool.submit(self._process_within, budget, item)
                        running[fut] = (item, claimed_at)
                        fut.add_done_callback(finished.put)
                    if batch.items:
                        next_renewal = min(next_renewal, claimed_at + renew_after)
                    empty_at = report.handled if len(batch.items) < want else None
                if not running:
                    if empty_at is None and may_claim():
                        continue
                    break
                try:
                    done = [finished.get(timeout=renew_leases())]
                except Empty:
                    continue
                while not finished.empty():  # all that are done by now: one claim serves them
                    done.append(finished.get())
                for fut in done:
                    del running[fut]
                    outcome = fut.result()
                    report.add(outcome)
                    event = outcome.event()
                    if publisher is not None and event is not None:
                        publisher.publish(event)  # after the commit; sent from the publisher's thread
                    n = report.handled
                    mean_seconds += (outcome.seconds - mean_seconds) / n
                report.seconds = time.monotonic() - started
                if progress:
                    progress(report)
        report.seconds = time.monotonic() - started
        _add_rate_stats(report, budget.stats)
        # A drain of 50+ sessions replaces the measured rate; smaller ones nudge it.
        beat(rate=report.rate, weight=min(1.0, report.processed / 50))
        return report


def _add_rate_stats(report: DrainReport, stats: gate.RateStats) -> None:
    report.rate_limit_waits = stats.waits
    report.rate_limit_wait_seconds = round(stats.wait_seconds, 3)
    report.rate_limit_deferred = stats.deferred
    report.llm_throttled = stats.throttled


def build_processor(settings: Settings, store: Store | None = None) -> Processor:
    """The processor with this process's Redis clients (or `store`) and the configured LLM
    provider, whose requests pass this processor's rate-limit gate."""
    from memproc.dal.connection import get_store
    from memproc.llm import make_provider

    store = store or get_store(settings)
    return Processor(store, settings, make_provider(settings, gate.Gate.from_settings(store, settings)))
