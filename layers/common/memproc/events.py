"""Events when memory is ready: `SessionProcessed` and `SessionFailed` on an EventBridge bus.

The processor hands each outcome to an `EventPublisher` after the commit (or the dead-lettering)
is done; the publisher's own thread batches them into `PutEvents` calls of at most 10 entries, so
a slow or failing EventBridge never delays a commit. Entries a call reports failed
(`FailedEntryCount`, a retryable `ErrorCode`) and whole calls that raise are re-sent with backoff,
up to `max_attempts`; what still fails is logged with its ids and counted (`EventsFailed`), never
dropped silently. `close()` at the end of a drain flushes whatever is still waiting.

Delivery is at least once while the process lives (a call that timed out after EventBridge took
it is sent again: subscribers dedupe on `detail.raw_memory_id` + `detail-type`); an event whose
process dies between the commit and the publish is not sent. See:
https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_PutEvents.html
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memproc.dal.queue import Claim, CommitResult, DeadLetter
from memproc.settings import Settings

log = logging.getLogger("memproc.events")

SOURCE = "memproc"
PROCESSED = "SessionProcessed"
FAILED = "SessionFailed"
MAX_ENTRIES = 10  # PutEvents takes at most 10 entries per call...
MAX_REQUEST_BYTES = 240_000  # ...of at most 256 KB together (kept under it)
# Per-entry error codes worth sending again; anything else (a malformed entry) never succeeds.
RETRYABLE_CODES = frozenset({"InternalFailure", "ThrottlingException", "InternalException"})


@dataclass(frozen=True)
class Event:
    detail_type: str
    detail: dict[str, Any]

    def entry(self, bus: str) -> dict[str, Any]:
        return {
            "Source": SOURCE,
            "DetailType": self.detail_type,
            "Detail": json.dumps(self.detail, separators=(",", ":"), ensure_ascii=False),
            "EventBusName": bus,
        }

    def ids(self) -> dict[str, Any]:
        """What a log line names when the event could not be published."""
        keep = ("vectorstore_name", "session_id", "raw_memory_id")
        return {"detail_type": self.detail_type, **{k: self.detail.get(k) for k in keep}}


def _tokens(tokens_in: int, tokens_out: int) -> dict[str, int]:
    return {"tokens_in": tokens_in, "tokens_out": tokens_out, "total": tokens_in + tokens_out}


def processed_event(item: Claim, commit: CommitResult, tokens_in: int, tokens_out: int) -> Event:
    """A committed session. Memory ids derive from (raw id, position), so the ids that start with
    this raw id are the memories it created; the others are existing memories it confirmed,
    updated, superseded or retracted."""
    created = [m for m in commit.memory_ids if m.startswith(f"{item.raw_id}-")]
    counts = {
        "created": commit.created,
        "merged": commit.merged,
        "updated": commit.updated,
        "superseded": commit.superseded,
        "retracted": commit.retracted,
    }
    return Event(
        PROCESSED,
        {
            "vectorstore_name": item.vectorstore,
            "session_id": item.session_id,
            "raw_memory_id": item.raw_id,
            "memories": counts,
            "created_memory_ids": created,
            "updated_memory_ids": [m for m in commit.memory_ids if m not in created],
            "tokens": _tokens(tokens_in, tokens_out),
            "attempt": item.attempt,
        },
    )


def failed_event(item: Claim | DeadLetter, error: str, tokens_in: int = 0, tokens_out: int = 0) -> Event:
    """A dead-lettered session (GET dead_letters lists it; POST raw/{id}/retry redrives it)."""
    return Event(
        FAILED,
        {
            "vectorstore_name": item.vectorstore,
            "session_id": item.session_id,
            "raw_memory_id": item.raw_id,
            "error": error[:1000],
            "attempt": item.attempt,
            "tokens": _tokens(tokens_in, tokens_out),
        },
    )


@dataclass(frozen=True)
class PublishReport:
    published: int = 0
    retried: int = 0  # entries sent again after a failed call or a failed entry
    failed: int = 0  # entries given up on (logged with their ids)
    calls: int = 0


class EventPublisher:
    """Publishes events from its own thread, batched; `publish` never waits for the network."""

    def __init__(
        self,
        client: Any,
        bus: str,
        *,
        max_attempts: int = 5,
        backoff_seconds: float = 0.2,
        max_backoff_seconds: float = 5.0,
    ) -> None:
        self.client = client
        self.bus = bus
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._queue: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._abandoned = threading.Event()
        self._lock = threading.Lock()
        self._published = self._retried = self._failed = self._calls = 0
        self._thread = threading.Thread(target=self._run, name="memproc-events", daemon=True)
        self._thread.start()

    def publish(self, event: Event) -> None:
        if self._closing.is_set():
            raise RuntimeError("EventPublisher is closed")
        self._queue.put(event)

    def close(self, timeout: float | None = 30.0) -> PublishReport:
        """Send everything still waiting (up to `timeout` seconds), then stop. Entries left unsent
        when time runs out are logged and counted as failed."""
        if not self._closing.is_set():
            self._closing.set()
            self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandoned.set()  # the thread finishes the call it is in, then stops
            left: list[Event] = []
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    left.append(item)
            self._give_up(left, "the drain ended before they could be sent")
        with self._lock:
            return PublishReport(self._published, self._retried, self._failed, self._calls)

    # ------------------------------------------------------------------ the publisher's thread

    def _run(self) -> None:
        done = False
        while not done and not self._abandoned.is_set():
            item = self._queue.get()
            if item is None:
                return
            batch, size = [item], len(json.dumps(item.entry(self.bus)))
            while len(batch) < MAX_ENTRIES:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:  # close(): send this batch, then stop
                    done = True
                    break
                n = len(json.dumps(nxt.entry(self.bus)))
                if size + n > MAX_REQUEST_BYTES:
                    self._send(batch)
                    batch, size = [], 0
                batch.append(nxt)
                size += n
            self._send(batch)

    def _send(self, batch: list[Event]) -> None:
        pending = batch
        reason = ""
        for attempt in range(1, self.max_attempts + 1):
            retry, reason = self._call(pending)
            if not retry:
                return
            if attempt == self.max_attempts or self._abandoned.is_set():
                break
            with self._lock:
                self._retried += len(retry)
            pending = retry
            # Backoff between attempts (not synchronisation): EventBridge throttles by account.
            threading.Event().wait(min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1)))
        self._give_up(pending, f"still failing after {self.max_attempts} attempts: {reason}")

    def _call(self, events: list[Event]) -> tuple[list[Event], str]:
        """One PutEvents call; the events to send again and why."""
        with self._lock:
            self._calls += 1
        try:
            reply = self.client.put_events(Entries=[e.entry(self.bus) for e in events])
        except Exception as exc:  # botocore's ClientError / BotoCoreError: the whole call failed
            log.warning("PutEvents failed (%d entries): %s", len(events), exc)
            return events, f"{type(exc).__name__}: {exc}"
        results = reply.get("Entries") or []
        if not reply.get("FailedEntryCount") and len(results) == len(events):
            with self._lock:
                self._published += len(events)
            return [], ""
        retry: list[Event] = []
        hopeless: list[Event] = []
        reason = ""
        for event, result in zip(events, results + [{"ErrorCode": "Missing"}] * len(events), strict=False):
            code = result.get("ErrorCode")
            if not code:
                with self._lock:
                    self._published += 1
                continue
            reason = f"{code}: {result.get('ErrorMessage', '')}"
            (retry if code in RETRYABLE_CODES or code == "Missing" else hopeless).append(event)
        if hopeless:
            self._give_up(hopeless, f"refused: {reason}")
        return retry, reason

    def _give_up(self, events: list[Event], why: str) -> None:
        if not events:
            return
        with self._lock:
            self._failed += len(events)
        log.error(
            "%d event(s) not published to %s: %s",
            len(events),
            self.bus,
            why,
            extra={"events": [e.ids() for e in events]},
        )


PublisherFactory = Callable[[], EventPublisher | None]


def publisher_factory(settings: Settings) -> PublisherFactory:
    """A publisher per drain when EVENT_BUS_NAME is set (one boto3 client per process), else none."""
    bus = settings.event_bus_name
    if not bus:
        return lambda: None
    client: list[Any] = []

    def make() -> EventPublisher:
        if not client:
            import boto3  # the Lambda runtime has it; only a processor with a bus needs it

            client.append(boto3.client("events"))
        return EventPublisher(client[0], bus)

    return make
