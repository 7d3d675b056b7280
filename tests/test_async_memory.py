"""The specification's usage examples, end to end over real HTTP against the local API.

store raw memory -> background processing -> hierarchy retrieval -> session details ->
statistics -> search -> cleanup -> processing status, through `memproc_local.server.LocalApiServer`
(the routes of template.yaml, the real Lambda handlers), a real Redis 8 and the real openai client
talking to a fake OpenAI-compatible server.

    python tests/test_async_memory.py     # starts its own Redis, fake LLM and API; prints a walk-through
    pytest tests/test_async_memory.py     # the same steps as test functions, on the suite's fixtures
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__" and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from memproc_local.events import LambdaContext  # noqa: E402
from memproc_local.handlers import load_handler  # noqa: E402
from memproc_local.routing import Route  # noqa: E402
from memproc_local.server import LocalApiServer  # noqa: E402

VS = "user123"
SESSION = "session_456"
CHAT = (
    "user: Hi! I'm Dana and I live in Porto.\n"
    "assistant: Nice to meet you, Dana.\n"
    "user: I prefer green tea over coffee.\n"
    "user: I'm training for the Lisbon half marathon in May.\n"
)
FOLLOW_UP = "user: I adopted a cat named Miso.\nuser: I work as a nurse at the city hospital.\n"


@dataclass
class Reply:
    status: int
    body: Any


@dataclass
class Walk:
    """One walk through the examples: the API's base URL, how to run the processor, and what
    earlier steps learnt."""

    base_url: str
    process: Callable[[], dict[str, Any]]
    redis_url: str
    say: Callable[[str], None] = lambda line: None
    state: dict[str, Any] = field(default_factory=dict)

    def request(self, method: str, path: str, body: Any = None, **query: Any) -> Reply:
        url = f"{self.base_url}/api/memory/{VS}{path}" + (f"?{urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            url, data=data, method=method, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as res:
                return Reply(res.status, json.loads(res.read() or b"null"))
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, json.loads(exc.read() or b"null"))


def store_raw_memory(w: Walk) -> None:
    res = w.request(
        "POST",
        "/store_raw",
        {
            "session_data": CHAT,
            "session_id": SESSION,
            "metadata": {"app": "chat-demo", "session_timestamp": "2026-03-10T12:00:00Z"},
        },
    )
    assert res.status == 202, res.body
    b = res.body
    assert (
        b["success"] and b["status"] == "queued" and b["session_id"] == SESSION and b["queue_position"] == 1
    )
    w.state["raw_id"] = b["raw_memory_id"]
    w.say(
        f"POST /store_raw -> 202 queued raw_memory_id={b['raw_memory_id']} position={b['queue_position']} "
        f"estimated {b['estimated_processing_time']}"
    )
    status = w.request("GET", "/processing_status").body
    assert status["queue_size"] == 1 and status["vectorstore"]["pending"] == 1
    w.say(f"GET /processing_status -> queue_size={status['queue_size']} (nothing processed yet)")


def background_processing(w: Walk) -> None:
    report = w.process()
    assert report["processed"] == 1 and report["dead"] == 0, report
    raw = w.request("GET", f"/raw/{w.state['raw_id']}").body
    assert raw["status"] == "processed" and raw["memories_created"] >= 3
    w.say(
        f"process_queue (scheduled) -> processed {report['processed']}, memories created "
        f"{report['memories_created']}, tokens {report['tokens_in']}+{report['tokens_out']}"
    )


def hierarchy_retrieval(w: Walk) -> None:
    res = w.request("GET", "/hierarchy", memory_type="all", limit=50)
    assert res.status == 200, res.body
    b = res.body
    assert b["counts"]["discrete"] >= 3 and b["counts"]["summary"] == 1 and b["counts"]["raw"] == 1
    assert b["total_count"] == sum(b["counts"].values())
    texts = [m["text"] for m in b["discrete_memories"]]
    assert any("green tea" in t for t in texts) and any("Porto" in t for t in texts)
    assert "session_data" not in b["raw_memories"][0]
    w.say(f"GET /hierarchy -> {b['counts']} ; summary: {b['session_summaries'][0]['summary'][:80]!r}")
    for m in b["discrete_memories"]:
        w.say(f"    [{m['memory_type']}] {m['text']}")
    page = w.request("GET", "/hierarchy", memory_type="discrete", limit=1).body
    assert len(page["discrete_memories"]) == 1 and page["next_cursor"]
    second = w.request("GET", "/hierarchy", memory_type="discrete", limit=1, cursor=page["next_cursor"]).body
    assert second["discrete_memories"][0]["memory_id"] != page["discrete_memories"][0]["memory_id"]
    bad = w.request("GET", "/hierarchy", memory_type="everything")
    assert bad.status == 400 and bad.body["error"]["code"] == "invalid_memory_type"
    w.say("GET /hierarchy?limit=1 pages with next_cursor; memory_type=everything -> 400 invalid_memory_type")


def session_details(w: Walk) -> None:
    res = w.request("GET", f"/session/{quote(SESSION, safe='')}", include_transcript="true")
    assert res.status == 200, res.body
    b = res.body
    assert b["status"] == "processed" and b["summary"]["memory_count"] == b["memory_count"] >= 3
    assert b["raw_memories"][0]["session_data"] == CHAT
    assert b["token_usage"]["total_tokens"] > 0
    w.say(
        f"GET /session/{SESSION} -> {b['memory_count']} memories, {b['raw_memory_count']} submission(s), "
        f"tokens {b['token_usage']['total_tokens']}, transcript included on request"
    )
    assert w.request("GET", "/session/nobody").status == 404


def statistics(w: Walk) -> None:
    b = w.request("GET", "/stats").body
    c = b["counts"]
    assert c["memories"] >= 3 and c["sessions"] == 1 and c["raw_memories"]["processed"] == 1
    today = b["daily"][-1]
    assert today["processed"] == 1 and today["extraction_success_rate"] == 1.0
    assert b["storage"]["total_bytes"] > 0
    w.say(
        f"GET /stats -> memories={c['memories']} sessions={c['sessions']} raw={c['raw_memories']} "
        f"storage~{b['storage']['total_bytes']} bytes; today: processed={today['processed']} "
        f"mean {today['mean_processing_ms']} ms, success rate {today['extraction_success_rate']}"
    )


def search(w: Walk) -> None:
    res = w.request("GET", "/search", q="green tea or coffee", k=3)
    assert res.status == 200, res.body
    top = res.body["results"][0]
    assert "tea" in top["text"], res.body
    w.say(f"GET /search?q=green tea or coffee -> {top['text']!r} (similarity {top['similarity']:.3f})")
    assert (
        w.request("POST", "/store_raw", {"session_data": FOLLOW_UP, "session_id": "session_789"}).status
        == 202
    )
    pending = w.request("GET", "/search", q="cat", session_id="session_789").body
    assert pending["results"] == [] and pending["session_pending"] is True and pending["note"]
    w.say(f"GET /search?session_id=session_789 before processing -> [] ; note: {pending['note']}")
    assert w.process()["processed"] == 1
    found = w.request("GET", "/search", q="cat", session_id="session_789").body
    assert found["results"] and "Miso" in found["results"][0]["text"]
    w.say(f"... after processing -> {found['results'][0]['text']!r}")


def cleanup(w: Walk) -> None:
    res = w.request("POST", "/cleanup", retention_days=30)
    assert res.status == 200 and res.body["deleted_raw_memories"] == [] and res.body["complete"], res.body
    w.say("POST /cleanup?retention_days=30 -> nothing is 30 days old yet")
    import redis

    # Let 40 days pass for the first submission (only its creation time moves).
    r = redis.Redis.from_url(w.redis_url, decode_responses=True)
    key = f"{{{VS}}}:raw_memory:{w.state['raw_id']}"
    created = float(r.hget(key, "created_at")) - 40 * 86400
    r.hset(key, "created_at", f"{created:.6f}")
    r.zadd(f"{{{VS}}}:raw_index", {w.state["raw_id"]: created})
    dry = w.request("POST", "/cleanup", retention_days=30, dry_run="true").body
    assert dry["dry_run"] and dry["deleted_raw_memories"] == [w.state["raw_id"]] and r.exists(key)
    done = w.request("POST", "/cleanup", retention_days=30).body
    assert done["deleted_raw_memories"] == [w.state["raw_id"]] and not r.exists(key)
    after = w.request("GET", "/hierarchy").body
    assert (
        after["counts"]["summary"] == 2 and after["counts"]["discrete"] >= 5 and after["counts"]["raw"] == 1
    )
    w.say(
        f"40 days later: dry run lists {dry['deleted_raw_memories']}; cleanup deletes the transcript; "
        f"memories ({after['counts']['discrete']}) and summaries ({after['counts']['summary']}) stay"
    )


def processing_status(w: Walk) -> None:
    b = w.request("GET", "/processing_status").body
    assert b["processor_running"] is True and b["queue_size"] == 0 and b["processed_today"] == 2
    assert b["retention_policy"] == {"raw_memory_days": 30, "session_days": 365, "memories": "permanent"}
    w.say(
        f"GET /processing_status -> running={b['processor_running']} queue={b['queue_size']} "
        f"processed_today={b['processed_today']} last={b['last_processed_at']}"
    )


STEPS = [
    store_raw_memory,
    background_processing,
    hierarchy_retrieval,
    session_details,
    statistics,
    search,
    cleanup,
    processing_status,
]


def run(w: Walk, until: Callable[[Walk], None] | None = None) -> None:
    for step in STEPS:
        w.say(f"\n== {step.__name__.replace('_', ' ')}")
        step(w)
        if step is until:
            return


def process_queue_handler() -> Callable[[], dict[str, Any]]:
    """The ProcessQueueFunction's real handler, invoked as its schedule would."""
    handler = load_handler(
        Route("", "", "ProcessQueueFunction", Path("functions/process_queue"), "app.lambda_handler"), ROOT
    )
    event = {
        "source": "memproc.schedule",
        "detail-type": "Scheduled Event",
        "detail": {"task": "process_queue"},
    }
    return lambda: handler(event, LambdaContext("ProcessQueueFunction", timeout_seconds=300))


# -- pytest ----------------------------------------------------------------------------------------


@pytest.fixture
def walk(fake_llm: Any, redis_server: Any) -> Iterator[Walk]:
    with LocalApiServer(ROOT / "template.yaml", ROOT, port=0) as api:
        yield Walk(api.url, process_queue_handler(), redis_server.url)


@pytest.mark.parametrize("step", STEPS, ids=[s.__name__ for s in STEPS])
def test_usage_example(walk: Walk, step: Callable[[Walk], None]) -> None:
    run(walk, until=step)


# -- standalone ------------------------------------------------------------------------------------


def main() -> int:
    from memproc import settings
    from memproc.dal import connection
    from tests.fake_openai import FakeOpenAI
    from tests.redis_server import RedisServer

    redis_server = RedisServer()
    try:
        with FakeOpenAI() as fake:
            os.environ.update(
                {
                    "REDIS_URL": redis_server.url,
                    "OPENAI_API_KEY": "test-key",
                    "OPENAI_BASE_URL": fake.base_url,
                    "EMBEDDING_DIMENSIONS": "64",
                    "POWERTOOLS_METRICS_DISABLED": "true",
                    "POWERTOOLS_LOG_LEVEL": "WARNING",
                }
            )
            settings.get_settings.cache_clear()
            connection._store.cache_clear()
            with LocalApiServer(ROOT / "template.yaml", ROOT, port=0) as api:
                print(f"Redis {redis_server.url} | fake OpenAI {fake.base_url} | API {api.url}")
                try:
                    run(Walk(api.url, process_queue_handler(), redis_server.url, say=print))
                except AssertionError as exc:
                    print(f"\nFAILED: {exc!r}", file=sys.stderr)
                    raise
        print("\nAll usage examples passed.")
        return 0
    except AssertionError:
        return 1
    finally:
        redis_server.stop()


if __name__ == "__main__":
    sys.exit(main())
