"""GET dead_letters: dead-lettered submissions, newest first, with why they died (two round trips)."""

from __future__ import annotations

from memproc.dal import reads
from memproc.dal.connection import Store
from memproc.mappers import raw_view
from memproc.schemas.responses import DeadLettersResponse
from memproc.validation import require_vectorstore
from memproc.vectorstores import require_known


def dead_letters(store: Store, vectorstore: str, limit: int) -> DeadLettersResponse:
    vk = require_vectorstore(vectorstore)
    ids, total = reads.dead_letter_ids(store, vk, limit)
    if not total:
        require_known(store, vk)
    found = reads.records(store, vk, raw_ids=ids)
    return DeadLettersResponse(
        vectorstore_name=vectorstore, total=total, dead_letters=[raw_view(r) for r in found.raws]
    )
