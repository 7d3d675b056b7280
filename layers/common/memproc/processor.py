"""Turns queued raw memories into the memory hierarchy: claim, reconcile, extract, embed, commit.

Per session: its input (transcript, summary, memory state: read by the claim that hands it out),
the related memories (an embeddings call over the user's turns and two lookup round trips), one
LLM call (per chunk) that decides new memories and what happens to related ones, one embeddings
call for new and changed texts, and one commit (an atomic call that writes everything and acks).
Claims and heartbeats are shared by a batch, so Redis round trips per session stay constant
however large the vectorstore grows; the workers' embeddings calls are coalesced
(``embedding_batch``), so HTTP requests per session fall as concurrency grows."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from memproc import events as ev
from memproc import reconcile
from memproc.dal import queue as q
from memproc.dal import reads
from memproc.dal.connection import Store
from memproc.dal.memory_index import IndexUnavailable
from memproc.drain import DrainReport, Outcome, drain_loop
from memproc.embedding_batch import EmbeddingBatcher
from memproc.llm import Extraction, LLMError, LLMProvider, RetryableLLMError, Usage, gate
from memproc.llm.base import Vector
from memproc.llm.schema import Candidate
from memproc.settings import Settings
from memproc.timeutil import session_time

log = logging.getLogger("memproc.processor")


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
            outcome = self._failed(
                item,
                f"{type(exc).__name__}: {exc}",
                retryable=exc.retryable,
                min_delay=exc.retry_after or 0.0,
                counts_attempt=exc.counts_attempt,
            )
        except IndexUnavailable as exc:
            # The engine is (re)building its index: decide later, not blind, and never dead-letter
            # a session for it (a rebuild can outlast every attempt's backoff).
            log.warning("memory index unavailable for %s/%s: %s", item.vectorstore, item.raw_id, exc)
            outcome = self._failed(
                item,
                f"IndexUnavailable: {exc}",
                retryable=True,
                min_delay=exc.retry_after,
                counts_attempt=False,
            )
        except Exception as exc:  # a bug or an outage: retried, and dead after the last attempt
            log.exception("processing %s/%s failed", item.vectorstore, item.raw_id)
            outcome = self._failed(item, f"{type(exc).__name__}: {exc}", retryable=True)
        outcome.seconds = time.monotonic() - started
        return outcome

    def _failed(
        self,
        item: q.Claim,
        error: str,
        *,
        retryable: bool,
        min_delay: float = 0.0,
        counts_attempt: bool = True,
        usage: Usage | None = None,
    ) -> Outcome:
        """Back to the queue (or dead); when the store cannot take even that, the item stays leased
        and the reaper re-queues it after its lease, so a store outage never ends the drain."""
        try:
            result, _ = q.fail(
                self.store,
                self.settings,
                item,
                error,
                retryable=retryable,
                min_delay=min_delay,
                counts_attempt=counts_attempt,
            )
        except Exception:  # an outage (StoreError) or worse: never the end of the whole drain
            log.exception("could not record the failure of %s/%s", item.vectorstore, item.raw_id)
            result = "stale"
        return Outcome(item, result, usage=usage or Usage(), error=error)

    def _process(self, item: q.Claim, started: float) -> Outcome:
        loaded = item.input()  # read by the claim: no round trip of its own
        if loaded.transcript is None:
            return Outcome(item, "stale")  # a record without its transcript: nothing to write
        work = self.plan(item, loaded)
        if not work.text.strip():  # covered, or nothing new: no LLM call, no memory operation
            extraction = Extraction.model_construct(memories=[], operations=[], summary="", topics=[])
            payload = self._payload(work, extraction, [], reconcile.Lookup(0, 0), Usage(), started)
            return self._outcome(item, self.commit(item, payload, []), Usage())
        try:
            lookup, usage = reconcile.find(
                self.store,
                self.provider,
                item.vectorstore,
                work.text,
                embed=self.embedder.embed,
                state=loaded.state,
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
            return self._failed(
                item,
                f"embedding mismatch: this processor embeds with {self.provider.embedding_model!r} "
                f"({self.provider.dimensions} dimensions) but the {result.detail}",
                retryable=False,
                usage=usage,
            )
        if result.outcome != "ok":
            return Outcome(item, "stale", usage=usage)
        return Outcome(item, "processed", result.created, result.merged, usage, commit=result)

    def plan(self, item: q.Claim, loaded: reads.ProcessingInput) -> Work:
        """Full, delta or nothing: a re-posted, longer version of a processed session costs only its
        new part; an older, shorter one processed after it (a late redrive) costs nothing when the
        processed transcript starts with it. The summary is the claim's read: no other submission of
        the session can commit while this one holds its claim (reads.ProcessingInput)."""
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
            report = drain_loop(
                self, publisher, concurrency, batch_size, remaining_seconds, max_items, stop, progress, admit
            )
        finally:
            # Flush within what the invocation has left, less a margin for the heartbeat and logs.
            left = remaining_seconds() - 3.0 if remaining_seconds else 30.0
            sent = publisher.close(timeout=max(1.0, min(30.0, left))) if publisher else None
        if sent is not None:
            report.events_published, report.events_retried = sent.published, sent.retried
            report.events_failed = sent.failed
        return report


def build_processor(settings: Settings, store: Store | None = None) -> Processor:
    """The processor with this process's Redis clients (or `store`) and the configured LLM
    provider, whose requests pass this processor's rate-limit gate."""
    from memproc.dal.connection import get_store
    from memproc.llm import make_provider

    store = store or get_store(settings)
    return Processor(store, settings, make_provider(settings, gate.Gate.from_settings(store, settings)))
