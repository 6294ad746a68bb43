"""Prefect flow of the validate stage: the data contracts (Great Expectations) on the ingested tables.

Issue 2 items 6 and 8; computes or reuses ingest first. A failed contract fails the flow with its reason.
"""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.ingest import path_overrides
from flows.stages import make_plan, run_stages


@flow(name="infodcl-validate", persist_result=False)
def validate_flow(dataset: str = "office", path: str | None = None, format: str | None = None,
                  overrides: list[str] | None = None, config_file: str | None = None,
                  force: str | None = None) -> dict[str, Any]:
    plan = make_plan(dataset, "validate", "validate", overrides=path_overrides(path, format) + list(overrides or []),
                     config_file=config_file, force=force)
    return run_stages(plan)
