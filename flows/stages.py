"""Prefect tasks (one per stage, thin) and the wiring shared by every flow: config, store, MLflow run tree.

Issue 5 items 1, 3 and 5: stage chaining with fingerprint reuse, `--force STAGE` cascading downstream,
one MLflow parent run per flow run with nested stage / model runs, and the Dask fan-out of (model, seed) runs.
"""
from __future__ import annotations

import importlib
import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from infodcl.config import ConfigError, PipelineConfig, load_config
from infodcl.errors import DownloadError, InfoDCLError
from infodcl.store import ArtifactStore, StageResult
from infodcl.tracking import Tracker, params_from_config, split_metrics, ui_command

STAGES = ("ingest", "validate", "metadata", "train", "evaluate", "report")
# Where each stage function lives (resolved at call time, so a task is only as heavy as its stage).
STAGE_FUNCTIONS = {
    "ingest": ("infodcl.data.ingest", "ingest_stage"),
    "validate": ("infodcl.data.contracts", "validate_stage"),
    "metadata": ("infodcl.metadata.stage", "metadata_stage"),
    "train": ("infodcl.train", "train_stage"),
    "evaluate": ("infodcl.evaluate", "evaluate_stage"),
    "report": ("infodcl.report", "report_stage"),
}
SELECTION_METRIC = "recall@20"


def stage_function(stage: str) -> Callable[..., StageResult]:
    module, name = STAGE_FUNCTIONS[stage]
    return getattr(importlib.import_module(module), name)


def forced_stages(force: str | None) -> set[str]:
    """`--force STAGE` recomputes that stage and every stage after it."""
    if not force:
        return set()
    if force not in STAGES:
        raise ConfigError(f"--force {force!r}: unknown stage; expected one of {', '.join(STAGES)}")
    return set(STAGES[STAGES.index(force):])


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect.logging import get_run_logger
        return get_run_logger()
    except Exception:       # outside a flow run (unit tests of helpers)
        return logging.getLogger("infodcl.flows")


# --------------------------------------------------------------------------- tasks (one per stage)
def _retry_transient(task_obj, task_run, state) -> bool:
    """Retry downloads that failed for a transient reason; never a bad file or a bad config."""
    try:
        error = state.result(raise_on_failure=False)
    except Exception as exc:           # pragma: no cover - depends on result persistence
        error = exc
    if isinstance(error, DownloadError):
        return True
    return not isinstance(error, (InfoDCLError, ConfigError, ValueError))


@task(name="ingest", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_transient,
      cache_policy=NO_CACHE, persist_result=False)
def ingest_task(cfg: PipelineConfig, store_root: str, force: bool = False) -> StageResult:
    return stage_function("ingest")(cfg, ArtifactStore(store_root), force=force)


# No retries: a failed contract fails the same way every time.
@task(name="validate", retries=0, cache_policy=NO_CACHE, persist_result=False)
def validate_task(cfg: PipelineConfig, store_root: str, ingest: StageResult, force: bool = False) -> StageResult:
    return stage_function("validate")(cfg, ArtifactStore(store_root), ingest, force=force)


@task(name="metadata", cache_policy=NO_CACHE, persist_result=False)
def metadata_task(cfg: PipelineConfig, store_root: str, ingest: StageResult, force: bool = False) -> StageResult:
    return stage_function("metadata")(cfg, ArtifactStore(store_root), ingest, force=force)


@task(name="train", cache_policy=NO_CACHE, persist_result=False)
def train_task(cfg: PipelineConfig, store_root: str, model_run: str, ingest: StageResult,
               metadata: StageResult | None, seed: int | None = None, force: bool = False) -> StageResult:
    return stage_function("train")(cfg, ArtifactStore(store_root), model_run, ingest, metadata, seed=seed,
                                   force=force)


@task(name="evaluate", cache_policy=NO_CACHE, persist_result=False)
def evaluate_task(cfg: PipelineConfig, store_root: str, model_run: str, ingest: StageResult,
                  metadata: StageResult | None, train: StageResult, force: bool = False) -> StageResult:
    return stage_function("evaluate")(cfg, ArtifactStore(store_root), model_run, ingest, metadata, train,
                                      force=force)


@task(name="train-evaluate", cache_policy=NO_CACHE, persist_result=False)
def train_evaluate_task(cfg: PipelineConfig, store_root: str, model_run: str, seed: int | None,
                        ingest: StageResult, metadata: StageResult | None, force_train: bool,
                        force_evaluate: bool) -> tuple[StageResult, StageResult]:
    """One (model, seed) run end to end: the unit the Dask runner fans out (worker processes)."""
    store = ArtifactStore(store_root)
    trained = stage_function("train")(cfg, store, model_run, ingest, metadata, seed=seed, force=force_train)
    evaluated = stage_function("evaluate")(cfg, store, model_run, ingest, metadata, trained,
                                           force=force_evaluate)
    return trained, evaluated


@task(name="report", cache_policy=NO_CACHE, persist_result=False)
def report_task(cfg: PipelineConfig, store_root: str, evaluations: dict[str, StageResult],
                trainings: dict[str, StageResult], force: bool = False) -> StageResult:
    return stage_function("report")(cfg, ArtifactStore(store_root), evaluations, trainings, force=force)


@flow(name="infodcl-fan-out", persist_result=False)
def fan_out_flow(cfg: PipelineConfig, store_root: str, jobs: list[tuple[str, str, int | None]],
                 ingest: StageResult, metadata: StageResult | None, force_train: bool,
                 force_evaluate: bool) -> list[dict[str, Any]]:
    """Submit every (model, seed) run to the flow's task runner (Dask) and collect results or errors."""
    futures = [(key, train_evaluate_task.submit(cfg, store_root, model_run, seed, ingest, metadata,
                                                force_train, force_evaluate))
               for key, model_run, seed in jobs]
    collected = []
    for key, future in futures:
        future.wait()
        state = future.state
        value = state.result(raise_on_failure=False)
        error = value if isinstance(value, BaseException) else None
        collected.append({"key": key, "result": None if error else value, "error": error,
                          "task_run_id": str(future.task_run_id)})
    return collected


# --------------------------------------------------------------------------- helpers
def _state_result(state) -> Any:
    """The task's return value, or its exception re-raised (a readable reason, not a Prefect wrapper)."""
    return state.result(raise_on_failure=True)


def _task_run_id(state) -> str | None:
    details = getattr(state, "state_details", None)
    return str(details.task_run_id) if details and details.task_run_id else None


def _prefect_flow_run() -> tuple[str | None, str | None]:
    from prefect.runtime import flow_run
    return (str(flow_run.id) if flow_run.id else None), (flow_run.name or None)


def publish_mlflow_link(outcome: dict[str, Any]) -> None:
    """The reverse link: a Markdown artifact on the Prefect flow run naming the MLflow run (and how to see it)."""
    mlflow_info = outcome.get("mlflow") or {}
    if not mlflow_info.get("run_id"):
        return
    try:
        from prefect.artifacts import create_markdown_artifact
        lines = [f"# InfoDCL {outcome['flow']} on {outcome['dataset']}", "",
                 f"- MLflow run id: `{mlflow_info['run_id']}` (experiment `{mlflow_info.get('experiment_id')}`)",
                 f"- tracking URI: `{mlflow_info.get('tracking_uri')}`",
                 f"- look at it: `{mlflow_info.get('ui_command')}`"]
        for name, reused in (outcome.get("reused") or {}).items():
            lines.append(f"- {name}: {'reused' if reused else 'computed'}")
        key = "mlflow-" + re.sub(r"[^a-z0-9-]+", "-", str(outcome["dataset"]).lower()).strip("-")
        create_markdown_artifact(markdown="\n".join(lines), key=key,
                                 description=f"MLflow run {mlflow_info['run_id']}")
    except Exception as exc:        # the link is a convenience; never fail a run for it
        _logger().warning("could not publish the MLflow link as a Prefect artifact: %s", exc)


@dataclass
class RunPlan:
    """What one flow run computes: stages up to `until`, which (model, seed) runs, which stages are forced."""
    cfg: PipelineConfig
    until: str
    model_runs: list[str]
    seeds: list[int | None]
    forced: set[str]
    flow_name: str
    jobs: list[tuple[str, str, int | None]] = field(default_factory=list)

    @property
    def store_root(self) -> str:
        return str(Path(self.cfg.store.root).resolve())

    def wants(self, stage: str) -> bool:
        return STAGES.index(stage) <= STAGES.index(self.until)

    @property
    def needs_metadata(self) -> bool:
        if self.until == "metadata":
            return True
        return self.wants("train") and any(self.cfg.models[m].model.name == "infodcl" for m in self.model_runs)


def make_plan(dataset: str, until: str, flow_name: str, models: list[str] | None = None,
              seeds: list[int] | None = None, overrides: list[str] | None = None,
              config_file: str | None = None, force: str | None = None) -> RunPlan:
    if until not in STAGES:
        raise ConfigError(f"unknown stage {until!r}; expected one of {', '.join(STAGES)}")
    cfg = load_config(dataset, overrides, config_file)
    if seeds:
        cfg.runner.seeds = [int(s) for s in seeds]
    model_runs = list(models) if models else list(cfg.models)
    for name in model_runs:
        cfg.model_run(name)     # ConfigError naming the unknown run
    run_seeds: list[int | None] = list(cfg.runner.seeds) if cfg.runner.seeds else [None]
    jobs = []
    for name in model_runs:
        for seed in run_seeds:
            key = name if len(run_seeds) == 1 else f"{name}-seed{seed}"
            jobs.append((key, name, seed))
    return RunPlan(cfg, until, model_runs, run_seeds, forced_stages(force), flow_name, jobs)


def _stage_record(result: StageResult, run_id: str | None = None, task_run_id: str | None = None) -> dict:
    record = result.to_dict()
    record["mlflow_run_id"] = run_id
    record["prefect_task_run_id"] = task_run_id
    return record


def _log_failed_contract(tracker: Tracker, run_id: str | None, store_root: str) -> None:
    """Attach the kept failure report of a failed contract (validate/_failed/<fp16>/) to the MLflow run."""
    failed = Path(store_root) / "validate" / "_failed"
    if not failed.is_dir():
        return
    candidates = sorted((p for p in failed.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    if candidates:
        tracker.log_artifact(run_id, candidates[-1], "failed_contract")


def _module_for_logging(cfg: PipelineConfig, model_run: str, ingest: StageResult, metadata: StageResult | None,
                        train: StageResult):
    """The trained recommender wrapped so that forward(users) returns full-sort scores (what mlflow.pytorch logs)."""
    import torch

    from infodcl.data.dataset import InteractionData
    from infodcl.evaluate import load_trained_model

    data = InteractionData.from_dir(ingest.path)
    model, _ = load_trained_model(Path(train.path) / "model.pt", data, metadata, "cpu")
    model.eval()
    model.invalidate_cache()

    class FullSortScorer(torch.nn.Module):
        """forward(users (B,) int64) -> scores of every item (B, n_items)."""

        def __init__(self, recommender):
            super().__init__()
            self.recommender = recommender

        def forward(self, users):
            return self.recommender.full_sort_scores(users)   # (B, n_items)

    example = torch.arange(min(4, data.n_users), dtype=torch.int64).numpy()
    return FullSortScorer(model), example


# --------------------------------------------------------------------------- the shared flow body
def run_stages(plan: RunPlan) -> dict[str, Any]:
    """Compute or reuse every stage up to `plan.until`, logging the MLflow run tree; returns one JSON-able dict."""
    cfg, log = plan.cfg, _logger()
    store_root = plan.store_root
    flow_run_id, flow_run_name = _prefect_flow_run()
    dataset = cfg.dataset.name
    tracker = Tracker.from_config(cfg, base_tags={"prefect.flow_run_id": flow_run_id,
                                                  "prefect.flow_run_name": flow_run_name,
                                                  "infodcl.dataset": dataset, "infodcl.flow": plan.flow_name})
    outcome: dict[str, Any] = {
        "dataset": dataset, "flow": plan.flow_name, "until": plan.until, "prefect_flow_run_id": flow_run_id,
        "models": plan.model_runs, "seeds": plan.seeds, "forced": sorted(plan.forced, key=STAGES.index),
        "stages": {}, "reused": {}, "metrics": {},
        "mlflow": {"tracking_uri": tracker.tracking_uri, "experiment_id": tracker.experiment_id,
                   "run_id": None, "runs": {}, "ui_command": ui_command(tracker.tracking_uri)},
        "artifacts": {"store_root": store_root},
    }
    parent = tracker.start_run(f"{plan.flow_name}-{dataset}",
                               tags={"infodcl.models": ",".join(plan.model_runs), "infodcl.until": plan.until,
                                     "infodcl.forced": ",".join(outcome["forced"])})
    outcome["mlflow"]["run_id"] = parent
    tracker.log_params(parent, params_from_config(cfg.to_dict()))
    publish_mlflow_link(outcome)

    def note(name: str, result: StageResult) -> None:
        outcome["reused"][name] = bool(result.reused)
        tracker.set_tags(parent, {f"infodcl.fingerprint.{name}": result.fingerprint,
                                  f"infodcl.reused.{name}": str(result.reused).lower()})
        log.info("%s: %s in %.2fs (%s)", name, "reused" if result.reused else "computed", result.seconds,
                 result.path)

    def stage_run(stage: str, call: Callable[[], Any], artifacts: Callable[[str | None, StageResult], None],
                  parent_run: str | None = None, name: str | None = None, tags: dict | None = None) -> StageResult:
        """Run one stage task under its own nested MLflow run (FAILED, with the reason, when it raises)."""
        run_name = name or stage
        with tracker.run(run_name, parent_run or parent, tags={"infodcl.stage": stage, **(tags or {})}) as run_id:
            outcome["mlflow"]["runs"][run_name] = run_id
            try:
                state = call()
                result = _state_result(state)
            except Exception:
                if stage == "validate":
                    _log_failed_contract(tracker, run_id, store_root)
                raise
            tracker.log_stage(run_id, result, {"prefect.task_run_id": _task_run_id(state)})
            artifacts(run_id, result)
        outcome["stages"][run_name] = _stage_record(result, run_id, _task_run_id(state))
        note(run_name, result)
        return result

    try:
        forced = plan.forced
        ingest = stage_run("ingest", lambda: ingest_task(cfg, store_root, "ingest" in forced, return_state=True),
                           lambda rid, r: tracker.log_artifact(rid, Path(r.path) / "dataset.json"))
        outcome["artifacts"]["dataset_card"] = str(Path(ingest.path) / "dataset.json")
        if plan.wants("validate") and cfg.validate_.enabled:
            def validate_artifacts(rid, r):
                tracker.log_artifact(rid, Path(r.path) / "validation.json")
                tracker.log_artifact(rid, Path(r.path) / "data_docs", "data_docs")
            validated = stage_run("validate", lambda: validate_task(cfg, store_root, ingest, "validate" in forced,
                                                                     return_state=True), validate_artifacts)
            outcome["artifacts"]["validation"] = str(Path(validated.path) / "validation.json")
            outcome["artifacts"]["data_docs"] = str(Path(validated.path) / "data_docs")

        metadata = None
        if plan.wants("metadata") and plan.needs_metadata:
            def metadata_artifacts(rid, r):
                for card in sorted(Path(r.path).glob("channel_*.json")):
                    tracker.log_artifact(rid, card, "cards")
                tracker.log_artifact(rid, Path(r.path) / "pretrain_history.json", "cards")
                tracker.log_history(rid, Path(r.path) / "pretrain_history.json")
            metadata = stage_run("metadata", lambda: metadata_task(cfg, store_root, ingest, "metadata" in forced,
                                                                    return_state=True), metadata_artifacts)
            outcome["artifacts"]["metadata"] = str(metadata.path)

        if plan.wants("train"):
            trainings, evaluations = _run_models(plan, tracker, parent, ingest, metadata, outcome)
            if plan.wants("report") and evaluations:
                def report_artifacts(rid, r):
                    for file in sorted(Path(r.path).iterdir()):
                        if file.name != "manifest.json":
                            tracker.log_artifact(rid, file, "report")
                    tracker.log_artifact(parent, Path(r.path) / "comparison.md")
                reported = stage_run("report", lambda: report_task(cfg, store_root, evaluations, trainings,
                                                                   "report" in forced, return_state=True),
                                     report_artifacts)
                outcome["artifacts"]["report"] = str(reported.path)
                outcome["artifacts"]["comparison_md"] = str(Path(reported.path) / "comparison.md")
                outcome["artifacts"]["comparison_csv"] = str(Path(reported.path) / "comparison.csv")
    except BaseException as error:
        tracker.fail(parent, error)
        outcome["mlflow"]["status"] = "FAILED"
        raise
    tracker.set_tags(parent, {"infodcl.all_reused": str(all(outcome["reused"].values())).lower()})
    tracker.finish(parent)
    outcome["mlflow"]["status"] = "FINISHED" if parent else None
    outcome["all_reused"] = all(outcome["reused"].values())
    publish_mlflow_link(outcome)
    return outcome


def _run_models(plan: RunPlan, tracker: Tracker, parent: str | None, ingest: StageResult,
                metadata: StageResult | None, outcome: dict[str, Any]):
    """Train (and evaluate) every (model, seed) run, sequentially or fanned out through Dask; log each under a model run."""
    cfg, store_root, forced = plan.cfg, plan.store_root, plan.forced
    evaluate_too = plan.wants("evaluate")
    model_run_ids = {}
    for key, model_run, seed in plan.jobs:
        run_id = tracker.start_run(f"model-{key}", parent, tags={"infodcl.model_run": model_run,
                                                                "infodcl.model": cfg.models[model_run].model.name,
                                                                "infodcl.seed": seed})
        tracker.log_params(run_id, params_from_config(cfg.models[model_run].model_dump(mode="json")))
        tracker.log_params(run_id, {"seed": str(seed if seed is not None else cfg.models[model_run].train.seed)})
        model_run_ids[key] = run_id
        outcome["mlflow"]["runs"][f"model-{key}"] = run_id

    # Compute: Dask fans the (model, seed) runs out to worker processes; otherwise one after another.
    computed: dict[str, dict[str, Any]] = {}
    if cfg.runner.kind == "dask" and evaluate_too:
        from prefect_dask import DaskTaskRunner
        runner = DaskTaskRunner(cluster_class="distributed.LocalCluster",
                                cluster_kwargs={"n_workers": cfg.runner.n_workers, "threads_per_worker": 1,
                                                "processes": True, "dashboard_address": None})
        for item in fan_out_flow.with_options(task_runner=runner)(
                cfg, store_root, plan.jobs, ingest, metadata, "train" in forced, "evaluate" in forced):
            computed[item["key"]] = item
    else:
        for key, model_run, seed in plan.jobs:
            try:
                train_state = train_task(cfg, store_root, model_run, ingest, metadata, seed, "train" in forced,
                                         return_state=True)
                trained = _state_result(train_state)
                evaluated, eval_task_id = None, None
                if evaluate_too:
                    eval_state = evaluate_task(cfg, store_root, model_run, ingest, metadata, trained,
                                               "evaluate" in forced, return_state=True)
                    evaluated, eval_task_id = _state_result(eval_state), _task_run_id(eval_state)
                computed[key] = {"key": key, "result": (trained, evaluated), "error": None,
                                 "task_run_id": _task_run_id(train_state), "eval_task_run_id": eval_task_id}
            except Exception as error:
                computed[key] = {"key": key, "result": None, "error": error, "task_run_id": None}
                break       # the first failure stops the flow (below), with its reason

    # Log: one model run per (model, seed) with nested train and evaluate runs.
    trainings: dict[str, StageResult] = {}
    evaluations: dict[str, StageResult] = {}
    versions: dict[str, dict[str, Any]] = {}
    first_error: BaseException | None = None
    for key, model_run, seed in plan.jobs:
        run_id = model_run_ids[key]
        item = computed.get(key)
        if item is None or item["error"] is not None:
            error = item["error"] if item else RuntimeError("not run: an earlier model run failed")
            tracker.fail(run_id, error)
            first_error = first_error or error
            continue
        trained, evaluated = item["result"]
        try:
            versions[key] = _log_model_run(plan, tracker, run_id, key, model_run, ingest, metadata, trained,
                                           evaluated, item, outcome)
        except BaseException as error:
            tracker.fail(run_id, error)
            raise
        tracker.finish(run_id)
        trainings[key] = trained
        if evaluated is not None:
            evaluations[key] = evaluated
    if first_error is not None:
        raise first_error
    if evaluations:
        _crown_champion(plan, tracker, evaluations, versions, outcome)
    return trainings, evaluations


def _log_model_run(plan: RunPlan, tracker: Tracker, model_run_id: str | None, key: str, model_run: str,
                   ingest: StageResult, metadata: StageResult | None, trained: StageResult,
                   evaluated: StageResult | None, item: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    cfg = plan.cfg
    train_dir = Path(trained.path)
    with tracker.run("train", model_run_id, tags={"infodcl.stage": "train", "infodcl.model_run": model_run,
                                                  "prefect.task_run_id": item.get("task_run_id")}) as train_run:
        tracker.log_stage(train_run, trained)
        tracker.log_history(train_run, train_dir / "history.json")
        tracker.log_artifact(train_run, train_dir / "history.json")
        tracker.log_artifact(train_run, train_dir / "train_metrics.json")
        train_metrics = json.loads((train_dir / "train_metrics.json").read_text())
        best = {"valid": train_metrics.get("best_valid") or {}, "test": train_metrics.get("test_at_best") or {}}
        tracker.log_metrics(train_run, {f"best_{k}": v for k, v in split_metrics(best).items()})
        with tempfile.TemporaryDirectory() as tmp:
            from infodcl.report import training_curves_png
            history = json.loads((train_dir / "history.json").read_text())
            png = Path(tmp) / f"training_curves_{key}.png"
            training_curves_png(history, png, f"{cfg.dataset.name} / {key}")
            tracker.log_artifact(train_run, png, "plots")
        version = _log_or_reuse_model(plan, tracker, train_run, key, model_run, ingest, metadata, trained,
                                      train_metrics)
    outcome["mlflow"]["runs"][f"model-{key}/train"] = train_run
    outcome["stages"][f"train:{key}"] = _stage_record(trained, train_run, item.get("task_run_id"))
    outcome["reused"][f"train:{key}"] = bool(trained.reused)
    tracker.set_tags(model_run_id, {"infodcl.fingerprint.train": trained.fingerprint,
                                    "infodcl.fingerprint.ingest": ingest.fingerprint,
                                    "infodcl.fingerprint.metadata": metadata.fingerprint if metadata else None})
    metrics = best
    if evaluated is not None:
        eval_dir = Path(evaluated.path)
        with tracker.run("evaluate", model_run_id, tags={"infodcl.stage": "evaluate", "infodcl.model_run": model_run,
                                                         "prefect.task_run_id": item.get("eval_task_run_id")}) as eval_run:
            tracker.log_stage(eval_run, evaluated)
            metrics = json.loads((eval_dir / "metrics.json").read_text())
            tracker.log_metrics(eval_run, split_metrics(metrics))
            tracker.log_artifact(eval_run, eval_dir / "metrics.json")
            tracker.log_artifact(eval_run, eval_dir / "recommendations.parquet")
        outcome["mlflow"]["runs"][f"model-{key}/evaluate"] = eval_run
        outcome["stages"][f"evaluate:{key}"] = _stage_record(evaluated, eval_run, item.get("eval_task_run_id"))
        outcome["reused"][f"evaluate:{key}"] = bool(evaluated.reused)
        tracker.set_tags(model_run_id, {"infodcl.fingerprint.evaluate": evaluated.fingerprint})
    tracker.log_metrics(model_run_id, split_metrics(metrics))
    outcome["metrics"][key] = {"valid": metrics.get("valid", {}), "test": metrics.get("test", {}),
                               "model": cfg.models[model_run].model.name, "seed": train_metrics.get("seed"),
                               "best_epoch": train_metrics.get("best_epoch"),
                               "seconds_per_epoch": train_metrics.get("seconds_per_epoch")}
    _logger().info("%s: train %s, evaluate %s; valid %s %.4f", key, "reused" if trained.reused else "computed",
                   "-" if evaluated is None else ("reused" if evaluated.reused else "computed"), SELECTION_METRIC,
                   metrics.get("valid", {}).get(SELECTION_METRIC, float("nan")))
    return version


def _log_or_reuse_model(plan: RunPlan, tracker: Tracker, train_run: str | None, key: str, model_run: str,
                        ingest: StageResult, metadata: StageResult | None, trained: StageResult,
                        train_metrics: dict[str, Any]) -> dict[str, Any]:
    """Log the trained model with mlflow.pytorch once per train fingerprint; a reused train points at that version."""
    cfg = plan.cfg
    if not tracker.enabled:
        return {}
    registered = f"infodcl-{cfg.dataset.name}" if cfg.tracking.register_model else None
    if registered:
        existing = tracker.find_model_version(registered, trained.fingerprint)
        if existing is not None:
            tracker.set_tags(train_run, {"infodcl.registered_model": registered,
                                         "infodcl.model_version": existing.version,
                                         "infodcl.model_logged_by_run": existing.run_id})
            return {"registered_model": registered, "version": str(existing.version),
                    "model_uri": f"models:/{registered}/{existing.version}", "reused": True}
    elif trained.reused:
        return {}
    module, example = _module_for_logging(cfg, model_run, ingest, metadata, trained)
    config = {"pipeline": cfg.to_dict(), "model_run": model_run, "train_fingerprint": trained.fingerprint}
    version_tags = {"train_fingerprint": trained.fingerprint, "model_run": key, "model": cfg.models[model_run].model.name,
                    "dataset": cfg.dataset.name,
                    "valid_recall_at_20": (train_metrics.get("best_valid") or {}).get(SELECTION_METRIC)}
    info = tracker.log_model(train_run, module, example, config, registered, version_tags)
    tracker.set_tags(train_run, {"infodcl.registered_model": info.get("registered_model"),
                                 "infodcl.model_version": info.get("version"), "infodcl.model_uri": info.get("model_uri")})
    return {**info, "reused": False}


def _crown_champion(plan: RunPlan, tracker: Tracker, evaluations: dict[str, StageResult],
                    versions: dict[str, dict[str, Any]], outcome: dict[str, Any]) -> None:
    """The best run of this flow by valid Recall@20 gets the registry's `champion` alias."""
    scored = [(outcome["metrics"][k]["valid"].get(SELECTION_METRIC, float("-inf")), k) for k in evaluations
              if versions.get(k, {}).get("version")]
    registry = {"versions": {k: v.get("version") for k, v in versions.items()}}
    if scored:
        best_score, best_key = max(scored)
        name, version = versions[best_key]["registered_model"], versions[best_key]["version"]
        tracker.set_champion(name, version, {"run": best_key, "valid_recall_at_20": best_score,
                                             "flow_run_id": outcome.get("prefect_flow_run_id")})
        registry.update(name=name, champion_version=version, champion_run=best_key,
                        champion_valid_recall_at_20=best_score)
    outcome["mlflow"]["registered_model"] = registry
