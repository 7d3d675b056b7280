"""The drain loop: claim batches, run the items on worker threads, renew leases and the processor's
registration, hand commits to the event publisher, and report. Processor.process does one item.

The loop's own cost is paid per item, on the thread every worker hands its result to, so it is kept
small: workers take items from one queue and hand results back on another (no Future, lock and
callback per item), and at high concurrency a claim fetches a few items more than there are free
workers, so one claim serves several items instead of each finished item paying for its own.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from memproc import __version__
from memproc import events as ev
from memproc.dal import batch
from memproc.dal import queue as q
from memproc.llm import Usage, gate

if TYPE_CHECKING:
    from memproc.processor import Processor

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
    queued: float = 0.0  # seconds it waited for a worker after its claim
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
            self.waits.append(o.item.waited + o.queued + o.seconds)
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


class Workers:
    """Threads that run `work` on the items put in, in order, each result handed back with its
    item; started as items come (up to `size`), so a short drain starts few. What `work` raises is
    handed back too, for the loop to raise."""

    def __init__(self, size: int, work: Callable[[q.Claim], Outcome]) -> None:
        self.size = size
        self._work = work
        self._inbox: SimpleQueue[tuple[q.Claim, float] | None] = SimpleQueue()
        self.results: SimpleQueue[tuple[q.Claim, Outcome | BaseException]] = SimpleQueue()
        self._threads: list[threading.Thread] = []

    def put(self, item: q.Claim, in_flight: int) -> None:
        """Queue `item`; `in_flight` counts the items put and not yet taken back, this one included."""
        if len(self._threads) < min(self.size, in_flight):
            thread = threading.Thread(target=self._run, name=f"memproc_{len(self._threads)}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._inbox.put((item, time.monotonic()))

    def _run(self) -> None:
        with batch.held_connections():  # one Redis connection per worker for the drain
            self._loop()

    def _loop(self) -> None:
        while (entry := self._inbox.get()) is not None:
            item, put_at = entry
            queued = time.monotonic() - put_at
            try:
                outcome = self._work(item)
            except BaseException as exc:  # handed to the loop, which raises it
                self.results.put((item, exc))
                continue
            outcome.queued = queued
            self.results.put((item, outcome))

    def close(self) -> None:
        """Let every item put in finish, then end the threads."""
        for _ in self._threads:
            self._inbox.put(None)
        for thread in self._threads:
            thread.join()


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: a value that was observed (None for none)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)


def drain_loop(
    processor: Processor,
    publisher: ev.EventPublisher | None,
    concurrency: int | None,
    batch_size: int | None,
    remaining_seconds: Callable[[], float] | None,
    max_items: int | None,
    stop: threading.Event | None,
    progress: Callable[[DrainReport], None] | None,
    admit: Callable[[q.Beat], bool] | None,
) -> DrainReport:
    """The drain itself (Processor.drain documents it): claims, workers, lease renewal, heartbeats."""
    concurrency = concurrency or processor.settings.concurrency
    batch_size = batch_size or processor.settings.batch_size
    report = DrainReport()
    started = time.monotonic()
    # What an item's LLM requests may wait for the shared rate limit: never past this drain's
    # time budget (less one LLM timeout for the request itself) and not once `stop` is set.
    budget = gate.Budget(remaining_seconds, stop or threading.Event(), processor.settings.llm_timeout_seconds)
    me, live_for = uuid.uuid4().hex, float(processor.settings.lease_seconds)

    def beat(**kw: Any) -> q.Beat:
        """The heartbeat as this processor: live for `ttl` more seconds, or leaving (no ttl)."""
        return q.heartbeat(processor.store, processor.settings, __version__, processor=me, **kw)

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
    # Each claimed item and when its lease was last set (claimed or renewed).
    running: dict[q.Claim, float] = {}
    # Items claimed beyond the free workers, waiting in the workers' queue: one claim then serves
    # `ahead` items or more (at concurrency 64, one claim round trip per 8 items instead of one
    # per item), and no worker waits for a claim. Kept to an eighth of the workers, so an item
    # waits at most about an eighth of an item's time; none below 8 workers.
    ahead = min(batch_size, concurrency // 8)
    mean_seconds = 0.0
    renew_after = processor.settings.lease_seconds / 3
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
            due = [claim for claim, at in running.items() if now - at >= renew_after]
            if due:
                gone = q.renew(processor.store, processor.settings, due)
                report.renewed += len(due) - len(gone)
                for claim in due:
                    running[claim] = now
            next_renewal = min((at + renew_after for at in running.values()), default=math.inf)
        return max(0.1, min(next_renewal - now, beat_at - now))

    workers = Workers(concurrency, lambda item: processor._process_within(budget, item))
    try:
        # handled-count when a claim last came back short: nothing more was eligible then.
        empty_at: int | None = None
        while True:
            free = concurrency + ahead - len(running)
            if free > ahead and may_claim() and (empty_at is None or report.handled > empty_at):
                # Claim while the queue has work; after a short claim, look again once an item
                # is done: its vectorstore (held to VECTORSTORE_CONCURRENCY) may have more.
                want = min(free, batch_size)
                if max_items is not None:
                    want = min(want, max_items - report.handled - len(running))
                batch = q.claim(processor.store, processor.settings, want)
                report.reaped += batch.reaped
                report.lost += batch.lost
                if publisher is not None:  # dead-lettered by the claim (expired last lease, lost)
                    for d in batch.dead:
                        publisher.publish(ev.failed_event(d, d.error))
                claimed_at = time.monotonic()
                for item in batch.items:
                    running[item] = claimed_at
                    workers.put(item, len(running))
                if batch.items:
                    next_renewal = min(next_renewal, claimed_at + renew_after)
                empty_at = report.handled if len(batch.items) < want and not batch.more else None
                if batch.more:
                    continue  # the reply's byte budget cut the claim short: claim the rest at once
            if not running:
                if empty_at is None and may_claim():
                    continue
                break
            try:
                done = [workers.results.get(timeout=renew_leases())]
            except Empty:
                continue
            while not workers.results.empty():  # all that are done by now: one claim serves them
                done.append(workers.results.get())
            for item, result in done:
                del running[item]
                if isinstance(result, BaseException):
                    raise result
                report.add(result)
                if publisher is not None and (event := result.event()) is not None:
                    publisher.publish(event)  # after the commit; sent from the publisher's thread
                n = report.handled
                mean_seconds += (result.seconds - mean_seconds) / n
            report.seconds = time.monotonic() - started
            if progress:
                progress(report)
    finally:
        workers.close()
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
