"""The offline provider: heuristic extraction, hashing embeddings and estimated token counts.

It runs when no API key is configured, so a deployment without one still processes sessions (with
a loud warning) instead of failing them.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from memproc.llm.base import Usage, Vector, l2_normalise
from memproc.llm.chunking import ChunkedExtractor, norm_key
from memproc.llm.offline_heuristics import STOPWORDS, WORD_RE, heuristic_extraction
from memproc.llm.prompt import build_messages
from memproc.llm.schema import Candidate, Extraction, MemoryOperation
from memproc.settings import OFFLINE_EMBEDDING_MODEL

if TYPE_CHECKING:
    from memproc.settings import Settings


def hashing_embedding(text: str, dimensions: int) -> list[float]:
    """Signed feature hashing of word unigrams and bigrams (blake2b), L2-normalised.

    Identical texts give identical vectors and texts sharing words give a high cosine, across
    processes and machines (no Python ``hash`` randomisation). Not semantic: "car" and "automobile"
    are unrelated to it.
    """
    words = WORD_RE.findall(text.lower())
    features: list[tuple[str, float]] = [(w, 1.0) for w in words if w not in STOPWORDS]
    features += [(f"{a} {b}", 0.5) for a, b in itertools.pairwise(words)]
    if not features:
        compact = " ".join(text.lower().split())
        features = [(compact[i : i + 3], 1.0) for i in range(max(1, len(compact) - 2))] if compact else []
    vector = [0.0] * dimensions
    for feature, weight in features:
        digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
        vector[digest % dimensions] += weight if digest >> 63 else -weight
    return l2_normalise(vector)


def _estimate_tokens(text: str) -> int:
    return len(text) // 4


def confirm_restatements(extraction: Extraction, candidates: Sequence[Candidate]) -> Extraction:
    """A memory whose words equal a shown memory's is a restatement: confirm it instead of adding it.
    Anything else stays a new memory; the processor's similarity backstop catches near-identical ones."""
    known = {norm_key(c.memory.text): c.short_id for c in candidates}
    memories, operations = [], list(extraction.operations)
    for memory in extraction.memories:
        short_id = known.get(norm_key(memory.text))
        if short_id is None:
            memories.append(memory)
        else:
            operations.append(
                MemoryOperation(op="confirm", id=short_id, text=None, memory_type=None, confidence=None)
            )
    return extraction.model_copy(update={"memories": memories, "operations": operations})


class OfflineProvider(ChunkedExtractor):
    """Deterministic provider without network: heuristic memories, hashing embeddings, estimated tokens."""

    name = "offline"
    # Keyword rules cannot tell an update from a contradiction: they only spot restatements.
    reconciles = False

    def __init__(
        self,
        *,
        dimensions: int = 1536,
        chunk_chars: int = 48_000,
        chat_model: str = "offline-heuristic",
        embedding_model: str = OFFLINE_EMBEDDING_MODEL,
    ) -> None:
        self.dimensions = dimensions
        self.chunk_chars = chunk_chars
        self.chat_model = chat_model
        self.embedding_model = embedding_model

    @classmethod
    def from_settings(cls, settings: Settings) -> OfflineProvider:
        return cls(dimensions=settings.embedding_dimensions, chunk_chars=settings.llm_chunk_chars)

    def _extract_one(
        self,
        chunk: str,
        session_timestamp: datetime,
        previous_summary: str | None,
        candidates: Sequence[Candidate],
    ) -> tuple[Extraction, Usage]:
        extraction = confirm_restatements(
            heuristic_extraction(
                chunk, session_timestamp=session_timestamp, previous_summary=previous_summary
            ),
            candidates,
        )
        prompt = build_messages(
            chunk,
            session_timestamp=session_timestamp,
            previous_summary=previous_summary,
            candidates=candidates,
        )
        usage = Usage(
            tokens_in=sum(_estimate_tokens(m["content"]) for m in prompt),
            tokens_out=_estimate_tokens(extraction.model_dump_json()),
        )
        return extraction, usage

    def embed(self, texts: list[str]) -> tuple[list[Vector], Usage]:
        vectors: list[Vector] = [hashing_embedding(text, self.dimensions) for text in texts]
        return vectors, Usage(tokens_in=sum(_estimate_tokens(t) for t in texts))

    def close(self) -> None:
        """Nothing to release; present so callers can treat both providers alike."""
