"""The `infodcl` command: argument parsing, --json output, the human table, and clean user errors (exit 2).

Issue 5 item 2 and issue 2 item 8.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infodcl.cli import EXIT_USER_ERROR, build_parser, human_summary, main

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_force_defaults_to_the_commands_own_stage():
    parser = build_parser()
    assert parser.parse_args(["ingest", "office", "--force"]).force == "ingest"
    assert parser.parse_args(["train", "office", "--force"]).force == "train"
    assert parser.parse_args(["run", "office", "--force"]).force == "ingest"
    args = parser.parse_args(["run", "office", "--force", "metadata", "--models", "infodcl,mf", "--seeds", "1,2",
                              "--set", "a.b=1", "--set", "c=2", "--json"])
    assert (args.force, args.models, args.seeds, args.overrides, args.json) == \
        ("metadata", ["infodcl", "mf"], [1, 2], ["a.b=1", "c=2"], True)
    assert parser.parse_args(["run", "office"]).force is None


def test_unknown_force_stage_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["run", "office", "--force", "deploy"])
    assert caught.value.code == 2
    assert "invalid choice: 'deploy'" in capsys.readouterr().err


def test_bad_config_key_exits_2_naming_the_key(capsys):
    code = main(["run", "office", "--set", "models.infodcl.train.learning_rate=0.1"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR
    assert "models.infodcl.train.learning_rate" in err and "Traceback" not in err


def test_unknown_model_exits_2(capsys):
    assert main(["train", "office", "--model", "sasrec"]) == EXIT_USER_ERROR
    assert "models.sasrec: unknown model run" in capsys.readouterr().err


def test_errors_inside_a_flow_are_one_clean_paragraph(monkeypatch, capsys):
    from infodcl.errors import ContractError
    import infodcl.cli as cli

    def failing(args):
        raise ContractError("validate: expect_column_values_to_not_be_null failed on column 'item'\n\n"
                            "  rows: 3, 17")
    monkeypatch.setattr(cli, "run_command", failing)
    assert main(["validate", "office", "--json"]) == EXIT_USER_ERROR
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("infodcl: error: validate: expect_column_values_to_not_be_null failed on column "
                            "'item'\n  rows: 3, 17\n")


def test_process_exit_code_and_no_traceback():
    result = subprocess.run([sys.executable, "-m", "infodcl.cli", "validate", "office", "--set", "validate.strict=1"],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 2
    assert "unknown config key 'validate.strict'" in result.stderr and "Traceback" not in result.stderr


def test_human_summary_shows_metrics_artifacts_and_mlflow_command():
    outcome = {
        "flow": "pipeline", "dataset": "office", "until": "report", "prefect_flow_run_id": "f-1",
        "stages": {"ingest": {"reused": True, "seconds": 0.01, "path": "/a/ingest/1",
                              "summary": {"n_users": 4905, "n_items": 2420, "n_interactions": 53258,
                                          "splits": {"test": 6501, "train": 40877, "valid": 5880}}},
                   "train:mf": {"reused": False, "seconds": 12.5, "path": "/a/train/2", "summary": {}},
                   "evaluate:infodcl-seed2024": {"reused": False, "seconds": 0.6, "path": "/a/evaluate/4",
                                                 "summary": {}}},
        "metrics": {"mf": {"valid": {"recall@20": 0.0712, "recall@50": 0.13, "ndcg@20": 0.03, "ndcg@50": 0.04},
                           "test": {"recall@20": 0.07, "recall@50": 0.12, "ndcg@20": 0.031, "ndcg@50": 0.041}}},
        "artifacts": {"comparison_md": "/a/report/3/comparison.md"},
        "mlflow": {"run_id": "abc", "experiment_id": "1", "ui_command": "mlflow ui --backend-store-uri sqlite:///x.db",
                   "registered_model": {"name": "infodcl-office", "champion_version": "4", "champion_run": "mf"}},
    }
    text = human_summary(outcome)
    assert "valid R@20" in text and "test N@50" in text
    assert "dataset: n_users 4,905, n_items 2,420, n_interactions 53,258" in text
    assert "splits: train 40,877, valid 5,880, test 6,501" in text
    assert "0.0712" in text and "0.0410" in text
    assert "reused" in text and "computed" in text
    assert "evaluate:infodcl-seed2024  computed" in text      # a long run name keeps its column
    assert "/a/report/3/comparison.md" in text
    assert "mlflow ui --backend-store-uri sqlite:///x.db" in text and "version 4" in text


@pytest.mark.slow
def test_ingest_and_validate_json_on_a_users_own_files(prefect_harness, mlflow_tmp, tmp_path, capsys):
    data_dir = tmp_path / "mine"
    data_dir.mkdir()
    # Six users, four items; per user two train items, one valid and one test item, all different.
    for split, offsets in {"train": (0, 1), "valid": (2,), "test": (3,)}.items():
        (data_dir / f"{split}.txt").write_text("".join(f"{u} {(u + k) % 4}\n" for u in range(6) for k in offsets))
    common = ["--path", str(data_dir), "--format", "pairs", "--set", f"store.root={tmp_path / 'artifacts'}", "--json"]
    assert main(["ingest", "mine", *common]) == 0
    ingested = json.loads(capsys.readouterr().out)
    record = ingested["stages"]["ingest"]
    assert record["reused"] is False and record["summary"]["n_users"] == 6
    assert Path(record["path"], "interactions.parquet").is_file()
    assert ingested["mlflow"]["run_id"] and ingested["mlflow"]["ui_command"].startswith("mlflow ui")

    assert main(["validate", "mine", *common]) == 0
    validated = json.loads(capsys.readouterr().out)
    assert validated["reused"] == {"ingest": True, "validate": False}
    assert Path(validated["artifacts"]["validation"]).is_file()


def test_library_progress_lines_reach_stderr_once(capsys):
    import logging

    from infodcl.cli import _show_library_log

    library_log = logging.getLogger("infodcl")
    # Prefect's logging config puts a console handler on the root logger, as here.
    root_console = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(root_console)
    try:
        library_log.handlers.clear()
        _show_library_log(quiet=False)
        _show_library_log(quiet=False)          # a second command in one process adds no second handler
        assert len(library_log.handlers) == 1 and library_log.level == logging.INFO
        logging.getLogger("infodcl.train").info("MF seed 1 epoch 20")
        err = capsys.readouterr().err
        assert "INFO    | infodcl.train - MF seed 1 epoch 20" in err
        assert err.count("MF seed 1 epoch 20") == 1, err
        _show_library_log(quiet=True)
        assert library_log.level == logging.WARNING
    finally:
        logging.getLogger().removeHandler(root_console)
