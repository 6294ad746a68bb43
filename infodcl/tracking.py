"""MLflow tracking helpers: the run tree (pipeline > stage / model > train, evaluate), params, metric histories, artifacts, registry.

Design doc "Tracking" and issue 5 item 3. No Prefect here: flows pass their flow-run id in as a plain tag.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
# MLflow's own limits (mlflow.utils.validation): longer values are rejected, so we truncate.
MAX_PARAM_VALUE = 6000
MAX_PARAM_KEY = 250
MAX_TAG_VALUE = 5000
# log_batch accepts at most 1000 metrics / 100 params / 100 tags per call.
METRICS_PER_BATCH = 1000
PARAMS_PER_BATCH = 100
CHAMPION_ALIAS = "champion"
_INVALID_KEY_CHARS = re.compile(r"[^\w./\- :]")


def metric_key(name: str) -> str:
    """An MLflow-legal metric/param key: `recall@20` -> `recall_at_20` (MLflow rejects '@')."""
    return _INVALID_KEY_CHARS.sub("_", name.replace("@", "_at_"))


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mappings -> one level with dotted keys; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name, sep))
        else:
            flat[name] = value
    return flat


def params_from_config(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved config as MLflow params: flattened, keys and values cut to MLflow's limits."""
    params = {}
    for key, value in flatten(tree, prefix).items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        params[metric_key(key)[:MAX_PARAM_KEY]] = text[:MAX_PARAM_VALUE]
    return params


def split_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """{"valid": {"recall@20": x}, "test": {...}} -> {"valid_recall_at_20": x, ...} (finite numbers only)."""
    out = {}
    for key, value in flatten(metrics, sep="_").items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[metric_key(key)] = float(value)
    return out


def history_metrics(history: list[Mapping[str, Any]]) -> list[tuple[str, float, int]]:
    """Per-epoch entries of history.json -> (key, value, step=epoch) triples for metric histories.

    Loss terms and valid metrics keep their names (nested dicts joined with '_'); `seconds` becomes
    `epoch_seconds`; `epoch` is the step, not a metric.
    """
    rows = []
    for index, entry in enumerate(history):
        step = int(entry.get("epoch", index))
        for key, value in flatten(entry, sep="_").items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            name = "epoch_seconds" if key == "seconds" else metric_key(key)
            rows.append((name, float(value), step))
    return rows


def resolve_tracking_uri(configured: str | None = None, cwd: str | os.PathLike | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else the config's URI, else an embedded SQLite file in the working directory."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return f"sqlite:///{(Path(cwd or os.getcwd()) / DEFAULT_DB).resolve()}"


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a SQLite store (`<db dir>/mlartifacts`); a server or other database decides itself."""
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri[len("sqlite:///"):])
        return (database.resolve().parent / DEFAULT_ARTIFACTS).as_uri()
    return None


def ui_command(tracking_uri: str) -> str:
    """The command that shows these runs in a browser."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


@dataclass
class Tracker:
    """A thin, explicit-run-id wrapper over MlflowClient (thread- and process-safe: no fluent active run).

    With `enabled=False` every method is a no-op and run ids are None, so flows need no branches.
    """
    tracking_uri: str
    experiment_name: str = "infodcl"
    enabled: bool = True
    base_tags: dict[str, str] = field(default_factory=dict)
    experiment_id: str | None = None
    _client: Any = None

    @classmethod
    def from_config(cls, cfg: Any, base_tags: Mapping[str, Any] | None = None) -> "Tracker":
        tracker = cls(tracking_uri=resolve_tracking_uri(cfg.tracking.tracking_uri),
                      experiment_name=cfg.tracking.experiment, enabled=cfg.tracking.enabled,
                      base_tags={k: str(v) for k, v in (base_tags or {}).items() if v is not None})
        tracker.connect()
        return tracker

    # ------------------------------------------------------------------ connection
    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def connect(self) -> None:
        """Find or create the experiment (artifact location set explicitly for the embedded store)."""
        if not self.enabled or self.experiment_id is not None:
            return
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            self.experiment_id = experiment.experiment_id
            return
        location = default_artifact_location(self.tracking_uri)
        try:
            self.experiment_id = self.client.create_experiment(self.experiment_name, artifact_location=location)
        except Exception:
            # Another process created it first.
            experiment = self.client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                raise
            self.experiment_id = experiment.experiment_id

    # ------------------------------------------------------------------ runs
    def start_run(self, name: str, parent_run_id: str | None = None,
                  tags: Mapping[str, Any] | None = None) -> str | None:
        if not self.enabled:
            return None
        all_tags = {**self.base_tags, **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        all_tags = {k: v[:MAX_TAG_VALUE] for k, v in all_tags.items()}
        return self.client.create_run(self.experiment_id, tags=all_tags, run_name=name).info.run_id

    def finish(self, run_id: str | None, status: str = "FINISHED") -> None:
        if self.enabled and run_id:
            self.client.set_terminated(run_id, status=status)

    def fail(self, run_id: str | None, error: BaseException) -> None:
        """Mark a run FAILED with the readable reason as tags (the full traceback as an artifact)."""
        if not (self.enabled and run_id):
            return
        with contextlib.suppress(Exception):
            self.set_tags(run_id, {"infodcl.error": f"{type(error).__name__}: {error}",
                                   "mlflow.note.content": f"**Failed**: {type(error).__name__}: {error}"})
            self.log_text(run_id, "".join(traceback.format_exception(error)), "error.txt")
        self.finish(run_id, "FAILED")

    @contextlib.contextmanager
    def run(self, name: str, parent_run_id: str | None = None,
            tags: Mapping[str, Any] | None = None) -> Iterator[str | None]:
        """A run that is FINISHED when the block ends and FAILED (with the reason) when it raises."""
        run_id = self.start_run(name, parent_run_id, tags)
        try:
            yield run_id
        except BaseException as error:
            self.fail(run_id, error)
            raise
        self.finish(run_id)

    # ------------------------------------------------------------------ logging
    def set_tags(self, run_id: str | None, tags: Mapping[str, Any]) -> None:
        if not (self.enabled and run_id):
            return
        from mlflow.entities import RunTag
        items = [RunTag(k, str(v)[:MAX_TAG_VALUE]) for k, v in tags.items() if v is not None]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, tags=items[start:start + PARAMS_PER_BATCH])

    def log_params(self, run_id: str | None, params: Mapping[str, str]) -> None:
        if not (self.enabled and run_id):
            return
        from mlflow.entities import Param
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[start:start + PARAMS_PER_BATCH])

    def log_metrics(self, run_id: str | None, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_metric_rows(run_id, [(k, v, step) for k, v in metrics.items()])

    def log_metric_rows(self, run_id: str | None, rows: list[tuple[str, float, int]]) -> None:
        if not (self.enabled and run_id and rows):
            return
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, int(step)) for key, value, step in rows]
        for start in range(0, len(items), METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=items[start:start + METRICS_PER_BATCH])

    def log_history(self, run_id: str | None, history_path: str | os.PathLike) -> int:
        """Per-epoch loss terms and valid metrics of a history.json as metric histories (step = epoch)."""
        path = Path(history_path)
        if not path.is_file():
            return 0
        history = json.loads(path.read_text())
        if isinstance(history, Mapping):  # tolerate {"epochs": [...]}
            history = history.get("epochs") or history.get("history") or []
        rows = history_metrics(history)
        self.log_metric_rows(run_id, rows)
        return len(rows)

    def log_artifact(self, run_id: str | None, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not (self.enabled and run_id):
            return
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path or path.name)
        elif path.is_file():
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str | None, text: str, artifact_file: str) -> None:
        if self.enabled and run_id:
            self.client.log_text(run_id, text, artifact_file)

    def log_stage(self, run_id: str | None, result: Any, stage_tags: Mapping[str, Any] | None = None) -> None:
        """A StageResult's fingerprint, reuse flag and path as tags, its numeric summary as metrics."""
        if not (self.enabled and run_id):
            return
        self.set_tags(run_id, {"infodcl.stage": result.stage, "infodcl.fingerprint": result.fingerprint,
                               f"infodcl.fingerprint.{result.stage}": result.fingerprint,
                               "infodcl.reused": str(bool(result.reused)).lower(),
                               "infodcl.artifact_path": str(result.path), **(stage_tags or {})})
        summary = {k: v for k, v in flatten(result.summary or {}, sep="_").items()}
        metrics = {f"summary_{metric_key(k)}": float(v) for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        metrics["stage_seconds"] = float(result.seconds)
        self.log_metrics(run_id, metrics)

    # ------------------------------------------------------------------ models and registry
    def find_model_version(self, registered_name: str, train_fingerprint: str):
        """The registered version already holding the model of this train fingerprint, or None."""
        if not self.enabled:
            return None
        try:
            versions = self.client.search_model_versions(
                f"name = '{registered_name}' and tags.train_fingerprint = '{train_fingerprint}'")
        except Exception:
            versions = [v for v in self.client.search_model_versions(f"name = '{registered_name}'")
                        if v.tags.get("train_fingerprint") == train_fingerprint]
        return max(versions, key=lambda v: int(v.version)) if versions else None

    def log_model(self, run_id: str | None, module: Any, input_example: Any, config: Mapping[str, Any],
                  registered_name: str | None, version_tags: Mapping[str, Any]) -> dict[str, Any]:
        """Log a torch module with `mlflow.pytorch` (input example + config file) and register it."""
        if not (self.enabled and run_id):
            return {}
        import mlflow
        import mlflow.pytorch
        import torch
        import yaml

        mlflow.set_tracking_uri(self.tracking_uri)
        with tempfile.TemporaryDirectory() as tmp:
            config_file = Path(tmp) / "config.yaml"
            config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))
            # nested=True: the caller's thread may hold an unrelated active fluent run.
            with mlflow.start_run(run_id=run_id, nested=True):
                info = mlflow.pytorch.log_model(
                    module, name="model", input_example=input_example, extra_files=[str(config_file)],
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
                    registered_model_name=registered_name, await_registration_for=60,
                    serialization_format="pickle",   # torch.export cannot trace sparse CSR propagation graphs
                    metadata={k: str(v) for k, v in version_tags.items()})
            # start_run(run_id=...) ends the run as FINISHED on exit; the caller finishes it again (no-op) or fails it.
            self.client.update_run(run_id, status="RUNNING")
        out: dict[str, Any] = {"model_uri": info.model_uri}
        if registered_name and getattr(info, "registered_model_version", None) is not None:
            version = str(info.registered_model_version)
            for key, value in version_tags.items():
                self.client.set_model_version_tag(registered_name, version, key, str(value))
            out.update(registered_model=registered_name, version=version)
        return out

    def set_champion(self, registered_name: str, version: str, reason: Mapping[str, Any]) -> None:
        """Point the `champion` alias at the best version and tag it (the previous champion keeps its history)."""
        if not self.enabled:
            return
        self.client.set_registered_model_alias(registered_name, CHAMPION_ALIAS, str(version))
        self.client.set_model_version_tag(registered_name, str(version), CHAMPION_ALIAS, "true")
        for key, value in reason.items():
            self.client.set_model_version_tag(registered_name, str(version), f"champion.{key}", str(value))

    def run_url(self, run_id: str | None) -> str | None:
        if not (self.enabled and run_id):
            return None
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"
        return f"{self.tracking_uri} experiment {self.experiment_id} run {run_id}"
