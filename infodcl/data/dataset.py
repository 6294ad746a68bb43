"""The canonical interaction tables every stage after ingest reads (spec section 0: train/valid/test).

Schema of the ingest stage's output directory:
- `interactions.parquet`: user (int64, dense 0..n_users-1), item (int64, dense 0..n_items-1),
  split (string: train|valid|test), and optionally rating (float32) and timestamp (int64).
- `users.parquet`: user (int64), original_id (string); `items.parquet`: item (int64), original_id (string).
- `dataset.json`: the dataset card (counts, per-split counts, sparsity, source, checksums, recipe).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

SPLITS = ("train", "valid", "test")
INTERACTIONS_FILE = "interactions.parquet"
USERS_FILE = "users.parquet"
ITEMS_FILE = "items.parquet"
CARD_FILE = "dataset.json"


@dataclass
class InteractionData:
    """Dense-indexed interactions split into train / valid / test, as index arrays and sparse matrices."""
    n_users: int
    n_items: int
    pairs: dict[str, tuple[np.ndarray, np.ndarray]]   # split -> (users, items), int64
    name: str = "synthetic"
    user_ids: np.ndarray | None = None                # original id of each user index (strings)
    item_ids: np.ndarray | None = None                # original id of each item index (strings)
    card: dict = field(default_factory=dict)
    _matrices: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_pairs(cls, n_users: int, n_items: int, train, valid=None, test=None,
                   name: str = "synthetic") -> "InteractionData":
        """Build from (users, items) array pairs; handy for tests and benchmarks."""
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        pairs = {}
        for split, value in zip(SPLITS, (train, valid, test)):
            if value is None:
                pairs[split] = empty
            else:
                users, items = value
                pairs[split] = (np.asarray(users, np.int64), np.asarray(items, np.int64))
        return cls(n_users=n_users, n_items=n_items, pairs=pairs, name=name)

    @classmethod
    def from_dir(cls, path: str | Path) -> "InteractionData":
        """Read the ingest stage's output directory."""
        path = Path(path)
        card = json.loads((path / CARD_FILE).read_text())
        table = pd.read_parquet(path / INTERACTIONS_FILE, columns=["user", "item", "split"])
        users = pd.read_parquet(path / USERS_FILE)
        items = pd.read_parquet(path / ITEMS_FILE)
        pairs = {}
        split_col = table["split"].to_numpy()
        user_col = table["user"].to_numpy(np.int64)
        item_col = table["item"].to_numpy(np.int64)
        for split in SPLITS:
            mask = split_col == split
            pairs[split] = (user_col[mask], item_col[mask])
        return cls(n_users=int(card["n_users"]), n_items=int(card["n_items"]), pairs=pairs,
                   name=card.get("name", path.name),
                   user_ids=users.sort_values("user")["original_id"].astype(str).to_numpy(),
                   item_ids=items.sort_values("item")["original_id"].astype(str).to_numpy(),
                   card=card)

    def write_dir(self, path: str | Path) -> Path:
        """Write the minimal canonical tables + card (the inverse of from_dir): for tests and prepared splits."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        frames = [pd.DataFrame({"user": u, "item": i, "split": split}) for split, (u, i) in self.pairs.items()]
        pd.concat(frames, ignore_index=True).to_parquet(path / INTERACTIONS_FILE, index=False)
        user_ids = self.user_ids if self.user_ids is not None else [f"u{k}" for k in range(self.n_users)]
        item_ids = self.item_ids if self.item_ids is not None else [f"i{k}" for k in range(self.n_items)]
        pd.DataFrame({"user": np.arange(self.n_users), "original_id": user_ids}).to_parquet(path / USERS_FILE, index=False)
        pd.DataFrame({"item": np.arange(self.n_items), "original_id": item_ids}).to_parquet(path / ITEMS_FILE, index=False)
        card = {"name": self.name, "n_users": self.n_users, "n_items": self.n_items,
                "n_interactions": sum(self.count(s) for s in SPLITS), "splits": {s: self.count(s) for s in SPLITS}}
        (path / CARD_FILE).write_text(json.dumps(card, indent=2))
        return path

    def matrix(self, split: str = "train") -> sp.csr_matrix:
        """Binary n_users x n_items CSR matrix of one split (cached)."""
        if split not in self._matrices:
            users, items = self.pairs[split]
            data = np.ones(len(users), dtype=np.float32)
            m = sp.csr_matrix((data, (users, items)), shape=(self.n_users, self.n_items))
            m.sum_duplicates()
            m.data[:] = 1.0
            self._matrices[split] = m
        return self._matrices[split]

    @property
    def train_matrix(self) -> sp.csr_matrix:
        return self.matrix("train")

    def count(self, split: str) -> int:
        return int(len(self.pairs[split][0]))

    def users_with(self, split: str) -> np.ndarray:
        """Users that have at least one interaction in a split (the users a metric averages over)."""
        return np.unique(self.pairs[split][0])
