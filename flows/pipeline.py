"""The end-to-end Prefect flow: ingest -> validate -> metadata -> train/evaluate per (model, seed) -> report.

Issue 5 items 1, 4 and 5; the flow is a thin call into `flows.stages.run_stages` (which calls the library).
"""
from __future__ import annotations

from typing import Any

from prefect import flow

from flows.stages import make_plan, run_stages

DEFAULT_MODELS = ["infodcl", "lightgcn", "mf"]
NIGHTLY_CRON = "0 2 * * *"          # 02:00 every night: retrain on whatever the sources hold now
SERVED_DATASETS = ["office", "baby", "ml-1m"]


@flow(name="infodcl-pipeline", persist_result=False)
def pipeline(dataset: str = "office", models: list[str] | None = None, seeds: list[int] | None = None,
             overrides: list[str] | None = None, config_file: str | None = None,
             force: str | None = None) -> dict[str, Any]:
    """Run (or reuse) every stage for one dataset and a list of model runs; one MLflow parent run per call."""
    plan = make_plan(dataset, "report", "pipeline", models=models, seeds=seeds, overrides=overrides,
                     config_file=config_file, force=force)
    return run_stages(plan)


def pipeline_deployments(datasets: list[str] | None = None, cron: str = NIGHTLY_CRON,
                         models: list[str] | None = None):
    """One scheduled deployment of `pipeline` per dataset, for `infodcl serve` (a single machine, no work pool)."""
    return [pipeline.to_deployment(name=f"nightly-{name}", cron=cron,
                                   parameters={"dataset": name, "models": models or DEFAULT_MODELS},
                                   tags=["infodcl", name], description=f"Nightly InfoDCL pipeline on {name}")
            for name in (datasets or SERVED_DATASETS)]


def serve(datasets: list[str] | None = None, cron: str = NIGHTLY_CRON, models: list[str] | None = None) -> None:
    """Serve the pipeline deployments from this process (blocks; Ctrl-C stops it)."""
    from prefect import serve as prefect_serve
    prefect_serve(*pipeline_deployments(datasets, cron, models))


if __name__ == "__main__":
    import sys
    print(pipeline(sys.argv[1] if len(sys.argv) > 1 else "office"))
