"""Fusion math, checked against hand-computed values."""

from __future__ import annotations

import pytest

from contextlm.runtime.fusion import Contribution, Hit, fuse


def hits(*pairs: tuple[int, float]) -> list[Hit]:
    return [Hit(row, score) for row, score in pairs]


def test_rrf_matches_the_formula_by_hand() -> None:
    ranked = {
        "dense": hits((7, 0.9), (3, 0.8), (5, 0.1)),
        "bm25": hits((3, 12.0), (9, 4.0)),
    }
    fused = fuse(ranked, weights={"dense": 1.0, "bm25": 1.0}, method="rrf", rrf_k=60)
    scores = {f.row: f.score for f in fused}
    # row 3: 1/(60+2) + 1/(60+1); row 7: 1/61; row 9: 1/62; row 5: 1/63
    assert scores[3] == pytest.approx(1 / 62 + 1 / 61)
    assert scores[7] == pytest.approx(1 / 61)
    assert scores[9] == pytest.approx(1 / 62)
    assert scores[5] == pytest.approx(1 / 63)
    assert [f.row for f in fused] == [3, 7, 9, 5]
    assert fused[0].sources == {
        "dense": Contribution(score=0.8, rank=2),
        "bm25": Contribution(score=12.0, rank=1),
    }
    assert fused[1].sources == {"dense": Contribution(score=0.9, rank=1)}


def test_rrf_weights_and_k_change_the_order() -> None:
    ranked = {"dense": hits((1, 0.9), (2, 0.5)), "bm25": hits((2, 3.0), (1, 1.0))}
    # Equal weights: a tie (1/61 + 1/62 each), broken by best rank, then row.
    even = fuse(ranked, weights={"dense": 1.0, "bm25": 1.0}, rrf_k=60)
    assert [f.row for f in even] == [1, 2]
    assert even[0].score == pytest.approx(even[1].score)
    # bm25 weighted 0.5: row 1 = 1/61 + 0.5/62, row 2 = 1/62 + 0.5/61.
    tilted = fuse(ranked, weights={"dense": 1.0, "bm25": 0.5}, rrf_k=60)
    assert tilted[0].row == 1
    assert tilted[0].score == pytest.approx(1 / 61 + 0.5 / 62)
    assert tilted[1].score == pytest.approx(1 / 62 + 0.5 / 61)
    # k = 1: row 1 = 1/2 + 0.5/3, row 2 = 1/3 + 0.5/2.
    sharp = fuse(ranked, weights={"dense": 1.0, "bm25": 0.5}, rrf_k=1)
    assert sharp[0].score == pytest.approx(1 / 2 + 0.5 / 3)


def test_weighted_min_max_normalises_each_retriever() -> None:
    ranked = {
        "dense": hits((1, 0.9), (2, 0.7), (3, 0.5)),  # -> 1.0, 0.5, 0.0
        "bm25": hits((3, 20.0), (4, 10.0), (2, 0.0)),  # -> 1.0, 0.5, 0.0
    }
    fused = fuse(ranked, weights={"dense": 0.6, "bm25": 0.4}, method="weighted")
    scores = {f.row: f.score for f in fused}
    assert scores[1] == pytest.approx(0.6)
    assert scores[2] == pytest.approx(0.6 * 0.5 + 0.4 * 0.0)
    assert scores[3] == pytest.approx(0.6 * 0.0 + 0.4 * 1.0)
    assert scores[4] == pytest.approx(0.4 * 0.5)
    assert [f.row for f in fused] == [1, 3, 2, 4]


def test_weighted_with_equal_scores_and_empty_lists() -> None:
    ranked = {"dense": hits((5, 0.3), (6, 0.3)), "bm25": []}
    fused = fuse(ranked, weights={"dense": 0.5, "bm25": 1.0}, method="weighted")
    assert [(f.row, f.score) for f in fused] == [(5, 0.5), (6, 0.5)]
    assert fuse({}, weights={}, method="rrf") == []


def test_a_zero_weight_retriever_only_attributes() -> None:
    ranked = {"dense": hits((1, 0.9)), "bm25": hits((2, 5.0))}
    fused = fuse(ranked, weights={"dense": 1.0, "bm25": 0.0}, rrf_k=60)
    assert [(f.row, f.score) for f in fused] == [(1, pytest.approx(1 / 61)), (2, 0.0)]
