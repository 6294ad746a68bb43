"""Synthetic interaction logs with a long-tailed degree distribution, for tests and benchmarks.

Not part of the paper: real data lives in ../shared/data; this only makes small or Electronics-sized stand-ins.
"""
from __future__ import annotations

import numpy as np

from infodcl.data.dataset import InteractionData


def long_tail_pairs(n_users: int, n_items: int, n_interactions: int, seed: int = 0,
                    alpha: float = 1.1) -> tuple[np.ndarray, np.ndarray]:
    """Unique (user, item) pairs; users and items drawn from Zipf-like popularities, every user >= 1 item."""
    rng = np.random.default_rng(seed)
    user_pop = 1.0 / np.arange(1, n_users + 1) ** (alpha * 0.6)
    item_pop = 1.0 / np.arange(1, n_items + 1) ** alpha
    rng.shuffle(user_pop)
    rng.shuffle(item_pop)
    user_pop /= user_pop.sum()
    item_pop /= item_pop.sum()
    # Every user gets one item first, so no user is empty; then draw until enough unique pairs exist.
    first = np.unique(np.arange(n_users, dtype=np.int64) * n_items + rng.choice(n_items, n_users, p=item_pop))
    keys = first
    while len(keys) < n_interactions:
        need = int((n_interactions - len(keys)) * 1.3) + 16
        users = rng.choice(n_users, need, p=user_pop)
        items = rng.choice(n_items, need, p=item_pop)
        keys = np.unique(np.concatenate([keys, users.astype(np.int64) * n_items + items]))
    if len(keys) > n_interactions:
        rest = np.setdiff1d(keys, first, assume_unique=True)
        keep = rng.choice(len(rest), n_interactions - len(first), replace=False)
        keys = np.sort(np.concatenate([first, rest[keep]]))
    return (keys // n_items).astype(np.int64), (keys % n_items).astype(np.int64)


def synthetic_dataset(n_users: int = 60, n_items: int = 40, n_interactions: int = 600, seed: int = 0,
                      ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> InteractionData:
    """A tiny dataset with a per-user random split; users with >= 3 items get valid and test items."""
    users, items = long_tail_pairs(n_users, n_items, n_interactions, seed)
    rng = np.random.default_rng(seed + 1)
    order = rng.permutation(len(users))
    users, items = users[order], items[order]
    split = np.zeros(len(users), np.int8)
    sort = np.argsort(users, kind="stable")
    users, items = users[sort], items[sort]
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1, len(users)]
    for begin, end in zip(starts[:-1], starts[1:]):
        n = end - begin
        if n >= 3:
            n_test = max(1, int(round(n * ratios[2])))
            n_valid = max(1, int(round(n * ratios[1])))
            split[end - n_test:end] = 2
            split[end - n_test - n_valid:end - n_test] = 1
    masks = [split == s for s in range(3)]
    return InteractionData.from_pairs(n_users, n_items, *[(users[m], items[m]) for m in masks])
