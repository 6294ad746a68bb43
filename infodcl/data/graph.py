"""The normalised user-item bipartite graph and LightGCN propagation over it.

Spec section 5 (paper Eq. 16): A_hat = D^-1/2 A D^-1/2 of the train graph, final embedding = mean of layers 0..L.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch


def normalized_adjacency_scipy(train_matrix: sp.spmatrix) -> sp.csr_matrix:
    """A_hat = D^-1/2 A D^-1/2 of the (n_users + n_items) square bipartite graph, float32 CSR.

    Users come first (rows 0..n_users-1), items after. A node without edges gets a zero row and column.
    """
    interactions = sp.csr_matrix(train_matrix, dtype=np.float32)
    interactions.sum_duplicates()
    interactions.data[:] = 1.0  # binary: a repeated (user, item) pair is one edge
    adjacency = sp.bmat([[None, interactions], [interactions.T, None]], format="csr", dtype=np.float32)
    degree = np.asarray(adjacency.sum(axis=1), dtype=np.float64).ravel()
    inv_sqrt = np.zeros_like(degree)
    np.divide(1.0, np.sqrt(degree), out=inv_sqrt, where=degree > 0)
    scale = sp.diags(inv_sqrt.astype(np.float32))
    normalized = (scale @ adjacency @ scale).tocsr().astype(np.float32)
    normalized.sort_indices()
    return normalized


def normalized_adjacency(train_matrix: sp.spmatrix) -> torch.Tensor:
    """A_hat as a torch sparse CSR tensor (float32, int64 indices).

    CSR rather than COO: on a 2-core CPU with Office's graph (7,325 nodes, 82k edges) CSR @ (n, 64) takes
    ~1.7 ms against ~7.3 ms for COO (2 threads; /tmp bench quoted in the models report).
    """
    normalized = normalized_adjacency_scipy(train_matrix)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(normalized.indptr.astype(np.int64)),
            torch.from_numpy(normalized.indices.astype(np.int64)),
            torch.from_numpy(normalized.data),
            size=normalized.shape,
            check_invariants=False,  # built by scipy from a valid CSR: sorted, in range
        )


class _SymmetricSparseMatmul(torch.autograd.Function):
    """Y = A X for a symmetric sparse A; the gradient is A^T G = A G.

    Autograd's own backward for a CSR product transposes A on every call and is several times slower.
    """

    @staticmethod
    def forward(ctx, adjacency: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ctx.adjacency = adjacency
        return adjacency @ dense

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return None, ctx.adjacency @ grad_output


def symmetric_spmm(adjacency: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """A @ X with A symmetric sparse (A_hat), differentiable in X."""
    if dense.requires_grad:
        return _SymmetricSparseMatmul.apply(adjacency, dense)
    return adjacency @ dense


def lightgcn_propagate(adjacency: torch.Tensor, user_emb: torch.Tensor, item_emb: torch.Tensor,
                       layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of layers 0..L of E^(l+1) = A_hat E^(l); layers = 0 returns the inputs unchanged."""
    if layers < 0:
        raise ValueError(f"propagation layers must be >= 0, got {layers}")
    if layers == 0:
        return user_emb, item_emb
    n_users = user_emb.shape[0]
    layer = torch.cat([user_emb, item_emb], dim=0)  # (n_users + n_items, d)
    total = layer
    for _ in range(layers):
        layer = symmetric_spmm(adjacency, layer)  # (n_users + n_items, d)
        total = total + layer
    final = total / (layers + 1)
    return final[:n_users], final[n_users:]
