"""Counting the round trips a redis-py client makes, for tests and benchmarks alike."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class RoundTrips:
    """Counts round trips a redis-py client makes: one per command, one per pipeline execute, one
    per memproc batch (dal/batch.py; a batch of one is counted as its command).

    Instruments the client *instance* (memproc's cached clients), so nothing else is counted.
    """

    def __init__(self) -> None:
        self.count = 0
        self.kinds: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _add(self, kind: str) -> None:
        with self._lock:
            self.count += 1
            self.kinds[kind] += 1

    def reset(self) -> None:
        with self._lock:
            self.count = 0
            self.kinds = Counter()

    def instrument(self, client: Any) -> None:
        if getattr(client, "_memproc_round_trips", None) is self:
            return
        execute = type(client).execute_command.__get__(client)
        pipeline = type(client).pipeline.__get__(client)

        def counted_execute(*args: Any, **options: Any) -> Any:
            self._add(str(args[0]).upper())
            return execute(*args, **options)

        def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = pipeline(*args, **kwargs)
            run = pipe.execute

            def counted_run(*a: Any, **k: Any) -> Any:
                self._add(f"PIPELINE[{len(pipe.command_stack)}]")
                return run(*a, **k)

            pipe.execute = counted_run
            return pipe

        client.execute_command = counted_execute
        client.pipeline = counted_pipeline
        if hasattr(client, "batch"):
            client.batch = self._counted_batch(type(client).batch.__get__(client))
        client._memproc_round_trips = self

    def _counted_batch(self, make: Any) -> Any:
        def counted_batch() -> Any:
            batch = make()
            queue, run = batch.execute_command, batch.execute
            names: list[str] = []

            def counted_queue(*args: Any) -> None:
                names.append(str(args[0]).upper())
                queue(*args)

            def counted_run() -> Any:
                if names:  # an empty batch sends nothing
                    self._add(names[0] if len(names) == 1 else f"BATCH[{len(names)}]")
                return run()

            batch.execute_command, batch.execute = counted_queue, counted_run
            return batch

        return counted_batch
