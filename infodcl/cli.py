"""The `infodcl` command: one subcommand per stage flow, `run` for the whole pipeline, `serve` for deployments.

Design doc "Command line" and issue 5 item 2: each stage command computes or reuses what it depends on and ends
with a short table (or, with --json, one JSON object); user errors are one paragraph on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Sequence

STAGES = ("ingest", "validate", "metadata", "train", "evaluate", "report")
TABLE_COLUMNS = [("valid", "recall@20"), ("valid", "recall@50"), ("valid", "ndcg@20"), ("valid", "ndcg@50"),
                 ("test", "recall@20"), ("test", "recall@50"), ("test", "ndcg@20"), ("test", "ndcg@50")]
EXIT_USER_ERROR = 2


def _quiet_telemetry() -> None:
    # Before Prefect, MLflow or Great Expectations is imported: an offline machine must never wait on them.
    for key, value in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                       "GX_ANALYTICS_ENABLED": "False", "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
        os.environ.setdefault(key, value)
    # The embedded Prefect API starts as a subprocess; on a loaded 2-core machine 20 s (the default) is too short.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _show_library_log(quiet: bool) -> None:
    """Route the library's progress lines (per-evaluation metrics, reuse notes) to stderr.

    The per-batch progress bar only draws on a terminal; without this, `make run | tee log` would show nothing
    for the many minutes a model trains.
    """
    import logging

    library_log = logging.getLogger("infodcl")
    if not library_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s", "%H:%M:%S"))
        library_log.addHandler(handler)
    # Prefect puts a console handler on the root logger; propagating there too printed every line twice.
    library_log.propagate = False
    library_log.setLevel(logging.WARNING if quiet else logging.INFO)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _int_csv(text: str) -> list[int]:
    try:
        return [int(part) for part in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infodcl", description="InfoDCL recommender pipeline: ingest, validate, metadata, train, evaluate, "
                                    "report (Prefect flows, MLflow tracking).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser, default_force: str) -> None:
        sub.add_argument("dataset", metavar="DATASET", help="catalog name (office, ml-1m, baby, ...) or a label")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="config override, e.g. --set models.infodcl.train.lr=0.001 (repeatable)")
        sub.add_argument("--config", dest="config_file", metavar="FILE", help="extra YAML config layered on top")
        sub.add_argument("--force", nargs="?", const=default_force, default=None, metavar="STAGE",
                         choices=STAGES, help=f"recompute STAGE and every stage after it (default: {default_force})")
        sub.add_argument("--json", action="store_true", help="print one JSON object with the outcome")
        sub.add_argument("--quiet", action="store_true", help="only warnings from Prefect's run logger")

    for name, help_text in [("ingest", "read a dataset into the canonical Parquet tables"),
                            ("validate", "run the data contracts (ingests first when needed)")]:
        sub = commands.add_parser(name, help=help_text)
        common(sub, name)
        sub.add_argument("--path", help="your own file or directory instead of the catalog source")
        sub.add_argument("--format", help="reader for --path (e.g. pairs, movielens, amazon-csv, recbole, csv)")
    sub = commands.add_parser("metadata", help="pretrained embeddings, similarity graphs and channels")
    common(sub, "metadata")
    for name in ("train", "evaluate"):
        sub = commands.add_parser(name, help=f"{name} one model run (computes or reuses what it needs)")
        common(sub, name)
        sub.add_argument("--model", default="infodcl", help="model run: infodcl | lightgcn | mf | a configured one")
        sub.add_argument("--seeds", type=_int_csv, help="comma-separated seeds (default: the run's train.seed)")
    for name, help_text in [("report", "comparison table and plots over model runs"),
                            ("run", "the end-to-end pipeline")]:
        sub = commands.add_parser(name, help=help_text)
        common(sub, "report" if name == "report" else "ingest")
        sub.add_argument("--models", type=_csv, help="comma-separated model runs (default: all configured)")
        sub.add_argument("--seeds", type=_int_csv, help="comma-separated seeds (default: each run's train.seed)")
    sub = commands.add_parser("serve", help="serve the nightly pipeline deployments from this machine (blocks)")
    sub.add_argument("--datasets", type=_csv, default=None, help="default: office,baby,ml-1m")
    sub.add_argument("--models", type=_csv, default=None, help="default: infodcl,lightgcn,mf")
    sub.add_argument("--cron", default=None, help="cron schedule (default: nightly at 02:00)")
    return parser


def check_config(args: argparse.Namespace) -> None:
    """Resolve the config before any flow starts: a bad key fails in a second, not after the Prefect API is up."""
    from infodcl.config import load_config
    overrides = list(args.overrides)
    if getattr(args, "path", None) is not None or getattr(args, "format", None) is not None:
        from flows.ingest import path_overrides
        overrides = path_overrides(args.path, args.format) + overrides
    cfg = load_config(args.dataset, overrides, args.config_file)
    for name in getattr(args, "models", None) or ([args.model] if getattr(args, "model", None) else []):
        cfg.model_run(name)


def run_command(args: argparse.Namespace) -> dict[str, Any]:
    """Call the flow behind a subcommand and return its outcome dict."""
    check_config(args)
    common = {"overrides": args.overrides, "config_file": args.config_file, "force": args.force}
    if args.command == "ingest":
        from flows.ingest import ingest_flow
        return ingest_flow(args.dataset, path=args.path, format=args.format, **common)
    if args.command == "validate":
        from flows.validate import validate_flow
        return validate_flow(args.dataset, path=args.path, format=args.format, **common)
    if args.command == "metadata":
        from flows.metadata import metadata_flow
        return metadata_flow(args.dataset, **common)
    if args.command == "train":
        from flows.train import train_flow
        return train_flow(args.dataset, model=args.model, seeds=args.seeds, **common)
    if args.command == "evaluate":
        from flows.evaluate import evaluate_flow
        return evaluate_flow(args.dataset, model=args.model, seeds=args.seeds, **common)
    if args.command == "report":
        from flows.report import report_flow
        return report_flow(args.dataset, models=args.models, seeds=args.seeds, **common)
    if args.command == "run":
        from flows.pipeline import pipeline
        return pipeline(args.dataset, models=args.models, seeds=args.seeds, **common)
    raise AssertionError(args.command)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def _count(name: str, value: Any) -> str:
    return f"{name} {value:,}" if isinstance(value, int) else f"{name} {value}"


def human_summary(outcome: dict[str, Any]) -> str:
    """Stages (reused or computed, where), the metrics table, the MLflow run and how to look at it."""
    lines = [f"InfoDCL {outcome['flow']} on {outcome['dataset']}", ""]
    stage_width = max([24, *(len(name) + 2 for name in outcome.get("stages", {}))])
    lines.append(f"{'stage':<{stage_width}}{'result':<10}{'seconds':>9}  path")
    for name, record in outcome.get("stages", {}).items():
        lines.append(f"{name:<{stage_width}}{'reused' if record['reused'] else 'computed':<10}"
                     f"{record.get('seconds', 0.0):>9.2f}  {record['path']}")
    ingest = outcome.get("stages", {}).get("ingest")
    if ingest:      # every flow starts from the ingest stage: show what data the numbers below come from
        summary = ingest.get("summary") or {}
        counts = ", ".join(_count(k, summary[k]) for k in ("n_users", "n_items", "n_interactions") if k in summary)
        if counts:
            lines += ["", f"dataset: {counts}"]
        if isinstance(summary.get("splits"), dict):
            splits = summary["splits"]
            known = ("train", "valid", "test")
            order = [k for k in known if k in splits] + sorted(set(splits) - set(known))
            lines.append("splits: " + ", ".join(_count(k, splits[k]) for k in order))
    metrics = outcome.get("metrics") or {}
    if metrics:
        width = max(10, *(len(k) + 2 for k in metrics))
        header = "".join(f"{split} {name.replace('recall', 'R').replace('ndcg', 'N')}".rjust(12)
                         for split, name in TABLE_COLUMNS)
        lines += ["", f"{'run':<{width}}{header}"]
        for key, values in metrics.items():
            row = "".join(_fmt(values.get(split, {}).get(name)).rjust(12) for split, name in TABLE_COLUMNS)
            lines.append(f"{key:<{width}}{row}")
    artifacts = {k: v for k, v in (outcome.get("artifacts") or {}).items()}
    if artifacts:
        lines += ["", "artifacts:"] + [f"  {k:<15}{v}" for k, v in artifacts.items()]
    mlflow_info = outcome.get("mlflow") or {}
    if mlflow_info.get("run_id"):
        registry = mlflow_info.get("registered_model") or {}
        lines += ["", f"MLflow run {mlflow_info['run_id']} (experiment {mlflow_info.get('experiment_id')}, "
                      f"Prefect flow run {outcome.get('prefect_flow_run_id')})"]
        if registry.get("champion_version"):
            lines.append(f"registered model {registry['name']} version {registry['champion_version']} "
                         f"(alias champion: {registry['champion_run']})")
        lines.append(f"look at it:  {mlflow_info['ui_command']}")
    return "\n".join(lines)


def _error_paragraph(error: BaseException) -> str:
    # One paragraph: the message's own lines are kept (they name key, file, rows), blank lines are not.
    text = "\n".join(line for line in str(error).strip().splitlines() if line.strip())
    return f"infodcl: error: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_telemetry()
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    _show_library_log(getattr(args, "quiet", False))
    from infodcl.config import ConfigError
    from infodcl.errors import InfoDCLError

    if args.command == "serve":
        from flows.pipeline import NIGHTLY_CRON, serve
        serve(args.datasets, args.cron or NIGHTLY_CRON, args.models)
        return 0
    try:
        if args.json:
            # Only the final JSON object goes to stdout; anything a library prints goes to stderr.
            with contextlib.redirect_stdout(sys.stderr):
                outcome = run_command(args)
        else:
            outcome = run_command(args)
    except (InfoDCLError, ConfigError) as error:
        print(_error_paragraph(error), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("infodcl: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(outcome, default=str, sort_keys=False))
    else:
        print(human_summary(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
