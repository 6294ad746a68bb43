"""Sparse Jaccard similarity graphs with a per-row top-k: user-user from R R^T, item-item from R^T R.

Spec sections 1.2 and 1.3 (J(a, b) = |A ∩ B| / |A ∪ B|, a != b) and section 9 (ties broken by the lower index).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from infodcl.config import ConfigError
from infodcl.store import atomic_write_json

# One float32 Jaccard value in (0, 1] has an IEEE bit pattern of at most that of 1.0 (0x3F800000 < 2^30);
# for positive floats the bit pattern orders like the value, so it can be packed into an int64 sort key.
_ONE_BITS = int(np.float32(1.0).view(np.uint32))
_VALUE_BITS = 30
# Products of R R^T are built a few rows at a time so that at most about this many candidate pairs
# (paths of length 2) are held at once: ~16 bytes each with the sort keys, i.e. ~0.5 GiB per chunk.
DEFAULT_PATH_BUDGET = 32_000_000
# A chunk whose product fills at least this share of its rows x n block takes the dense top-k path.
DEFAULT_DENSE_SHARE = 0.25
# "All neighbours" (top-k None) refuses to build a graph larger than this (~12 bytes per stored entry).
DEFAULT_MAX_ENTRIES = 150_000_000


def binary_csr(matrix: sp.spmatrix) -> sp.csr_matrix:
    """The 0/1 float32 CSR pattern of a matrix (a repeated pair counts once)."""
    pattern = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    pattern.sum_duplicates()
    pattern.eliminate_zeros()
    pattern.data[:] = 1.0
    return pattern


def interactions_fingerprint(matrix: sp.spmatrix) -> str:
    """sha256 of a binary interaction matrix's shape and sorted nonzero pattern (what the graphs came from)."""
    pattern = binary_csr(matrix)
    pattern.sort_indices()
    digest = hashlib.sha256()
    digest.update(np.asarray(pattern.shape, np.int64).tobytes())
    digest.update(pattern.indptr.astype(np.int64).tobytes())
    digest.update(pattern.indices.astype(np.int64).tobytes())
    return digest.hexdigest()


def _chunk_bounds(path_counts: np.ndarray, max_rows: int, path_budget: int) -> list[tuple[int, int]]:
    """Consecutive row ranges with at most max_rows rows and (unless one row alone exceeds it) path_budget paths."""
    bounds, start, n = [], 0, len(path_counts)
    cumulative = np.concatenate([[0], np.cumsum(path_counts, dtype=np.int64)])
    while start < n:
        # The furthest end whose rows [start, end) stay within the path budget; at least one row.
        end = int(np.searchsorted(cumulative, cumulative[start] + path_budget, side="right")) - 1
        end = min(max(end, start + 1), start + max_rows, n)
        bounds.append((start, end))
        start = end
    return bounds


def _topk_per_row(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int, n_cols: int,
                  topk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries kept: per row the topk largest values, ties broken by the lower column.

    Vectorised: rows with at most topk entries keep everything; the others are ordered by one int64 sort
    of packed keys (row, -value, column), cut by their rank within the row and unpacked again.
    No Python loop over rows or pairs, and no argsort (sorting the keys themselves is ~10x faster).
    """
    counts = np.bincount(rows, minlength=n_rows)
    uncrowded = counts[rows] <= topk
    if uncrowded.all():
        return rows, cols, values
    crowded = ~uncrowded
    col_bits = max(1, int(n_cols - 1).bit_length())
    row_bits = max(1, int(n_rows - 1).bit_length())
    if row_bits + _VALUE_BITS + col_bits > 63:
        raise ValueError(f"chunk of {n_rows} rows x {n_cols} columns does not fit a packed int64 sort key")
    inverted_value = _ONE_BITS - values[crowded].view(np.uint32).astype(np.int64)  # larger J -> smaller key
    keys = ((rows[crowded] << (_VALUE_BITS + col_bits)) | (inverted_value << col_bits)
            | cols[crowded])                                    # unique, since (row, col) pairs are
    keys.sort()
    sorted_rows = keys >> (_VALUE_BITS + col_bits)
    # Rank within row = position - where the row's group starts (groups are contiguous and row-ordered).
    group_sizes = np.bincount(sorted_rows, minlength=n_rows)
    group_start = np.cumsum(group_sizes) - group_sizes
    keys = keys[np.arange(len(keys)) - group_start[sorted_rows] < topk]
    top_rows = keys >> (_VALUE_BITS + col_bits)
    top_cols = keys & ((1 << col_bits) - 1)
    top_bits = _ONE_BITS - ((keys >> col_bits) & ((1 << _VALUE_BITS) - 1))
    top_values = top_bits.astype(np.uint32).view(np.float32)
    return (np.concatenate([rows[uncrowded], top_rows]), np.concatenate([cols[uncrowded], top_cols]),
            np.concatenate([values[uncrowded], top_values]))


def _topk_dense(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int, n_cols: int,
                topk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same selection as _topk_per_row for a chunk whose product is dense: a per-row partition, no sort.

    The k-th largest value of each crowded row comes from np.partition (O(n) per row); values above it
    are kept, and of the values equal to it the first ones in column order fill the remaining places.
    """
    counts = np.bincount(rows, minlength=n_rows)
    uncrowded = counts[rows] <= topk
    crowded_rows = np.flatnonzero(counts > topk)
    block_row = np.full(n_rows, -1, np.int64)
    block_row[crowded_rows] = np.arange(len(crowded_rows))
    block = np.zeros((len(crowded_rows), n_cols), np.float32)             # (crowded rows, n); 0 = no pair
    block[block_row[rows[~uncrowded]], cols[~uncrowded]] = values[~uncrowded]
    kth = np.partition(block, n_cols - topk, axis=1)[:, n_cols - topk]    # k-th largest, > 0
    keep = block > kth[:, None]
    ties = block == kth[:, None]
    places_left = topk - keep.sum(axis=1)
    keep |= ties & (np.cumsum(ties, axis=1) <= places_left[:, None])
    del ties
    top_block_rows, top_cols = np.nonzero(keep)
    top_values = block[top_block_rows, top_cols]
    return (np.concatenate([rows[uncrowded], crowded_rows[top_block_rows]]),
            np.concatenate([cols[uncrowded], top_cols]), np.concatenate([values[uncrowded], top_values]))


def jaccard_topk(interactions: sp.spmatrix, topk: int | None = None, chunk_rows: int = 4096,
                 path_budget: int = DEFAULT_PATH_BUDGET, max_entries: int = DEFAULT_MAX_ENTRIES,
                 dense_share: float = DEFAULT_DENSE_SHARE, progress: bool = False, desc: str = "jaccard") -> sp.csr_matrix:
    """Row-wise Jaccard similarity between the rows of a binary matrix X (n x m): J = X X^T / union.

    For users pass R (n_users x n_items); for items pass R^T. Returns an n x n float32 CSR matrix whose
    row a holds, for every b != a with J(a, b) > 0 (or only the topk largest of them, ties broken by the
    lower index b), J(a, b) = |X_a ∩ X_b| / (|X_a| + |X_b| - |X_a ∩ X_b|), columns sorted.
    The product X X^T is computed in row chunks (at most chunk_rows rows and about path_budget candidate
    pairs each), so no dense n x n matrix and no full product is ever held; only the kept entries are.
    The ranking uses the float32 values as stored, so equal stored values are ties.
    """
    if topk is not None and topk < 1:
        raise ConfigError(f"top-k must be a positive integer or None (all neighbours), got {topk}")
    if chunk_rows < 1:
        raise ConfigError(f"metadata.chunk_rows must be >= 1, got {chunk_rows}")
    rows_matrix = binary_csr(interactions)
    n = rows_matrix.shape[0]
    columns_matrix = rows_matrix.T.tocsr()                       # (m, n)
    degree = np.diff(rows_matrix.indptr).astype(np.float32)    # |X_a|, exact in float32 below 2^24
    column_degree = np.diff(columns_matrix.indptr).astype(np.int64)
    # Paths a -> shared column -> b bound the nonzeros of row a of X X^T; they size the chunks.
    path_counts = rows_matrix @ column_degree.astype(np.float64)
    col_bits = max(1, int(n - 1).bit_length())
    max_rows = min(chunk_rows, 1 << max(1, 63 - _VALUE_BITS - col_bits))
    bounds = _chunk_bounds(path_counts, max_rows, path_budget)

    kept_rows, kept_cols, kept_values, n_kept = [], [], [], 0
    for start, end in tqdm(bounds, desc=desc, unit="chunk", disable=not progress, leave=False):
        product = rows_matrix[start:end] @ columns_matrix         # (rows, n) intersection counts
        local_rows = np.repeat(np.arange(end - start, dtype=np.int64), np.diff(product.indptr))
        cols = product.indices.astype(np.int64)
        intersection = product.data                               # float32, exact integers
        not_self = cols != local_rows + start
        local_rows, cols, intersection = local_rows[not_self], cols[not_self], intersection[not_self]
        union = degree[local_rows + start] + degree[cols] - intersection
        values = (intersection / union).astype(np.float32)        # correctly rounded: equal ratios tie
        del product, intersection, union
        if topk is not None:
            # Dense products (popular columns make R R^T nearly full) select faster by partition than by sort.
            select = _topk_dense if len(values) >= dense_share * (end - start) * n else _topk_per_row
            local_rows, cols, values = select(local_rows, cols, values, end - start, n, topk)
        n_kept += len(values)
        if topk is None and n_kept > max_entries:
            raise ConfigError(
                f"{desc}: keeping all neighbours needs more than {max_entries:,} stored pairs "
                f"(about {12 * n_kept / 2**30:.1f} GiB already after {end:,} of {n:,} rows); "
                "set a top-k (metadata.social_topk) for a matrix this size")
        kept_rows.append((local_rows + start).astype(np.int32))
        kept_cols.append(cols.astype(np.int32))
        kept_values.append(values)
    rows_all = np.concatenate(kept_rows) if kept_rows else np.zeros(0, np.int32)
    cols_all = np.concatenate(kept_cols) if kept_cols else np.zeros(0, np.int32)
    values_all = np.concatenate(kept_values) if kept_values else np.zeros(0, np.float32)
    graph = sp.csr_matrix((values_all, (rows_all, cols_all)), shape=(n, n), dtype=np.float32)
    graph.sort_indices()
    return graph


def user_similarity(train_matrix: sp.spmatrix, topk: int | None = None, chunk_rows: int = 4096,
                    progress: bool = False, **kwargs: Any) -> sp.csr_matrix:
    """User-user Jaccard over train item sets (spec 1.2), n_users x n_users, from R R^T."""
    return jaccard_topk(train_matrix, topk, chunk_rows, progress=progress, desc="user graph", **kwargs)


def item_similarity(train_matrix: sp.spmatrix, topk: int | None = 20, chunk_rows: int = 4096,
                    progress: bool = False, **kwargs: Any) -> sp.csr_matrix:
    """Item-item Jaccard over train user sets (spec 1.3), n_items x n_items, from R^T R."""
    return jaccard_topk(sp.csr_matrix(train_matrix).T, topk, chunk_rows, progress=progress,
                        desc="item graph", **kwargs)


def save_graph(path: str | Path, graph: sp.csr_matrix, card: dict[str, Any]) -> dict[str, Any]:
    """Write graph as `<path>` (.npz, scipy.sparse.save_npz) and its card as `<path stem>.json`."""
    path = Path(path)
    sp.save_npz(path, graph, compressed=False)
    degrees = np.diff(graph.indptr)
    full_card = {**card, "file": path.name, "shape": list(graph.shape), "nnz": int(graph.nnz),
                 "rows_without_neighbour": int((degrees == 0).sum()),
                 "neighbours_per_row": {"mean": float(degrees.mean()) if len(degrees) else 0.0,
                                        "max": int(degrees.max()) if len(degrees) else 0},
                 "value": {"min": float(graph.data.min()) if graph.nnz else None,
                           "max": float(graph.data.max()) if graph.nnz else None}}
    atomic_write_json(path.with_suffix(".json"), full_card)
    return full_card


def load_graph(path: str | Path) -> tuple[sp.csr_matrix, dict[str, Any]]:
    """Read a graph written by save_graph and its card."""
    path = Path(path)
    card_path = path.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    return sp.load_npz(path).tocsr(), card
