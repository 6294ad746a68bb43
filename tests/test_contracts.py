"""Data contracts (Great Expectations suites in data_contracts/) and the validate stage.

Issue 2 item 6: a good ingest directory passes; each broken variant fails naming expectation, column, rows.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from infodcl.config import PipelineConfig, fingerprint
from infodcl.data.contracts import (CONTRACTS_DIR, FAILED_DIR, SUITE_FILES, VALIDATION_FILE, run_contracts,
                                    validate_stage)
from infodcl.data.dataset import SPLITS
from infodcl.data.synthetic import synthetic_dataset
from infodcl.errors import ContractError
from infodcl.store import ArtifactStore, StageResult


# --------------------------------------------------------------------------- helpers
def canonical_tables(n_users=30, n_items=20, n_interactions=240, seed=0):
    """Canonical tables (interactions, users, items, raw) from a synthetic dataset, every item used in train."""
    data = synthetic_dataset(n_users=n_users, n_items=n_items, n_interactions=n_interactions, seed=seed)
    frames = [pd.DataFrame({"user": data.pairs[s][0], "item": data.pairs[s][1], "split": s}) for s in SPLITS]
    interactions = pd.concat(frames, ignore_index=True)
    # Make every item a train item and every index used, so the good table passes with cold_start=forbid too.
    extra = pd.DataFrame({"user": np.arange(n_items) % n_users, "item": np.arange(n_items), "split": "train"})
    interactions = (pd.concat([interactions, extra], ignore_index=True)
                    .drop_duplicates(["user", "item"], keep="first").reset_index(drop=True))
    interactions["user"] = interactions["user"].astype("int64")
    interactions["item"] = interactions["item"].astype("int64")
    interactions["rating"] = np.float32(4.0)
    interactions["timestamp"] = np.arange(len(interactions), dtype=np.int64) + 1_600_000_000
    users = pd.DataFrame({"user": np.arange(n_users, dtype=np.int64),
                          "original_id": [f"u{i}" for i in range(n_users)]})
    items = pd.DataFrame({"item": np.arange(n_items, dtype=np.int64),
                          "original_id": [f"i{i}" for i in range(n_items)]})
    raw = pd.DataFrame({"user_id": "u" + interactions["user"].astype(str),
                        "item_id": "i" + interactions["item"].astype(str),
                        "rating": interactions["rating"].astype("float64"),
                        "timestamp": interactions["timestamp"],
                        "split": interactions["split"].astype(object)})
    return {"interactions": interactions, "users": users, "items": items, "raw": raw}


def card_for(tables) -> dict:
    interactions = tables["interactions"]
    counts = interactions["split"].value_counts()
    return {"name": "synthetic", "n_users": int(interactions["user"].nunique()),
            "n_items": int(interactions["item"].nunique()), "n_interactions": int(len(interactions)),
            "splits": {s: int(counts.get(s, 0)) for s in SPLITS}}


def write_ingest_dir(path: Path, tables, card=None) -> Path:
    """Write an ingest-stage-shaped directory (schema of infodcl/data/dataset.py) from tables."""
    path.mkdir(parents=True, exist_ok=True)
    tables["interactions"].to_parquet(path / "interactions.parquet", index=False)
    tables["users"].to_parquet(path / "users.parquet", index=False)
    tables["items"].to_parquet(path / "items.parquet", index=False)
    tables["raw"].to_parquet(path / "raw_interactions.parquet", index=False)
    (path / "dataset.json").write_text(json.dumps(card if card is not None else card_for(tables)))
    return path


def fake_ingest(path: Path) -> StageResult:
    return StageResult(stage="ingest", fingerprint=fingerprint("fake-ingest", str(path)), path=path, reused=False)


def validate_dir(tmp_path, tables, card=None, overrides=None):
    """Write the tables and run the validate stage on them; returns (store, cfg, ingest)."""
    data_dir = write_ingest_dir(tmp_path / "ingest", tables, card)
    store = ArtifactStore(tmp_path / "store")
    cfg = PipelineConfig()
    for key, value in (overrides or {}).items():
        setattr(cfg.validate_, key, value)
    return store, cfg, fake_ingest(data_dir)


def assert_fails(tmp_path, tables, expectation, column, rows=None, card=None, overrides=None):
    """The stage raises a ContractError naming the expectation, the column and (for map checks) the rows."""
    store, cfg, ingest = validate_dir(tmp_path, tables, card, overrides)
    with pytest.raises(ContractError) as caught:
        validate_stage(cfg, store, ingest)
    message = str(caught.value)
    target = column if column.startswith(("columns ", "the table")) else f"column {column!r}"
    line = next((l for l in message.splitlines() if f"{expectation} on {target}" in l), None)
    assert line is not None, message
    if rows is not None:
        assert f"rows {rows}" in line, message
    # No stage output left behind, only the failure report.
    stage_root = store.root / "validate"
    assert sorted(p.name for p in stage_root.iterdir()) == [FAILED_DIR]
    failed = list((stage_root / FAILED_DIR).iterdir())
    assert len(failed) == 1 and (failed[0] / VALIDATION_FILE).is_file()
    assert (failed[0] / "data_docs" / "index.html").is_file()
    assert str(failed[0] / VALIDATION_FILE) in message
    report = json.loads((failed[0] / VALIDATION_FILE).read_text())
    assert report["success"] is False and report["n_failed"] >= 1
    return message


# --------------------------------------------------------------------------- good data
def test_suites_are_great_expectations_json():
    import great_expectations as gx
    for name in SUITE_FILES:
        suite = gx.ExpectationSuite(**{k: v for k, v in json.loads((CONTRACTS_DIR / f"{name}.json").read_text())
                                       .items() if k in ("name", "expectations", "meta", "notes")})
        assert suite.name == name and len(suite.expectations) >= 5


def test_good_directory_passes_and_rerun_reuses(tmp_path):
    tables = canonical_tables()
    store, cfg, ingest = validate_dir(tmp_path, tables)
    first = validate_stage(cfg, store, ingest)
    assert not first.reused
    assert first.summary["success"] is True and first.summary["n_failed"] == 0
    report = json.loads((first.path / VALIDATION_FILE).read_text())
    assert set(report["suites"]) == set(SUITE_FILES)
    assert all(s["success"] for s in report["suites"].values())
    # optional rating/timestamp checks apply since the columns exist; the item cold-start check is off by default
    assert first.summary["n_expectations"] == report["n_expectations"] == sum(
        len(s["results"]) for s in report["suites"].values())
    assert (first.path / "data_docs" / "index.html").is_file()
    second = validate_stage(cfg, store, ingest)
    assert second.reused and second.path == first.path and second.summary == first.summary


def test_good_directory_passes_with_cold_start_forbid(tmp_path):
    store, cfg, ingest = validate_dir(tmp_path, canonical_tables(), overrides={"cold_start": "forbid"})
    allow = PipelineConfig()
    result = validate_stage(cfg, store, ingest)
    assert result.summary["success"] is True
    # The item cold-start expectation joins the suite only under forbid.
    report = json.loads((result.path / VALIDATION_FILE).read_text())
    types = [(r["expectation"], r["kwargs"].get("column_A"))
             for r in report["suites"]["canonical_interactions"]["results"]]
    assert ("expect_held_out_values_to_appear_in_train", "item") in types
    assert result.fingerprint != validate_stage(allow, store, ingest).fingerprint


def test_optional_columns_may_be_absent(tmp_path):
    tables = canonical_tables()
    tables["interactions"] = tables["interactions"].drop(columns=["rating", "timestamp"])
    tables["raw"] = tables["raw"][["user_id", "item_id"]]
    report = run_contracts(write_ingest_dir(tmp_path / "ingest", tables), tmp_path / "out")
    assert report.success, json.dumps(report.to_dict(), indent=1)[:3000]


# --------------------------------------------------------------------------- broken variants
def test_out_of_range_item_fails(tmp_path):
    tables = canonical_tables()
    n_items = int(tables["items"]["item"].max()) + 1
    tables["interactions"].loc[7, "item"] = n_items   # one past the last index; the card still says n_items
    card = card_for(canonical_tables())
    message = assert_fails(tmp_path, tables, "expect_column_values_to_be_between", "item", rows=[7], card=card)
    assert f"values [{n_items}]" in message


def test_non_dense_user_ids_fail(tmp_path):
    tables = canonical_tables()
    card = card_for(tables)
    inter = tables["interactions"]
    last = card["n_users"] - 1
    inter.loc[inter["user"] == last, "user"] = 0     # index n_users-1 no longer used; ids stay in range
    inter.drop_duplicates(["user", "item"], inplace=True)
    card["n_interactions"] = len(inter)
    card["splits"] = {s: int((inter["split"] == s).sum()) for s in SPLITS}
    message = assert_fails(tmp_path, tables, "expect_column_unique_value_count_to_be_between", "user", card=card)
    assert f"observed {last}" in message   # n_users - 1 distinct users seen


def test_non_dense_user_map_fails(tmp_path):
    tables = canonical_tables()
    tables["users"].loc[3, "user"] = 4   # index 3 missing from the id map, 4 twice
    assert_fails(tmp_path, tables, "expect_column_values_to_be_unique", "user", rows=[3, 4])


def test_null_item_fails(tmp_path):
    tables = canonical_tables()
    inter = tables["interactions"]
    inter["item"] = inter["item"].astype("Int64")
    inter.loc[11, "item"] = pd.NA
    message = assert_fails(tmp_path, tables, "expect_column_values_to_not_be_null", "item", rows=[11],
                           card=card_for(canonical_tables()))
    assert "suite canonical_interactions" in message


def test_null_raw_user_fails(tmp_path):
    tables = canonical_tables()
    tables["raw"].loc[5, "user_id"] = None
    assert_fails(tmp_path, tables, "expect_column_values_to_not_be_null", "user_id", rows=[5])


def test_duplicated_pair_fails(tmp_path):
    tables = canonical_tables()
    inter = tables["interactions"]
    duplicate = inter.iloc[[3]].assign(split="test")
    tables["interactions"] = pd.concat([inter, duplicate], ignore_index=True)
    card = card_for(tables)
    row = len(inter)
    assert_fails(tmp_path, tables, "expect_compound_columns_to_be_unique", "columns ['user', 'item']", rows=[3, row],
                 card=card)


def test_unknown_split_value_fails(tmp_path):
    tables = canonical_tables()
    tables["interactions"].loc[2, "split"] = "validation"
    message = assert_fails(tmp_path, tables, "expect_column_values_to_be_in_set", "split", rows=[2],
                           card=card_for(canonical_tables()))
    assert "'validation'" in message


def test_test_user_absent_from_train_fails(tmp_path):
    tables = canonical_tables()
    inter = tables["interactions"]
    user = int(inter.loc[inter["split"] == "test", "user"].iloc[0])
    # Move the user's train rows to valid: the user then has held-out rows but no train row.
    moved = inter.index[(inter["user"] == user) & (inter["split"] == "train")]
    inter.loc[moved, "split"] = "valid"
    held_out_rows = sorted(inter.index[inter["user"] == user].tolist())
    message = assert_fails(tmp_path, tables, "expect_held_out_values_to_appear_in_train", "user",
                           rows=held_out_rows[:5], card=card_for(tables))
    assert f"[{user}, 'valid']" in message or f"[{user}, 'test']" in message


def test_item_unseen_in_train_is_allowed_or_forbidden(tmp_path):
    tables = canonical_tables()
    inter = tables["interactions"]
    item = int(inter.loc[inter["split"] == "test", "item"].iloc[0])
    inter.loc[(inter["item"] == item) & (inter["split"] == "train"), "split"] = "valid"
    card = card_for(tables)
    store, cfg, ingest = validate_dir(tmp_path / "allow", tables, card)
    assert validate_stage(cfg, store, ingest).summary["success"] is True
    assert_fails(tmp_path / "forbid", tables, "expect_held_out_values_to_appear_in_train", "item", card=card,
                 overrides={"cold_start": "forbid"})


def test_count_mismatch_with_card_fails(tmp_path):
    tables = canonical_tables()
    true_card = card_for(tables)
    card = json.loads(json.dumps(true_card))
    for key in ("n_interactions", "n_users", "n_items"):
        card[key] += 1
    card["splits"]["test"] += 1
    # One run reports every mismatch, each with the observed count.
    message = assert_fails(tmp_path, tables, "expect_table_row_count_to_equal", "the table", card=card)
    for expectation, target, observed in [
            ("expect_table_row_count_to_equal", "the table", true_card["n_interactions"]),
            ("expect_column_unique_value_count_to_be_between", "column 'user'", true_card["n_users"]),
            ("expect_column_unique_value_count_to_be_between", "column 'item'", true_card["n_items"]),
            ("expect_table_row_count_to_equal", 'the table where split == "test"', true_card["splits"]["test"])]:
        line = next(l for l in message.splitlines()
                    if f"(interactions.parquet): {expectation} on {target} expecting" in l)
        assert line.endswith(f"observed {observed}"), line
    assert "users.parquet" in message and "canonical_users" in message   # users table no longer n_users rows


def test_negative_raw_rating_fails(tmp_path):
    tables = canonical_tables()
    tables["raw"].loc[4, "rating"] = -1.0
    tables["raw"].loc[9, "rating"] = np.inf
    message = assert_fails(tmp_path, tables, "expect_column_values_to_be_between", "rating", rows=[4, 9])
    assert "suite raw_interactions" in message and "-1.0" in message


def test_missing_table_is_a_data_error(tmp_path):
    from infodcl.errors import DataError
    data_dir = write_ingest_dir(tmp_path / "ingest", canonical_tables())
    (data_dir / "items.parquet").unlink()
    with pytest.raises(DataError, match="items.parquet"):
        run_contracts(data_dir, tmp_path / "out")


# --------------------------------------------------------------------------- real data
@pytest.mark.slow
@pytest.mark.realdata
def test_office_passes(tmp_path, shared_data):
    ingest_module = pytest.importorskip("infodcl.data.ingest")
    cfg = PipelineConfig()
    store = ArtifactStore(tmp_path / "store")
    ingest = ingest_module.ingest_stage(cfg, store)
    result = validate_stage(cfg, store, ingest)
    assert result.summary["success"] is True and result.summary["n_failed"] == 0
    report = json.loads((result.path / VALIDATION_FILE).read_text())
    assert report["parameters"]["n_users"] == 4905 and report["parameters"]["n_items"] == 2420
    assert report["parameters"]["n_interactions"] == 53258
    # Office has 3 valid and 3 test items unseen in train: forbidding cold-start items must fail on it.
    cfg.validate_.cold_start = "forbid"
    with pytest.raises(ContractError, match="expect_held_out_values_to_appear_in_train on column 'item'"):
        validate_stage(cfg, store, ingest)
