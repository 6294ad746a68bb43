"""Preparation of a raw interaction table into the canonical dense-indexed tables with train/valid/test.

Issue 2 item 5 (spec section 0: the train/valid/test protocol): rating threshold -> implicit feedback,
de-duplication (keep earliest), iterative k-core, dense re-indexing with id maps, and the splits
(given, random per-user ratio, temporal per-user, valid carved from a given train-only split).

Id order of the dense re-indexing: when every original id of a kind (users or items) is a decimal
integer, indices follow the numeric order (Office user "10" gets index 10); otherwise they follow the
lexicographic (Unicode code point) order of the id strings. Either way the order depends only on the
set of ids, never on row order, so reruns and re-ordered sources give the same indices.
Row order of interactions.parquet: split (train, valid, test), then user index, then item index.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from infodcl.data.readers import INTERNAL_COLUMNS, RAW_COLUMNS, RAW_SCHEMA
from infodcl.errors import DataError

SPLIT_ORDER = ("train", "valid", "test")
RECIPE_KEYS = ("rating_threshold", "dedup", "kcore", "split", "split_ratios", "valid_from_train", "seed")


@dataclass
class Recipe:
    """The preparation steps (the subset of DataConfig that changes the output)."""
    rating_threshold: float | None = None
    dedup: bool = True
    kcore: int = 0
    split: str = "auto"
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    valid_from_train: float = 0.0
    seed: int = 2024

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Recipe":
        recipe = cls(**{k: values[k] for k in RECIPE_KEYS if k in values})
        recipe.split_ratios = tuple(float(r) for r in recipe.split_ratios)
        if len(recipe.split_ratios) != 3 or min(recipe.split_ratios) < 0 or sum(recipe.split_ratios) <= 0:
            raise DataError(f"dataset.split_ratios: {recipe.split_ratios}; expected three non-negative "
                            "train/valid/test shares with a positive sum")
        if not 0.0 <= recipe.valid_from_train < 1.0:
            raise DataError(f"dataset.valid_from_train: {recipe.valid_from_train}; expected a share in [0, 1)")
        if recipe.split not in ("auto", "given", "random", "temporal"):
            raise DataError(f"dataset.split: {recipe.split!r}; expected auto, given, random or temporal")
        return recipe


@dataclass
class Prepared:
    """The canonical tables and what preparation did to get there (for the dataset card)."""
    interactions: pa.Table
    users: pa.Table
    items: pa.Table
    stats: dict[str, Any] = field(default_factory=dict)


def _where(raw: pa.Table, row: int) -> str:
    source = raw["_source"][row].as_py()
    line = raw["_line"][row].as_py()
    return f"{source}, line {line}" if line is not None else f"{source}, entry {row + 1}"


def _codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Integer code of each row (first-appearance order) and the distinct values."""
    encoded = pc.dictionary_encode(column)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    return encoded.indices.to_numpy().astype(np.int64), encoded.dictionary


def _dense_order(values: pa.Array) -> tuple[np.ndarray, str]:
    """Permutation putting distinct ids in index order: numeric when all are integers, else lexicographic."""
    if len(values) and pc.all(pc.match_substring_regex(values, r"^[0-9]{1,18}$")).as_py():
        return np.argsort(pc.cast(values, pa.int64()).to_numpy(), kind="stable"), "numeric"
    return pc.sort_indices(values).to_numpy(), "lexicographic"


def rank_of(sort_key: np.ndarray) -> np.ndarray:
    """0..n-1 rank of each row by sort_key, ties kept in row order."""
    rank = np.empty(len(sort_key), dtype=np.int64)
    rank[np.argsort(sort_key, kind="stable")] = np.arange(len(sort_key))
    return rank


def _per_user_positions(users: np.ndarray, rank: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, position of each row within its user by rank, interactions of its user)."""
    # One argsort of a composite integer key: np.lexsort on (float key, user) is ~5x slower.
    order = np.argsort(users.astype(np.int64) * max(len(users), 1) + rank)
    sorted_users = users[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    counts = np.diff(np.r_[starts, len(users)])
    position = np.arange(len(users)) - np.repeat(starts, counts)
    return order, position, np.repeat(counts, counts)


def ratio_split(users: np.ndarray, rank: np.ndarray, ratios: tuple[float, float, float]) -> np.ndarray:
    """Per-user split label (0 train, 1 valid, 2 test) by position in rank order (rank: 0..n-1, distinct).

    Each user with n interactions gets round(n*r_valid) valid and round(n*r_test) test rows (half up),
    always keeping at least one in train; the rows first in rank order go to train, the last to test,
    so a random permutation gives a random split and a timestamp rank a temporal one.
    """
    total = float(sum(ratios))
    r_valid, r_test = ratios[1] / total, ratios[2] / total
    order, position, n = _per_user_positions(users, rank)
    n_test = np.floor(n * r_test + 0.5).astype(np.int64)
    n_valid = np.floor(n * r_valid + 0.5).astype(np.int64)
    n_eval = np.minimum(n_test + n_valid, np.maximum(n - 1, 0))
    n_test = np.minimum(n_test, n_eval)
    n_valid = n_eval - n_test
    n_train = n - n_eval
    label_sorted = np.where(position < n_train, 0, np.where(position < n_train + n_valid, 1, 2))
    labels = np.empty(len(users), dtype=np.int8)
    labels[order] = label_sorted
    return labels


def prepare(raw: pa.Table, recipe: Recipe) -> Prepared:
    """Raw table (with `_source` / `_line`) -> canonical tables; every rejection names file and line."""
    stats: dict[str, Any] = {"raw_rows": raw.num_rows}
    if raw.num_rows == 0:
        raise DataError("the source has no interaction rows")
    keep = np.ones(raw.num_rows, dtype=bool)

    # 1. Explicit -> implicit feedback.
    has_rating = bool(pc.any(pc.is_valid(raw["rating"])).as_py())
    if recipe.rating_threshold is not None:
        if not pc.all(pc.is_valid(raw["rating"])).as_py():
            raise DataError(f"dataset.rating_threshold={recipe.rating_threshold} is set but the source "
                            f"{raw['_source'][0].as_py()} has no ratings (or some are missing)")
        keep &= raw["rating"].to_numpy() >= recipe.rating_threshold
        stats["threshold_dropped"] = int((~keep).sum())
    rows = np.flatnonzero(keep)
    raw_kept = raw.take(pa.array(rows)) if len(rows) != raw.num_rows else raw
    if raw_kept.num_rows == 0:
        raise DataError(f"dataset.rating_threshold={recipe.rating_threshold} removes every interaction")

    user_code, user_values = _codes(raw_kept["user_id"])
    item_code, item_values = _codes(raw_kept["item_id"])
    has_timestamp = bool(pc.all(pc.is_valid(raw_kept["timestamp"])).as_py())

    # 2. De-duplication of (user, item): keep the earliest by timestamp, else the first row read.
    pair = user_code * len(item_values) + item_code
    order = np.argsort(raw_kept["timestamp"].to_numpy(), kind="stable") if has_timestamp else np.arange(len(pair))
    _, first = np.unique(pair[order], return_index=True)
    unique_rows = np.sort(order[first])
    dropped = len(pair) - len(unique_rows)
    if dropped and not recipe.dedup:
        is_first = np.zeros(len(pair), dtype=bool)
        is_first[unique_rows] = True
        duplicate = int(np.flatnonzero(~is_first)[0])          # the first repeated row in reading order
        original = int(np.flatnonzero((pair == pair[duplicate]) & is_first)[0])
        raise DataError(f"{_where(raw_kept, duplicate)}: duplicate interaction (user {user_values[user_code[duplicate]]}, "
                        f"item {item_values[item_code[duplicate]]}) already at {_where(raw_kept, original)}; "
                        f"{dropped} duplicated rows in all (expected unique pairs, or set dataset.dedup=true)")
    stats["dedup_dropped"] = int(dropped)
    rows = unique_rows

    # 3. Iterative k-core: drop users and items with fewer than k interactions until none is left.
    if recipe.kcore > 1:
        before = len(rows)
        while True:
            user_counts = np.bincount(user_code[rows], minlength=len(user_values))
            item_counts = np.bincount(item_code[rows], minlength=len(item_values))
            ok = (user_counts[user_code[rows]] >= recipe.kcore) & (item_counts[item_code[rows]] >= recipe.kcore)
            if ok.all():
                break
            rows = rows[ok]
            if len(rows) == 0:
                raise DataError(f"dataset.kcore={recipe.kcore} removes every interaction")
        stats["kcore_dropped"] = int(before - len(rows))

    users, items = user_code[rows], item_code[rows]

    # 4. Splits.
    labels_raw = raw_kept["split"].take(pa.array(rows)).combine_chunks()
    n_labelled = len(labels_raw) - labels_raw.null_count
    if 0 < n_labelled < len(labels_raw):
        bad = int(pc.index(pc.is_null(labels_raw), True).as_py())
        raise DataError(f"{_where(raw_kept, int(rows[bad]))}: row has no split label while others do; "
                        "expected every row labelled train/valid/test, or none")
    method = recipe.split
    if method == "auto":
        method = "given" if n_labelled else "random"
    if method == "given":
        if not n_labelled:
            raise DataError(f"dataset.split=given but the source {raw['_source'][0].as_py()} has no split "
                            "(expected a directory of train/valid/test files); use split=random or temporal")
        split_index = pc.index_in(labels_raw, pa.array(SPLIT_ORDER))
        if split_index.null_count:
            bad = int(pc.index(pc.is_null(split_index), True).as_py())
            raise DataError(f"{_where(raw_kept, int(rows[bad]))}: split label {labels_raw[bad].as_py()!r}; "
                            f"expected one of {SPLIT_ORDER}")
        split_code = split_index.to_numpy().astype(np.int8)
        if recipe.valid_from_train > 0:
            train_rows = np.flatnonzero(split_code == 0)
            rng = np.random.default_rng(recipe.seed)
            carved = ratio_split(users[train_rows], rng.permutation(len(train_rows)),
                                 (1.0 - recipe.valid_from_train, recipe.valid_from_train, 0.0))
            split_code[train_rows[carved == 1]] = 1
            stats["valid_carved_from_train"] = int((carved == 1).sum())
    elif method == "random":
        rng = np.random.default_rng(recipe.seed)
        split_code = ratio_split(users, rng.permutation(len(users)), recipe.split_ratios)
    else:  # temporal
        if not has_timestamp:
            raise DataError(f"dataset.split=temporal needs timestamps, and the source {raw['_source'][0].as_py()} "
                            "has none (or some are missing); use split=random")
        split_code = ratio_split(users, rank_of(raw_kept["timestamp"].to_numpy()[rows]), recipe.split_ratios)
    stats["split_method"] = method

    # 5. Cold start: a valid/test user without train interactions cannot be evaluated; items may be new.
    in_train_user = np.zeros(len(user_values), dtype=bool)
    in_train_user[users[split_code == 0]] = True
    cold_users = np.flatnonzero((split_code > 0) & ~in_train_user[users])
    if len(cold_users):
        row = int(cold_users[0])
        n_cold = len(np.unique(users[cold_users]))
        raise DataError(f"{_where(raw_kept, int(rows[row]))}: user {user_values[users[row]]} is in the "
                        f"{SPLIT_ORDER[split_code[row]]} split but has no train interaction ({n_cold} such users); "
                        "cold-start users cannot be evaluated: expected every valid/test user in train")
    in_train_item = np.zeros(len(item_values), dtype=bool)
    in_train_item[items[split_code == 0]] = True
    stats["cold_start_items"] = {name: int(len(np.unique(items[(split_code == code) & ~in_train_item[items]])))
                                 for code, name in ((1, "valid"), (2, "test"))}

    # 6. Dense re-indexing in a documented, row-order-independent order.
    def reindex(codes: np.ndarray, values: pa.Array) -> tuple[np.ndarray, pa.Array, str]:
        present = np.unique(codes)
        present_values = values.take(pa.array(present))
        order, kind = _dense_order(present_values)
        dense_of_code = np.full(len(values), -1, dtype=np.int64)
        dense_of_code[present[order]] = np.arange(len(present))
        return dense_of_code[codes], present_values.take(pa.array(order)), kind

    user_index, user_ids, user_order = reindex(users, user_values)
    item_index, item_ids, item_order = reindex(items, item_values)
    stats["id_order"] = {"users": user_order, "items": item_order}

    n_dense_items = max(len(item_ids), 1)
    final = np.argsort((split_code.astype(np.int64) * max(len(user_ids), 1) + user_index) * n_dense_items + item_index)
    columns = {"user": pa.array(user_index[final], pa.int64()), "item": pa.array(item_index[final], pa.int64()),
               "split": pa.array(SPLIT_ORDER, pa.string()).take(pa.array(split_code[final].astype(np.int32)))}
    if has_rating and pc.all(pc.is_valid(raw_kept["rating"])).as_py():
        columns["rating"] = pa.array(raw_kept["rating"].to_numpy()[rows][final].astype(np.float32))
    if has_timestamp:
        columns["timestamp"] = pa.array(raw_kept["timestamp"].to_numpy()[rows][final], pa.int64())
    interactions = pa.table(columns)
    users_table = pa.table({"user": pa.array(np.arange(len(user_ids)), pa.int64()), "original_id": user_ids})
    items_table = pa.table({"item": pa.array(np.arange(len(item_ids)), pa.int64()), "original_id": item_ids})
    stats["splits"] = {name: int((split_code == code).sum()) for code, name in enumerate(SPLIT_ORDER)}
    return Prepared(interactions, users_table, items_table, stats)


def raw_contract_table(raw: pa.Table) -> pa.Table:
    """The raw table as read, without the internal location columns, in the raw contract's schema."""
    return raw.drop_columns([c for c in INTERNAL_COLUMNS if c in raw.column_names]).select(
        list(RAW_COLUMNS)).cast(RAW_SCHEMA)


def write_parquet(table: pa.Table, path: Path) -> None:
    """Deterministic bytes: fixed row order from the caller, one row group, no timestamps in metadata."""
    pq.write_table(table.combine_chunks(), path, compression="zstd", row_group_size=max(table.num_rows, 1),
                   write_statistics=True, store_schema=True)
