"""One embeddings request for every session asking at the same moment.

Each of the processor's workers embeds twice per session (the lookup of its related memories and
its new texts); every request costs CPU however few inputs it carries (~0.3 ms through the SDK and
the reply's parsing), so 64 workers asking one at a time spend much of theirs on HTTP. Here a
caller sends at once while a request slot is free (no added latency at low load) and callers
arriving while every slot is taken wait for the next one to free, whose request carries all of
their texts: a leader/follower scheme, with no timer.

There is one slot while the provider answers fast, as a local or near model does: coalescing costs
nothing then. After an answer that took SLOW_SECONDS or more, as a hosted model's do (100-300 ms),
there are MAX_IN_FLIGHT: with one, a caller would wait for the request in flight before its own
(~1.5 answer times for each of a session's two embeddings calls), which held a drain with
embeddings as slow as chat to 40-70% of what the latency allows (bench process, config ii); with
four, a caller waits ~1.1 answer times and the requests stay a few per answer time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memproc.llm.base import LLMError, Usage, Vector

Embed = Callable[[list[str]], tuple[list[Vector], Usage]]

# The embeddings API takes at most 2048 inputs per request; the characters cap keeps a request
# well inside its token limit (300k tokens summed over the inputs).
MAX_INPUTS = 2048
MAX_CHARS = 400_000
# Requests out at once while the provider is slow (its last answer took SLOW_SECONDS or more).
MAX_IN_FLIGHT = 4
SLOW_SECONDS = 0.05


def _latch() -> Any:
    """A held lock: its caller waits by acquiring it and is woken once by its release. A C lock
    costs a fraction of a `threading.Event` (a Python Condition and a waiter lock per wait), and a
    worker waits on one twice per session."""
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(eq=False)
class _Request:
    texts: list[str]
    chars: int
    ready: Any = field(default_factory=_latch)  # released when delivered or promoted
    batch: list[_Request] | None = None  # set when this caller sends a request: the callers it carries
    done: bool = False
    vectors: list[Vector] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    error: BaseException | None = None


class EmbeddingBatcher:
    """``embed`` with the provider's signature, coalescing concurrent callers into one call.

    A failed call fails every caller it carried with the same exception, except a refused input
    (a permanent error) in a shared call: each caller is then sent alone, so only its owner fails.
    Usage is the call's own when it carried one caller, else its input tokens split by each
    caller's share of characters.
    """

    def __init__(
        self,
        embed: Embed,
        *,
        max_inputs: int = MAX_INPUTS,
        max_chars: int = MAX_CHARS,
        max_in_flight: int = MAX_IN_FLIGHT,
        slow_seconds: float = SLOW_SECONDS,
    ) -> None:
        self._embed = embed
        self.max_inputs = max_inputs
        self.max_chars = max_chars
        self.max_in_flight = max_in_flight
        self.slow_seconds = slow_seconds
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)  # notified as a caller starts waiting
        self._watchers = 0  # callers of wait_for_waiting: only they need the notification
        self._waiting: list[_Request] = []
        self._in_flight = 0  # invariant: callers wait only while every slot is taken
        self._slow = False  # the last answer took slow_seconds or more

    def embed(self, texts: list[str]) -> tuple[list[Vector], Usage]:
        if not texts:
            return [], Usage()
        request = _Request(list(texts), sum(len(t) for t in texts))
        with self._lock:
            if self._in_flight < self._slots():
                self._in_flight += 1
                request.batch = [request]
            else:
                self._waiting.append(request)
                if self._watchers:
                    self._queued.notify_all()
        if request.batch is None:
            request.ready.acquire()  # delivered, or promoted to send the callers given it
        if not request.done:
            assert request.batch is not None
            self._send(request.batch)
        if request.error is not None:
            raise request.error
        return request.vectors, request.usage

    def _slots(self) -> int:
        return self.max_in_flight if self._slow else 1

    def wait_for_waiting(self, n: int, timeout: float) -> bool:
        """Whether `n` callers came to wait for the next request within `timeout` (tests use it to
        know a request is coalescing callers, without sleeping)."""
        with self._queued:
            self._watchers += 1
            try:
                return self._queued.wait_for(lambda: len(self._waiting) >= n, timeout)
            finally:
                self._watchers -= 1

    def _take(self) -> list[_Request]:
        """The waiting callers (the leader first) that fit one request; at least the leader."""
        inputs = chars = 0
        taken = 0
        for r in self._waiting:
            if taken and (inputs + len(r.texts) > self.max_inputs or chars + r.chars > self.max_chars):
                break
            inputs, chars, taken = inputs + len(r.texts), chars + r.chars, taken + 1
        batch, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return batch

    def _send(self, batch: list[_Request]) -> None:
        """As a leader: one call for its batch, the freed slot to the next waiters, then results."""
        started = time.monotonic()
        try:
            vectors, usage = self._embed([t for r in batch for t in r.texts])
            if len(vectors) != sum(len(r.texts) for r in batch):  # pragma: no cover - the provider checks
                raise RuntimeError("embeddings: the provider answered a different number of vectors")
        except LLMError as exc:
            if exc.retryable or len(batch) == 1:  # the provider's trouble: each caller retries later
                for r in batch:
                    r.error = exc
            else:  # one caller's input was refused: find whose, so no other session pays for it
                for r in batch:
                    self._alone(r)
        except BaseException as exc:  # every caller it carried fails the same way
            for r in batch:
                r.error = exc
        else:
            start = 0
            for r, share in zip(batch, _shares(usage, batch), strict=True):
                r.vectors, r.usage = vectors[start : start + len(r.texts)], share
                start += len(r.texts)
        promoted: list[_Request] = []
        with self._lock:
            self._in_flight -= 1
            self._slow = time.monotonic() - started >= self.slow_seconds
            while self._waiting and self._in_flight < self._slots():
                nxt = self._take()
                nxt[0].batch = nxt
                self._in_flight += 1
                promoted.append(nxt[0])
        for nxt_leader in promoted:
            nxt_leader.ready.release()
        for r in batch:
            r.done = True
            r.ready.release()  # a leader's own too: held since it was made or promoted

    def _alone(self, r: _Request) -> None:
        """One caller's texts in a request of their own (after a shared request was refused)."""
        try:
            r.vectors, r.usage = self._embed(r.texts)
        except BaseException as exc:
            r.error = exc


def _shares(usage: Usage, batch: list[_Request]) -> list[Usage]:
    """The call's usage per caller, by share of characters; cumulative rounding, and the last
    caller takes what is left, so the shares always sum to the call's usage."""
    if len(batch) == 1:
        return [usage]
    total = sum(r.chars for r in batch) or 1
    out: list[Usage] = []
    cum = given_in = given_out = 0
    for i, r in enumerate(batch):
        cum += r.chars
        last = i == len(batch) - 1
        upto_in = usage.tokens_in if last else round(usage.tokens_in * cum / total)
        upto_out = usage.tokens_out if last else round(usage.tokens_out * cum / total)
        out.append(Usage(tokens_in=upto_in - given_in, tokens_out=upto_out - given_out))
        given_in, given_out = upto_in, upto_out
    return out
