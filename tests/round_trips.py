"""Counting the round trips a redis-py client makes, for tests and benchmarks alike."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any


class RoundTrips:
    """Counts round trips a redis-py client makes: one per command, one per pipeline execute.

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
        client._memproc_round_trips = self
