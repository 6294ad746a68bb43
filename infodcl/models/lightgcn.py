"""LightGCN (He et al., 2020): the graph baseline and the pretraining model of spec section 1.1.

Training propagates over A_hat with `layers` layers every step; BPR on the propagated embeddings plus
L2 (weight l2, 1e-4 by default) on the layer-0 embeddings of user, positive and negative (spec section 9).
"""
from __future__ import annotations

import scipy.sparse as sp
import torch

from infodcl.config import ModelConfig
from infodcl.data.graph import lightgcn_propagate, normalized_adjacency
from infodcl.models.base import Batch, Recommender
from infodcl.models.mf import bpr_loss, embedding_table, l2_of_rows


class LightGCN(Recommender):
    """E = mean_{l=0..L} A_hat^l E^(0); score(u, i) = E_u[u] . E_i[i]."""

    def __init__(self, n_users: int, n_items: int, train_matrix: sp.spmatrix, model_cfg: ModelConfig) -> None:
        super().__init__()
        if model_cfg.layers < 0:
            raise ValueError(f"model.layers must be >= 0 for lightgcn, got {model_cfg.layers}")
        self.n_users, self.n_items = n_users, n_items
        self.layers = model_cfg.layers
        self.l2 = model_cfg.l2
        self.user_embedding = embedding_table(n_users, model_cfg)
        self.item_embedding = embedding_table(n_items, model_cfg)
        # Not persistent: the graph is rebuilt from the data, a checkpoint holds only learned weights.
        self.register_buffer("adjacency", normalized_adjacency(train_matrix), persistent=False)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        return lightgcn_propagate(self.adjacency, self.user_embedding, self.item_embedding, self.layers)

    def layer0(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer-0 (unpropagated) tables; the metadata stage may feed these to the channels (spec 9)."""
        return self.user_embedding, self.item_embedding

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        user_final, item_final = self.propagate()
        bpr = bpr_loss(user_final[batch.users], item_final[batch.pos_items], item_final[batch.neg_items])
        reg = l2_of_rows(self.user_embedding[batch.users], self.item_embedding[batch.pos_items],
                         self.item_embedding[batch.neg_items])
        return {"bpr": bpr, "reg": self.l2 * reg}
