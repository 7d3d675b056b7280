"""SessionProcessed / SessionFailed on EventBridge: moto's bus in-process, a rule matching
`source: memproc` with an SQS target, and the messages read back from SQS."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
from botocore.exceptions import ClientError
from moto import mock_aws

from memproc import keys
from memproc.dal.queue import Claim, CommitResult
from memproc.events import FAILED, PROCESSED, Event, EventPublisher, processed_event, publisher_factory
from memproc.processor import build_processor
from memproc.settings import load_settings
from tests.memory_helpers import store

BUS = "memproc-test"
CHAT = "user: I moved to Lisbon last year and I cycle to work every day."


class Bus:
    """moto's EventBridge bus with a rule on source memproc that delivers to an SQS queue."""

    def __init__(self) -> None:
        self.events = boto3.client("events", region_name="us-east-1")
        self.sqs = boto3.client("sqs", region_name="us-east-1")
        self.events.create_event_bus(Name=BUS)
        self.queue_url = self.sqs.create_queue(QueueName="memproc-events")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])
        self.events.put_rule(Name="memory-ready", EventBusName=BUS, EventPattern='{"source": ["memproc"]}')
        self.events.put_targets(
            Rule="memory-ready",
            EventBusName=BUS,
            Targets=[{"Id": "queue", "Arn": arn["Attributes"]["QueueArn"]}],
        )

    def received(self) -> list[dict[str, Any]]:
        """Every event delivered so far (and deleted from the queue)."""
        out: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
            messages = got.get("Messages", [])
            if not messages:
                return out
            for m in messages:
                out.append(json.loads(m["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])


@pytest.fixture
def bus(monkeypatch: pytest.MonkeyPatch) -> Iterator[Bus]:
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield Bus()


class Recording:
    """The real (moto) client, with every PutEvents call's entries recorded; a call can be held
    until the test releases it, and chosen entries can be failed once, as EventBridge does."""

    def __init__(self, client: Any, *, hold_first: bool = False, fail_once: set[str] | None = None) -> None:
        self.client = client
        self.calls: list[list[dict[str, Any]]] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.hold_first = hold_first
        self.fail_once = set(fail_once or ())
        self.raise_always: Exception | None = None
        self.error_code = "ThrottlingException"

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(Entries)
        self.entered.set()
        if self.hold_first and len(self.calls) == 1:
            assert self.release.wait(30)
        if self.raise_always is not None:
            raise self.raise_always
        failing = [json.loads(e["Detail"])["raw_memory_id"] in self.fail_once for e in Entries]
        keep = [e for e, fail in zip(Entries, failing, strict=True) if not fail]
        sent = iter(self.client.put_events(Entries=keep)["Entries"] if keep else [])
        results = []
        for e, fail in zip(Entries, failing, strict=True):
            if fail:
                self.fail_once.discard(json.loads(e["Detail"])["raw_memory_id"])
                results.append({"ErrorCode": self.error_code, "ErrorMessage": "injected"})
            else:
                results.append(next(sent))
        return {"FailedEntryCount": sum(failing), "Entries": results}


def event(n: int) -> Event:
    claim = Claim("user1", f"{n:032x}", "1", f"s-{n}", 1)
    return processed_event(claim, CommitResult("ok", 1, memory_ids=(f"{n:032x}-0",)), 10, 5)


def test_processed_and_dead_lettered_sessions_arrive_on_the_bus(
    bus: Bus, fake_llm: Any, r: redis.Redis
) -> None:
    settings = load_settings(event_bus_name=BUS)
    dead = store("user1", "user: I play the cello.", "s-dead")["raw_memory_id"]
    fake_llm.fail_next("400", count=1)
    report = build_processor(settings).drain()
    assert report.dead == 1 and report.events_published == 1
    done = store("user1", CHAT, "s-1")["raw_memory_id"]
    report = build_processor(settings).drain()
    assert report.processed == 1 and (report.events_published, report.events_failed) == (1, 0)

    failed, processed = bus.received()
    assert failed["source"] == processed["source"] == "memproc"
    assert (failed["detail-type"], processed["detail-type"]) == (FAILED, PROCESSED)
    f = failed["detail"]
    assert (f["vectorstore_name"], f["session_id"], f["raw_memory_id"], f["attempt"]) == (
        "user1",
        "s-dead",
        dead,
        1,
    )
    assert "HTTP 400" in f["error"] and f["error"] == r.hget(
        keys.VectorstoreKeys("user1").raw(dead), "last_error"
    )
    p = processed["detail"]
    raw = r.hgetall(keys.VectorstoreKeys("user1").raw(done))
    assert (p["vectorstore_name"], p["session_id"], p["raw_memory_id"]) == ("user1", "s-1", done)
    assert p["created_memory_ids"] == json.loads(raw["memory_ids"]) and p["updated_memory_ids"] == []
    assert p["memories"] == {
        "created": int(raw["memories_created"]),
        "merged": 0,
        "updated": 0,
        "superseded": 0,
        "retracted": 0,
    }
    assert p["memories"]["created"] >= 1
    assert p["tokens"] == {
        "tokens_in": int(raw["tokens_in"]),
        "tokens_out": int(raw["tokens_out"]),
        "total": int(raw["tokens_in"]) + int(raw["tokens_out"]),
    }


def test_events_are_published_after_the_commit(bus: Bus, fake_llm: Any, r: redis.Redis) -> None:
    settings = load_settings(event_bus_name=BUS)
    raw_id = store("user1", CHAT, "s-1")["raw_memory_id"]
    seen: list[str | None] = []

    class AfterCommit(Recording):
        def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:
            seen.append(r.hget(keys.VectorstoreKeys("user1").raw(raw_id), "status"))
            return super().put_events(Entries)

    processor = build_processor(settings)
    processor.publishers = lambda: EventPublisher(AfterCommit(bus.events), BUS)
    assert processor.drain().events_published == 1
    assert seen == ["processed"] and [e["detail"]["raw_memory_id"] for e in bus.received()] == [raw_id]


def test_publish_never_waits_and_sends_batches_of_at_most_ten(bus: Bus) -> None:
    client = Recording(bus.events, hold_first=True)
    publisher = EventPublisher(client, BUS)
    publisher.publish(event(0))
    assert client.entered.wait(30)  # the first call is out, and held: EventBridge is "slow"
    for n in range(1, 23):
        publisher.publish(event(n))  # returns at once although no call can complete
    client.release.set()
    report = publisher.close()
    assert [len(c) for c in client.calls] == [1, 10, 10, 2]
    assert (report.published, report.retried, report.failed, report.calls) == (23, 0, 0, 4)
    delivered = [e["detail"]["raw_memory_id"] for e in bus.received()]
    assert sorted(delivered) == [f"{n:032x}" for n in range(23)]


def test_failed_entries_are_sent_again_and_counted(bus: Bus) -> None:
    flaky = {f"{n:032x}" for n in (1, 3)}
    client = Recording(bus.events, hold_first=True, fail_once=flaky)
    publisher = EventPublisher(client, BUS, backoff_seconds=0)
    publisher.publish(event(0))
    assert client.entered.wait(30)
    for n in range(1, 5):
        publisher.publish(event(n))
    client.release.set()
    report = publisher.close()
    # Only the two failed entries go again, in a call of their own.
    assert [len(c) for c in client.calls] == [1, 4, 2]
    assert [json.loads(e["Detail"])["raw_memory_id"] for e in client.calls[2]] == sorted(flaky)
    assert (report.published, report.retried, report.failed) == (5, 2, 0)
    delivered = [e["detail"]["raw_memory_id"] for e in bus.received()]
    assert sorted(delivered) == [f"{n:032x}" for n in range(5)]  # each exactly once


def test_a_failing_bus_is_logged_and_counted_never_raised(bus: Bus, caplog: pytest.LogCaptureFixture) -> None:
    client = Recording(bus.events)
    client.raise_always = ClientError(
        {"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}, "PutEvents"
    )
    publisher = EventPublisher(client, BUS, max_attempts=3, backoff_seconds=0)
    with caplog.at_level(logging.ERROR, logger="memproc.events"):
        publisher.publish(event(7))
        report = publisher.close()
    assert (report.published, report.retried, report.failed, report.calls) == (0, 2, 1, 3)
    [record] = [rec for rec in caplog.records if rec.name == "memproc.events"]
    assert "AccessDeniedException" in record.getMessage()
    assert record.events == [
        {
            "detail_type": PROCESSED,
            "vectorstore_name": "user1",
            "session_id": "s-7",
            "raw_memory_id": f"{7:032x}",
        }
    ]
    assert bus.received() == []


def test_an_entry_eventbridge_refuses_is_not_retried(bus: Bus) -> None:
    client = Recording(bus.events, fail_once={f"{1:032x}"})
    client.error_code = "MalformedDetail"
    publisher = EventPublisher(client, BUS, backoff_seconds=0)
    publisher.publish(event(1))
    report = publisher.close()
    assert (report.published, report.retried, report.failed, report.calls) == (0, 0, 1, 1)


def test_events_still_waiting_when_time_runs_out_are_counted(bus: Bus) -> None:
    client = Recording(bus.events, hold_first=True)
    publisher = EventPublisher(client, BUS)
    publisher.publish(event(0))
    assert client.entered.wait(30)
    publisher.publish(event(1))
    publisher.publish(event(2))
    report = publisher.close(timeout=0)  # the invocation has no time left: the held call never returns
    assert report.failed == 2 and report.published == 0
    client.release.set()
    assert publisher.close().published == 1  # the held call completes; nothing is sent twice
    assert len(bus.received()) == 1


def test_no_bus_no_publisher() -> None:
    assert publisher_factory(load_settings(event_bus_name=""))() is None
    assert publisher_factory(load_settings())() is None
