"""The eval harness on a small subset of its cases, against figures derived by hand from the committed
vectors (so the metric code is tested, not just run), and the fake's embedding_for refusing a text it
has no vector for through the real openai client.

The subset runs at MERGE_SIMILARITY_THRESHOLD 0.90, where every merge decision it contains is at least
0.02 away from the threshold in exact cosine, so Redis' int8 quantisation of the vectors cannot flip one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from eval.cases import Case, load_cases, texts_to_embed, user_turns
from eval.run import CaseRun, compute_metrics, run_cases
from eval.vectors import DIMENSIONS, load_vectors
from memproc.llm import PermanentLLMError, make_provider, parse_extraction, sanitize
from memproc.settings import load_settings
from tests.redis_server import RedisServer

THRESHOLD = 0.90
DOG = ("para-03", "para-08", "para-13", "para-18", "para-23")  # the five paraphrases of dog-max
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


def subset(cases: dict[str, Case]) -> list[Case]:
    return [
        cases["five-facts"].subset(DOG),
        cases["near-rent"],  # cosine 0.980: merged, the newer rent is lost
        cases["near-sister-google"],  # cosine 0.791: kept apart
        cases["update-home"],
        cases["retrieval-history"].subset(questions=QUESTIONS),
    ]


def run(chosen: list[Case], mode: str, redis_server: RedisServer, fake: Any, vectors: Any) -> list[CaseRun]:
    return run_cases(
        chosen,
        mode=mode,
        threshold=THRESHOLD,
        redis_url=redis_server.url,
        fake=fake,
        vectors=vectors,
        prefix=f"test-{mode}",
    )


def test_the_harness_measures_what_the_vectors_predict(
    env: Any, redis_server: RedisServer, fake_llm_server: Any, cases: dict[str, Case], vectors: Any
) -> None:
    chosen = subset(cases)
    tokens_out_before = fake_llm_server.tokens_out
    runs = run(chosen, "naive", redis_server, fake_llm_server, vectors)
    m = compute_metrics(runs, mode="naive", threshold=THRESHOLD)

    # dog-max, in order: "has a dog called Max" (new), "Max is the user's dog" (0.878 to it: new),
    # "owns a dog named Max" (0.922 to the first: merged), "dog is named Max" (0.927 to the first:
    # merged), "shares their flat with their dog" (at most 0.744: new). Merges keep the old text.
    para = m.details["five-facts"]
    assert sorted(para["memories"]) == [
        "Max is the user's dog.",
        "The user has a dog called Max.",
        "The user shares their flat with their dog, Max.",
    ]
    assert para["lost_statements"] == ["The user owns a dog named Max.", "The user's dog is named Max."]
    assert para["lost_facts"] == []
    assert (m.paraphrase_memories, m.paraphrase_facts, m.memories_per_fact) == (3, 1, 3.0)

    assert m.details["near-rent"]["memories"] == ["The user's rent is 900 euros a month."]
    assert m.details["near-rent"]["lost_facts"] == ["rent-b"]
    assert m.details["near-sister-google"]["wrongly_merged"] is False
    assert (m.near_miss_merged.hits, m.near_miss_merged.total) == (1, 2)

    # "Where does the user live?": Lisbon 0.606, Berlin (moved there) 0.469; both kept (0.431 apart).
    home = m.details["update-home"]
    assert len(home["memories"]) == 3
    assert home["questions"][0]["top"][:2] == [
        "The user lives in Lisbon.",
        "The user moved to Berlin in February 2026.",
    ]
    assert (m.latest_first.hits, m.latest_first.total, m.stale_first.hits) == (0, 1, 1)

    # 17 memories, none within 0.63 of another: all kept; 2 of 3 answers first, all 3 in the top 5.
    assert len(m.details["retrieval-history"]["memories"]) == 17
    assert (m.recall_at_1.hits, m.recall_at_1.total, m.recall_at_5.hits) == (2, 3, 3)

    # Submitted 5 + 2 + 2 + 3 + 17 texts stating 1 + 2 + 2 + 3 + 17 facts; lost 2 + 1 and 1.
    assert (m.statements_lost.hits, m.statements_lost.total) == (3, 29)
    assert (m.facts_lost.hits, m.facts_lost.total) == (1, 25)
    assert (m.sessions, m.merges, m.chat_calls, m.embedding_calls) == (20, 3, 20, 20)
    # Completion tokens are what the fake reported in `usage`; prompt tokens add the embeddings calls.
    assert m.tokens_out == fake_llm_server.tokens_out - tokens_out_before > 0
    assert m.tokens_in > 0


def test_reconcile_mode_stops_at_its_extension_point(
    env: Any, redis_server: RedisServer, fake_llm_server: Any, cases: dict[str, Case], vectors: Any
) -> None:
    with pytest.raises(NotImplementedError, match="reconcile_reply"):
        run([cases["near-rent"]], "reconcile", redis_server, fake_llm_server, vectors)


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
