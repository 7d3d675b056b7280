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

from typing import Any

import hiredis
import redis
from redis.exceptions import MovedError, ReadOnlyError

# Replies of a node that is no longer the primary: the command did not run there.
REFUSED = (MovedError, ReadOnlyError)


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
        conn = self._pool.get_connection()
        try:
            replies: list[Any] = conn.retry.call_with_retry(
                lambda: self._exchange(conn), lambda _error: conn.disconnect()
            )
            return replies
        finally:
            self._pool.release(conn)

    def _exchange(self, conn: Any) -> list[Any]:
        conn.send_packed_command([b"".join(self._packed)])
        replies: list[Any] = []
        for _ in self._packed:
            try:  # any other error (a timeout, a lost or interrupted read) closes the connection
                replies.append(conn.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
        for reply in replies:
            if isinstance(reply, REFUSED):
                raise reply
        return replies


class Client(redis.Redis):
    """redis-py's client with `batch()`: memproc's own clients (dal/primary.py) are these."""

    def batch(self) -> Batch:
        return Batch(self.connection_pool)
