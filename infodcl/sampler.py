"""Vectorised BPR sampling: one shuffled pass over the train interactions, uniform negatives per row.

Spec section 9 ("Epoch": one shuffled pass, last partial batch kept); negatives reject the user's train items.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from infodcl.data.dataset import InteractionData
from infodcl.errors import DataError


class BPRSampler:
    """Yields (users, positive items, negative items) int64 batches; all randomness from one numpy Generator.

    Its state (the Generator's bit_generator.state) goes into checkpoints, so a resumed run draws the
    same epochs as an uninterrupted one.
    """

    def __init__(self, data: InteractionData, seed: int, max_rounds: int = 1000):
        users, items = data.pairs["train"]
        keys = np.unique(users.astype(np.int64) * data.n_items + items)   # sorted, deduplicated train pairs
        self.n_items = int(data.n_items)
        self.users = keys // data.n_items                                # (N,)
        self.items = keys % data.n_items                                 # (N,)
        self._train_keys = keys
        self.max_rounds = max_rounds
        degree = np.bincount(self.users, minlength=data.n_users)
        full = np.flatnonzero(degree >= data.n_items)
        if len(full):
            raise DataError(f"train split: user index {int(full[0])} interacted with all {data.n_items} items, "
                            "so no negative item can be sampled for them")
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.users)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self.users) // batch_size)

    def is_train_pair(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Boolean mask: (user, item) is a train interaction, by binary search in the sorted pair keys."""
        keys = users * self.n_items + items
        found = np.searchsorted(self._train_keys, keys)
        return self._train_keys[np.minimum(found, len(self._train_keys) - 1)] == keys

    def sample_negatives(self, users: np.ndarray) -> np.ndarray:
        """One uniform item per user that is not among that user's train items.

        All rows are drawn at once; only the rejected rows are redrawn, until none is left.
        """
        negatives = self.rng.integers(0, self.n_items, size=len(users), dtype=np.int64)
        rejected = np.flatnonzero(self.is_train_pair(users, negatives))
        rounds = 0
        while len(rejected):
            rounds += 1
            if rounds > self.max_rounds:
                raise RuntimeError(f"negative sampling did not finish after {self.max_rounds} rounds "
                                   f"({len(rejected)} rows left); are some users near-complete?")
            redraw = self.rng.integers(0, self.n_items, size=len(rejected), dtype=np.int64)
            negatives[rejected] = redraw
            rejected = rejected[self.is_train_pair(users[rejected], redraw)]
        return negatives

    def epoch(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """One shuffled pass over the train interactions; the last partial batch is kept.

        Order and negatives of the whole epoch are drawn up front, so the Generator state after an
        epoch does not depend on how far a consumer iterated.
        """
        order = self.rng.permutation(len(self.users))
        users, items = self.users[order], self.items[order]
        negatives = self.sample_negatives(users)
        for start in range(0, len(users), batch_size):
            stop = start + batch_size
            yield users[start:stop], items[start:stop], negatives[start:stop]

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]
