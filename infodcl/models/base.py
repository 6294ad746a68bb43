"""One contract for every recommender (RecBole-style): named loss terms for training, full-sort scores for ranking.

Spec section 0 (all-ranking protocol) and section 5 (inference by propagated embeddings, cached once per evaluation).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Batch:
    """One BPR batch: users with one positive and one sampled negative item each. All (B,) int64."""
    users: torch.Tensor
    pos_items: torch.Tensor
    neg_items: torch.Tensor

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.users.to(device), self.pos_items.to(device), self.neg_items.to(device))


class Recommender(nn.Module):
    """Base class. Subclasses implement `loss` and `propagate`."""

    n_users: int
    n_items: int

    def __init__(self) -> None:
        super().__init__()
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms; the training objective is their sum."""
        raise NotImplementedError

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user (n_users, d) and item (n_items, d) embeddings used for scoring."""
        raise NotImplementedError

    @torch.no_grad()
    def prepare_inference(self) -> None:
        """Compute and cache the propagated embeddings once per evaluation."""
        self._cache = tuple(t.detach() for t in self.propagate())

    def invalidate_cache(self) -> None:
        self._cache = None

    def train(self, mode: bool = True):
        # Any parameter update makes cached embeddings stale.
        if mode:
            self._cache = None
        return super().train(mode)

    @torch.no_grad()
    def full_sort_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user: (B, n_items). Uses the cached propagation."""
        if self._cache is None:
            self.prepare_inference()
        user_emb, item_emb = self._cache
        return user_emb[users] @ item_emb.T  # (B, n_items)
