"""Prefect flow of the train stage for one model run (spec sections 2-6), with the model logged to MLflow.

Computes or reuses ingest, validate and (for InfoDCL) metadata first; a thin wrapper over `infodcl.train.train_stage`.
"""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.stages import make_plan, run_stages


@flow(name="infodcl-train", persist_result=False)
def train_flow(dataset: str = "office", model: str = "infodcl", seeds: list[int] | None = None,
               overrides: list[str] | None = None, config_file: str | None = None,
               force: str | None = None) -> dict[str, Any]:
    plan = make_plan(dataset, "train", "train", models=[model], seeds=seeds, overrides=overrides,
                     config_file=config_file, force=force)
    return run_stages(plan)
