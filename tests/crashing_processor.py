"""A processor that SIGKILLs itself at a named stage, to prove the queue protocol survives it.

Run as ``python -m tests.crashing_processor STAGE`` (one drain, concurrency 1, batch 1). The
faults live here, in a subclass, so production code carries no test hook:

- ``after_claim``: the item is claimed and loaded, the LLM never called;
- ``after_llm``: extraction and embeddings are done, nothing committed;
- ``mid_commit``: the commit reached Redis and ran (its reply is waiting on the socket), but the
  worker dies before reading it, so it cannot know the outcome;
- ``after_commit``: the commit's reply was read, then the worker dies.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from memproc.dal import queue as q
from memproc.dal.functions import LIBRARY_VERSION
from memproc.llm import Extraction, Usage
from memproc.llm.base import Vector
from memproc.llm.schema import Candidate
from memproc.processor import Processor, Work, build_processor
from memproc.settings import load_settings

STAGES = ("after_claim", "after_llm", "mid_commit", "after_commit")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class CrashingProcessor(Processor):
    def __init__(self, base: Processor, stage: str) -> None:
        super().__init__(base.store, base.settings, base.provider)
        self.stage = stage

    def extract(self, work: Work, candidates: Sequence[Candidate]) -> tuple[Extraction, Usage]:
        if self.stage == "after_claim":
            _die()
        return super().extract(work, candidates)

    def embed(self, texts: list[str]) -> tuple[list[Vector], Usage]:
        result = super().embed(texts)
        if self.stage == "after_llm":
            _die()
        return result

    def commit(self, item: q.Claim, payload: dict[str, Any], vectors: list[bytes]) -> q.CommitResult:
        if self.stage == "mid_commit":
            # The same calls `super().commit` makes, the commit sent by hand so we can die before
            # reading its reply.
            if payload["ops"]:
                self.store.index.ensure(payload["dimensions"])
            conn = self.store.r.connection_pool.get_connection()
            conn.send_command("FCALL", f"commit_{LIBRARY_VERSION}", 0, *q.commit_args(item, payload, vectors))
            if not conn.can_read(timeout=30):
                raise SystemExit("mid_commit: Redis never answered the commit")
            _die()
        result = super().commit(item, payload, vectors)
        if self.stage == "after_commit":
            _die()
        return result


def main(argv: list[str]) -> int:
    (stage,) = argv
    if stage not in STAGES:
        raise SystemExit(f"stage must be one of {', '.join(STAGES)}")
    settings = load_settings(concurrency=1, batch_size=1)
    CrashingProcessor(build_processor(settings), stage).drain()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
