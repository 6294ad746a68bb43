"""Social, knowledge and external feature channels (spec 1.2-1.4) against plain-loop definitions and bad files."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from infodcl.errors import DataError
from infodcl.metadata.channels import (knowledge_channel, read_external_features, social_channel,
                                       write_channel)
from infodcl.metadata.similarity import item_similarity, user_similarity


def small_interactions(seed: int) -> sp.csr_matrix:
    """Random 0/1 matrix (12 users x 10 items) plus a loner user (own item) and an item nobody has."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((14, 11)) < 0.3).astype(np.float32)
    dense[:, 9] = 0                     # item 9: only the loner (user 13) has it
    dense[13] = 0
    dense[13, 9] = 1                    # user 13 shares no item -> no neighbour
    dense[:, 10] = 0                    # item 10: no train user
    dense[12] = 0                       # user 12: no train item at all
    return sp.csr_matrix(dense)


def loop_social(interactions, user_graph, user_emb, item_emb):
    dense_r, dense_j = interactions.toarray(), user_graph.toarray()
    n_users, n_items = dense_r.shape
    smoothed = []
    for u in range(n_users):
        total, weight = np.zeros(user_emb.shape[1]), 0.0
        for v in range(n_users):
            if dense_j[u, v] > 0:
                total += dense_j[u, v] * user_emb[v]
                weight += dense_j[u, v]
        smoothed.append(user_emb[u] if weight == 0 else 0.5 * (user_emb[u] + total / weight))
    out = []
    for i in range(n_items):
        users = [u for u in range(n_users) if dense_r[u, i]]
        out.append(item_emb[i] if not users else np.mean([smoothed[u] for u in users], axis=0))
    return np.array(out)


def loop_knowledge(item_graph, item_emb):
    dense_j = item_graph.toarray()
    out = []
    for i in range(len(item_emb)):
        neighbours = [j for j in range(len(item_emb)) if dense_j[i, j] > 0]
        out.append(item_emb[i] if not neighbours else np.mean([item_emb[j] for j in neighbours], axis=0))
    return np.array(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("social_topk", [None, 2])
def test_social_channel_matches_loops(seed, social_topk):
    interactions = small_interactions(seed)
    rng = np.random.default_rng(seed + 10)
    user_emb, item_emb = rng.normal(size=(14, 5)), rng.normal(size=(11, 5))
    graph = user_similarity(interactions, social_topk)
    channel = social_channel(graph, interactions, user_emb, item_emb)
    assert channel.dtype == np.float32 and channel.shape == (11, 5)
    np.testing.assert_allclose(channel, loop_social(interactions, graph, user_emb, item_emb), rtol=1e-5, atol=1e-6)
    # Fall-backs: item 9 has only the neighbour-less user 13 -> P_u[13]; item 10 has no user -> P_i[10].
    np.testing.assert_allclose(channel[9], user_emb[13], rtol=1e-6)
    np.testing.assert_allclose(channel[10], item_emb[10], rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("topk", [20, 2])
def test_knowledge_channel_matches_loops(seed, topk):
    interactions = small_interactions(seed)
    item_emb = np.random.default_rng(seed + 20).normal(size=(11, 6))
    graph = item_similarity(interactions, topk)
    channel = knowledge_channel(graph, item_emb)
    np.testing.assert_allclose(channel, loop_knowledge(graph, item_emb), rtol=1e-5, atol=1e-6)
    # Items 9 (shares no user) and 10 (no user) have no neighbour: they keep P_i[i].
    np.testing.assert_allclose(channel[[9, 10]], item_emb[[9, 10]], rtol=1e-6)
    if topk == 2:
        assert (np.diff(graph.indptr) <= 2).all()


def test_hand_computed_social_value():
    # Users 0 {item 0}, 1 {items 0, 1}: J = 1/2 each way. s_0 = (P0 + P1) / 2, s_1 = (P1 + P0) / 2.
    interactions = sp.csr_matrix(np.array([[1, 0], [1, 1]], np.float32))
    user_emb = np.array([[2.0, 0.0], [0.0, 4.0]])
    channel = social_channel(user_similarity(interactions), interactions, user_emb, np.zeros((2, 2)))
    np.testing.assert_allclose(channel, [[1.0, 2.0], [1.0, 2.0]])


# --------------------------------------------------------------------------- external feature files
ITEM_IDS = np.array(["B001", "B002", "B003", "B004"])


def test_npy_rows_in_item_order(tmp_path):
    features = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / "text.npy", features)
    matrix, notes = read_external_features(tmp_path / "text.npy", 4, ITEM_IDS)
    np.testing.assert_array_equal(matrix, features)
    assert notes["format"] == "npy" and len(notes["sha256"]) == 64


def test_npy_wrong_row_count_names_the_file(tmp_path):
    np.save(tmp_path / "text.npy", np.zeros((3, 2)))
    with pytest.raises(DataError, match=r"text\.npy: has 3 rows but the dataset has 4 items"):
        read_external_features(tmp_path / "text.npy", 4, ITEM_IDS)


def test_npy_nan_names_the_row_and_item(tmp_path):
    features = np.zeros((4, 2))
    features[2, 1] = np.nan
    features[3, 0] = np.inf
    np.save(tmp_path / "image.npy", features)
    with pytest.raises(DataError, match=r"image\.npy: 2 row\(s\) hold NaN or Inf.*row 2 \(item 'B003'\)"):
        read_external_features(tmp_path / "image.npy", 4, ITEM_IDS)


def test_parquet_aligned_by_original_id_extra_items_ignored(tmp_path):
    # Rows in another order, plus an item the dataset does not have.
    table = pd.DataFrame({"item_id": ["B003", "ZZZ", "B001", "B004", "B002"],
                          "f0": [3.0, 9.0, 1.0, 4.0, 2.0], "f1": [30.0, 90.0, 10.0, 40.0, 20.0]})
    table.to_parquet(tmp_path / "kg.parquet")
    matrix, notes = read_external_features(tmp_path / "kg.parquet", 4, ITEM_IDS)
    np.testing.assert_array_equal(matrix, [[1, 10], [2, 20], [3, 30], [4, 40]])
    assert notes["extra_items_ignored"] == 1 and notes["key_column"] == "item_id"


def test_parquet_list_column_and_original_id_key(tmp_path):
    table = pd.DataFrame({"original_id": ["B002", "B001", "B004", "B003"],
                          "embedding": [[2.0, 2.5], [1.0, 1.5], [4.0, 4.5], [3.0, 3.5]]})
    table.to_parquet(tmp_path / "emb.parquet")
    matrix, _ = read_external_features(tmp_path / "emb.parquet", 4, ITEM_IDS)
    np.testing.assert_array_equal(matrix[:, 0], [1, 2, 3, 4])


def test_parquet_missing_item_lists_it(tmp_path):
    pd.DataFrame({"item_id": ["B001", "B003"], "f0": [1.0, 3.0]}).to_parquet(tmp_path / "feat.parquet")
    with pytest.raises(DataError, match=r"feat\.parquet: 2 of the dataset's 4 items have no row.*'B002', 'B004'"):
        read_external_features(tmp_path / "feat.parquet", 4, ITEM_IDS)


def test_parquet_nan_names_item(tmp_path):
    pd.DataFrame({"item_id": list(ITEM_IDS), "f0": [1.0, np.nan, 3.0, 4.0]}).to_parquet(tmp_path / "f.parquet")
    with pytest.raises(DataError, match=r"f\.parquet: 1 row\(s\) hold NaN.*row 1 \(item 'B002'\)"):
        read_external_features(tmp_path / "f.parquet", 4, ITEM_IDS)


@pytest.mark.parametrize("table, message", [
    (pd.DataFrame({"asin": ITEM_IDS, "f0": 1.0}), r"no item key column.*item_id"),
    (pd.DataFrame({"item_id": ["B001", "B001", "B002", "B003", "B004"], "f0": 1.0}), r"repeats item ids.*'B001' at row 1"),
    (pd.DataFrame({"item_id": ITEM_IDS, "f0": ["a", "b", "c", "d"]}), r"not numeric: \['f0'\]"),
    (pd.DataFrame({"item_id": ITEM_IDS}), r"no feature columns"),
])
def test_parquet_malformed(tmp_path, table, message):
    table.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: .*" + message):
        read_external_features(tmp_path / "bad.parquet", 4, ITEM_IDS)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match=r"nope\.npy: external feature file does not exist"):
        read_external_features(tmp_path / "nope.npy", 4, ITEM_IDS)
    (tmp_path / "feat.csv").write_text("x\n")
    with pytest.raises(DataError, match=r"feat\.csv: unknown feature file type"):
        read_external_features(tmp_path / "feat.csv", 4, ITEM_IDS)


def test_write_channel_card(tmp_path):
    matrix = np.array([[3.0, 4.0], [0.0, 1.0]])
    card = write_channel(tmp_path, "text", matrix, "test", {"k": 1})
    stored = np.load(tmp_path / "channel_text.npy")
    assert stored.dtype == np.float32 and stored.shape == (2, 2)
    assert json.loads((tmp_path / "channel_text.json").read_text()) == card
    assert card["row_norm"] == {"mean": 3.0, "min": 1.0, "max": 5.0} and card["shape"] == [2, 2]
