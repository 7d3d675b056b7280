"""Commands sent together in one round trip without redis-py's per-command cost: the processor's hot path.

A session's processing sends ~30 commands (its input, a VSIM per user turn with the memory state,
the memories' attributes, a VSIM per new memory, the commit). redis-py's Pipeline spends ~25 us of
client CPU on each (argument filtering, packing, response callbacks, pid checks) and its single
commands ~25 us more than the exchange itself; a `Batch` packs its commands with hiredis into one
buffer and reads the replies with the connection's own `read_response`, so the connection's
decoding and `PrimaryConnection`'s MOVED/READONLY handling stay. No redis-py response callback
runs: queue only commands that have none (FCALL, FCALL_RO, HMGET, ZCARD, VSIM, VGETATTR).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hiredis
import redis
from redis.exceptions import MovedError, ReadOnlyError

# Replies of a node that is no longer the primary: the command did not run there.
REFUSED = (MovedError, ReadOnlyError)

_thread = threading.local()  # .held: {pool: connection} while the thread is in held_connections()


@contextmanager
def held_connections() -> Iterator[None]:
    """Within it, this thread's batches keep the connection each pool first gave them, and give them
    back when it ends (the processor's workers, ~5 batches per session). redis-py's checkout and
    return of a pooled connection cost ~10 us alone and ~40 among 64 threads: a lock, observability
    counters, and a readiness probe that is three system calls (a non-blocking recv between two
    changes of the socket's mode). A held connection needs no probe: only its thread uses it, and a
    batch that does not read every reply closes it (`_exchange`)."""
    held: dict[Any, Any] = {}
    _thread.held = held
    try:
        yield
    finally:
        _thread.held = None
        for pool, conn in held.items():
            pool.release(conn)


class Batch:
    """What `pipeline(transaction=False)` does: commands queued by `execute_command` (so the
    `queue_*` helpers fill either), sent by `execute`, retried as the client's Retry policy retries
    any command (dal/connection.py: reads, and library calls that answer a resent write as a
    duplicate or as stale).

    One pooled connection; an error reply comes back in its command's place (a pipeline's
    `raise_on_error=False`), but a refusal (MOVED, READONLY) fails the batch once every reply is
    read. A refusal or a connection error closes the connection and sends the whole batch again
    (connect() then reaches the primary found again, see dal/primary.py); a timeout is not retried
    (a write may have run). A read that fails closes its connection (`read_response` does), so the
    pool never hands out a socket that would answer someone else's command."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._packed: list[bytes] = []

    def execute_command(self, *args: Any) -> None:
        try:
            self._packed.append(hiredis.pack_command(args))
        except TypeError as exc:  # as redis-py's packer reports a None or a bool
            raise redis.DataError(str(exc)) from None

    def execute(self) -> list[Any]:
        if not self._packed:
            return []
        held = getattr(_thread, "held", None)
        if held is not None:
            conn = held.get(self._pool)
            if conn is None:
                conn = held[self._pool] = self._pool.get_connection()
            return self._send(conn)
        conn = self._pool.get_connection()
        try:
            return self._send(conn)
        finally:
            self._pool.release(conn)

    def _send(self, conn: Any) -> list[Any]:
        replies: list[Any] = conn.retry.call_with_retry(
            lambda: self._exchange(conn), lambda _error: conn.disconnect()
        )
        return replies

    def _exchange(self, conn: Any) -> list[Any]:
        replies: list[Any] = []
        try:
            conn.send_packed_command([b"".join(self._packed)])
            for _ in self._packed:
                try:  # any other error (a timeout, a lost or interrupted read) closes the connection
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            # Replies left unread would answer the connection's next batch: close it (read_response
            # does on its own errors; this covers the rest, an interrupt among them).
            conn.disconnect()
            raise
        for reply in replies:
            if isinstance(reply, REFUSED):
                raise reply
        return replies


class Client(redis.Redis):
    """redis-py's client with `batch()`: memproc's own clients (dal/primary.py) are these."""

    def batch(self) -> Batch:
        return Batch(self.connection_pool)
