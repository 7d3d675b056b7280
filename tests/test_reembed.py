"""A vectorstore first filled by the offline provider, then a deployment with an OpenAI key:
store_raw refuses it at the door (409 embedding_mismatch, one round trip, nothing written), and
`memproc reembed` re-embeds its memories on either memory backend and lets it in again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from memproc import keys, reembed
from memproc import settings as settings_module
from memproc.dal import connection
from memproc.dal.connection import get_store
from memproc.errors import Conflict
from memproc.llm import make_provider
from memproc.settings import get_settings
from memproc_local import cli
from tests.api_client import call, mem_path
from tests.memory_helpers import drain, everything, store
from tests.redis_server import RedisServer

VK = keys.VectorstoreKeys("user1")
CHATS = [
    "user: I prefer green tea over coffee.\nuser: I live in Porto.\n",
    "user: I adopted a cat named Miso.\nuser: I work as a nurse at the city hospital.\n",
]


def reconfigure(env: pytest.MonkeyPatch, **variables: str | None) -> None:
    for name, value in variables.items():
        if value is None:
            env.delenv(name, raising=False)
        else:
            env.setenv(name, value)
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()


@pytest.fixture
def offline_then_openai(backend: str, env: pytest.MonkeyPatch, fake_llm: Any) -> Iterator[Any]:
    """user1's memories made by the offline provider at 32 dimensions, on either memory backend
    (`redis_server`); then the deployment gets an OpenAI key (the fake server) and 64 dimensions."""
    reconfigure(env, OPENAI_API_KEY=None, EMBEDDING_DIMENSIONS="32")
    if backend == "search":  # this deployment's index, as the processor's start-up would create it
        get_store().index.ensure(32)
    for i, chat in enumerate(CHATS):
        store("user1", chat, f"s-{i}")
    assert drain().processed == 2
    r = redis.Redis.from_url(get_settings().redis_url or "", decode_responses=True)
    assert r.hmget(VK.config, ["embedding_model", "dimensions"]) == ["offline-hashing", "32"]
    reconfigure(env, OPENAI_API_KEY="test-key", EMBEDDING_DIMENSIONS="64")
    yield r


def test_store_raw_refuses_a_vectorstore_embedded_otherwise(offline_then_openai: redis.Redis) -> None:
    r = offline_then_openai
    before = everything(r)
    res = call("POST", mem_path("user1", "/store_raw"), json_body={"session_data": "user: I swim.\n"})
    assert res.status == 409 and res.error_code == "embedding_mismatch", res.body
    message = res.body["error"]["message"]
    assert "'offline-hashing' (32 dimensions)" in message and "'text-embedding-3-small' (64" in message
    assert "memproc reembed user1" in message
    assert res.body["error"]["details"]["deployment"] == {
        "embedding_model": "text-embedding-3-small",
        "dimensions": 64,
    }
    assert everything(r) == before  # nothing stored, nothing queued
    # Another vectorstore, never embedded, is welcome; a re-post of a stored session is a duplicate.
    assert (
        call("POST", mem_path("user2", "/store_raw"), json_body={"session_data": "user: hi\n"}).status == 202
    )
    again = call(
        "POST", mem_path("user1", "/store_raw"), json_body={"session_data": CHATS[0], "session_id": "s-0"}
    )
    assert again.status == 202 and again.body["duplicate"] is True


def test_the_door_check_costs_no_extra_round_trip(
    offline_then_openai: redis.Redis, redis_server: RedisServer
) -> None:
    body = {"session_data": "user: I swim.\n"}
    call("POST", mem_path("user1", "/store_raw"), json_body=body)  # connect
    with redis_server.requests() as seen:
        assert call("POST", mem_path("user1", "/store_raw"), json_body=body).status == 409
    assert seen == ["FCALL"]


def test_reembed_resumes_switches_the_model_and_lets_sessions_in(
    offline_then_openai: redis.Redis, fake_llm: Any
) -> None:
    r = offline_then_openai
    store_ = get_store()
    provider = make_provider(get_settings())
    total = r.zcard(VK.memory_index)
    assert total >= 3
    seen: list[int] = []
    first = reembed.reembed(
        store_, provider, "user1", batch=2, max_batches=1, progress=lambda p: seen.append(p.done)
    )
    assert (first.complete, first.done, first.total) == (False, 2, total) and seen == [2]
    # Interrupted: the vectorstore still says what its current vectors are, and still refuses.
    assert (
        r.hget(VK.config, "embedding_model") == "offline-hashing" and r.hget(VK.config, "reembed_next") == "2"
    )
    refused = call("POST", mem_path("user1", "/store_raw"), json_body={"session_data": "user: I swim.\n"})
    assert refused.status == 409
    calls = fake_llm.embedding_calls
    done = reembed.reembed(store_, provider, "user1", batch=2, progress=lambda p: seen.append(p.done))
    assert (done.complete, done.done, done.total, done.previous) == (True, total, total, "offline-hashing")
    assert seen[1:] == sorted({*range(4, total, 2), total})
    assert fake_llm.embedding_calls - calls == -(-(total - 2) // 2)  # resumed, not started over
    assert r.hmget(VK.config, ["embedding_model", "dimensions"]) == ["text-embedding-3-small", "64"]
    assert not any(r.hexists(VK.config, f) for f in ("reembed_model", "reembed_next", "reembed_done"))
    if get_store().index.name == "vectorset":
        assert r.execute_command("VDIM", "user1") == 64 and r.execute_command("VCARD", "user1") == total
        assert not r.exists(VK.reembed)
    # Every memory is found by its own text with the new embeddings.
    memories = call("GET", mem_path("user1", "/hierarchy"), query={"memory_type": "discrete"}).body
    for m in memories["discrete_memories"]:
        hits = call("GET", mem_path("user1", "/search"), query={"q": m["text"], "k": "1"}).body["results"]
        assert hits and hits[0]["memory_id"] == m["memory_id"] and hits[0]["similarity"] > 0.99
    # The door is open again, and the new session is processed with the new model.
    assert store("user1", "user: I swim every Sunday.\n", "s-9")["status"] == "queued"
    assert drain().processed == 1
    # A second run has nothing to do.
    again = reembed.reembed(store_, provider, "user1")
    assert again.complete and again.done == r.zcard(VK.memory_index)


def test_a_memory_erased_while_it_runs_is_not_brought_back(offline_then_openai: redis.Redis) -> None:
    r = offline_then_openai
    provider = make_provider(get_settings())
    reembed.reembed(get_store(), provider, "user1", batch=1, max_batches=1)
    victim = r.zrange(VK.memory_index, 0, 0)[0]  # already re-embedded
    assert call("DELETE", mem_path("user1", f"/memories/{victim}")).status == 200
    done = reembed.reembed(get_store(), provider, "user1", batch=1)
    assert done.complete and done.done == done.total == r.zcard(VK.memory_index)
    ids = call("GET", mem_path("user1", "/hierarchy"), query={"memory_type": "discrete"}).body
    assert victim not in [m["memory_id"] for m in ids["discrete_memories"]]
    if get_store().index.name == "vectorset":
        assert r.execute_command("VISMEMBER", "user1", victim) == 0
        assert r.execute_command("VCARD", "user1") == r.zcard(VK.memory_index)
    else:
        assert not r.exists(VK.memory(victim))


def test_memories_added_while_it_runs_make_it_start_over(offline_then_openai: redis.Redis) -> None:
    r = offline_then_openai
    provider = make_provider(get_settings())
    reembed.reembed(get_store(), provider, "user1", batch=100, max_batches=0)  # begun, nothing done
    # A memory that appears after the snapshot (as a commit slipping past the door would add one).
    added, model = "f" * 32 + "-0", r.zrange(VK.memory_index, 0, 0)[0]
    r.zadd(VK.memory_index, {added: 1.0})
    if get_store().index.name == "vectorset":
        attrs = r.execute_command("VGETATTR", "user1", model)
        r.execute_command("VADD", "user1", "VALUES", 32, *([0.1] * 32), added, "SETATTR", attrs)
    else:
        rb = get_store().rb
        rb.hset(VK.memory(added), mapping=rb.hgetall(VK.memory(model)))
    with pytest.raises(Conflict) as refused:
        reembed.reembed(get_store(), provider, "user1")
    assert refused.value.code == "reembed_incomplete"
    assert r.hget(VK.config, "embedding_model") == "offline-hashing"  # nothing switched
    done = reembed.reembed(get_store(), provider, "user1")  # started over from a new snapshot
    assert done.complete and done.done == r.zcard(VK.memory_index)


def test_the_cli_prints_progress_and_a_summary(
    offline_then_openai: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["reembed", "user1", "--batch", "2"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["complete"] is True and summary["model"] == "text-embedding-3-small"
    assert f"{summary['total']}/{summary['total']} memories re-embedded" in err
    assert "offline-hashing -> text-embedding-3-small" in err
    assert cli.main(["reembed", "nobody"]) == 2
    assert "does not exist" in capsys.readouterr().err
