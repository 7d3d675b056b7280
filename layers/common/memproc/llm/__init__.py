"""The one LLM interface (extract, embed) and its two implementations, one concern per module.

``base`` (the protocol, usage, errors), ``schema`` (what an extraction is), ``prompt`` (what the
model is sent), ``safety`` with ``normalise`` (what is never stored) and ``prefilter`` with
``regex_pieces`` and ``text_odds`` (the cheap test that turns ordinary text away first),
``parsing`` (what comes back), ``chunking`` (long sessions), ``offline`` with
``offline_heuristics`` and ``dates`` (the network-free provider), ``openai_provider`` (the SDK)
with ``wire`` (its replies), ``gated_http`` (its HTTP client: requests within the rate limits of
``gate``, over ``transport`` and ``http_pool``) and ``factory`` (which one runs). The names other
modules use are re-exported here, so
callers import from ``memproc.llm`` and the layout inside can change.

Importing this package does not import ``openai``: the store_raw Lambda imports ``memproc`` but
never talks to the LLM, so the SDK is loaded only when an ``OpenAIProvider`` is built.
"""

from __future__ import annotations

from memproc.llm.base import (
    LLMError,
    LLMProvider,
    PermanentLLMError,
    RateLimitedLLMError,
    RetryableLLMError,
    Usage,
)
from memproc.llm.chunking import chunk_transcript
from memproc.llm.dates import resolve_relative_dates
from memproc.llm.factory import make_provider
from memproc.llm.offline import OfflineProvider, hashing_embedding
from memproc.llm.offline_heuristics import heuristic_extraction
from memproc.llm.openai_provider import OpenAIProvider
from memproc.llm.parsing import parse_extraction
from memproc.llm.prompt import SYSTEM_PROMPT, build_messages
from memproc.llm.safety import INJECTION_PATTERNS, injection_reason, sanitize, sanitize_summary
from memproc.llm.schema import EXTRACTION_JSON_SCHEMA, ExtractedMemory, Extraction

__all__ = [
    "EXTRACTION_JSON_SCHEMA",
    "INJECTION_PATTERNS",
    "SYSTEM_PROMPT",
    "ExtractedMemory",
    "Extraction",
    "LLMError",
    "LLMProvider",
    "OfflineProvider",
    "OpenAIProvider",
    "PermanentLLMError",
    "RateLimitedLLMError",
    "RetryableLLMError",
    "Usage",
    "build_messages",
    "chunk_transcript",
    "hashing_embedding",
    "heuristic_extraction",
    "injection_reason",
    "make_provider",
    "parse_extraction",
    "resolve_relative_dates",
    "sanitize",
    "sanitize_summary",
]
