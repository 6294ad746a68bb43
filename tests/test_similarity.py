"""Sparse Jaccard top-k graphs (spec 1.2, 1.3, 9) against a brute-force computation of the definitions."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse as sp

from infodcl.config import ConfigError
from infodcl.data.synthetic import long_tail_pairs
from infodcl.metadata.similarity import (interactions_fingerprint, item_similarity, jaccard_topk, load_graph,
                                         save_graph, user_similarity)


def random_binary(n_rows: int, n_cols: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.random((n_rows, n_cols)) < density
    return sp.csr_matrix(dense.astype(np.float32))


def brute_force_jaccard(matrix: sp.spmatrix, topk: int | None) -> np.ndarray:
    """Definition by loops over all pairs: exact fractions, ranked by (-stored float32 value, lower index)."""
    sets = [set(np.flatnonzero(row)) for row in np.asarray(matrix.todense()) != 0]
    n = len(sets)
    out = np.zeros((n, n), np.float32)
    for a in range(n):
        candidates = []
        for b in range(n):
            if a == b:
                continue
            shared = len(sets[a] & sets[b])
            if shared:
                value = np.float32(float(Fraction(shared, len(sets[a] | sets[b]))))
                candidates.append((-value, b))
        candidates.sort()
        for negative_value, b in candidates if topk is None else candidates[:topk]:
            out[a, b] = -negative_value
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("topk", [None, 1, 2, 3, 7])
@pytest.mark.parametrize("dense_share", [0.0, 2.0])   # the dense (partition) and the sparse (sort) top-k paths
def test_matches_brute_force_all_pairs_and_topk(seed, topk, dense_share):
    # Few columns: many equal Jaccard values, so the lower-index tie rule is exercised.
    matrix = random_binary(35, 9, 0.25, seed)
    graph = jaccard_topk(matrix, topk, chunk_rows=64, dense_share=dense_share)
    assert graph.dtype == np.float32 and graph.shape == (35, 35)
    np.testing.assert_array_equal(graph.toarray(), brute_force_jaccard(matrix, topk))


def test_ties_keep_the_lower_index():
    # Row 0 = {0}; rows 1..4 all = {0, 1}: J(0, b) = 1/2 for each b. Top-2 of row 0 must be rows 1 and 2.
    matrix = sp.csr_matrix(np.array([[1, 0], [1, 1], [1, 1], [1, 1], [1, 1]], np.float32))
    graph = jaccard_topk(matrix, topk=2)
    assert graph[0].indices.tolist() == [1, 2]
    np.testing.assert_array_equal(graph[0].data, [0.5, 0.5])
    # Row 4: J = 1 with rows 1, 2, 3 (identical sets), 1/2 with row 0 -> keeps 1 and 2.
    assert graph[4].indices.tolist() == [1, 2]
    np.testing.assert_array_equal(graph[4].data, [1.0, 1.0])


def test_self_pairs_excluded_and_empty_rows_have_no_neighbour():
    matrix = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 0], [0, 0, 1], [1, 0, 0]], np.float32))
    graph = jaccard_topk(matrix)
    assert graph.diagonal().tolist() == [0, 0, 0, 0]
    assert graph[1].nnz == 0           # empty row
    assert graph[2].nnz == 0           # a row sharing nothing with any other
    assert graph[0, 3] == pytest.approx(0.5) and graph[3, 0] == pytest.approx(0.5)


@pytest.mark.parametrize("topk", [None, 4])
def test_chunked_equals_unchunked(topk):
    users, items = long_tail_pairs(300, 120, 2500, seed=3)
    matrix = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(300, 120))
    whole = jaccard_topk(matrix, topk, chunk_rows=10_000)
    for chunk_rows, path_budget, dense_share in [(1, 10**9, 0.0), (7, 10**9, 2.0), (64, 500, 0.25)]:
        chunked = jaccard_topk(matrix, topk, chunk_rows=chunk_rows, path_budget=path_budget,
                               dense_share=dense_share)
        assert (chunked != whole).nnz == 0
        np.testing.assert_array_equal(chunked.indptr, whole.indptr)


def test_user_and_item_graphs_use_r_rt_and_rt_r():
    matrix = random_binary(25, 18, 0.2, seed=5)
    np.testing.assert_array_equal(user_similarity(matrix, topk=3).toarray(), brute_force_jaccard(matrix, 3))
    np.testing.assert_array_equal(item_similarity(matrix, topk=3).toarray(),
                                  brute_force_jaccard(matrix.T.tocsr(), 3))


def test_repeated_pairs_count_once():
    twice = sp.csr_matrix((np.ones(4, np.float32), ([0, 0, 1, 1], [0, 0, 0, 1])), shape=(2, 2))
    assert jaccard_topk(twice)[0, 1] == pytest.approx(0.5)


def test_all_neighbours_refused_beyond_the_entry_limit():
    matrix = sp.csr_matrix(np.ones((30, 2), np.float32))  # everyone shares everything: 30 * 29 pairs
    with pytest.raises(ConfigError, match="social_topk"):
        jaccard_topk(matrix, None, max_entries=100, desc="user graph")
    assert jaccard_topk(matrix, 5, max_entries=100).nnz == 150


def test_bad_topk_is_a_config_error():
    with pytest.raises(ConfigError, match="top-k"):
        jaccard_topk(random_binary(4, 4, 0.5, 0), topk=0)


def test_save_and_load_keep_graph_and_fingerprint(tmp_path):
    matrix = random_binary(20, 10, 0.3, seed=8)
    graph = jaccard_topk(matrix, 3)
    card = save_graph(tmp_path / "user_similarity.npz", graph,
                      {"interactions_fingerprint": interactions_fingerprint(matrix)})
    loaded, loaded_card = load_graph(tmp_path / "user_similarity.npz")
    assert (loaded != graph).nnz == 0 and loaded.dtype == np.float32
    assert loaded_card == card and card["nnz"] == graph.nnz
    assert card["interactions_fingerprint"] == interactions_fingerprint(matrix.tocoo())
    other = matrix.tolil()
    other[0, 0] = 1 - other[0, 0]
    assert interactions_fingerprint(other) != card["interactions_fingerprint"]
