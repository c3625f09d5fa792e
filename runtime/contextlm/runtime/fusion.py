"""Fusion of several retrievers' ranked lists into one, and its attribution.

Written by hand because it is a few lines of arithmetic over our own result types; the
libraries that have it (ranx, LlamaIndex) would bring a framework for one formula.

- Reciprocal rank fusion (Cormack et al. 2009): score(d) = sum over retrievers r of
  w_r / (k + rank_r(d)), ranks 1-based; a retriever that did not return d adds nothing.
- Weighted: each retriever's candidate scores are min-max normalised to [0, 1] (all equal
  scores become 1), then score(d) = sum of w_r * norm_r(d).

Ties are broken by the best rank any retriever gave, then by row, so output is stable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Method = Literal["rrf", "weighted"]


@dataclass(frozen=True)
class Hit:
    """One candidate from one retriever: a chunk row and the retriever's raw score."""

    row: int
    score: float


@dataclass(frozen=True)
class Contribution:
    score: float
    rank: int


@dataclass
class Fused:
    row: int
    score: float
    sources: dict[str, Contribution] = field(default_factory=dict)


def fuse(
    ranked: Mapping[str, Sequence[Hit]],
    *,
    weights: Mapping[str, float],
    method: Method = "rrf",
    rrf_k: int = 60,
) -> list[Fused]:
    """Merge `ranked` (retriever name -> hits, best first) into one list, best first."""
    fused: dict[int, Fused] = {}
    for name, hits in ranked.items():
        weight = weights.get(name, 1.0)
        normalised = _min_max([h.score for h in hits]) if method == "weighted" else []
        for position, hit in enumerate(hits):
            rank = position + 1
            entry = fused.setdefault(hit.row, Fused(row=hit.row, score=0.0))
            entry.sources[name] = Contribution(score=hit.score, rank=rank)
            if method == "rrf":
                entry.score += weight / (rrf_k + rank)
            else:
                entry.score += weight * normalised[position]
    return sorted(fused.values(), key=_order)


def _order(entry: Fused) -> tuple[float, int, int]:
    best_rank = min((c.rank for c in entry.sources.values()), default=0)
    return (-entry.score, best_rank, entry.row)


def _min_max(scores: Sequence[float]) -> list[float]:
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high - low <= 1e-12:
        return [1.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]
