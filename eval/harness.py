"""Running cases: every session through the real pipeline, then what is left read back via the API.

Real parts only: a real Redis 8, the real store_raw handler (API Gateway events), the real processor
and the real `openai` client, talking over HTTP to tests/fake_openai.py, whose hooks ``ScriptedLLM``
answers. Each case gets its own vectorstore; every session is stored and drained before the next,
as a user's sessions would arrive. Results are read through the API: ``hierarchy`` (every memory,
whatever its status) and ``search`` (default: current memories only; and ``include_superseded``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from eval.cases import Case
from eval.scripted import Answer, EvalError, ScriptedLLM
from eval.vectors import DIMENSIONS, EMBEDDING_MODEL

SEARCH_K = 5
# The loggers the pipeline reports a dropped operation on (an id it did not show, an unusable op).
DROP_LOGGERS = ("memproc.reconcile", "memproc.llm.parsing")
_SHOWN_LINE_RE = re.compile(r"^\[m\d+\] ", re.MULTILINE)


@dataclass
class SessionCost:
    """What processing one session cost and did: calls the fake saw, tokens the processor recorded
    from the fake's `usage` (its estimate is characters / 4: compare runs, not bills), confirms
    committed (the processor's `memories_merged`: scripted confirms and backstop ones) and
    operations the pipeline dropped."""

    session_id: str
    chat_calls: int
    embedding_calls: int
    tokens_in: int
    tokens_out: int
    confirmed: int
    dropped: int


@dataclass
class PromptMeasure:
    """The chat request of a measured (budget) session, as the fake received it."""

    session_id: str
    transcript_bytes: int
    messages: int  # transcript messages (lines)
    shown_lines: int  # [mN] lines in the prompt's <memories> block
    system_chars: int
    user_chars: int
    prompt_tokens: int  # the fake's count: characters of the messages' contents / 4
    completion_tokens: int
    embedding_tokens: int  # the session's embeddings inputs, characters / 4
    schema_chars: int  # json of response_format, which a real request also carries

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def schema_tokens(self) -> int:
        return self.schema_chars // 4


@dataclass
class CaseRun:
    """What one case left behind, as the API shows it."""

    case: Case
    memories: list[dict[str, Any]]  # hierarchy discrete_memories: text, status, history, sources ...
    searches: dict[str, list[dict[str, Any]]]  # question -> top SEARCH_K results (default search)
    searches_all: dict[str, list[dict[str, Any]]]  # the same with include_superseded=true
    costs: list[SessionCost]
    answers: dict[str, Answer]  # session id -> what the scripted model answered
    prompt: PromptMeasure | None = None
    vectorstore: str = ""


class DroppedOps(logging.Handler):
    """Counts the warnings the pipeline logs when it drops a memory operation."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("dropped"):
            self.count += 1

    @contextlib.contextmanager
    def attached(self) -> Iterator[DroppedOps]:
        loggers = [logging.getLogger(name) for name in DROP_LOGGERS]
        for lg in loggers:
            lg.addHandler(self)
        try:
            yield self
        finally:
            for lg in loggers:
                lg.removeHandler(self)


@contextlib.contextmanager
def eval_environment(redis_url: str, openai_base_url: str, threshold: float) -> Iterator[None]:
    """Point memproc (settings, Redis clients) at this run's Redis, the fake and the threshold, and put
    the process environment back afterwards. LLM_MAX_RETRIES=0: a scripted answer never fails by
    chance, so a failure is a harness problem and must surface at once rather than after backoff."""
    from memproc import settings as settings_module
    from memproc.dal import connection

    values = {
        "REDIS_URL": redis_url,
        "OPENAI_API_KEY": "eval-key",
        "OPENAI_BASE_URL": openai_base_url,
        "EMBEDDING_MODEL": EMBEDDING_MODEL,
        "EMBEDDING_DIMENSIONS": str(DIMENSIONS),
        "MERGE_SIMILARITY_THRESHOLD": f"{threshold:g}",
        "LLM_MAX_RETRIES": "0",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "AUTH_MODE": "NONE",  # the harness calls the handlers directly, as an unauthenticated local client
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        settings_module.get_settings.cache_clear()
        connection._store.cache_clear()


def _get(path: str, query: dict[str, Any]) -> Any:
    from tests.api_client import call

    res = call("GET", path, query=query)
    if res.status != 200:
        raise EvalError(f"GET {path} {query}: HTTP {res.status}: {res.body}")
    return res.body


def list_memories(vectorstore: str) -> list[dict[str, Any]]:
    """Every discrete memory of the vectorstore, whatever its status, through the hierarchy API."""
    from tests.api_client import mem_path

    memories: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query: dict[str, Any] = {"memory_type": "discrete", "limit": 1000}
        if cursor:
            query["cursor"] = cursor
        body = _get(mem_path(vectorstore, "/hierarchy"), query)
        memories += body["discrete_memories"]
        cursor = body.get("next_cursor")
        if not cursor:
            return memories


def search(vectorstore: str, q: str, *, include_superseded: bool = False) -> list[dict[str, Any]]:
    """The top SEARCH_K results of GET search, best first."""
    from tests.api_client import mem_path

    query: dict[str, Any] = {"q": q, "k": SEARCH_K}
    if include_superseded:
        query["include_superseded"] = "true"
    return list(_get(mem_path(vectorstore, "/search"), query)["results"])


def measure_prompt(session_id: str, transcript: str, requests: list[Any], tokens_out: int) -> PromptMeasure:
    """The one chat request of a session (and its embeddings inputs), counted as the fake counts."""
    chats = [r.body for r in requests if r.path.rstrip("/").endswith("/chat/completions")]
    if len(chats) != 1:
        raise EvalError(f"session {session_id}: expected 1 chat request to measure, saw {len(chats)}")
    messages = chats[0]["messages"]
    system = next(str(m["content"]) for m in messages if m["role"] == "system")
    user = next(str(m["content"]) for m in messages if m["role"] == "user")
    inputs = [r.body["input"] for r in requests if r.path.rstrip("/").endswith("/embeddings")]
    return PromptMeasure(
        session_id=session_id,
        transcript_bytes=len(transcript.encode()),
        messages=len(transcript.splitlines()),
        shown_lines=len(_SHOWN_LINE_RE.findall(user)),
        system_chars=len(system),
        user_chars=len(user),
        prompt_tokens=sum(len(str(m.get("content") or "")) for m in messages) // 4,
        completion_tokens=tokens_out,
        embedding_tokens=sum(sum(len(t) for t in batch) // 4 for batch in inputs),
        schema_chars=len(json.dumps(chats[0]["response_format"])),
    )


def run_case(case: Case, vectorstore: str, llm: ScriptedLLM, fake: Any, processor: Any) -> CaseRun:
    """Store and drain the case's sessions one at a time, then read memories and search results.
    A budget case's last session is measured: its chat request is recorded and counted."""
    from tests.api_client import call, mem_path

    llm.case = case
    llm.answers = {}
    costs: list[SessionCost] = []
    prompt: PromptMeasure | None = None
    dropped = DroppedOps()
    try:
        with dropped.attached():
            for s in case.sessions:
                measured = case.kind == "budget" and s is case.sessions[-1]
                chat_before, embed_before, drops_before = fake.chat_calls, fake.embedding_calls, dropped.count
                recording, seen = fake.record_requests, len(fake.requests)
                fake.record_requests = recording or measured
                body = {
                    "session_data": s.transcript,
                    "session_id": s.session_id,
                    "metadata": {"session_timestamp": s.timestamp},
                }
                try:
                    res = call("POST", mem_path(vectorstore, "/store_raw"), json_body=body)
                    if res.status != 202:
                        raise EvalError(f"store_raw {s.session_id}: HTTP {res.status}: {res.body}")
                    report = processor.drain()
                finally:
                    fake.record_requests = recording
                _check(llm, s.session_id, report)
                costs.append(
                    SessionCost(
                        s.session_id,
                        fake.chat_calls - chat_before,
                        fake.embedding_calls - embed_before,
                        report.tokens_in,
                        report.tokens_out,
                        report.memories_merged,
                        dropped.count - drops_before,
                    )
                )
                if measured:
                    prompt = measure_prompt(
                        s.session_id, s.transcript, fake.requests[seen:], report.tokens_out
                    )
        searches = {q.q: search(vectorstore, q.q) for q in case.questions}
        searches_all = {q.q: search(vectorstore, q.q, include_superseded=True) for q in case.questions}
        if llm.missing_vectors:
            raise EvalError(f"no committed vector for {llm.missing_vectors[0]!r}: run make eval-vectors")
        return CaseRun(
            case,
            list_memories(vectorstore),
            searches,
            searches_all,
            costs,
            dict(llm.answers),
            prompt,
            vectorstore,
        )
    finally:
        llm.case = None


def _check(llm: ScriptedLLM, session_id: str, report: Any) -> None:
    if llm.errors:
        raise llm.errors[0]
    if llm.missing_vectors:
        raise EvalError(f"no committed vector for {llm.missing_vectors[0]!r}: run make eval-vectors")
    if report.processed != 1 or report.handled != 1:
        raise EvalError(f"session {session_id}: drain handled {report.handled}, processed {report.processed}")
    if session_id not in llm.answers:
        raise EvalError(f"session {session_id}: processed without a chat call")


def run_cases(
    cases: list[Case],
    *,
    mode: str,
    threshold: float,
    redis_url: str,
    fake: Any,
    vectors: dict[str, list[float]],
    prefix: str = "eval",
    progress: Callable[[str], None] | None = None,
) -> list[CaseRun]:
    """Every case through the pipeline with the fake's hooks set, each in vectorstore <prefix>-<case id>."""
    from memproc.processor import build_processor
    from memproc.settings import get_settings

    llm = ScriptedLLM(mode, vectors)
    hooks = (fake.reconciliation_for, fake.extraction_for, fake.embedding_for)
    fake.reconciliation_for, fake.extraction_for, fake.embedding_for = (
        llm.reconciliation_for,
        None,
        llm.embedding_for,
    )
    try:
        with eval_environment(redis_url, fake.base_url, threshold):
            processor = build_processor(get_settings())
            try:
                runs = []
                for case in cases:
                    runs.append(run_case(case, f"{prefix}-{case.id}", llm, fake, processor))
                    if progress:
                        progress(f"{case.kind}/{case.id}: {len(runs[-1].memories)} memories")
                return runs
            finally:
                close = getattr(processor.provider, "close", None)
                if close is not None:
                    close()
    finally:
        fake.reconciliation_for, fake.extraction_for, fake.embedding_for = hooks
