"""`memproc migrate`: a vectorstore moved between the memory-index backends, from one real store to
another (Redis 8 vector sets <-> Redis Stack's Query Engine) or within one store that has both.

The source is filled through the real API and processor (offline LLM provider); the command runs
as an operator runs it (`memproc_local.cli.main`), and the target is then used as memproc uses a
store: the same API answers, the same search ranking, new sessions processed, re-posts deduped.
"""

from __future__ import annotations

import stat
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from memproc import settings as settings_module
from memproc.dal import connection
from memproc.dal import queue as q
from memproc.dal.connection import get_store
from memproc.keys import VectorstoreKeys
from memproc.settings import get_settings
from memproc_local.cli import main
from tests.api_client import call, mem_path
from tests.chats import sessions
from tests.memory_helpers import drain, snapshot, store
from tests.redis_server import RedisServer, engine_binary

VS = "user1"
VK = VectorstoreKeys(VS)
DIMS = 64
TIE = 0.01  # cosine similarities this close may rank either way (vector sets quantise to 8 bits)
QUERIES = ["amber journal", "I prefer quartz tea", "cedar lotus maple", "raven harbor", "willow ember"]


@pytest.fixture(scope="module")
def redis8() -> Iterator[RedisServer]:
    """A Redis 8 of this module's own: `redis_server` may be parametrised over backends."""
    server = RedisServer(engine="redis8")
    yield server
    server.stop()


@pytest.fixture
def servers(redis8: RedisServer, stack_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    for server in (redis8, stack_server):
        server.client().flushall()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("TARGET_REDIS_URL", raising=False)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", str(DIMS))
    monkeypatch.setenv("AUTH_MODE", "NONE")  # the API as an unauthenticated local client
    yield {"vectorset": redis8, "search": stack_server}
    _reset()


def _reset() -> None:
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()


def use(monkeypatch: pytest.MonkeyPatch, server: RedisServer, backend: str) -> None:
    """Point memproc (API, processor, the command's source) at `server` with `backend`."""
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.setenv("VECTOR_BACKEND", backend)
    _reset()
    if backend == "search":  # the deployment's index, as a search deployment creates it
        get_store().index.ensure(DIMS)


def populate(monkeypatch: pytest.MonkeyPatch, server: RedisServer, backend: str, n: int = 12) -> list[str]:
    """n processed sessions (one re-posted longer), and one dead letter; returns the transcripts."""
    use(monkeypatch, server, backend)
    chats = sessions(n, seed=7)
    for i, chat in enumerate(chats):
        store(VS, chat, session_id=f"s{i}", metadata={"session_timestamp": f"2026-11-{i + 1:02d}T09:00:00Z"})
    assert drain().processed == n
    store(VS, chats[0] + "user: I also collect cobalt stamps.\n", session_id="s0")  # only its delta
    assert drain().processed == 1
    store(VS, "user: this one fails for good.\n", session_id="doomed")
    settings = get_settings()
    (item,) = q.claim(get_store(), settings, 10).items
    assert q.fail(get_store(), settings, item, "the test buries it", retryable=False)[0] == "dead"
    r = server.client()
    assert r.zcard(VK.pending) == 0 and r.zcard(VK.inflight) == 0
    return chats


def migrate(*args: str) -> int:
    return main(["migrate", *args])


def api(path: str, **query: Any) -> Any:
    res = call("GET", mem_path(VS, path), query=query or None)
    assert res.status == 200, res.body
    return res.body


def answers() -> dict[str, Any]:
    """What the API shows of the vectorstore: hierarchy, every session, and search rankings."""
    hierarchy = api("/hierarchy", memory_type="all", limit=1000)
    shown = {"hierarchy": hierarchy}
    for sid in sorted({s["session_id"] for s in hierarchy["session_summaries"]}):
        shown[f"session {sid}"] = api(f"/session/{sid}")
    shown["dead"] = api("/dead_letters")
    for text in QUERIES:
        shown[f"search {text}"] = [
            (h["memory_id"], h["similarity"]) for h in api("/search", q=text, k=5)["results"]
        ]
    return shown


def assert_same_ranking(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> None:
    """Same top-k ids in the same order; two ids may swap only where their similarities tie."""
    assert len(a) == len(b)
    theirs = dict(b)
    for (ida, sa), (idb, sb) in zip(a, b, strict=True):
        assert abs(sa - sb) < TIE, (a, b)
        if ida != idb:  # a tie: swapped with a neighbour, or past the k-th place
            assert ida not in theirs or abs(theirs[ida] - sa) < TIE, (a, b)


def assert_same_answers(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys()
    for name, shown in before.items():
        if name.startswith("search"):
            assert_same_ranking(shown, after[name])
        else:
            assert shown == after[name], name


def test_redis8_to_the_query_engine_moves_everything_and_the_target_works(
    servers: dict[str, RedisServer], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = servers["vectorset"], servers["search"]
    chats = populate(monkeypatch, source, "vectorset")
    before, untouched = answers(), snapshot(source.client(), VS)
    src = source.client()
    memories = src.zrange(VK.memory_index, 0, -1)
    assert len(memories) >= 12 and src.zcard(VK.dead) == 1

    assert migrate("--to", "search", "--target-url", target.url, "--batch-size", "5", VS) == 0
    assert "verified" in capsys.readouterr().err

    # Every memory with its record byte for byte and its vector; the source is as it was.
    tr = target.client()
    rb = target.client(decode=False)
    for mid in memories:
        assert tr.hget(VK.memory(mid), "attrs") == src.execute_command("VGETATTR", VS, mid)
        kept = array("f", rb.hget(VK.memory(mid), "vec"))
        original = [float(x) for x in src.execute_command("VEMB", VS, mid)]
        assert max(abs(x - y) for x, y in zip(kept, original, strict=True)) < 1e-6
    assert snapshot(src, VS) == untouched
    assert tr.hget(VK.config, "backend") == "search"

    # The target, as a search deployment, answers as the source did.
    use(monkeypatch, target, "search")
    assert_same_answers(before, answers())
    # It is a working memproc store: a re-post is a duplicate, a new session is processed into it.
    res = call("POST", mem_path(VS, "/store_raw"), json_body={"session_id": "s3", "session_data": chats[3]})
    assert res.status == 202 and res.body["duplicate"] is True
    store(VS, "user: I moved to Porto and I love sailing.\n", session_id="new")
    assert drain().memories_created >= 1
    assert tr.zcard(VK.memory_index) > len(memories)


def test_query_engine_to_redis8_resumes_after_an_interruption_without_duplicates(
    servers: dict[str, RedisServer], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = servers["search"], servers["vectorset"]
    populate(monkeypatch, source, "search")
    before = answers()
    count = source.client().zcard(VK.memory_index)
    args = ("--to", "vectorset", "--target-url", target.url, "--batch-size", "3", VS)

    assert migrate(*args, "--max-batches", "2") == 3
    tr = target.client()
    assert tr.execute_command("VCARD", VS) == 6  # two batches of three, then it stopped
    assert tr.hget(VK.migration, "phase") == "memories"
    assert not tr.exists(VK.config)  # the config, naming the backend, comes last
    capsys.readouterr()

    assert migrate(*args, "--max-batches", "3") == 3  # resumes where it stopped
    assert tr.execute_command("VCARD", VS) == min(count, 15)
    assert "resuming at memories after 2 batch(es)" in capsys.readouterr().err

    assert migrate(*args) == 0
    assert tr.execute_command("VCARD", VS) == tr.zcard(VK.memory_index) == count
    assert migrate(*args) == 0  # once more: verified again, nothing copied twice
    assert "already migrated: verifying again" in capsys.readouterr().err
    assert tr.execute_command("VCARD", VS) == count

    use(monkeypatch, target, "vectorset")
    assert_same_answers(before, answers())


def test_verification_detects_a_memory_lost_on_the_target_and_a_rerun_repairs_it(
    servers: dict[str, RedisServer], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = servers["vectorset"], servers["search"]
    populate(monkeypatch, source, "vectorset", n=4)
    args = ("--to", "search", "--target-url", target.url, VS)
    assert migrate(*args) == 0
    lost = source.client().zrange(VK.memory_index, 0, 0)[0]
    target.client().delete(VK.memory(lost))
    capsys.readouterr()

    assert migrate(*args) == 1
    err = capsys.readouterr().err
    assert f"VERIFICATION FAILED: memories missing on the target: {lost}" in err
    assert target.client().hget(VK.migration, "state") == "verify_failed"
    assert migrate(*args) == 0  # copies again from the start
    assert target.client().hget(VK.memory(lost), "attrs") is not None


def test_migrate_refuses_queued_work_a_reembedding_and_an_existing_target_vectorstore(
    servers: dict[str, RedisServer], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = servers["vectorset"], servers["search"]
    populate(monkeypatch, source, "vectorset", n=2)
    store(VS, "user: still waiting.\n", session_id="late")
    args = ("--to", "search", "--target-url", target.url, VS)
    assert migrate(*args) == 2
    assert "1 submission(s) queued and 0 in flight" in capsys.readouterr().err
    assert migrate("--to", "search", "--target-url", target.url, "--batch-size", "0", VS) == 2
    assert migrate("--to", "search", "--target-url", target.url, "{user1}") == 2  # not a vectorstore name
    assert target.client().dbsize() == 0  # refused before writing anything

    drain()
    source.client().hset(VK.config, "reembed_model", "text-embedding-3-small")  # memproc reembed runs
    assert migrate(*args) == 2
    assert "is being re-embedded" in capsys.readouterr().err
    assert target.client().dbsize() == 0
    source.client().hdel(VK.config, "reembed_model")
    target.client().hset(VK.config, "dimensions", DIMS)  # a vectorstore of that name lives there
    assert migrate(*args) == 2
    assert "already exists on the target" in capsys.readouterr().err
    assert target.client().keys("*") == [VK.config]


@pytest.fixture(scope="module")
def both_engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Redis 8 with RediSearch loaded (Redis Stack's module): one store with both backends."""
    stack = Path(engine_binary("stack")).parent
    wrapper = tmp_path_factory.mktemp("both") / "redis-server-both"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'LD_LIBRARY_PATH="{stack}/libssl1.1/usr/lib/x86_64-linux-gnu" '
        f'exec "{engine_binary("redis8")}" "$@" --loadmodule "{stack}/redisearch.so"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    server = RedisServer(str(wrapper), engine="redis8")
    yield server
    server.stop()


def test_within_one_store_only_the_memories_change_backend(
    servers: dict[str, RedisServer],
    both_engines: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    both_engines.client().flushall()
    populate(monkeypatch, both_engines, "vectorset", n=6)
    before = answers()
    r = both_engines.client()
    count = r.execute_command("VCARD", VS)
    assert migrate("--to", "search", VS) == 0  # no target given: this store
    assert "in the same store" in capsys.readouterr().err
    assert r.execute_command("VCARD", VS) == count  # the vector set stays: nothing is deleted
    assert r.hget(VK.config, "backend") == "search"
    assert migrate("--to", "search", VS) == 0  # verified again, from the recorded backend
    use(monkeypatch, both_engines, "search")
    assert_same_answers(before, answers())


def test_migrate_refuses_a_target_without_the_backend(
    servers: dict[str, RedisServer], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = servers["vectorset"]
    populate(monkeypatch, source, "vectorset", n=2)
    assert migrate("--to", "search", VS) == 2  # Redis 8 alone has no Query Engine
    assert "has no Query Engine" in capsys.readouterr().err
    with pytest.raises(redis.ResponseError):
        source.client().execute_command("FT._LIST")


# What a session stated, which erasing it undoes: an update (whose replaced text's vector is kept in
# {vs}:memory_versions, and which here also changes the memory's type), a supersede, a retraction.
BANK, BARCLAYS = "The user works at a bank.", "The user works at Barclays."
LISBON, BERLIN = "The user lives in Lisbon.", "The user lives in Berlin."
VEGGIE = "The user is vegetarian."
FIRST, SECOND = (
    "user: I work at a bank, live in Lisbon, and I am vegetarian.",
    "user: Barclays. Berlin. Meat.",
)


def restated(monkeypatch: pytest.MonkeyPatch, fake: Any, server: RedisServer, backend: str) -> None:
    """s-a states three memories; s-b updates, supersedes and retracts one each (scripted model)."""
    use(monkeypatch, server, backend)
    fake.clear_failures()
    fake.latency = 0.0
    fake.extraction_for = fake.embedding_for = None

    def answer(transcript: str, shown: list[tuple[str, str]]) -> dict[str, Any] | None:
        ids = {text: mid for mid, text in shown}
        if FIRST in transcript:
            adds = [(BANK, "fact"), (LISBON, "fact"), (VEGGIE, "preference")]
            ops: list[dict[str, Any]] = []
        else:
            adds = []
            ops = [
                {"op": "update", "id": ids[BANK], "text": BARCLAYS, "memory_type": "relationship"},
                {"op": "supersede", "id": ids[LISBON], "text": BERLIN, "memory_type": "fact"},
                {"op": "retract", "id": ids[VEGGIE]},
            ]
        return {
            "memories": [{"text": t, "memory_type": c, "confidence": 0.9, "tags": []} for t, c in adds],
            "operations": [{"confidence": 0.9, "tags": [], **op} for op in ops],
            "summary": "work, home and food",
            "topics": [],
        }

    fake.reconciliation_for = answer
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    _reset()
    for day, (sid, text) in enumerate((("s-a", FIRST), ("s-b", SECOND)), 10):
        store(VS, text, session_id=sid, metadata={"session_timestamp": f"2026-01-{day}T09:00:00Z"})
        assert drain().processed == 1
    fake.reconciliation_for = None
    r = server.client()
    assert r.hlen(VK.memory_versions) == 1
    assert r.zcard(VK.category_index("relationship")) == 1


def shown(*categories: str) -> dict[str, Any]:
    """Every memory as the API shows it (status, times, history), by category and by search."""
    views: dict[str, Any] = {"all": api("/hierarchy", memory_type="all", limit=100)["discrete_memories"]}
    for c in categories:
        views[c] = [
            m["memory_id"] for m in api("/hierarchy", memory_type="discrete", category=c)["discrete_memories"]
        ]
    views["search"] = [
        (h["text"], h["status"], round(h["similarity"], 2))
        for h in api("/search", q=BANK, k=10, include_superseded="true")["results"]
    ]
    return views


def test_a_round_trip_keeps_history_versions_categories_and_what_erasure_undoes(
    servers: dict[str, RedisServer], monkeypatch: pytest.MonkeyPatch, fake_llm_server: Any
) -> None:
    """vectorset -> search -> vectorset: the vectorstore comes back key for key, and erasing the
    session that updated, superseded and retracted restores the replaced text with its own vector."""
    redis8, stack = servers["vectorset"], servers["search"]
    restated(monkeypatch, fake_llm_server, redis8, "vectorset")
    categories = ("fact", "preference", "relationship")
    before, original = shown(*categories), snapshot(redis8.client(), VS)
    statuses = {m["text"]: m["status"] for m in before["all"]}
    assert statuses == {BARCLAYS: "current", LISBON: "superseded", BERLIN: "current", VEGGIE: "retracted"}

    assert migrate("--to", "search", "--target-url", stack.url, VS) == 0
    versions = redis8.client(decode=False).hgetall(VK.memory_versions)
    assert stack.client(decode=False).hgetall(VK.memory_versions) == versions
    use(monkeypatch, stack, "search")
    assert shown(*categories) == before

    redis8.client().flushall()  # back into the emptied Redis 8
    use(monkeypatch, stack, "search")
    assert migrate("--to", "vectorset", "--target-url", redis8.url, VS) == 0
    back = snapshot(redis8.client(), VS)
    assert back.pop(VK.migration)[1][b"state"] == b"done"
    assert back == original

    use(monkeypatch, redis8, "vectorset")
    assert call("DELETE", mem_path(VS, "/session/s-b")).status == 200
    after = {m["text"]: m for m in api("/hierarchy", memory_type="all", limit=100)["discrete_memories"]}
    assert {t: (m["status"], m["memory_type"], m["history"]) for t, m in after.items()} == {
        BANK: ("current", "fact", []), LISBON: ("current", "fact", []), VEGGIE: ("current", "preference", []),
    }  # fmt: skip
    hits = api("/search", q=BANK, k=1)["results"]
    assert [(h["text"], round(h["similarity"], 2)) for h in hits] == [(BANK, 1.0)]
    r = redis8.client()
    assert r.hlen(VK.memory_versions) == 0
    assert (r.zcard(VK.category_index("fact")), r.zcard(VK.category_index("relationship"))) == (2, 0)


def test_verification_names_a_lost_version_and_category_entry_and_a_rerun_repairs_them(
    servers: dict[str, RedisServer],
    monkeypatch: pytest.MonkeyPatch,
    fake_llm_server: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, target = servers["vectorset"], servers["search"]
    restated(monkeypatch, fake_llm_server, source, "vectorset")
    args = ("--to", "search", "--target-url", target.url, VS)
    assert migrate(*args) == 0
    tr = target.client()
    (version,) = tr.hkeys(VK.memory_versions)
    (updated,) = tr.zrange(VK.category_index("relationship"), 0, -1)
    tr.hdel(VK.memory_versions, version)
    tr.zrem(VK.category_index("relationship"), updated)
    capsys.readouterr()

    assert migrate(*args) == 1
    err = capsys.readouterr().err
    assert f"vectors of replaced texts missing or different on the target: {version}" in err
    assert f"memories not in their category listing on the target: {updated}" in err
    assert "category relationship: source 1 memories, target listing 0" in err
    assert migrate(*args) == 0
    assert tr.hexists(VK.memory_versions, version)
    assert tr.zscore(VK.category_index("relationship"), updated) is not None
