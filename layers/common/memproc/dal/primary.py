"""Connections that follow the store's primary, so a standalone client works on a cluster-mode store.

MemoryDB always runs in cluster mode: its cluster endpoint may land on a replica, which answers
every command on a key with ``MOVED``, and after a failover the old primary does the same. With
one shard a single node owns every slot, so memproc keeps its standalone client (and its Lua
functions over many hash tags) and only needs to connect to that node: on the first connection of
a process the configured address is asked ``INFO cluster``; on a cluster it names its shard's
primary (``CLUSTER SHARDS``, else ``CLUSTER SLOTS``), and every connection goes there. A ``MOVED``
or ``READONLY`` reply, or a primary that no longer accepts connections, makes the next connection
ask again; the client's one retry then reaches the new primary.
"""

from __future__ import annotations

import threading
from typing import Any, cast
from urllib.parse import urlparse

import redis
from redis.connection import Connection, SSLConnection

from memproc.dal.batch import Client, RefusalConnection


class UnsupportedStoreError(RuntimeError):
    """The store is a cluster of several shards: memproc's functions need one node owning every slot.
    Not a StoreError: a configuration to fix, not a store that is down."""


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _as_dict(reply: Any) -> dict[str, Any]:
    """A map reply under either protocol (a RESP3 dict, a flat RESP2 list), with str keys."""
    pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
    return {_text(k): _text(v) for k, v in pairs}


def _slots_reply(reply: list[Any]) -> tuple[int, tuple[str, int] | None]:
    """(shards, their primary's address) from CLUSTER SLOTS: each slot range's first node is its
    owner. The address is the node's hostname when it announces one (TLS checks the name it
    connects to), else its preferred endpoint; the port is the one for this connection's kind
    (TLS or not)."""
    primaries: dict[str, tuple[str, int]] = {}
    for slot_range in reply:
        node = slot_range[2]
        meta = _as_dict(node[3]) if len(node) > 3 and node[3] else {}
        endpoint = _text(node[0])  # "?" or "" when the node announces no endpoint of the preferred type
        host = meta.get("hostname") or (endpoint if endpoint not in ("", "?") else meta.get("ip", ""))
        primaries[_text(node[2])] = (host, int(node[1]))
    only = next(iter(primaries.values())) if len(primaries) == 1 else None
    return len(primaries), only


def discover(conn: Connection) -> tuple[str, int] | None:
    """The address of the cluster's one primary, None on a store that is not in cluster mode."""
    conn.send_command("INFO", "cluster")
    if "cluster_enabled:1" not in _text(conn.read_response()):
        return None
    # Slot ownership, which MOVED follows: a failover updates it at once, where CLUSTER SHARDS
    # goes on listing the old primary as an online master of the shard (or the shard without its
    # slots) until the cluster marks it failed, seconds later.
    conn.send_command("CLUSTER", "SLOTS")
    shards, address = _slots_reply(conn.read_response())
    if shards > 1:
        raise UnsupportedStoreError(
            f"the store at {conn.host}:{conn.port} is a cluster of {shards} shards; memproc needs a "
            "cluster of one shard (one node owning every slot), see the README's MemoryDB section"
        )
    if address is None:
        raise redis.ConnectionError("the store's shard has no primary (a failover in progress)")
    # A node that never met another does not know its own IP: it is the one asked.
    return address if address[0] else (conn.host, address[1])


class Primary:
    """Where one store's connections go (shared by its clients): found once, and again when a
    connection saw that it was wrong. `generation` counts the addresses found so far."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._address: tuple[str, int] | None = None
        self._found = False
        self.cluster = False
        self.generation = 0

    def address(self, conn: PrimaryConnection) -> tuple[int, tuple[str, int] | None]:
        """(generation, address) for a connection about to connect; None means the configured one."""
        with self._lock:
            if not self._found:
                seed = conn.seed()
                try:
                    seed.connect()
                    self._address = discover(seed)
                finally:
                    seed.disconnect()
                self._found, self.cluster = True, self._address is not None
                self.generation += 1
            return self.generation, self._address

    def stale(self, generation: int) -> None:
        """A connection of `generation` met a replica or a dead node: ask again on the next connect."""
        with self._lock:
            if generation == self.generation:
                self._found = False


class PrimaryConnection(RefusalConnection):
    """A connection to the current primary (the configured address on a standalone store)."""

    def __init__(self, *, primary: Primary, **kwargs: Any) -> None:
        self._primary = primary
        self._seed_kwargs = kwargs
        self._generation = 0
        super().__init__(**kwargs)

    def seed(self) -> Connection:
        """A plain connection to the configured address (the cluster endpoint), for discovery."""
        base = SSLConnection if isinstance(self, SSLConnection) else Connection
        return base(**self._seed_kwargs)

    def _connect(self) -> Any:
        self._generation, address = self._primary.address(self)
        if address is None:
            self.host, self.port = (
                self._seed_kwargs.get("host", "localhost"),
                self._seed_kwargs.get("port", 6379),
            )
        else:
            self.host, self.port = address
        try:
            return super()._connect()
        except OSError:
            if self._primary.cluster:  # the primary went away: the connect's retry asks again
                self._primary.stale(self._generation)
            raise

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._sock is not None and self._generation != self._primary.generation:
            self.disconnect()  # connected to an address found before the last failover
        super().send_packed_command(command, check_health)

    def refused(self) -> None:
        self._primary.stale(self._generation)


class PrimarySSLConnection(PrimaryConnection, SSLConnection):
    """The same over TLS (MemoryDB always uses TLS)."""


def primary_client(url: str, primary: Primary, **kwargs: Any) -> Client:
    """A standalone client of `url` whose connections follow `primary` (unix sockets: as is)."""
    scheme = urlparse(url).scheme
    if scheme not in ("redis", "rediss"):
        return cast(Client, Client.from_url(url, **kwargs))
    cls = PrimarySSLConnection if scheme == "rediss" else PrimaryConnection
    return cast(Client, Client.from_url(url, connection_class=cls, primary=primary, **kwargs))
