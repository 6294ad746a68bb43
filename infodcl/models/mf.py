"""BPR matrix factorisation: the non-graph baseline of spec section 8 (Rendle et al., BPR).

Loss = BPR on dot-product scores + L2 on the batch's user/positive/negative embeddings (scaled as LightGCN's).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infodcl.config import ModelConfig
from infodcl.models.base import Batch, Recommender


def embedding_table(n_rows: int, model_cfg: ModelConfig) -> nn.Parameter:
    """A trainable (n_rows, d) table, init N(0, init_std^2) (the reference) or Xavier-uniform (option)."""
    table = torch.empty(n_rows, model_cfg.dim)
    if model_cfg.init == "xavier":
        nn.init.xavier_uniform_(table)
    else:
        nn.init.normal_(table, mean=0.0, std=model_cfg.init_std)
    return nn.Parameter(table)


def bpr_loss(user_vec: torch.Tensor, pos_vec: torch.Tensor, neg_vec: torch.Tensor) -> torch.Tensor:
    """mean softplus(s(u, neg) - s(u, pos)) = -mean log sigmoid(s(u, pos) - s(u, neg))."""
    pos_score = (user_vec * pos_vec).sum(dim=1)  # (B,)
    neg_score = (user_vec * neg_vec).sum(dim=1)  # (B,)
    return F.softplus(neg_score - pos_score).mean()


def l2_of_rows(*rows: torch.Tensor) -> torch.Tensor:
    """1/2 sum of squared norms of the given (B, d) tables, divided by B (LightGCN's reg_loss)."""
    batch_size = rows[0].shape[0]
    return 0.5 * sum(r.pow(2).sum() for r in rows) / batch_size


class MF(Recommender):
    """BPR-MF: score(u, i) = E_u[u] . E_i[i]."""

    def __init__(self, n_users: int, n_items: int, model_cfg: ModelConfig) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.l2 = model_cfg.l2
        self.user_embedding = embedding_table(n_users, model_cfg)
        self.item_embedding = embedding_table(n_items, model_cfg)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        user_vec = self.user_embedding[batch.users]     # (B, d)
        pos_vec = self.item_embedding[batch.pos_items]  # (B, d)
        neg_vec = self.item_embedding[batch.neg_items]  # (B, d)
        return {"bpr": bpr_loss(user_vec, pos_vec, neg_vec),
                "reg": self.l2 * l2_of_rows(user_vec, pos_vec, neg_vec)}

    def layer0(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw embedding tables (for MF identical to `propagate`)."""
        return self.user_embedding, self.item_embedding

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding, self.item_embedding
