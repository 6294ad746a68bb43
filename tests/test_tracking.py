"""MLflow helpers: flattening and limits of params, metric histories from history.json, URIs, FAILED runs.

Issue 5 item 3; `infodcl/tracking.py` imports no Prefect.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infodcl.config import PipelineConfig
from infodcl.tracking import (MAX_PARAM_KEY, MAX_PARAM_VALUE, Tracker, default_artifact_location, flatten,
                              history_metrics, metric_key, params_from_config, resolve_tracking_uri, split_metrics,
                              ui_command)


def test_metric_keys_are_legal_mlflow_names():
    assert metric_key("recall@20") == "recall_at_20"
    assert metric_key("valid_ndcg@50") == "valid_ndcg_at_50"
    assert metric_key("a(b)") == "a_b_"


def test_config_is_flattened_into_params_within_mlflow_limits():
    params = params_from_config(PipelineConfig().to_dict())
    assert params["models.infodcl.train.lr"] == "0.005"
    assert params["metadata.channels"] == '["social", "knowledge"]'
    assert params["validate.cold_start"] == "allow"          # the alias, as users write it
    long = params_from_config({"x" * 300: "v" * 7000})
    (key, value), = long.items()
    assert len(key) == MAX_PARAM_KEY and len(value) == MAX_PARAM_VALUE


def test_flatten_keeps_empty_mappings_and_lists_as_leaves():
    assert flatten({"a": {"b": 1, "c": {}}, "d": [1, 2]}) == {"a.b": 1, "a.c": {}, "d": [1, 2]}


def test_history_becomes_metric_rows_with_epoch_steps():
    history = [{"epoch": 1, "seconds": 0.5, "loss": 0.9, "terms": {"bpr": 0.6, "rec": 0.3}},
               {"epoch": 2, "seconds": 0.4, "loss": 0.7, "terms": {"bpr": 0.5, "rec": 0.2},
                "valid": {"recall@20": 0.25, "ndcg@20": 0.125}, "eval_seconds": 0.1}]
    rows = set(history_metrics(history))
    assert rows == {("epoch_seconds", 0.5, 1), ("loss", 0.9, 1), ("terms_bpr", 0.6, 1), ("terms_rec", 0.3, 1),
                    ("epoch_seconds", 0.4, 2), ("loss", 0.7, 2), ("terms_bpr", 0.5, 2), ("terms_rec", 0.2, 2),
                    ("valid_recall_at_20", 0.25, 2), ("valid_ndcg_at_20", 0.125, 2), ("eval_seconds", 0.1, 2)}


def test_split_metrics_drops_non_finite_and_non_numbers():
    assert split_metrics({"valid": {"recall@20": 0.5, "note": "x", "bad": float("nan")}, "test": {"hit@10": 1}}) \
        == {"valid_recall_at_20": 0.5, "test_hit_at_10": 1.0}


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, cwd=tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("http://mlflow:5000", cwd=tmp_path) == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////srv/m.db")
    assert resolve_tracking_uri("http://mlflow:5000") == "sqlite:////srv/m.db"
    assert default_artifact_location(f"sqlite:///{tmp_path / 'x.db'}") == (tmp_path / "mlartifacts").as_uri()
    assert default_artifact_location("http://mlflow:5000") is None
    assert ui_command("sqlite:////a/b.db") == "mlflow ui --backend-store-uri sqlite:////a/b.db"


def test_run_tree_histories_and_failed_status(mlflow_tmp, tmp_path):
    cfg = PipelineConfig()
    tracker = Tracker.from_config(cfg, base_tags={"prefect.flow_run_id": "flow-1"})
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()
    with tracker.run("parent") as parent:
        history = tmp_path / "history.json"
        history.write_text(json.dumps([{"epoch": e, "loss": 1.0 / e, "terms": {"bpr": 0.5 / e}} for e in (1, 2, 3)]))
        with tracker.run("train", parent) as child:
            assert tracker.log_history(child, history) == 6
        with pytest.raises(RuntimeError, match="boom"):
            with tracker.run("evaluate", parent) as failing:
                raise RuntimeError("boom")
    client = tracker.client
    assert [m.step for m in client.get_metric_history(child, "terms_bpr")] == [1, 2, 3]
    assert [m.value for m in client.get_metric_history(child, "loss")] == [1.0, 0.5, pytest.approx(1 / 3)]
    failed = client.get_run(failing)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["infodcl.error"] == "RuntimeError: boom"
    assert failed.data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(child).data.tags["prefect.flow_run_id"] == "flow-1"
    assert client.get_run(parent).info.status == "FINISHED"


def test_disabled_tracking_is_a_no_op(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = PipelineConfig.model_validate({"tracking": {"enabled": False}})
    tracker = Tracker.from_config(cfg)
    with tracker.run("anything") as run_id:
        tracker.log_metrics(run_id, {"x": 1.0})
    assert run_id is None and not (tmp_path / "mlflow.db").exists()


def test_tracking_module_does_not_import_prefect():
    code = "import sys, infodcl.tracking, infodcl.report, infodcl.cli; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "False"
