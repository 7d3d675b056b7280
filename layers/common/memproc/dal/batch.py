"""Commands sent together in one round trip without redis-py's per-command cost: the processor's hot path.

A session's processing sends ~30 commands (its input, a VSIM per user turn with the memory state,
the memories' attributes, a VSIM per new memory, the commit). redis-py's Pipeline spends ~25 us of
client CPU on each (argument filtering, packing, response callbacks, pid checks) and its single
commands ~25 us more than the exchange itself; a `Batch` packs its commands with hiredis into one
buffer and takes the replies straight from the connection's hiredis reader (`read_replies`), with
the connection's decoding, redis-py's error classes and `RefusalConnection`'s MOVED/READONLY
handling. No redis-py response callback runs: queue only commands that have none (FCALL,
FCALL_RO, HMGET, ZCARD, VSIM, VGETATTR).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hiredis
import redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _HiredisParser
from redis._parsers.socket import SERVER_CLOSED_CONNECTION_ERROR
from redis.connection import AbstractConnection, Connection
from redis.exceptions import MovedError, ReadOnlyError

from memproc.socket_timeouts import TIMED_OUT, python_timeout, set_timeout

# Replies of a node that is no longer the primary: the command did not run there.
REFUSED = (MovedError, ReadOnlyError)

# The redis-py releases whose hiredis parser and read_response `read_replies` mirrors (checked, and
# pinned by tests/test_batch_read.py): on any other, batches read their replies with read_response.
VERIFIED_REDIS = ("8.1.0",)


class RefusalConnection(Connection):
    """A connection told by `refused()` of each reply that refuses its command (MOVED, READONLY):
    by read_response for single commands, by `read_replies` for a batch's."""

    def refused(self) -> None:
        """The node that answered is not the primary (dal/primary.py asks for it again)."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except REFUSED:
            self.refused()
            raise


# The read_response methods that do nothing read_replies does not do itself.
_PLAIN_READS = (AbstractConnection.read_response, RefusalConnection.read_response)
_DIRECT = redis.__version__ in VERIFIED_REDIS


def read_replies(conn: Any, n: int) -> list[Any]:
    """The next n replies on `conn`, as n calls of its `read_response` would give them, but an error
    reply in its place (as redis-py's exception for it) instead of raised; like read_response, any
    failure closes the connection, whose unread replies would answer its next command.

    From a connection parsed by hiredis, they come straight from its reader, fed from the socket as
    redis-py's _HiredisParser feeds it: read_response's per-reply layers (host formatting, protocol
    dispatch, the parser's own read_response, the health-check clock) cost ~3 us a reply alone and
    more among many threads. Push messages (RESP3) go to the parser's handlers and are skipped, as
    there; a close by the server or a socket error is a ConnectionError, a timeout a TimeoutError."""
    if not reads_directly(conn):
        return _read_each(conn, n)
    try:
        replies = _read_hiredis(conn, conn._parser, n)
    except BaseException:
        conn.disconnect()
        raise
    if conn.health_check_interval:
        conn.next_health_check = time.monotonic() + conn.health_check_interval
    return replies


def reads_directly(conn: Any) -> bool:
    """Whether read_replies takes conn's replies from its hiredis reader (else by read_response)."""
    return _DIRECT and type(conn).read_response in _PLAIN_READS and type(conn._parser) is _HiredisParser


def _read_hiredis(conn: Any, parser: _HiredisParser, n: int) -> list[Any]:
    reader, sock, buffer = parser._reader, parser._sock, parser._buffer
    if reader is None or sock is None:  # closed by another thread: as _HiredisParser reports it
        raise redis.ConnectionError(SERVER_CLOSED_CONNECTION_ERROR)
    push = parser._hiredis_PushNotificationType
    replies: list[Any] = []
    while len(replies) < n:
        reply = reader.gets()
        if reply is NOT_ENOUGH_DATA:
            try:
                size = sock.recv_into(buffer)
            except TIMED_OUT:  # socket.timeout, or a held connection's kernel timeout
                raise redis.TimeoutError("Timeout reading from socket") from None
            except OSError as exc:
                raise redis.ConnectionError(f"Error while reading from socket: {exc.args}") from None
            if size == 0:
                raise redis.ConnectionError(SERVER_CLOSED_CONNECTION_ERROR)
            reader.feed(buffer, 0, size)
            continue
        if isinstance(reply, list):
            if push is not None and isinstance(reply, push):
                parser.handle_push_response(reply)
                continue
            if reply and isinstance(reply[0], redis.ConnectionError):
                raise reply[0]
        elif isinstance(reply, redis.RedisError):
            if isinstance(reply, redis.ConnectionError):  # "max number of clients reached"
                raise reply
            if isinstance(reply, REFUSED) and isinstance(conn, RefusalConnection):
                conn.refused()
        replies.append(reply)
    return replies


def _read_each(conn: Any, n: int) -> list[Any]:
    """read_replies by read_response, for any other parser, connection class or redis-py release."""
    replies: list[Any] = []
    for _ in range(n):
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies


class _Held:
    """A thread's held connection of one pool, and the socket whose timeout `Batch` set."""

    __slots__ = ("conn", "sock")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.sock: Any = None


_thread = threading.local()  # .held: {pool: _Held} while the thread is in held_connections()


@contextmanager
def held_connections() -> Iterator[None]:
    """Within it, this thread's batches keep the connection each pool first gave them, and give them
    back when it ends (the processor's workers, ~5 batches per session). redis-py's checkout and
    return of a pooled connection cost ~10 us alone and ~40 among 64 threads: a lock, observability
    counters, and a readiness probe that is three system calls (a non-blocking recv between two
    changes of the socket's mode). A held connection needs no probe: only its thread uses it, and a
    batch that does not read every reply closes it (`_exchange`).

    A held connection read by `read_replies` keeps its socket's timeout in the kernel
    (memproc/socket_timeouts.py: a read or a write is one system call, not two). It goes back to
    Python's timeout before the pool has it again, for redis-py's own reads, which would take an
    expired kernel timeout for a lost connection."""
    held: dict[Any, _Held] = {}
    _thread.held = held
    try:
        yield
    finally:
        _thread.held = None
        for pool, h in held.items():
            if h.sock is not None and h.conn._sock is h.sock:
                try:
                    python_timeout(h.sock, h.conn.socket_timeout)
                except OSError:  # a socket that failed meanwhile: redis-py reconnects it
                    h.conn.disconnect()
            pool.release(h.conn)


class Batch:
    """What `pipeline(transaction=False)` does: commands queued by `execute_command` (so the
    `queue_*` helpers fill either), sent by `execute`, retried as the client's Retry policy retries
    any command (dal/connection.py: reads, and library calls that answer a resent write as a
    duplicate or as stale).

    One pooled connection; an error reply comes back in its command's place (a pipeline's
    `raise_on_error=False`), but a refusal (MOVED, READONLY) fails the batch once every reply is
    read. A refusal or a connection error closes the connection and sends the whole batch again
    (connect() then reaches the primary found again, see dal/primary.py); a timeout is not retried
    (a write may have run). A read that fails closes its connection (`read_replies` does, and
    `_exchange` on anything else), so the pool never hands out a socket that would answer someone
    else's command."""

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
            h = held.get(self._pool)
            if h is None:
                h = held[self._pool] = _Held(self._pool.get_connection())
            conn = h.conn
            sock = conn._sock
            if sock is not h.sock and sock is not None:  # a new socket (the first, or reconnected)
                h.sock = sock
                if reads_directly(conn):  # set_timeout keeps Python's where the kernel cannot
                    set_timeout(sock, conn.socket_timeout)
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
        try:
            try:
                conn.send_packed_command([b"".join(self._packed)])
            except redis.ConnectionError as exc:
                # redis-py reports an OSError while writing as a lost connection; a kernel
                # timeout's EAGAIN is a timeout (not retried: part of the batch may have run).
                if isinstance(exc.__context__, BlockingIOError):
                    raise redis.TimeoutError("Timeout writing to socket") from None
                raise
            replies = read_replies(conn, len(self._packed))
        except BaseException:
            # Replies left unread would answer the connection's next batch: close it (whatever the
            # error: a timeout, a lost or interrupted read, an interrupt among them).
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
