"""The ingest stage: a catalog dataset or a user's own file -> canonical Parquet tables and a dataset card.

Issue 2 items 3-5 and 7 (stage "ingest" of the team contract); fingerprint = cfg.dataset, the effective
recipe, the reader and the sha256 of every source file, so a changed file or recipe rebuilds.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from infodcl.config import ConfigError, DataConfig, PipelineConfig, fingerprint
from infodcl.data.catalog import CatalogEntry, catalog_entry
from infodcl.data.dataset import CARD_FILE, INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE
from infodcl.data.download import fetch_dataset
from infodcl.data.prepare import RECIPE_KEYS, Prepared, Recipe, prepare, raw_contract_table, write_parquet
from infodcl.data.readers import canonical_format, detect_format, read_raw, source_files
from infodcl.errors import DataError
from infodcl.store import ArtifactStore, StageResult, atomic_write_json, sha256_file

STAGE = "ingest"
STAGE_VERSION = 1
RAW_FILE = "raw_interactions.parquet"


@dataclass
class Source:
    """Where a dataset's raw files are and how to read and prepare them."""
    name: str
    format: str
    path: Path                                   # what the reader opens (file or directory)
    checksums: dict[str, str]                    # source file (relative) -> sha256
    origin: str                                  # "catalog" or "path"
    recipe: dict[str, Any]                       # effective preparation recipe
    reader_options: dict[str, Any] = field(default_factory=dict)
    entry: CatalogEntry | None = None

    def describe(self) -> dict[str, Any]:
        described = {"origin": self.origin, "format": self.format, "path": str(self.path),
                     "reader_options": self.reader_options}
        if self.entry is not None:
            described.update(description=self.entry.description, notes=self.entry.notes,
                             urls={f.path: list(f.urls) for f in self.entry.files},
                             checksum_known={f.path: f.sha256 is not None for f in self.entry.files})
        return described


def effective_recipe(data: DataConfig, entry: CatalogEntry | None) -> dict[str, Any]:
    """Catalog recipe, overridden by every recipe field the config sets to a non-default value.

    Comparing with the DataConfig default (not `model_fields_set`) keeps a config file that spells out
    defaults from silently undoing a catalog step such as ml-1m's valid carving.
    """
    defaults = DataConfig()
    recipe = {key: getattr(defaults, key) for key in RECIPE_KEYS}
    if entry is not None:
        unknown = set(entry.recipe) - set(RECIPE_KEYS)
        if unknown:
            raise DataError(f"catalog entry {entry.name!r}: unknown recipe key(s) {sorted(unknown)}; "
                            f"expected {list(RECIPE_KEYS)}")
        recipe.update(entry.recipe)
    for key in RECIPE_KEYS:
        value = getattr(data, key)
        if value != getattr(defaults, key):
            recipe[key] = value
    recipe["split_ratios"] = list(recipe["split_ratios"])
    return recipe


def resolve_source(data: DataConfig, catalog: dict[str, CatalogEntry] | None = None) -> Source:
    """Locate the raw files (user path, or catalog mirror/download) and hash them."""
    if data.path is not None:
        path = Path(data.path).expanduser().resolve()
        if not path.exists():
            raise DataError(f"{path}: does not exist (dataset.path); expected a data file or directory")
        fmt = canonical_format(data.format, path) if data.format else detect_format(path)
        files = source_files(path)
        if not files:
            raise DataError(f"{path}: directory is empty; expected data files")
        base = path if path.is_dir() else path.parent
        checksums = {f.relative_to(base).as_posix(): sha256_file(f) for f in files}
        options = {"delimiter": data.delimiter, "columns": data.columns or None}
        return Source(data.name, fmt, path, checksums, "path", effective_recipe(data, None), options)
    entry = catalog_entry(data.name, catalog)
    root, checksums = fetch_dataset(entry)
    fmt = canonical_format(data.format or entry.format, root / entry.entry if entry.entry else root)
    options = {**entry.reader_options, "delimiter": data.delimiter, "columns": data.columns or entry.columns or None}
    path = root / entry.entry if entry.entry else root
    return Source(entry.name, fmt, path, checksums, "catalog", effective_recipe(data, entry), options, entry)


def ingest_fingerprint(data: DataConfig, source: Source) -> str:
    return fingerprint(STAGE, STAGE_VERSION, data.model_dump(mode="json"), source.recipe, source.format,
                       source.reader_options, sorted(source.checksums.items()))


def read_source(source: Source) -> pa.Table:
    """The raw table (with `_source` / `_line` location columns)."""
    return read_raw(source.format, source.path, **source.reader_options)


def dataset_card(source: Source, prepared: Prepared) -> dict[str, Any]:
    n_users, n_items = prepared.users.num_rows, prepared.items.num_rows
    n_interactions = prepared.interactions.num_rows
    stats = dict(prepared.stats)
    card = {
        "name": source.name,
        "n_users": n_users, "n_items": n_items, "n_interactions": n_interactions,
        "splits": stats.pop("splits"),
        "sparsity": 1.0 - n_interactions / float(n_users * n_items),
        "has_rating": "rating" in prepared.interactions.column_names,
        "has_timestamp": "timestamp" in prepared.interactions.column_names,
        "source": source.describe(),
        "checksums": dict(sorted(source.checksums.items())),
        "recipe": source.recipe,
        "preparation": stats,
        "cold_start_rule": "valid/test users must appear in train (error otherwise); valid/test items unseen "
                           "in train are kept and counted in preparation.cold_start_items",
        "stage_version": STAGE_VERSION,
    }
    if stats.get("valid_carved_from_train"):
        card["valid_note"] = (f"valid = {source.recipe['valid_from_train']:.0%} of each user's given train "
                              f"interactions (seed {source.recipe['seed']}), carved so model selection never "
                              "uses test")
    if source.entry is not None and source.entry.expected:
        observed = {"n_users": n_users, "n_items": n_items, "n_interactions": n_interactions,
                    **card["splits"], "dedup_dropped": stats.get("dedup_dropped")}
        card["expected"] = source.entry.expected
        card["matches_expected"] = all(observed.get(k) == v for k, v in source.entry.expected.items())
    return card


def summary_of(card: dict[str, Any]) -> dict[str, Any]:
    return {"name": card["name"], "n_users": card["n_users"], "n_items": card["n_items"],
            "n_interactions": card["n_interactions"], "splits": card["splits"],
            "dedup_dropped": card["preparation"].get("dedup_dropped", 0),
            "cold_start_items": card["preparation"].get("cold_start_items", {})}


def write_outputs(directory: Path, raw: pa.Table, prepared: Prepared, card: dict[str, Any]) -> None:
    write_parquet(prepared.interactions, directory / INTERACTIONS_FILE)
    write_parquet(prepared.users, directory / USERS_FILE)
    write_parquet(prepared.items, directory / ITEMS_FILE)
    write_parquet(raw_contract_table(raw), directory / RAW_FILE)
    atomic_write_json(directory / CARD_FILE, card)


def prepare_source(source: Source) -> tuple[pa.Table, Prepared, dict[str, Any]]:
    """Read and prepare in memory: (raw table, prepared tables, card). Raises DataError on bad input."""
    raw = read_source(source)
    prepared = prepare(raw, Recipe.from_dict(source.recipe))
    return raw, prepared, dataset_card(source, prepared)


def ingest_stage(cfg: PipelineConfig, store: ArtifactStore, force: bool = False) -> StageResult:
    """Stage "ingest": reuse the stored output for this fingerprint, else read, prepare and write it.

    Reading and preparing happen before the store is touched, so bad input leaves nothing behind.
    """
    started = time.perf_counter()
    source = resolve_source(cfg.dataset)
    fp = ingest_fingerprint(cfg.dataset, source)
    if not force and store.lookup(STAGE, fp) is not None:
        return store.run_stage(STAGE, fp, lambda tmp: {}, force=False)
    raw, prepared, card = prepare_source(source)

    def build(tmp: Path) -> dict[str, Any]:
        write_outputs(tmp, raw, prepared, card)
        return summary_of(card)

    result = store.run_stage(STAGE, fp, build, force=force,
                             meta={"dataset": cfg.dataset.name, "config": cfg.dataset.model_dump(mode="json")})
    result.seconds = time.perf_counter() - started
    return result


def ingest_path(path: str | os.PathLike, fmt: str | None = None, store: ArtifactStore | None = None, *,
                name: str | None = None, cfg: PipelineConfig | None = None, force: bool = False,
                **dataset_options: Any) -> StageResult:
    """Ingest a user's own file or directory (`infodcl ingest --path P --format F`).

    `fmt` is a reader name (infodcl.data.readers.READERS; None = guessed from the path); other
    DataConfig fields (columns, delimiter, split, kcore, ...) go in `dataset_options`.
    """
    cfg = cfg or PipelineConfig()
    values = cfg.dataset.model_dump()
    values.update(dataset_options)
    values.update(path=str(Path(path).expanduser().resolve()), format=fmt,
                  name=name or Path(path).name.split(".")[0])
    try:
        data = DataConfig.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"dataset.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid dataset options: {problems}") from None
    cfg = cfg.model_copy(update={"dataset": data})
    store = store or ArtifactStore(cfg.store.root)
    return ingest_stage(cfg, store, force=force)
