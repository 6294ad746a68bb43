"""Shared test fixtures: offline environment, tiny synthetic datasets, the real-data mirror."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Offline-safe before anything imports Prefect, MLflow or Great Expectations.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO_ROOT.parent / "shared" / "data").resolve()
if SHARED_DATA.is_dir():
    os.environ.setdefault("INFODCL_DATA_MIRROR", str(SHARED_DATA))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, the real public datasets; tests needing it are skipped where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture
def tiny_data():
    """A 60-user x 40-item synthetic dataset with a per-user train/valid/test split."""
    from infodcl.data.synthetic import synthetic_dataset
    return synthetic_dataset(n_users=60, n_items=40, n_interactions=600, seed=0)


@pytest.fixture
def one_torch_thread():
    """Tiny tensors on a shared 2-core machine: thread hand-offs cost more than the maths."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API (own SQLite database), started once per test session; only flow tests request it."""
    # The API starts as a subprocess; on a loaded 2-core machine the 30 s default is too short.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def mlflow_tmp(tmp_path, monkeypatch) -> str:
    """MLFLOW_TRACKING_URI pointing at a temporary SQLite file (artifacts go beside it, under mlartifacts/)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(autouse=True)
def _restore_library_logger():
    """The CLI gives the `infodcl` logger its own stderr handler and stops propagation (once per process);
    put it back after each test, so a later test's caplog (on the root logger) still sees library records."""
    import logging

    library_log = logging.getLogger("infodcl")
    handlers, level, propagate = list(library_log.handlers), library_log.level, library_log.propagate
    yield
    library_log.handlers[:] = handlers
    library_log.setLevel(level)
    library_log.propagate = propagate
