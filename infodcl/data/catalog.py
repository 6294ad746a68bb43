"""Dataset catalog: known datasets, their public sources, checksums, raw formats and preparation recipes.

Issue 2 item 3 (dataset catalog and sources); the entries live in `catalog.yaml` next to this module.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from infodcl.config import ConfigError

CATALOG_ENV = "INFODCL_CATALOG"   # an alternative catalog file (e.g. a site's private datasets)


@dataclass(frozen=True)
class SourceFile:
    """One file of a dataset: where it sits under the dataset root and where to download it."""
    path: str                          # relative to the dataset root (mirror / cache sub-path)
    urls: tuple[str, ...] = ()
    sha256: str | None = None          # None = unknown, no check possible
    archive: str | None = None         # "zip" when the URL is an archive holding `member`
    member: str | None = None
    manual: bool = False               # the URL is a landing page: the file must be placed by hand


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    format: str
    root: str                                   # sub-directory of the mirror and of the download cache
    files: tuple[SourceFile, ...]
    entry: str | None = None                    # what the reader opens inside root (None = root itself)
    description: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)
    reader_options: dict[str, Any] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    notes: str = ""


def _entry_from_dict(name: str, raw: dict[str, Any], where: str) -> CatalogEntry:
    known = {"format", "root", "files", "entry", "description", "recipe", "columns", "reader_options",
             "expected", "notes"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: dataset {name!r} has unknown key(s) {sorted(unknown)}; expected {sorted(known)}")
    for required in ("format", "files"):
        if required not in raw:
            raise ConfigError(f"{where}: dataset {name!r} lacks the key {required!r}")
    files = []
    for index, item in enumerate(raw["files"]):
        if not isinstance(item, dict) or "path" not in item:
            raise ConfigError(f"{where}: dataset {name!r} files[{index}] needs a 'path'")
        sha = item.get("sha256")
        if sha is not None and (len(str(sha)) != 64 or any(c not in "0123456789abcdef" for c in str(sha))):
            raise ConfigError(f"{where}: dataset {name!r} files[{index}].sha256 is not 64 lowercase hex digits: {sha!r}")
        files.append(SourceFile(path=str(item["path"]), urls=tuple(item.get("urls") or ()), sha256=sha,
                                archive=item.get("archive"), member=item.get("member"),
                                manual=bool(item.get("manual", False))))
    return CatalogEntry(name=name, format=str(raw["format"]), root=str(raw.get("root", name)), files=tuple(files),
                        entry=raw.get("entry"), description=str(raw.get("description", "")),
                        recipe=dict(raw.get("recipe") or {}), columns=dict(raw.get("columns") or {}),
                        reader_options=dict(raw.get("reader_options") or {}),
                        expected=dict(raw.get("expected") or {}), notes=str(raw.get("notes", "")).strip())


def load_catalog(path: str | os.PathLike | None = None) -> dict[str, CatalogEntry]:
    """Read the catalog: `path`, else $INFODCL_CATALOG, else the packaged catalog.yaml."""
    path = path or os.environ.get(CATALOG_ENV)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: catalog file does not exist")
        text, where = path.read_text(), str(path)
    else:
        text = resources.files("infodcl.data").joinpath("catalog.yaml").read_text()
        where = "infodcl/data/catalog.yaml"
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of dataset name -> entry")
    return {str(name): _entry_from_dict(str(name), entry or {}, where) for name, entry in raw.items()}


def catalog_entry(name: str, catalog: dict[str, CatalogEntry] | None = None) -> CatalogEntry:
    catalog = load_catalog() if catalog is None else catalog
    if name not in catalog:
        raise ConfigError(f"dataset.name: unknown dataset {name!r}; the catalog knows {sorted(catalog)} "
                          "(or set dataset.path and dataset.format for your own data)")
    return catalog[name]
