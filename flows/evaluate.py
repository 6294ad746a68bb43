"""Prefect flow of the evaluate stage for one model run: full-ranking metrics and top-K recommendations (spec section 0).

Computes or reuses every upstream stage first; a thin wrapper over `infodcl.evaluate.evaluate_stage`.
"""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.stages import make_plan, run_stages


@flow(name="infodcl-evaluate", persist_result=False)
def evaluate_flow(dataset: str = "office", model: str = "infodcl", seeds: list[int] | None = None,
                  overrides: list[str] | None = None, config_file: str | None = None,
                  force: str | None = None) -> dict[str, Any]:
    plan = make_plan(dataset, "evaluate", "evaluate", models=[model], seeds=seeds, overrides=overrides,
                     config_file=config_file, force=force)
    return run_stages(plan)
