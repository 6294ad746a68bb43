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
