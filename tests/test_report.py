"""The comparison report's seed summary: one row per configured model run, mean and sample std by hand."""
from __future__ import annotations

import math

import pytest

from infodcl.report import SPLITS, TABLE_METRICS, markdown_table, seed_summary


def row(run_key: str, model_run: str, seed: int, recall20: float) -> dict:
    values = {f"{split} {name}": None for split in SPLITS for name in TABLE_METRICS}
    values["test recall@20"] = recall20
    return {"run": run_key, "model_run": model_run, "model": "infodcl", "seed": seed, "best_epoch": 10,
            "seconds_per_epoch": 1.0, **values}


def test_an_ablation_of_the_same_model_class_is_its_own_summary_row():
    rows = [row("infodcl-seed1", "infodcl", 1, 0.12), row("infodcl-seed2", "infodcl", 2, 0.14),
            row("infodcl_gauss-seed1", "infodcl_gauss", 1, 0.10), row("infodcl_gauss-seed2", "infodcl_gauss", 2, 0.11),
            row("infodcl_gauss-seed3", "infodcl_gauss", 3, 0.15)]
    summary = {entry["model_run"]: entry for entry in seed_summary(rows)}
    assert set(summary) == {"infodcl", "infodcl_gauss"}
    assert summary["infodcl"]["n_seeds"] == 2 and summary["infodcl_gauss"]["seeds"] == [1, 2, 3]
    # By hand: mean(0.12, 0.14) = 0.13, sample std = sqrt((0.01^2 + 0.01^2) / 1) = 0.0141421...
    mean, std = summary["infodcl"]["test recall@20"]
    assert mean == pytest.approx(0.13) and std == pytest.approx(math.sqrt(2) * 0.01)
    # mean(0.10, 0.11, 0.15) = 0.12; deviations -0.02, -0.01, 0.03 -> sqrt(0.0014 / 2) = 0.0264575...
    mean, std = summary["infodcl_gauss"]["test recall@20"]
    assert mean == pytest.approx(0.12) and std == pytest.approx(math.sqrt(0.0007))
    table = markdown_table(rows, seed_summary(rows), "toy")
    assert "| infodcl_gauss | infodcl | 3 |" in table and "0.1200 ± 0.0265" in table


def test_a_run_with_one_seed_has_no_summary_row():
    assert seed_summary([row("mf", "mf", 2024, 0.07)]) == []
