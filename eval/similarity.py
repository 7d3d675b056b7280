"""Cosine similarities of the case texts (exact float cosines of the committed vectors), as the issue
reported them: paraphrases of one fact against pairs that differ in meaning. The merge decision itself
uses Redis' VSIM score on the vector set's (int8-quantised) copy, so it can differ in the third decimal."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from eval.cases import Case
from eval.vectors import cosine


@dataclass(frozen=True)
class Pair:
    label: str
    a: str
    b: str
    cosine: float


@dataclass(frozen=True)
class Group:
    """One kind of pair: how similar its texts are (min/mean/max over `pairs`)."""

    name: str
    pairs: tuple[Pair, ...]

    @property
    def values(self) -> list[float]:
        return [p.cosine for p in self.pairs]

    def summary(self) -> dict[str, float | int]:
        v = self.values
        return {"pairs": len(v), "min": min(v), "mean": sum(v) / len(v), "max": max(v)} if v else {"pairs": 0}


def _pair(vectors: dict[str, list[float]], label: str, a: str, b: str) -> Pair:
    return Pair(label, a, b, cosine(vectors[a], vectors[b]))


def similarity_groups(cases: list[Case], vectors: dict[str, list[float]]) -> list[Group]:
    """Naive memory texts: paraphrases (within one fact), different facts of the paraphrase case,
    near-miss pairs, and the stale vs the latest fact of each update."""
    para, cross, near, upd = [], [], [], []
    for case in cases:
        if case.kind == "paraphrase":
            for fact, texts in case.facts.items():
                para += [_pair(vectors, fact, a, b) for a, b in combinations(texts, 2)]
            for (fa, ta), (fb, tb) in combinations(case.facts.items(), 2):
                cross += [_pair(vectors, f"{fa}/{fb}", a, b) for a in ta for b in tb]
        elif case.kind == "near_miss":
            a, b = (case.facts[f][0] for f in case.pair)
            near.append(_pair(vectors, case.id, a, b))
        elif case.kind == "update":
            for q in case.questions:
                upd.append(_pair(vectors, case.id, case.facts[q.stale[0]][0], case.facts[q.answer[0]][0]))
    return [
        Group("paraphrases of one fact", tuple(para)),
        Group("different facts (paraphrase case)", tuple(cross)),
        Group("near-miss pairs (differ in meaning)", tuple(near)),
        Group("update: stale vs latest fact", tuple(upd)),
    ]
