"""The eval harness on a small subset of its cases: the pipeline's decisions for the scripted answers
(what a confirm, update, supersede and retract leave behind, read back through the API), the metric
code against figures derived by hand from the cases and the pipeline's rules, the prompt budget
with 30 candidates, and the pieces the harness relies on (the target-to-id mapping, the fake's
refusal of a text without a vector, the committed vectors, the lookup rule).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

import eval.scripted
from eval.cases import Case, load_cases, texts_to_embed, user_turns
from eval.harness import CaseRun, run_cases
from eval.metrics import compute_metrics, history_texts
from eval.scripted import Miss, reconcile_reply
from eval.vectors import DIMENSIONS, load_vectors
from memproc.llm import PermanentLLMError, make_provider, parse_extraction, sanitize
from memproc.reconcile import lookup_texts
from memproc.settings import load_settings
from tests.redis_server import RedisServer

THRESHOLD = 0.97  # the setting's default; no add in these runs meets a memory it was not shown
DOG = ("para-03", "para-08", "para-13", "para-18", "para-23")  # "has a dog called Max", then 4 confirms
QUESTIONS = (
    "What is the user's name?",  # rank 1: 0.66 against 0.45 for the next memory
    "Where is the user travelling this year?",  # rank 3: birthday 0.445, home 0.424, Iceland 0.418
    "What book is the user reading?",  # rank 1: 0.34 against 0.28
)


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    return {c.id: c for c in load_cases()}


@pytest.fixture(scope="module")
def vectors() -> dict[str, list[float]]:
    return load_vectors()


def run(
    chosen: list[Case], mode: str, redis_server: RedisServer, fake: Any, vectors: Any, prefix: str
) -> list[CaseRun]:
    redis_server.client().flushall()  # the drain must find this run's sessions only
    fake.clear_failures()
    fake.latency = 0.0
    return run_cases(
        chosen,
        mode=mode,
        threshold=THRESHOLD,
        redis_url=redis_server.url,
        fake=fake,
        vectors=vectors,
        prefix=prefix,
    )


@pytest.fixture(scope="module")
def reconciled(
    redis_server: RedisServer, fake_llm_server: Any, cases: dict[str, Case], vectors: Any
) -> Iterator[dict[str, CaseRun]]:
    chosen = [
        cases["five-facts"].subset(DOG),
        cases["near-sister-google"],  # two adds
        cases["near-rent"],  # add, then supersede (cosine 0.980)
        cases["update-home"],  # add, add, supersede
        cases["update-employer"],  # add, update
        cases["update-neighbour-dog"],  # add, then add + retract
        cases["retrieval-history"].subset(questions=QUESTIONS),  # 17 adds
    ]
    yield {r.case.id: r for r in run(chosen, "reconcile", redis_server, fake_llm_server, vectors, "t-rec")}


def by_text(r: CaseRun) -> dict[str, dict[str, Any]]:
    return {m["text"]: m for m in r.memories}


def test_a_confirm_adds_the_session_as_a_source(reconciled: dict[str, CaseRun]) -> None:
    (dog,) = reconciled["five-facts"].memories
    assert dog["text"] == "The user has a dog called Max."
    assert dog["status"] == "current"
    assert dog["source_sessions"] == list(DOG)
    assert dog["merge_count"] == 4
    assert history_texts(dog) == []  # the model confirmed without restating: no new wording to keep


def test_a_near_miss_pair_stays_two_current_memories(reconciled: dict[str, CaseRun]) -> None:
    memories = by_text(reconciled["near-sister-google"])
    assert set(memories) == {"The user's sister works at Google.", "The user works at Google."}
    assert {m["status"] for m in memories.values()} == {"current"}


def test_a_supersede_hides_the_old_fact_from_default_search_only(reconciled: dict[str, CaseRun]) -> None:
    r = reconciled["update-home"]
    memories = by_text(r)
    old, new = memories["The user lives in Lisbon."], memories["The user moved to Berlin in February 2026."]
    assert (old["status"], old["superseded_by"], old["valid_to"]) == (
        "superseded",
        new["memory_id"],
        "2026-03-02T20:00:00Z",  # the superseding session's own time
    )
    assert (new["status"], new["valid_from"]) == ("current", "2026-03-02T20:00:00Z")
    q = "Where does the user live?"
    assert [x["text"] for x in r.searches[q]] == [
        "The user moved to Berlin in February 2026.",
        "The user started reading Dune.",
    ]
    # include_superseded=true returns it, marked: it answers the question better (0.606 against
    # 0.469), more than the 0.02 a current memory gets on a near tie.
    found = {x["text"]: x for x in r.searches_all[q]}
    assert r.searches_all[q][0]["text"] == "The user lives in Lisbon."
    assert (found["The user lives in Lisbon."]["status"], found["The user lives in Lisbon."]["valid_to"]) == (
        "superseded",
        "2026-03-02T20:00:00Z",
    )
    # The near-miss pair decided by a supersede: both statements are memories of their own.
    rent = by_text(reconciled["near-rent"])
    assert rent["The user's rent is 900 euros a month."]["status"] == "superseded"
    assert rent["The user's rent is 1400 euros a month."]["status"] == "current"


def test_an_update_replaces_the_text_and_keeps_the_old_one_in_history(reconciled: dict[str, CaseRun]) -> None:
    (memory,) = reconciled["update-employer"].memories
    assert memory["text"] == "The user works in the IT department of the Bank of Portugal."
    assert (memory["status"], memory["valid_from"]) == ("current", "2026-02-09T15:00:00Z")
    assert [(h["op"], h["text"]) for h in memory["history"]] == [("update", "The user works at a bank.")]
    assert memory["source_sessions"] == ["upd-employer-1", "upd-employer-2"]


def test_a_retract_marks_the_memory_retracted(reconciled: dict[str, CaseRun]) -> None:
    r = reconciled["update-neighbour-dog"]
    memories = by_text(r)
    retracted = memories["The user has a dog named Bruno."]
    assert (retracted["status"], retracted["valid_to"]) == ("retracted", "2026-02-22T16:00:00Z")
    assert [h["op"] for h in retracted["history"]] == ["retract"]
    assert memories["Bruno is the user's neighbour's dog, which the user walks."]["status"] == "current"
    assert "The user has a dog named Bruno." not in [
        x["text"] for x in r.searches["Does the user have a dog?"]
    ]


def test_the_metrics_of_the_reconciled_subset(reconciled: dict[str, CaseRun]) -> None:
    m = compute_metrics(list(reconciled.values()), mode="reconcile", threshold=THRESHOLD)
    assert (m.paraphrase_memories, m.paraphrase_facts, m.memories_per_fact) == (1, 1, 1.0)
    assert (m.near_miss_merged.hits, m.near_miss_merged.total) == (0, 2)
    assert (m.near_miss_both_current.hits, m.near_miss_both_current.total) == (1, 2)  # rent: superseded
    assert (m.latest_first.hits, m.latest_first.total, m.stale_first.hits, m.stale_returned.hits) == (
        3,
        3,
        0,
        0,
    )
    # All 17 retrieval memories current and shown: 2 of 3 answers first, all 3 in the top 5.
    assert (m.recall_at_1.hits, m.recall_at_1.total, m.recall_at_5.hits) == (2, 3, 3)
    # Submitted (adds, update and supersede texts): 1 + 2 + 2 + 3 + 2 + 2 + 17; none lost.
    assert (m.statements_lost.hits, m.statements_lost.total) == (0, 29)
    assert (m.confirms, m.backstop_confirms, m.superseded, m.retracted) == (4, 0, 2, 1)
    assert (m.targets_not_shown, m.ops_dropped) == (0, 0)
    # One chat call each; embeddings: none for the lookup while a vectorstore is empty, none after
    # a session that only confirms: 5 + 3 + 3 + 5 + 3 + 3 + 15.
    assert (m.sessions, m.chat_calls, m.max_chat_calls) == (24, 24, 1)
    assert (m.embedding_calls, m.max_embedding_calls) == (37, 2)
    assert m.tokens_in > 0 and m.tokens_out > 0


def test_naive_mode_leaves_the_decision_to_the_backstop(
    redis_server: RedisServer, fake_llm_server: Any, cases: dict[str, Case], vectors: Any
) -> None:
    """A model that ignores the shown memories only adds. The backstop confirms an add instead only
    when its nearest current memory is within the threshold and was NOT shown; in vectorstores this
    small every memory is shown (8 neighbours per user turn), so even the rent pair at cosine 0.980
    and the dog paraphrases stay apart: no merge, and no statement lost."""
    chosen = [cases["five-facts"].subset(DOG), cases["near-rent"]]
    m = compute_metrics(
        run(chosen, "naive", redis_server, fake_llm_server, vectors, "t-naive"),
        mode="naive",
        threshold=THRESHOLD,
    )
    assert m.paraphrase_memories == 5
    assert m.details["near-rent"]["memories"] == [
        "The user's rent is 1400 euros a month. [current]",
        "The user's rent is 900 euros a month. [current]",
    ]
    assert (m.confirms, m.backstop_confirms, m.near_miss_merged.hits, m.statements_lost.hits) == (0, 0, 0, 0)


def test_thirty_candidates_fit_the_token_budget(
    redis_server: RedisServer, fake_llm_server: Any, cases: dict[str, Case], vectors: Any
) -> None:
    (r,) = run([cases["budget-30"]], "reconcile", redis_server, fake_llm_server, vectors, "t-budget")
    b = compute_metrics([r], mode="reconcile", threshold=THRESHOLD).budget
    assert b is not None
    assert (b["memories_before"], b["messages"], b["shown_lines"]) == (52, 8, 30)
    assert 1000 <= b["transcript_bytes"] <= 1200
    assert b["targets_not_shown"] == [] and b["ops_dropped"] == 0 and b["statements_lost"] == []
    assert (b["chat_calls"], b["embedding_calls"]) == (1, 2)
    assert b["tokens"] == b["prompt_tokens"] + b["completion_tokens"] <= 2000
    # The measure agrees with what the processor recorded from the fake's usage.
    assert b["processor_tokens_in"] == b["prompt_tokens"] + b["embedding_tokens"]
    assert b["processor_tokens_out"] == b["completion_tokens"]
    memories = by_text(r)
    assert memories["The user runs in Asics Gel-Nimbus shoes."]["status"] == "superseded"
    assert (
        memories["The user's brother Tiago is getting married in Porto in June 2027."]["status"] == "current"
    )


def test_operations_the_pipeline_drops_are_counted(
    redis_server: RedisServer,
    fake_llm_server: Any,
    cases: dict[str, Case],
    vectors: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = eval.scripted.reconcile_reply

    def with_unknown_id(case: Case, session: Any, shown: Any) -> Any:
        payload, answer = real(case, session, shown)
        bogus = {
            "op": "confirm",
            "id": "m99",
            "text": None,
            "memory_type": None,
            "confidence": None,
            "tags": [],
        }
        return {**payload, "operations": [*payload["operations"], bogus]}, answer

    monkeypatch.setattr(eval.scripted, "reconcile_reply", with_unknown_id)
    runs = run([cases["update-employer"]], "reconcile", redis_server, fake_llm_server, vectors, "t-drop")
    assert compute_metrics(runs, mode="reconcile", threshold=THRESHOLD).ops_dropped == 2


def test_targets_map_to_the_shown_ids_and_a_missing_one_is_a_miss(cases: dict[str, Case]) -> None:
    home = cases["update-home"]
    moved = home.sessions[2]
    lisbon, berlin = "The user lives in Lisbon.", "The user moved to Berlin in February 2026."
    payload, answer = reconcile_reply(home, moved, [("m1", "The user started reading Dune."), ("m2", lisbon)])
    assert payload["memories"] == []
    assert [(o["op"], o["id"], o["text"]) for o in payload["operations"]] == [("supersede", "m2", berlin)]
    assert (answer.submitted, answer.misses) == ([berlin], [])
    parsed = sanitize(parse_extraction(json.dumps(payload)))  # memproc's own parser takes it as it is
    assert [(o.op, o.id, o.text) for o in parsed.operations] == [("supersede", "m2", berlin)]

    # Not shown: the statement becomes a new memory (the backstop may still confirm it).
    payload, answer = reconcile_reply(home, moved, [("m1", "The user started reading Dune.")])
    assert ([m["text"] for m in payload["memories"]], payload["operations"]) == ([berlin], [])
    assert answer.misses == [Miss("upd-home-3", "supersede", lisbon, "add")]
    # A confirm's statement is the session's own wording of the fact.
    dog = cases["five-facts"]
    payload, answer = reconcile_reply(dog, dog.sessions[7], [])
    assert [m["text"] for m in payload["memories"]] == ["Max is the user's dog."]
    assert answer.misses == [Miss("para-08", "confirm", "The user has a dog called Max.", "add")]
    # A retract without its memory is left out; the session's add stays.
    bruno = cases["update-neighbour-dog"]
    payload, answer = reconcile_reply(bruno, bruno.sessions[1], [])
    assert [m["text"] for m in payload["memories"]] == [
        "Bruno is the user's neighbour's dog, which the user walks."
    ]
    assert answer.misses == [
        Miss("upd-neighbour-dog-2", "retract", "The user has a dog named Bruno.", "dropped")
    ]


def test_embedding_for_refuses_an_unknown_text_with_400(fake_llm: Any, vectors: Any) -> None:
    fake_llm.embedding_for = vectors.get
    provider = make_provider(load_settings(embedding_dimensions=DIMENSIONS))
    known = "The user lives in Lisbon."
    got, _ = provider.embed([known])
    assert got[0] == pytest.approx(vectors[known], abs=1e-6)
    calls = fake_llm.embedding_calls
    # 400 is a permanent error: the client does not retry it, and the queue dead-letters the item.
    with pytest.raises(PermanentLLMError, match=r"HTTP 400: no embedding for 'The user lives on Mars\.'"):
        provider.embed([known, "The user lives on Mars."])
    assert fake_llm.embedding_calls == calls + 1


def test_committed_vectors_cover_exactly_the_texts_of_the_cases(vectors: Any) -> None:
    """A changed case without `make eval-vectors` fails here rather than as an HTTP 400 mid-run."""
    assert sorted(vectors) == texts_to_embed(load_cases())
    assert {len(v) for v in vectors.values()} == {DIMENSIONS}


def test_scripted_naive_answers_pass_todays_parser_unchanged(cases: dict[str, Case]) -> None:
    """What the processor embeds and stores is exactly the scripted text (nothing trimmed or filtered)."""
    for case in cases.values():
        for s in case.sessions:
            parsed = sanitize(parse_extraction(json.dumps(s.naive)))
            assert [m.text for m in parsed.memories] == s.submitted("naive"), s.session_id


def test_user_turns_rule() -> None:
    transcript = "user: I live in Lisbon.  \nassistant: user: not a user turn\nuser:\nuser:Hi"
    assert user_turns(transcript) == ["I live in Lisbon.", "Hi"]


def test_the_pipeline_looks_up_exactly_the_user_turns_the_vectors_were_made_for(
    cases: dict[str, Case],
) -> None:
    for case in cases.values():
        for s in case.sessions:
            assert lookup_texts(s.transcript) == user_turns(s.transcript), s.session_id
