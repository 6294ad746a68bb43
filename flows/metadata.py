"""Prefect flow of the metadata stage: pretrained embeddings, similarity graphs and channels (spec section 1).

Computes or reuses ingest and validate first; a thin wrapper over `infodcl.metadata.stage.metadata_stage`.
"""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.stages import make_plan, run_stages


@flow(name="infodcl-metadata", persist_result=False)
def metadata_flow(dataset: str = "office", overrides: list[str] | None = None, config_file: str | None = None,
                  force: str | None = None) -> dict[str, Any]:
    plan = make_plan(dataset, "metadata", "metadata", overrides=overrides, config_file=config_file, force=force)
    return run_stages(plan)
