"""Metadata channels, one n_items x f matrix each: social (user graph), knowledge (item graph), external features.

Spec section 1.2 (social), 1.3 (knowledge) and 1.4 (any item-level feature matrix is another channel).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from infodcl.config import ConfigError
from infodcl.errors import DataError
from infodcl.store import atomic_write_bytes, atomic_write_json, sha256_file

BUILTIN_CHANNELS = ("social", "knowledge")
ITEM_KEY_COLUMNS = ("item_id", "original_id")        # Parquet feature files are keyed by the original item id
_CHANNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SHOWN = 5                                          # offending ids shown in an error message


def check_channel_name(name: str) -> str:
    if not _CHANNEL_NAME.match(name):
        raise ConfigError(f"metadata.channels: channel name {name!r} must be letters, digits, '_' or '-' "
                          "(it becomes the file name channel_<name>.npy)")
    return name


def _neighbour_mean(weights: sp.spmatrix, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-weighted mean Σ_b w(a, b) table[b] / Σ_b w(a, b) of a sparse weight matrix, and the row sums.

    Rows with zero weight sum get zeros (callers apply the spec's fall-back). float32 product: the graph
    may hold tens of millions of entries, and a float64 copy of it would double time and memory.
    """
    weights = sp.csr_matrix(weights)
    weights = weights.astype(np.float32, copy=False)
    sums = np.asarray(weights.sum(axis=1, dtype=np.float64)).ravel()
    totals = (weights @ np.asarray(table, np.float32)).astype(np.float64)   # (n_rows, d)
    inverse = np.zeros_like(sums)
    np.divide(1.0, sums, out=inverse, where=sums > 0)
    return totals * inverse[:, None], sums


def social_channel(user_graph: sp.spmatrix, train_matrix: sp.spmatrix, user_emb: np.ndarray,
                   item_emb: np.ndarray) -> np.ndarray:
    """Spec 1.2: M_soc[i] = mean over train users u of i of s_u, s_u = 1/2 (P_u[u] + Σ_v J(u,v) P_u[v] / Σ_v J(u,v)).

    A user without neighbours keeps s_u = P_u[u]; an item without train users keeps P_i[i].
    All as sparse products: (n_u, n_u) @ (n_u, d) and (n_i, n_u) @ (n_u, d). Returns float32 (n_items, d).
    """
    user_emb = np.asarray(user_emb, np.float64)
    item_emb = np.asarray(item_emb, np.float64)
    neighbour_mean, weight_sums = _neighbour_mean(user_graph, user_emb)   # (n_u, d)
    has_neighbour = weight_sums > 0
    smoothed_users = user_emb.copy()                                        # (n_u, d)
    smoothed_users[has_neighbour] = 0.5 * (user_emb[has_neighbour] + neighbour_mean[has_neighbour])
    interactions = sp.csr_matrix(train_matrix, dtype=np.float32, copy=True)
    interactions.data[:] = 1.0
    social, item_degree = _neighbour_mean(interactions.T.tocsr(), smoothed_users)  # (n_i, d)
    no_users = item_degree == 0
    social[no_users] = item_emb[no_users]
    return social.astype(np.float32)


def knowledge_channel(item_graph: sp.spmatrix, item_emb: np.ndarray) -> np.ndarray:
    """Spec 1.3: M_kg[i] = unweighted mean of P_i over i's kept neighbours (J > 0); none: P_i[i]. (n_items, d)."""
    item_emb = np.asarray(item_emb, np.float64)
    pattern = sp.csr_matrix(item_graph, dtype=np.float32, copy=True)
    pattern.eliminate_zeros()
    pattern.data[:] = 1.0
    knowledge, counts = _neighbour_mean(pattern, item_emb)                  # (n_i, d)
    alone = counts == 0
    knowledge[alone] = item_emb[alone]
    return knowledge.astype(np.float32)


# --------------------------------------------------------------------------- external feature channels
def _item_label(item_ids: np.ndarray | None, row: int) -> str:
    return f"row {row} (item {str(item_ids[row])!r})" if item_ids is not None else f"row {row}"


def _check_finite(path: Path, features: np.ndarray, item_ids: np.ndarray | None) -> None:
    """Refuse NaN/Inf, naming the first offending rows and their item ids (file row order)."""
    bad_rows = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if len(bad_rows):
        shown = ", ".join(_item_label(item_ids, int(r)) for r in bad_rows[:_SHOWN])
        raise DataError(f"{path}: {len(bad_rows)} row(s) hold NaN or Inf features, e.g. {shown}; "
                        "expected finite numbers")


def _read_npy(path: Path, n_items: int, item_ids: np.ndarray | None) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        features = np.load(path, allow_pickle=False)
    except Exception as exc:  # a truncated or non-npy file
        raise DataError(f"{path}: cannot read as a .npy array ({exc})") from exc
    if features.ndim == 1:
        features = features[:, None]
    if features.ndim != 2:
        raise DataError(f"{path}: expected a 2-d array (n_items x f), got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.number) or np.iscomplexobj(features):
        raise DataError(f"{path}: expected real numbers, got dtype {features.dtype}")
    if features.shape[0] != n_items:
        raise DataError(f"{path}: has {features.shape[0]} rows but the dataset has {n_items} items; a .npy "
                        "feature file must hold one row per item in the dataset's item index order "
                        "(use Parquet keyed by item_id to align by original id)")
    features = features.astype(np.float64)
    _check_finite(path, features, item_ids)
    return features, {"format": "npy", "alignment": "row order = item index"}


def _read_parquet(path: Path, n_items: int, item_ids: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    import pandas as pd
    try:
        table = pd.read_parquet(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot read as Parquet ({exc})") from exc
    key = next((c for c in ITEM_KEY_COLUMNS if c in table.columns), None)
    if key is None:
        raise DataError(f"{path}: no item key column; expected one of {list(ITEM_KEY_COLUMNS)} holding the "
                        f"original item ids, found columns {list(table.columns)}")
    keys = table[key].astype(str).to_numpy()
    duplicated = pd.Series(keys).duplicated(keep="first").to_numpy()
    if duplicated.any():
        rows = np.flatnonzero(duplicated)[:_SHOWN]
        raise DataError(f"{path}: column {key!r} repeats item ids, e.g. "
                        + ", ".join(f"{str(keys[r])!r} at row {r}" for r in rows) + "; expected one row per item")
    feature_columns = [c for c in table.columns if c not in ITEM_KEY_COLUMNS]
    if not feature_columns:
        raise DataError(f"{path}: no feature columns besides {key!r}")
    if len(feature_columns) == 1 and isinstance(table[feature_columns[0]].iloc[0] if len(table) else None,
                                                 (list, tuple, np.ndarray)):
        column = feature_columns[0]
        try:
            features = np.stack([np.asarray(v, np.float64) for v in table[column].to_numpy()])
        except Exception as exc:
            raise DataError(f"{path}: column {column!r} must hold equal-length numeric lists ({exc})") from exc
        if features.ndim != 2:
            raise DataError(f"{path}: column {column!r} must hold 1-d numeric lists, got {features.shape}")
    else:
        not_numeric = [c for c in feature_columns if not pd.api.types.is_numeric_dtype(table[c])]
        if not_numeric:
            raise DataError(f"{path}: feature columns must be numeric (or one list column); "
                            f"not numeric: {not_numeric}")
        features = table[feature_columns].to_numpy(np.float64)
    _check_finite(path, features, keys)
    position = pd.Index(keys).get_indexer(item_ids)                 # file row of each dataset item
    missing = np.flatnonzero(position < 0)
    if len(missing):
        shown = ", ".join(repr(str(item_ids[i])) for i in missing[:_SHOWN])
        raise DataError(f"{path}: {len(missing)} of the dataset's {n_items} items have no row (by {key!r}), "
                        f"e.g. {shown}; expected a feature row for every item")
    extra = len(keys) - n_items
    return features[position], {"format": "parquet", "alignment": f"by original id in column {key!r}",
                                "key_column": key, "extra_items_ignored": int(extra)}


def read_external_features(path: str | Path, n_items: int,
                           item_ids: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """An item feature matrix (n_items, f) float64 aligned to the dataset's item index, and notes for its card.

    `.npy`: rows already in item index order (the row count must equal n_items). `.parquet`: keyed by the
    original item id (column item_id or original_id) with numeric feature columns or one list column;
    every dataset item must have a row, rows of items not in the dataset are ignored (counted in the card).
    Without original ids (data built from pairs) item index i is keyed by the string of i.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: external feature file does not exist")
    if item_ids is None:
        item_ids = np.arange(n_items).astype(str)
    item_ids = np.asarray(item_ids).astype(str)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        features, notes = _read_npy(path, n_items, item_ids)
    elif suffix in (".parquet", ".pq"):
        features, notes = _read_parquet(path, n_items, item_ids)
    else:
        raise DataError(f"{path}: unknown feature file type {suffix!r}; expected .npy or .parquet")
    if features.shape[1] == 0:
        raise DataError(f"{path}: has zero feature columns")
    return features, {**notes, "source": str(path.resolve()), "sha256": sha256_file(path)}


def channel_card(name: str, matrix: np.ndarray, source: str, inputs: dict[str, Any]) -> dict[str, Any]:
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
    return {"name": name, "source": source, "shape": list(matrix.shape), "dtype": str(matrix.dtype),
            "row_norm": {"mean": float(norms.mean()), "min": float(norms.min()), "max": float(norms.max())}
            if len(norms) else {}, "inputs": inputs}


def write_channel(directory: str | Path, name: str, matrix: np.ndarray, source: str,
                  inputs: dict[str, Any]) -> dict[str, Any]:
    """Write channel_<name>.npy (float32) and channel_<name>.json (its card); returns the card."""
    import io
    check_channel_name(name)
    directory = Path(directory)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise DataError(f"channel {name!r}: non-finite values after building it (from {source})")
    buffer = io.BytesIO()
    np.save(buffer, matrix, allow_pickle=False)
    atomic_write_bytes(directory / f"channel_{name}.npy", buffer.getvalue())
    card = channel_card(name, matrix, source, inputs)
    atomic_write_json(directory / f"channel_{name}.json", card)
    return card
