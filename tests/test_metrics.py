"""Metric definitions of spec section 0, checked against values computed by hand on a tiny ranking."""
from __future__ import annotations

import math

import numpy as np
import pytest

from infodcl.evaluate import _metric_sums, metrics_from_ranking

LOG2_3 = math.log2(3)   # discount of rank 2 is 1/log2(3) = 0.63093
# Rankings (best first) and ground truth:
#   user A: [1, 5, 2], GT {2, 5, 9, 7}  -> hits at ranks 2 and 3; |GT| = 4 > K, so IDCG uses K ranks
#   user B: [3, 4, 6], GT {3}           -> hit at rank 1
#   user C: [0, 1, 2], GT {}            -> no ground truth: left out of every mean
#   user D: [7, 8, 0], GT {0}           -> hit at rank 3 only
RANKINGS = [[1, 5, 2], [3, 4, 6], [0, 1, 2], [7, 8, 0]]
TRUTH = [{2, 5, 9, 7}, {3}, set(), {0}]


def test_hand_computed_metrics_at_2_and_3():
    got = metrics_from_ranking(RANKINGS, TRUTH, ks=(2, 3))
    # Per user, K = 2:   A: 1 hit of 4; DCG = 1/log2(3); IDCG = 1 + 1/log2(3); first hit rank 2
    #                    B: 1 hit of 1; DCG = IDCG = 1; first hit rank 1
    #                    D: no hit in the first two ranks
    ndcg_a_2 = (1 / LOG2_3) / (1 + 1 / LOG2_3)                      # 0.386853
    expected_2 = {"recall@2": (1 / 4 + 1 + 0) / 3,                  # 0.416667
                  "precision@2": (1 / 2 + 1 / 2 + 0) / 3,           # 0.333333
                  "hit@2": (1 + 1 + 0) / 3,                         # 0.666667
                  "ndcg@2": (ndcg_a_2 + 1 + 0) / 3,                 # 0.462284
                  "mrr@2": (1 / 2 + 1 + 0) / 3}                     # 0.5
    # K = 3:   A: 2 hits of 4; DCG = 1/log2(3) + 1/2; IDCG = 1 + 1/log2(3) + 1/2
    #          B: unchanged but precision 1/3;  D: hit at rank 3, DCG = 1/2, IDCG = 1, RR = 1/3
    ndcg_a_3 = (1 / LOG2_3 + 0.5) / (1 + 1 / LOG2_3 + 0.5)          # 0.530721
    expected_3 = {"recall@3": (2 / 4 + 1 + 1) / 3,                  # 0.833333
                  "precision@3": (2 / 3 + 1 / 3 + 1 / 3) / 3,       # 0.444444
                  "hit@3": 1.0,
                  "ndcg@3": (ndcg_a_3 + 1 + 0.5) / 3,               # 0.676907
                  "mrr@3": (1 / 2 + 1 + 1 / 3) / 3}                 # 0.611111
    expected = {**expected_2, **expected_3}
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    # The decimals written out, so a wrong formula above cannot hide behind the same wrong formula.
    assert got["ndcg@2"] == pytest.approx(0.462284, abs=1e-6)
    assert got["ndcg@3"] == pytest.approx(0.676907, abs=1e-6)
    assert got["mrr@3"] == pytest.approx(0.611111, abs=1e-6)


def test_user_without_ground_truth_is_excluded_not_counted_as_zero():
    with_empty = metrics_from_ranking(RANKINGS, TRUTH, ks=(2, 3))
    without = metrics_from_ranking([RANKINGS[i] for i in (0, 1, 3)], [TRUTH[i] for i in (0, 1, 3)], ks=(2, 3))
    assert with_empty == without


def test_idcg_uses_min_of_ground_truth_and_k():
    # One user, 5 GT items, all of the top 2 hit: NDCG@2 must be exactly 1 (IDCG over 2 ranks, not 5).
    got = metrics_from_ranking([[0, 1]], [{0, 1, 2, 3, 4}], ks=(2,))
    assert got["ndcg@2"] == pytest.approx(1.0)
    assert got["recall@2"] == pytest.approx(2 / 5)
    assert got["precision@2"] == pytest.approx(1.0)


def test_short_ranking_counts_missing_ranks_as_misses():
    got = metrics_from_ranking([[4]], [{4}], ks=(1, 3))
    assert got["precision@3"] == pytest.approx(1 / 3)
    assert got["recall@3"] == pytest.approx(1.0)
    assert got["ndcg@3"] == pytest.approx(1.0)


def test_metric_sums_are_additive_so_chunked_means_are_exact():
    rng = np.random.default_rng(0)
    hits = rng.random((50, 10)) < 0.2
    n_ground_truth = rng.integers(1, 8, 50)
    whole = _metric_sums(hits, n_ground_truth, (5, 10))
    parts = [_metric_sums(hits[s:s + 7], n_ground_truth[s:s + 7], (5, 10)) for s in range(0, 50, 7)]
    for key in whole:
        assert sum(p[key] for p in parts) == pytest.approx(whole[key])


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 rankings but 1 ground-truth"):
        metrics_from_ranking([[1], [2]], [{1}], ks=(1,))
