"""End-to-end Prefect flows on a tiny synthetic dataset: MLflow run tree, reuse, reruns, failures, Dask fan-out, UI.

Issue 5 "Tests": one Prefect test harness per session (fixture `prefect_harness`), MLflow on a temporary SQLite file.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

EPOCHS, EVAL_EVERY = 4, 2
MODELS = ["infodcl", "mf"]


def write_pairs(directory: Path, seed: int = 0) -> Path:
    """train/valid/test `user item` files of a 60 x 40 synthetic long-tail dataset."""
    from infodcl.data.synthetic import synthetic_dataset
    data = synthetic_dataset(n_users=60, n_items=40, n_interactions=600, seed=seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        users, items = data.pairs[split]
        (directory / f"{split}.txt").write_text("".join(f"{u} {i}\n" for u, i in zip(users, items)))
    return directory


def tiny_config(path: Path, data_dir: Path, store_root: Path, name: str = "tiny") -> Path:
    train = {"epochs": EPOCHS, "eval_every": EVAL_EVERY, "batch_size": 128, "progress": False, "num_threads": 1}
    config = {
        "dataset": {"name": name, "path": str(data_dir), "format": "pairs"},
        "metadata": {"pretrain": {"dim": 8, "max_epochs": 4, "eval_every": 2, "batch_size": 256}},
        "models": {"infodcl": {"model": {"name": "infodcl", "dim": 8, "steps": 10}, "train": train},
                   "lightgcn": {"model": {"name": "lightgcn", "dim": 8, "layers": 2}, "train": train},
                   "mf": {"model": {"name": "mf", "dim": 8}, "train": train}},
        "evaluate": {"topk_export": 10},
        "store": {"root": str(store_root)},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One tiny dataset, one config, one artifact store and one MLflow SQLite store for the module."""
    root = tmp_path_factory.mktemp("flows")
    data_dir = write_pairs(root / "tiny")
    config = tiny_config(root / "tiny.yaml", data_dir, root / "artifacts")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield {"root": root, "data_dir": data_dir, "config": str(config), "uri": uri}


@pytest.fixture(scope="module")
def client(env):
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=env["uri"])


@pytest.fixture(scope="module")
def first(env):
    from flows.pipeline import pipeline
    return pipeline("tiny", models=MODELS, config_file=env["config"])


def children(client, parent_id: str) -> dict[str, object]:
    runs = client.search_runs([client.get_run(parent_id).info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {run.info.run_name: run for run in runs}


def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found.add(item.path)
        if item.is_dir:
            found |= artifact_paths(client, run_id, item.path)
    return found


def computed(outcome) -> set[str]:
    return {name for name, reused in outcome["reused"].items() if not reused}


def test_pipeline_builds_the_mlflow_run_tree(first, client, env):
    assert first["all_reused"] is False and not any(first["reused"].values())
    parent = client.get_run(first["mlflow"]["run_id"])
    assert parent.info.status == "FINISHED"
    # The resolved config, flattened, as params; tags tie the run to Prefect and to the fingerprints.
    assert parent.data.params["models.mf.train.epochs"] == str(EPOCHS)
    assert parent.data.params["dataset.path"] == str(env["data_dir"])
    assert parent.data.tags["prefect.flow_run_id"] == first["prefect_flow_run_id"]
    assert parent.data.tags["infodcl.fingerprint.ingest"] == first["stages"]["ingest"]["fingerprint"]

    stages = children(client, parent.info.run_id)
    assert set(stages) == {"ingest", "validate", "metadata", "model-infodcl", "model-mf", "report"}
    for run in stages.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["prefect.flow_run_id"] == first["prefect_flow_run_id"]
    assert stages["metadata"].data.tags["infodcl.fingerprint"] == first["stages"]["metadata"]["fingerprint"]
    assert "dataset.json" in artifact_paths(client, stages["ingest"].info.run_id)
    validate_files = artifact_paths(client, stages["validate"].info.run_id)
    assert "validation.json" in validate_files
    assert any(p.startswith("data_docs/") and p.endswith(".html") for p in validate_files)
    assert any(p.startswith("cards/channel_") for p in artifact_paths(client, stages["metadata"].info.run_id))
    report_files = artifact_paths(client, stages["report"].info.run_id)
    assert {"report/comparison.md", "report/comparison.csv", "report/loss_curves.png",
            "report/time_vs_recall.png"} <= report_files

    for model in MODELS:
        model_run = stages[f"model-{model}"]
        assert model_run.data.params["train.lr"] and model_run.data.tags["infodcl.model"] == model
        nested = children(client, model_run.info.run_id)
        assert set(nested) == {"train", "evaluate"}
        train_run, eval_run = nested["train"], nested["evaluate"]
        # Metric histories: a loss value per epoch, valid metrics on evaluated epochs (step = epoch).
        loss_steps = [m.step for m in client.get_metric_history(train_run.info.run_id, "loss")]
        assert sorted(loss_steps) == list(range(1, EPOCHS + 1))
        recall_steps = [m.step for m in client.get_metric_history(train_run.info.run_id, "valid_recall_at_20")]
        assert sorted(recall_steps) == list(range(EVAL_EVERY, EPOCHS + 1, EVAL_EVERY))
        assert any(k.startswith("terms_") for k in train_run.data.metrics)
        metrics = json.loads((Path(first["stages"][f"evaluate:{model}"]["path"]) / "metrics.json").read_text())
        assert eval_run.data.metrics["test_recall_at_20"] == pytest.approx(metrics["test"]["recall@20"])
        assert model_run.data.metrics["valid_ndcg_at_50"] == pytest.approx(metrics["valid"]["ndcg@50"])
        assert first["metrics"][model]["test"]["recall@20"] == pytest.approx(metrics["test"]["recall@20"])
        assert {"metrics.json", "recommendations.parquet"} <= artifact_paths(client, eval_run.info.run_id)
        train_files = artifact_paths(client, train_run.info.run_id)
        assert f"plots/training_curves_{model}.png" in train_files and "history.json" in train_files
        assert model_run.data.tags["infodcl.fingerprint.train"] == first["stages"][f"train:{model}"]["fingerprint"]

    # Registered model: one version per trained model; the champion is the best valid Recall@20 of the run.
    registry = first["mlflow"]["registered_model"]
    versions = client.search_model_versions("name = 'infodcl-tiny'")
    assert len(versions) == len(MODELS)
    best = max(MODELS, key=lambda m: first["metrics"][m]["valid"]["recall@20"])
    champion = client.get_model_version_by_alias("infodcl-tiny", "champion")
    assert str(champion.version) == registry["champion_version"] == registry["versions"][best]
    assert champion.tags["champion"] == "true"
    assert champion.tags["train_fingerprint"] == first["stages"][f"train:{best}"]["fingerprint"]

    # The logged model scores users: forward(users) -> (B, n_items).
    import mlflow.pytorch
    import torch
    model = mlflow.pytorch.load_model(f"models:/infodcl-tiny@champion")
    scores = model(torch.arange(3))
    assert scores.shape == (3, first["stages"]["ingest"]["summary"]["n_items"])

    # The reverse link: the Prefect flow run carries a Markdown artifact naming the MLflow run.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    with get_client(sync_client=True) as prefect_client:
        artifacts = prefect_client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[first["prefect_flow_run_id"]])))
    assert any(first["mlflow"]["run_id"] in (a.data or "") for a in artifacts)


def test_second_run_recomputes_nothing(first, client, env):
    from flows.pipeline import pipeline
    again = pipeline("tiny", models=MODELS, config_file=env["config"])
    assert again["all_reused"] is True and computed(again) == set()
    assert again["metrics"] == first["metrics"]
    # The model is not logged again: the train run points at the version logged by the first run.
    assert len(client.search_model_versions("name = 'infodcl-tiny'")) == len(MODELS)
    assert again["mlflow"]["registered_model"]["champion_version"] == \
        first["mlflow"]["registered_model"]["champion_version"]
    assert client.get_run(again["mlflow"]["run_id"]).data.tags["infodcl.all_reused"] == "true"


def test_changed_train_parameter_reruns_only_train_and_evaluate(first, env):
    from flows.pipeline import pipeline
    changed = pipeline("tiny", models=MODELS, config_file=env["config"], overrides=["models.mf.train.lr=0.002"])
    assert computed(changed) == {"train:mf", "evaluate:mf", "report"}


def test_force_metadata_reruns_metadata_and_downstream(first, env):
    from flows.pipeline import pipeline
    forced = pipeline("tiny", models=MODELS, config_file=env["config"], force="metadata")
    assert computed(forced) == {"metadata", "train:infodcl", "evaluate:infodcl", "train:mf", "evaluate:mf",
                                "report"}
    assert forced["stages"]["metadata"]["fingerprint"] == first["stages"]["metadata"]["fingerprint"]
    # A forced rebuild with the same seed reproduces the same numbers.
    assert forced["metrics"]["mf"]["test"] == pytest.approx(first["metrics"]["mf"]["test"])


def test_stage_flow_computes_or_reuses_its_upstream(first, env):
    from flows.evaluate import evaluate_flow
    outcome = evaluate_flow("tiny", model="mf", config_file=env["config"])
    assert set(outcome["reused"]) == {"ingest", "validate", "train:mf", "evaluate:mf"}   # no metadata for MF
    assert all(outcome["reused"].values())


def test_failing_contract_stops_the_flow_and_fails_the_mlflow_run(env, client):
    from flows.pipeline import pipeline
    from infodcl.errors import ContractError
    data_dir = write_pairs(env["root"] / "cold")
    with open(data_dir / "valid.txt", "a") as handle:
        handle.write("0 999\n")            # an item nobody has in train
    config = tiny_config(env["root"] / "cold.yaml", data_dir, env["root"] / "artifacts", name="cold")
    with pytest.raises(ContractError, match="expect_held_out_values_to_appear_in_train") as caught:
        pipeline("cold", models=["mf"], config_file=str(config), overrides=["validate.cold_start=forbid"])
    experiment = client.get_experiment_by_name("infodcl")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`infodcl.dataset` = 'cold'")
    assert len(parents) >= 1
    parent = next(r for r in parents if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FAILED"
    assert "expect_held_out_values_to_appear_in_train" in parent.data.tags["infodcl.error"]
    stages = children(client, parent.info.run_id)
    assert stages["validate"].info.status == "FAILED" and stages["ingest"].info.status == "FINISHED"
    assert "metadata" not in stages and "model-mf" not in stages
    assert str(caught.value)


def test_dask_fan_out_matches_sequential(env):
    from flows.pipeline import pipeline
    seeds = [1, 2]
    sequential = pipeline("tiny", models=["mf"], seeds=seeds, config_file=env["config"],
                          overrides=[f"store.root={env['root'] / 'seq'}"])
    fanned = pipeline("tiny", models=["mf"], seeds=seeds, config_file=env["config"],
                      overrides=[f"store.root={env['root'] / 'dask'}", "runner.kind=dask", "runner.n_workers=2"])
    assert set(sequential["metrics"]) == set(fanned["metrics"]) == {"mf-seed1", "mf-seed2"}
    assert computed(fanned) >= {"train:mf-seed1", "train:mf-seed2", "evaluate:mf-seed1", "evaluate:mf-seed2"}
    for key in sequential["metrics"]:
        assert fanned["metrics"][key]["test"] == pytest.approx(sequential["metrics"][key]["test"], abs=1e-12)
        assert fanned["metrics"][key]["valid"] == pytest.approx(sequential["metrics"][key]["valid"], abs=1e-12)
    assert sequential["metrics"]["mf-seed1"]["test"] != sequential["metrics"]["mf-seed2"]["test"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_mlflow_server_serves_the_runs(first, env):
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow_bin), "server", "--backend-store-uri", env["uri"], "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1",
               "--default-artifact-root", (env["root"] / "mlartifacts").as_uri()]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not answer /health within 120 s"
            time.sleep(0.5)
        body = json.dumps({"experiment_ids": [first["mlflow"]["experiment_id"]], "max_results": 1000}).encode()
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            runs = json.loads(response.read())["runs"]
        run_ids = {run["info"]["run_id"] for run in runs}
        assert first["mlflow"]["run_id"] in run_ids
        assert set(first["mlflow"]["runs"].values()) <= run_ids
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_bad_input_is_not_retried(env, client):
    """Ingest retries transient failures (downloads); a file that is wrong stays wrong, so it fails at once."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.ingest import ingest_flow
    from infodcl.errors import DataError
    missing = env["root"] / "does-not-exist"
    state = ingest_flow("nowhere", path=str(missing), format="pairs", config_file=env["config"], return_state=True)
    assert state.is_failed()
    with pytest.raises(DataError, match="does-not-exist"):
        state.result()
    with get_client(sync_client=True) as prefect_client:
        task_runs = prefect_client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    ingest_runs = [t for t in task_runs if t.task_key.endswith("ingest_task") or t.name.startswith("ingest")]
    assert len(ingest_runs) == 1 and ingest_runs[0].run_count == 1
