"""Keeping LLM requests within the provider's limits: this processor's AIMD gate, and its bookings
in the shared limiter (`dal/ratelimit.py`) that keeps every processor together within them.

Every HTTP request to the provider passes `Gate.request` (`llm/gated_http.py` puts it under the
openai client, so the SDK's own retries pass it too):

1. a slot of this processor's in-flight gate for that model (AIMD: unlimited until a 429, then
   half of what was in flight, one more per `SUCCESSES_PER_STEP` successes, unlimited again once
   back at the most it ever had in flight);
2. a booking in the shared limiter when the model is limited. At the limit the booking is for
   later and the request waits for it: without holding a Redis connection, interruptibly (the
   drain's stop), and never past the item's time budget. A wait that would outlast the budget
   books nothing, and the item goes back to the queue with that delay (`RateLimitedLLMError`,
   which costs it no attempt);
3. the request;
4. the booking corrected to the tokens the answer used (a refused request used none).

The processor sets a `Budget` for each item it processes (a context variable: the worker thread
that makes the request is the one that set it); a request outside any budget may wait as long
as the limiter asks.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from memproc.dal import ratelimit
from memproc.dal.connection import StoreError
from memproc.dal.ratelimit import Limits
from memproc.llm.base import RateLimitedLLMError

if TYPE_CHECKING:
    from memproc.dal.connection import Store
    from memproc.settings import Settings

log = logging.getLogger("memproc.llm.gate")

# Additive increase: one more request in flight per this many successes after a 429.
SUCCESSES_PER_STEP = 8
# How often a request waiting for an in-flight slot looks at the stop event and its budget.
_SLOT_POLL_SECONDS = 0.1


def chat_scope(model: str) -> str:
    return f"chat:{model}"


def embeddings_scope(model: str) -> str:
    return f"embeddings:{model}"


@dataclass
class RateStats:
    """What rate limiting cost one drain, added up by its workers."""

    waits: int = 0  # requests that waited for the shared limiter
    wait_seconds: float = 0.0
    deferred: int = 0  # items the gate sent back to the queue (Budget.defer)
    throttled: int = 0  # 429s the provider answered (the SDK's retries included)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def waited(self, seconds: float) -> None:
        with self._lock:
            self.waits += 1
            self.wait_seconds += seconds

    def count(self, *, deferred: int = 0, throttled: int = 0) -> None:
        with self._lock:
            self.deferred += deferred
            self.throttled += throttled


@dataclass(frozen=True)
class Budget:
    """How long an item's requests may wait for the shared limiter: until the invocation's seconds
    left (`remaining()`) would fall below `reserve` (what the request itself may take), and not
    once `stop` is set. `stats` collects what the waits cost."""

    remaining: Callable[[], float] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    reserve: float = 0.0
    stats: RateStats = field(default_factory=RateStats)

    def max_wait(self) -> float:
        return math.inf if self.remaining is None else max(0.0, self.remaining() - self.reserve)

    def exhausted(self) -> bool:
        return self.stop.is_set() or (self.remaining is not None and self.remaining() <= self.reserve)

    def defer(self, message: str, retry_after: float) -> RateLimitedLLMError:
        """The error that sends an item back to the queue (costing it no attempt) because the
        limits leave it no room within this budget, counted as deferred: every way the gate gives
        up goes through here."""
        self.stats.count(deferred=1)
        return RateLimitedLLMError(message, retry_after=retry_after)


_budget: ContextVar[Budget | None] = ContextVar("memproc_llm_budget", default=None)


@contextmanager
def within(budget: Budget | None) -> Iterator[None]:
    """The LLM requests of the block (on this thread) wait within `budget`."""
    token = _budget.set(budget)
    try:
        yield
    finally:
        _budget.reset(token)


class AIMD:
    """This processor's limit on requests in flight to one model: None (unlimited) until a 429,
    then half of what was in flight, +1 per `step` successes, None again at the peak.

    A 429 halves the limit once per generation: the requests already in flight when it was halved
    answer 429 too, and halving again for each would collapse it to 1.
    """

    def __init__(self, name: str, step: int = SUCCESSES_PER_STEP) -> None:
        self.name = name
        self.step = step
        self.limit: int | None = None
        self.in_flight = 0
        self.peak = 0
        self._generation = 0
        self._successes = 0
        self._cond = threading.Condition()

    def acquire(self, budget: Budget) -> int:
        """Wait for a slot; the generation it was granted in. Gives up (RateLimitedLLMError) when
        the budget runs out or the drain stops first."""
        with self._cond:
            while self.limit is not None and self.in_flight >= self.limit:
                if budget.exhausted():
                    raise budget.defer(
                        f"{self.name}: no in-flight slot before the end of this invocation "
                        f"(in-flight limit {self.limit} after the provider's 429s)",
                        retry_after=0.0,
                    )
                self._cond.wait(_SLOT_POLL_SECONDS)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            return self._generation

    def release(self, generation: int, outcome: str) -> None:
        """`outcome`: "throttled" (429), "ok" (2xx), anything else leaves the limit as it is."""
        with self._cond:
            self.in_flight -= 1
            if outcome == "throttled" and generation == self._generation:
                current = self.limit if self.limit is not None else self.in_flight + 1
                self.limit = max(1, current // 2)
                self._generation += 1
                self._successes = 0
                log.warning("%s: the provider answered 429; in-flight limit now %d", self.name, self.limit)
            elif outcome == "ok" and self.limit is not None:
                self._successes += 1
                if self._successes >= self.step:
                    self._successes = 0
                    self.limit += 1
                    if self.limit >= self.peak:
                        self.limit = None
            self._cond.notify_all()


@dataclass
class Ticket:
    """One request through the gate: its booking, and what the answer said."""

    scope: str
    booking: str | None = None
    status: int | None = None  # None: no answer (a timeout or a connection error)
    used: int | None = None  # tokens the answer says it used

    def answered(self, status: int, used: int | None = None) -> None:
        self.status, self.used = status, used

    @property
    def outcome(self) -> str:
        if self.status == 429:
            return "throttled"
        return "ok" if self.status is not None and 200 <= self.status < 300 else ""


class Gate:
    """The gate of one processor's provider: an AIMD per model, and bookings in the shared limiter
    for the models with limits. Thread-safe: the processor's workers share it."""

    def __init__(
        self,
        store: Store | None,
        scopes: Mapping[str, str],
        limits: Mapping[str, Limits] | None = None,
        margin: float = 0.0,
    ) -> None:
        self.store = store
        self.scopes = dict(scopes)  # request kind ("chat", "embeddings") -> scope
        self.limits = {scope: lim for scope, lim in (limits or {}).items() if lim.active}
        self.margin = margin
        self._aimd: dict[str, AIMD] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> Gate:
        chat, embeddings = chat_scope(settings.llm_model), embeddings_scope(settings.embedding_model)
        window = settings.llm_rate_window_seconds
        return cls(
            store,
            {"chat": chat, "embeddings": embeddings},
            {
                chat: Limits(settings.llm_requests_per_minute, settings.llm_tokens_per_minute, window),
                embeddings: Limits(
                    settings.embedding_requests_per_minute, settings.embedding_tokens_per_minute, window
                ),
            },
            margin=settings.llm_rate_margin_seconds,
        )

    def aimd(self, scope: str) -> AIMD:
        with self._lock:
            if scope not in self._aimd:
                self._aimd[scope] = AIMD(scope)
            return self._aimd[scope]

    @contextmanager
    def request(self, scope: str, tokens: int) -> Iterator[Ticket]:
        """Admit one request of about `tokens`; the block sends it and calls `ticket.answered`."""
        budget = _budget.get() or Budget()
        aimd = self.aimd(scope)
        generation = aimd.acquire(budget)
        ticket = Ticket(scope)
        try:
            ticket.booking = self._book(scope, tokens, budget)
            yield ticket
        finally:
            if ticket.booking is not None:
                self._settle(ticket)
            if ticket.status == 429:
                budget.stats.count(throttled=1)
            aimd.release(generation, ticket.outcome)

    def _book(self, scope: str, tokens: int, budget: Budget) -> str | None:
        limits = self.limits.get(scope)
        if limits is None or self.store is None:
            return None
        booking_id = uuid.uuid4().hex
        # The limiter's window is longer than the provider's by the margin a request may take to
        # arrive there, so the provider never counts more than the limit in its own window.
        wide = replace(limits, window=limits.window + self.margin)
        booking = ratelimit.reserve(self.store, scope, booking_id, tokens, wide, budget.max_wait())
        if not booking.booked:
            raise budget.defer(
                f"{scope}: the shared rate limit has room in {booking.wait:.1f}s, after this "
                "invocation's time budget",
                retry_after=booking.wait,
            )
        if booking.wait > 0:
            started = time.monotonic()
            stopped = budget.stop.wait(booking.wait)
            waited = time.monotonic() - started
            budget.stats.waited(waited)
            if stopped:
                ratelimit.cancel(self.store, scope, booking_id)
                raise budget.defer(
                    f"{scope}: stopped while waiting for the shared rate limit",
                    retry_after=max(0.0, booking.wait - waited),
                )
        return booking_id

    def _settle(self, ticket: Ticket) -> None:
        """Correct the booking: to the tokens used; to none for a refused request (it still counts
        as a request); unchanged without an answer (the provider may have processed it)."""
        assert self.store is not None and ticket.booking is not None
        if ticket.status is None or (ticket.outcome == "ok" and ticket.used is None):
            return
        used = ticket.used if ticket.outcome == "ok" and ticket.used is not None else 0
        try:
            ratelimit.settle(self.store, ticket.scope, ticket.booking, used)
        except StoreError as exc:  # the booking keeps its estimate: more conservative, never less
            log.warning("%s: could not correct a booking (%s)", ticket.scope, exc)
