"""The shared LLM rate limiter's calls (`lua/ratelimit.lua`): book a request, then settle it.

One sliding log of bookings per limited model in Redis, so every processor (every Lambda
invocation) books in the same place; each call is one round trip timed by Redis' clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from memproc import keys
from memproc.dal.connection import Store
from memproc.dal.functions import fcall

# What "no time budget" is sent as (Lua's tonumber has no portable infinity).
NO_BUDGET = 1e12


@dataclass(frozen=True)
class Limits:
    """A model's limits per `window` seconds; 0 means that dimension is not limited."""

    requests: int
    tokens: int
    window: float

    @property
    def active(self) -> bool:
        return self.requests > 0 or self.tokens > 0


@dataclass(frozen=True)
class Booking:
    """`booked`: the request may go after `wait` seconds. Not booked: it would have had to wait
    `wait` seconds, longer than the caller could."""

    booked: bool
    wait: float


def reserve(
    store: Store, scope: str, booking_id: str, tokens: int, limits: Limits, max_wait: float = NO_BUDGET
) -> Booking:
    """Book one request of `tokens` (estimated) in `scope`'s log, now or at the first moment the
    limits allow if that is at most `max_wait` seconds away."""
    log, held = keys.rate_limit(scope)
    booked, wait = fcall(
        store.r,
        "ratelimit_reserve",
        [log, held],
        [
            booking_id,
            limits.requests,
            limits.tokens,
            max(0, tokens),
            f"{limits.window:.6f}",
            f"{min(max(0.0, max_wait), NO_BUDGET):.6f}",
        ],
    )
    return Booking(int(booked) == 1, float(wait))


def settle(store: Store, scope: str, booking_id: str, tokens: int) -> bool:
    """Correct a booking to the tokens its answer used; False when it already left the window."""
    log, held = keys.rate_limit(scope)
    return int(fcall(store.r, "ratelimit_settle", [log, held], [booking_id, max(0, tokens)])) == 1


def cancel(store: Store, scope: str, booking_id: str) -> bool:
    """Give a booking back: its request was never sent."""
    log, held = keys.rate_limit(scope)
    return int(fcall(store.r, "ratelimit_settle", [log, held], [booking_id, -1])) == 1
