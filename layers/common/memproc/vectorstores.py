"""Which vectorstores exist: every one store_raw has written, until it is erased.

A vectorstore comes into being with its first store_raw (the queue's `enqueue` adds it to
`memproc:vectorstores`) and leaves with the last step of its erasure. Every other route answers a
name that is not there with 404 `unknown_vectorstore`, never an empty 200: as with unknown query
parameters, a typo in a name must not look like a vectorstore with nothing in it.

The check costs a round trip only where an answer would be empty (or a 404 of its own): the
routes call `require_known` then, so an answer with content keeps its round trips.
"""

from __future__ import annotations

from memproc.dal import reads
from memproc.dal.connection import Store
from memproc.errors import NotFound
from memproc.keys import VectorstoreKeys

UNKNOWN = "unknown_vectorstore"


def unknown(name: str) -> NotFound:
    return NotFound(
        f"vectorstore {name!r} does not exist: nothing was ever stored in it (store_raw creates a "
        "vectorstore), or it was erased",
        code=UNKNOWN,
    )


def require_known(store: Store, vk: VectorstoreKeys) -> None:
    """404 `unknown_vectorstore` unless store_raw has written the (validated) vectorstore. One
    round trip: call it where the answer would otherwise be empty."""
    if not reads.vectorstore_exists(store, vk.name):
        raise unknown(vk.name)
