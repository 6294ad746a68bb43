"""The Prefect deployment file: it loads, names the real pipeline flow, valid parameters and schedules.

Issue 5 item 4 (deployments/prefect.yaml) and the `infodcl serve` deployments built in flows/pipeline.py.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENT_FILE = REPO_ROOT / "deployments" / "prefect.yaml"


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(DEPLOYMENT_FILE.read_text())


def test_file_loads_with_a_deployment_per_dataset(spec):
    names = {d["name"]: d for d in spec["deployments"]}
    assert set(names) == {"nightly-office", "nightly-baby", "nightly-ml-1m"}
    assert {d["parameters"]["dataset"] for d in spec["deployments"]} == {"office", "baby", "ml-1m"}
    for deployment in spec["deployments"]:
        assert deployment["work_pool"]["name"] == "infodcl-pool"
        assert deployment["schedules"] and all(s["cron"] for s in deployment["schedules"])


def test_entrypoint_resolves_to_the_real_flow(spec, monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    from flows.pipeline import pipeline

    monkeypatch.chdir(REPO_ROOT)          # entry points are relative to the repository root
    for deployment in spec["deployments"]:
        loaded = load_flow_from_entrypoint(deployment["entrypoint"], use_placeholder_flow=False)
        assert loaded.name == pipeline.name == "infodcl-pipeline"
        assert inspect.getsource(loaded.fn) == inspect.getsource(pipeline.fn)
        assert Path(inspect.getsourcefile(loaded.fn)).resolve() == Path(inspect.getsourcefile(pipeline.fn)).resolve()
        # The parameters are the flow's own, with the types it declares.
        validated = pipeline.validate_parameters(deployment["parameters"])
        assert validated["dataset"] == deployment["parameters"]["dataset"]


def test_parameters_name_configured_datasets_and_models(spec):
    from infodcl.config import load_config

    for deployment in spec["deployments"]:
        parameters = deployment["parameters"]
        cfg = load_config(parameters["dataset"], parameters.get("overrides"))
        for model in parameters["models"]:
            cfg.model_run(model)


def test_cron_schedules_are_valid(spec):
    from prefect.client.schemas.schedules import CronSchedule

    for deployment in spec["deployments"]:
        for schedule in deployment["schedules"]:
            CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
    with pytest.raises(ValueError):
        CronSchedule(cron="not a cron")


def test_serve_builds_one_scheduled_deployment_per_dataset():
    from flows.pipeline import NIGHTLY_CRON, pipeline_deployments

    deployments = pipeline_deployments(["office", "baby"], cron=NIGHTLY_CRON)
    assert [d.name for d in deployments] == ["nightly-office", "nightly-baby"]
    assert [d.parameters["dataset"] for d in deployments] == ["office", "baby"]
    assert all(d.schedules[0].schedule.cron == NIGHTLY_CRON for d in deployments)
