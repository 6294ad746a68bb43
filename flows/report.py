"""Prefect flow of the report stage: the comparison table (paper Table 2 layout) and plots over model runs.

Computes or reuses every upstream stage first; a thin wrapper over `infodcl.report.report_stage`.
"""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.stages import make_plan, run_stages


@flow(name="infodcl-report", persist_result=False)
def report_flow(dataset: str = "office", models: list[str] | None = None, seeds: list[int] | None = None,
                overrides: list[str] | None = None, config_file: str | None = None,
                force: str | None = None) -> dict[str, Any]:
    plan = make_plan(dataset, "report", "report", models=models, seeds=seeds, overrides=overrides,
                     config_file=config_file, force=force)
    return run_stages(plan)
