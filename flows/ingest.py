"""Prefect flow of the ingest stage: a catalog dataset or a user's own file to the canonical Parquet tables.

Issue 2 item 8 (a thin wrapper over `infodcl.data.ingest.ingest_stage`, logged to MLflow).
"""
from __future__ import annotations

import json
from typing import Any

from prefect import flow

from flows.stages import make_plan, run_stages


def path_overrides(path: str | None = None, format: str | None = None) -> list[str]:
    """--path / --format as config overrides (JSON-quoted: any path is a YAML string)."""
    out = []
    if path is not None:
        out.append(f"dataset.path={json.dumps(str(path))}")
    if format is not None:
        out.append(f"dataset.format={json.dumps(str(format))}")
    return out


@flow(name="infodcl-ingest", persist_result=False)
def ingest_flow(dataset: str = "office", path: str | None = None, format: str | None = None,
                overrides: list[str] | None = None, config_file: str | None = None,
                force: str | None = None) -> dict[str, Any]:
    plan = make_plan(dataset, "ingest", "ingest", overrides=path_overrides(path, format) + list(overrides or []),
                     config_file=config_file, force=force)
    return run_stages(plan)
