"""Generated chat sessions with varied vocabulary, so extracted memories do not merge by accident."""

from __future__ import annotations

import random

WORDS = [
    "amber", "basil", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "iris", "juniper",
    "kelp", "lantern", "meadow", "nectar", "onyx", "pepper", "quartz", "raven", "saffron", "tundra",
    "umber", "velvet", "willow", "xenon", "yarrow", "zephyr", "anchor", "bramble", "cedar", "delta",
    "falcon", "glacier", "hazel", "indigo", "jasper", "kestrel", "lotus", "maple", "nimbus", "orchid",
    "pebble", "quill", "ripple", "sparrow", "thistle",
]  # fmt: skip


def sessions(n: int, seed: int = 1) -> list[str]:
    """n two-line user sessions, each about a different random mix of words."""
    rng = random.Random(seed)
    return [
        f"user: I keep a {' '.join(rng.sample(WORDS, 5))} journal.\n"
        f"user: I prefer {' '.join(rng.sample(WORDS, 4))} tea.\n"
        for _ in range(n)
    ]
