"""GET session/{session_id}: a session's summary, memories and submissions in two round trips."""

from __future__ import annotations

from memproc.dal import reads
from memproc.dal.connection import Store
from memproc.errors import NotFound
from memproc.mappers import memory_view, raw_view, summary_view
from memproc.schemas.responses import SessionDetails, SessionRawMemory, TokenUsage
from memproc.validation import require_session_id, require_vectorstore
from memproc.vectorstores import require_known


def session_details(
    store: Store, vectorstore: str, session_id: str, *, include_transcript: bool = False
) -> SessionDetails:
    """The second round trip reads transcripts (which may be stored compressed) when asked."""
    vk = require_vectorstore(vectorstore)
    sid = require_session_id(session_id)
    entries = reads.session_entries(store, vk, sid)
    if entries.summary is None and not entries.memory_ids and not entries.raw_total:
        require_known(store, vk)
        raise NotFound(f"no session {sid!r} in vectorstore {vectorstore!r}", code="session_not_found")
    found = reads.records(
        store, vk, memory_ids=entries.memory_ids, raw_ids=entries.raw_ids, transcripts=include_transcript
    )
    memories = sorted(
        (memory_view(m) for m in found.memories.values()),
        key=lambda m: (m.created_at or "", m.memory_id),
        reverse=True,
    )
    raws = [
        SessionRawMemory(**raw_view(r).model_dump(), session_data=found.transcripts.get(r.raw_memory_id))
        for r in found.raws
    ]
    summary = summary_view(entries.summary) if entries.summary else None
    if summary:
        usage = TokenUsage(tokens_in=summary.tokens_in, tokens_out=summary.tokens_out)
    else:
        usage = TokenUsage(
            tokens_in=sum(x.tokens_in or 0 for x in raws), tokens_out=sum(x.tokens_out or 0 for x in raws)
        )
    usage.total_tokens = usage.tokens_in + usage.tokens_out
    statuses = {x.status for x in raws}
    status = (
        "pending" if statuses & {"queued", "processing"} else "error" if "error" in statuses else "processed"
    )
    return SessionDetails(
        vectorstore_name=vectorstore,
        session_id=sid,
        status=status,
        summary=summary,
        memories=memories,
        memory_count=len(memories),
        raw_memories=raws,
        raw_memory_count=entries.raw_total,
        token_usage=usage,
    )
