"""Vectorised BPR sampler (spec section 9 "Epoch"): rejection of train items, one pass, determinism, state."""
from __future__ import annotations

import numpy as np
import pytest

from infodcl.data.dataset import InteractionData
from infodcl.data.synthetic import synthetic_dataset
from infodcl.errors import DataError
from infodcl.sampler import BPRSampler


def dense_data() -> InteractionData:
    # 30 users over 12 items; user u owns all items but (u % 12) and ((u + 5) % 12): only 2 allowed negatives.
    users, items = [], []
    for u in range(30):
        for i in range(12):
            if i not in (u % 12, (u + 5) % 12):
                users.append(u)
                items.append(i)
    return InteractionData.from_pairs(30, 12, train=(users, items))


def test_negatives_are_never_train_items_of_their_user():
    data = dense_data()
    sampler = BPRSampler(data, seed=0)
    train = set(zip(*[a.tolist() for a in data.pairs["train"]]))
    for _ in range(5):
        for users, positives, negatives in sampler.epoch(batch_size=64):
            assert all((u, p) in train for u, p in zip(users.tolist(), positives.tolist()))
            assert not any((u, n) in train for u, n in zip(users.tolist(), negatives.tolist()))
            assert set(negatives.tolist()) <= set(range(12))


def test_only_the_allowed_negatives_are_drawn_and_both_are_used():
    data = dense_data()
    sampler = BPRSampler(data, seed=1)
    negatives = sampler.sample_negatives(np.full(2000, 7, np.int64))
    assert set(negatives.tolist()) == {7 % 12, (7 + 5) % 12}


def test_sampling_is_vectorised_few_rounds_for_many_rows(monkeypatch):
    data = synthetic_dataset(n_users=200, n_items=300, n_interactions=6000, seed=0)
    sampler = BPRSampler(data, seed=0)
    calls = []
    original = sampler.is_train_pair
    monkeypatch.setattr(sampler, "is_train_pair", lambda u, i: calls.append(len(u)) or original(u, i))
    negatives = sampler.sample_negatives(sampler.users)
    n_rows = data.count("train")
    assert len(negatives) == len(sampler.users) == n_rows > 4000
    # First check covers every row at once; later rounds only the (few) rejected rows.
    assert calls[0] == n_rows and len(calls) < 20 and sum(calls[1:]) < n_rows


def test_one_epoch_is_one_pass_with_the_last_partial_batch_kept():
    data = synthetic_dataset(seed=2)
    sampler = BPRSampler(data, seed=0)
    n = data.count("train")
    batches = list(sampler.epoch(batch_size=64))
    assert [len(b[0]) for b in batches] == [64] * (n // 64) + ([n % 64] if n % 64 else [])
    seen = sorted(zip(np.concatenate([b[0] for b in batches]).tolist(),
                      np.concatenate([b[1] for b in batches]).tolist()))
    assert seen == sorted(zip(*[a.tolist() for a in data.pairs["train"]]))
    assert sampler.num_batches(64) == len(batches)


def test_deterministic_per_seed_and_different_across_seeds():
    data = synthetic_dataset(seed=2)
    draw = lambda seed: np.concatenate([np.concatenate(b) for b in BPRSampler(data, seed).epoch(50)])
    assert np.array_equal(draw(3), draw(3))
    assert not np.array_equal(draw(3), draw(4))


def test_state_round_trips():
    data = synthetic_dataset(seed=2)
    sampler = BPRSampler(data, seed=5)
    list(sampler.epoch(32))                        # advance one epoch
    state = sampler.state_dict()
    first = [np.concatenate(b) for b in sampler.epoch(32)]
    fresh = BPRSampler(data, seed=999)
    fresh.load_state_dict(state)
    again = [np.concatenate(b) for b in fresh.epoch(32)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and len(first) == len(again)


def test_user_owning_every_item_is_refused_with_the_user_named():
    data = InteractionData.from_pairs(2, 3, train=([0, 1, 1, 1], [0, 0, 1, 2]))
    with pytest.raises(DataError, match="user index 1 interacted with all 3 items"):
        BPRSampler(data, seed=0)
