"""Chunked full-ranking evaluation (spec section 0): masking, chunk invariance, exact means, top-K export."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from infodcl.data.dataset import InteractionData
from infodcl.data.synthetic import synthetic_dataset
from infodcl.evaluate import evaluate_model, metrics_from_ranking, recommendations_frame
from infodcl.models.base import Recommender


class FixedScores(Recommender):
    """A 'model' whose scores are a given matrix, so rankings are known in advance."""

    def __init__(self, scores: np.ndarray):
        super().__init__()
        self.n_users, self.n_items = scores.shape
        self.scores = torch.nn.Parameter(torch.as_tensor(scores, dtype=torch.float32), requires_grad=False)
        self.prepared = 0

    def prepare_inference(self) -> None:
        self.prepared += 1

    def full_sort_scores(self, users: torch.Tensor) -> torch.Tensor:
        return self.scores[users].clone()   # (B, n_items)


def brute_force_metrics(scores: np.ndarray, data: InteractionData, split: str, ks) -> dict:
    """Reference: mask with a dense loop, sort every row, then metrics_from_ranking."""
    masked = scores.astype(np.float64).copy()
    earlier = {"valid": ["train"], "test": ["train", "valid"]}[split]
    for s in earlier:
        for u, i in zip(*data.pairs[s]):
            masked[u, i] = -np.inf
    users = data.users_with(split)
    truth = {u: set() for u in users}
    for u, i in zip(*data.pairs[split]):
        truth[u].add(int(i))
    rankings = [np.argsort(-masked[u], kind="stable")[:max(ks)] for u in users]
    return metrics_from_ranking(rankings, [truth[u] for u in users], ks)


def test_hand_built_masking_of_train_and_valid_items():
    # One user, items scored 5 > 4 > 3 > 2 > 1. Train {0}, valid {1}, test {2}.
    data = InteractionData.from_pairs(1, 5, train=([0], [0]), valid=([0], [1]), test=([0], [2]))
    model = FixedScores(np.array([[5.0, 4.0, 3.0, 2.0, 1.0]]))
    valid = evaluate_model(model, data, "valid", ks=(1, 2))
    assert valid["recall@1"] == 1.0          # item 0 (train) masked, so item 1 is ranked first
    test = evaluate_model(model, data, "test", ks=(1, 2))
    assert test["recall@1"] == 1.0           # items 0 and 1 masked, so item 2 is ranked first
    assert test["mrr@2"] == 1.0
    # Without masking the valid item, the test GT item would be second: MRR 1/2. Check the mask matters:
    data_no_valid = InteractionData.from_pairs(1, 5, train=([0], [0]), test=([0], [2]))
    assert evaluate_model(model, data_no_valid, "test", ks=(1, 2))["mrr@2"] == 0.5


def test_masked_items_never_count_as_hits_even_on_a_tiny_catalogue():
    # 3 items, 2 in train, K = 3 > unmasked items: the masked ones fill the ranking but are no hits.
    data = InteractionData.from_pairs(1, 3, train=([0, 0], [0, 1]), valid=([0], [0]))
    model = FixedScores(np.array([[3.0, 2.0, 1.0]]))
    got = evaluate_model(model, data, "valid", ks=(3,))
    assert got["hit@3"] == 0.0


@pytest.mark.parametrize("split", ["valid", "test"])
def test_chunked_equals_unchunked_and_brute_force(split):
    data = synthetic_dataset(n_users=60, n_items=40, n_interactions=600, seed=3)
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((data.n_users, data.n_items)).astype(np.float32)
    model = FixedScores(scores)
    ks = (5, 10, 20)
    reference = brute_force_metrics(scores, data, split, ks)
    n_eval_users = len(data.users_with(split))
    for chunk in (1, 7, n_eval_users, 10_000):
        got = evaluate_model(model, data, split, ks=ks, chunk_size=chunk)
        assert set(got) == set(reference)
        for key in reference:
            assert got[key] == pytest.approx(reference[key], abs=1e-12), (chunk, key)


def test_evaluate_model_prepares_the_model_once_and_sets_eval_mode():
    data = synthetic_dataset(seed=1)
    model = FixedScores(np.zeros((data.n_users, data.n_items), np.float32))
    model.train()
    evaluate_model(model, data, "valid", ks=(10,), chunk_size=8)
    assert model.prepared == 1 and not model.training


def test_ground_truth_only_users_are_averaged():
    # User 1 has no valid item: the mean is over user 0 only (1.0), not (1.0 + 0) / 2.
    data = InteractionData.from_pairs(2, 4, train=([0, 1], [3, 3]), valid=([0], [0]))
    model = FixedScores(np.array([[4.0, 3, 2, 1], [4.0, 3, 2, 1]]))
    assert evaluate_model(model, data, "valid", ks=(1,))["recall@1"] == 1.0


def test_recommendations_restore_original_ids_and_exclude_seen_items():
    data = InteractionData.from_pairs(2, 4, train=([0, 1], [0, 1]), valid=([0], [1]), test=([0, 1], [2, 3]))
    data.user_ids = np.array(["alice", "bob"])
    data.item_ids = np.array(["i-a", "i-b", "i-c", "i-d"])
    model = FixedScores(np.array([[4.0, 3, 2, 1], [1.0, 2, 3, 4]]))
    frame = recommendations_frame(model, data, "test", k=2)
    rows = list(frame[["user_id", "rank", "item_id"]].itertuples(index=False, name=None))
    # alice: items 0 (train) and 1 (valid) masked -> i-c, i-d. bob: item 1 (train) masked -> i-d, i-c.
    assert rows == [("alice", 1, "i-c"), ("alice", 2, "i-d"), ("bob", 1, "i-d"), ("bob", 2, "i-c")]
    assert frame["score"].tolist() == [2.0, 1.0, 4.0, 3.0]
    data.user_ids = data.item_ids = None
    fallback = recommendations_frame(model, data, "test", k=1)
    assert fallback["user_id"].tolist() == ["0", "1"] and fallback["item_id"].tolist() == ["2", "3"]
