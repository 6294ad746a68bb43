"""Data contracts: Great Expectations suites over the ingest stage's tables, and the `validate` stage.

Issue 2 item 6 (not a paper section): ids in range and dense, no nulls, no duplicate (user, item), known
splits, the cold-start rule, counts equal to the dataset card. The suites live in `data_contracts/*.json`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow.parquet as pq

import infodcl  # noqa: F401  (sets GX_ANALYTICS_ENABLED=False before great_expectations is imported)
from infodcl.config import PipelineConfig, fingerprint
from infodcl.data.dataset import CARD_FILE, INTERACTIONS_FILE, ITEMS_FILE, SPLITS, USERS_FILE
from infodcl.errors import ContractError, DataError
from infodcl.store import ArtifactStore, StageResult, atomic_write_json

import great_expectations as gx  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402
from great_expectations.execution_engine import PandasExecutionEngine  # noqa: E402
from great_expectations.expectations.expectation import ColumnPairMapExpectation  # noqa: E402
from great_expectations.expectations.metrics.map_metric_provider import (  # noqa: E402
    ColumnPairMapMetricProvider,
    column_pair_condition_partial,
)
from great_expectations.render import LegacyRendererType, RenderedStringTemplateContent  # noqa: E402
from great_expectations.render.renderer.renderer import renderer  # noqa: E402

STAGE = "validate"
STAGE_VERSION = 1
# The suites sit at the repository's top level (an editable install); INFODCL_CONTRACTS_DIR points elsewhere.
CONTRACTS_DIR = Path(os.environ.get("INFODCL_CONTRACTS_DIR") or Path(__file__).resolve().parents[2] / "data_contracts")
RAW_INTERACTIONS_FILE = "raw_interactions.parquet"
VALIDATION_FILE = "validation.json"
DATA_DOCS_DIR = "data_docs"
FAILED_DIR = "_failed"

# Suite name -> the table of the ingest output it checks (the order the report lists them in).
SUITE_FILES = {
    "raw_interactions": RAW_INTERACTIONS_FILE,
    "canonical_interactions": INTERACTIONS_FILE,
    "canonical_users": USERS_FILE,
    "canonical_items": ITEMS_FILE,
}


# --------------------------------------------------------------------------- custom expectation
class HeldOutValuesInTrain(ColumnPairMapMetricProvider):
    """Row-wise: a row of column_B == "train" passes; any other row passes iff its column_A value has a train row."""
    condition_metric_name = "column_pair_values.held_out_in_train"
    condition_domain_keys = ("batch_id", "table", "column_A", "column_B", "row_condition", "condition_parser",
                             "ignore_row_if")
    condition_value_keys = ()

    @column_pair_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_A, column_B, **kwargs):  # noqa: N803 (GE's argument names)
        in_train = column_B == "train"
        return in_train | column_A.isin(pd.unique(column_A[in_train]))


class ExpectHeldOutValuesToAppearInTrain(ColumnPairMapExpectation):
    """Expect every value of column_A on a held-out row (column_B = split is valid/test) to occur on a train row.

    The cold-start rule of the canonical table: `column_A="user"` always, `column_A="item"` when
    `validate.cold_start == "forbid"`. Offending rows are reported as (value, split) pairs with their row index.
    """
    ignore_row_if: Literal["both_values_are_missing", "either_value_is_missing", "neither"] = (
        "both_values_are_missing")
    map_metric = "column_pair_values.held_out_in_train"
    success_keys = ("column_A", "column_B", "ignore_row_if", "mostly")
    args_keys = ("column_A", "column_B")
    library_metadata = {"maturity": "experimental", "tags": ["infodcl", "cold start"],
                        "contributors": ["infodcl"]}

    @classmethod
    @renderer(renderer_type=LegacyRendererType.PRESCRIPTIVE)
    def _prescriptive_renderer(cls, configuration=None, result=None, runtime_configuration=None, **kwargs):
        # The sentence Data Docs shows for this expectation (GE's own core expectations ship one each).
        params = dict((configuration.kwargs if configuration else {}))
        return [RenderedStringTemplateContent(content_block_type="string_template", string_template={
            "template": "Every $column_A on a row whose $column_B is not train must also appear on a train row.",
            "params": params, "styling": (runtime_configuration or {}).get("styling")})]


# --------------------------------------------------------------------------- suites
def load_suite_dict(name: str, contracts_dir: Path = CONTRACTS_DIR) -> dict[str, Any]:
    path = Path(contracts_dir) / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: data contract suite {name!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def select_expectations(suite: dict[str, Any], columns: set[str], cold_start: str) -> dict[str, Any]:
    """The suite's expectations that apply here.

    Meta flags in the JSON: `optional_column` drops an expectation whose column the table lacks (e.g. no
    rating); `only_when: {"cold_start": "forbid"}` keeps it only under that config value.
    """
    kept = []
    for expectation in suite["expectations"]:
        meta = expectation.get("meta") or {}
        if meta.get("optional_column") and expectation["kwargs"].get("column") not in columns:
            continue
        only_when = meta.get("only_when") or {}
        if "cold_start" in only_when and only_when["cold_start"] != cold_start:
            continue
        kept.append(expectation)
    return {**suite, "expectations": kept}


def card_parameters(card: dict[str, Any], source: Path) -> dict[str, int]:
    """The suite parameters ($PARAMETER names in the JSON suites) taken from the dataset card."""
    try:
        n_users, n_items = int(card["n_users"]), int(card["n_items"])
        params = {"n_users": n_users, "n_items": n_items, "n_interactions": int(card["n_interactions"]),
                  "max_user_index": n_users - 1, "max_item_index": n_items - 1}
        splits = card.get("splits") or {}
        for split in SPLITS:
            params[f"n_{split}"] = int(splits.get(split, 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{source}: dataset card lacks or mistypes a count ({exc!r}); expected integer "
                        f"n_users, n_items, n_interactions and splits {{train, valid, test}}") from None
    return params


# --------------------------------------------------------------------------- running the suites
@dataclass
class ContractReport:
    """The outcome of all suites on one ingest output directory."""
    success: bool
    suites: dict[str, dict[str, Any]]   # suite name -> {success, file, statistics, results}
    seconds: float

    @property
    def n_expectations(self) -> int:
        return sum(len(s["results"]) for s in self.suites.values())

    @property
    def n_failed(self) -> int:
        return sum(1 for s in self.suites.values() for r in s["results"] if not r["success"])

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "n_expectations": self.n_expectations, "n_failed": self.n_failed,
                "seconds": round(self.seconds, 3), "suites": self.suites}


def _new_context(data_docs_dir: Path):
    """A fresh in-memory GE context (creation costs ~10 ms) with one Data Docs site written to `data_docs_dir`."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    for default_site in list(context.get_config().data_docs_sites or {}):
        context.delete_data_docs_site(default_site)   # the default site would point at a temp dir
    context.add_data_docs_site(site_name="infodcl", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(data_docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    return context


def _compact_result(result: dict[str, Any]) -> dict[str, Any]:
    """One expectation's result as kept in validation.json: what was checked, and what was seen."""
    config = result["expectation_config"]
    kwargs = {k: v for k, v in config["kwargs"].items() if k not in ("batch_id",)}
    outcome = result.get("result") or {}
    kept = {key: outcome[key] for key in ("observed_value", "element_count", "unexpected_count",
                                          "unexpected_percent", "missing_count", "partial_unexpected_list",
                                          "partial_unexpected_index_list", "details") if key in outcome}
    exception = result.get("exception_info") or {}
    entry = {"expectation": config["type"], "kwargs": kwargs, "success": bool(result["success"]),
             "result": kept, "notes": config.get("notes")}
    if exception.get("raised_exception"):
        entry["exception"] = exception.get("exception_message")
    return entry


def run_contracts(data_dir: str | Path, out_dir: str | Path, cold_start: str = "allow", sample_rows: int = 5,
                  contracts_dir: Path = CONTRACTS_DIR) -> ContractReport:
    """Validate an ingest output directory against every suite; write `validation.json` and `data_docs/`.

    One GE Checkpoint runs one ValidationDefinition per table (a pandas filesystem datasource reading
    the Parquet files), with the card's counts as suite parameters; its UpdateDataDocsAction builds the HTML.
    """
    started = time.perf_counter()
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir)
    card_path = data_dir / CARD_FILE
    if not card_path.is_file():
        raise DataError(f"{card_path}: dataset card missing; expected the ingest stage's output directory")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{card_path}: not valid JSON ({exc})") from None
    parameters = card_parameters(card, card_path)

    context = _new_context(out_dir / DATA_DOCS_DIR)
    datasource = context.data_sources.add_pandas_filesystem(name="ingest", base_directory=data_dir)
    definitions = []
    for suite_name, file_name in SUITE_FILES.items():
        table_path = data_dir / file_name
        if not table_path.is_file():
            raise DataError(f"{table_path}: missing; the contract {suite_name!r} needs it "
                            f"(expected the ingest stage's output directory)")
        columns = set(pq.read_schema(table_path).names)
        suite_dict = select_expectations(load_suite_dict(suite_name, contracts_dir), columns, cold_start)
        suite = context.suites.add(gx.ExpectationSuite(
            name=suite_name, expectations=suite_dict["expectations"], meta=suite_dict.get("meta"),
            notes=suite_dict.get("notes")))
        asset = datasource.add_parquet_asset(name=suite_name)
        batch = asset.add_batch_definition_path(name=file_name, path=file_name)
        definitions.append(context.validation_definitions.add(
            gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="infodcl_contracts", validation_definitions=definitions,
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": max(sample_rows, 1)}))
    outcome = checkpoint.run(expectation_parameters=parameters)
    # One site build for all suites (an UpdateDataDocsAction would rebuild the whole site once per suite).
    context.build_data_docs(site_names=["infodcl"])

    suites: dict[str, dict[str, Any]] = {}
    for run_result in outcome.run_results.values():
        as_dict = run_result.to_json_dict()
        name = as_dict["suite_name"]
        suites[name] = {"success": bool(as_dict["success"]), "file": SUITE_FILES[name],
                        "statistics": as_dict["statistics"],
                        "results": [_compact_result(r) for r in as_dict["results"]]}
    suites = {name: suites[name] for name in SUITE_FILES if name in suites}
    report = ContractReport(success=bool(outcome.success), suites=suites, seconds=time.perf_counter() - started)
    atomic_write_json(out_dir / VALIDATION_FILE,
                      {**report.to_dict(), "data_dir": str(data_dir), "parameters": parameters,
                       "cold_start": cold_start, "great_expectations_version": gx.__version__})
    return report


def failure_message(report: ContractReport, data_dir: Path, report_dir: Path, sample_rows: int = 5) -> str:
    """A readable account of every failed expectation: suite, expectation, column, a few offending rows."""
    lines = [f"data contract failed for {data_dir}: {report.n_failed} of {report.n_expectations} expectations"]
    for suite_name, suite in report.suites.items():
        for entry in suite["results"]:
            if entry["success"]:
                continue
            kwargs = entry["kwargs"]
            if "column_list" in kwargs:
                target = f"columns {kwargs['column_list']!r}"
            elif kwargs.get("column") or kwargs.get("column_A"):
                target = f"column {kwargs.get('column') or kwargs.get('column_A')!r}"
            else:
                target = "the table"
            condition = kwargs.get("row_condition")
            if isinstance(condition, dict):   # GE serialises a pandas row_condition as a pass-through filter
                condition = condition.get("pass_through_filter") or condition
            if condition:
                target += f" where {condition}"
            expected = {k: v for k, v in kwargs.items()
                        if k not in ("column", "column_A", "column_B", "column_list", "row_condition",
                                     "condition_parser")}
            result = entry["result"]
            head = (f"  - suite {suite_name} ({suite['file']}): {entry['expectation']} on {target}"
                    + (f" expecting {expected}" if expected else ""))
            if entry.get("exception"):
                lines.append(f"{head}: raised {entry['exception']}")
            elif "unexpected_count" in result:
                rows = (result.get("partial_unexpected_index_list") or [])[:sample_rows]
                values = (result.get("partial_unexpected_list") or [])[:sample_rows]
                lines.append(f"{head}: {result['unexpected_count']} of {result.get('element_count')} rows "
                             f"unexpected; rows {rows} (0-based, file order) have values {values}")
            else:
                lines.append(f"{head}: observed {result.get('observed_value')!r}")
    lines.append(f"report: {report_dir / VALIDATION_FILE} (Data Docs: {report_dir / DATA_DOCS_DIR / 'index.html'})")
    return "\n".join(lines)


def _keep_failed_report(build_dir: Path, failed_dir: Path) -> None:
    """Move a failed run's report into `_failed/<fp16>/` by rename, replacing an older one, never half-written."""
    failed_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=failed_dir.parent, prefix=f".{failed_dir.name}.tmp-"))
    try:
        for child in build_dir.iterdir():
            shutil.move(str(child), staging / child.name)
        if failed_dir.exists():
            trash = failed_dir.parent / f".{failed_dir.name}.old-{os.getpid()}-{time.time_ns()}"
            os.replace(failed_dir, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(staging, failed_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- the stage
def contract_hashes(contracts_dir: Path = CONTRACTS_DIR) -> dict[str, str]:
    """Content of each suite, so that editing a contract re-runs validation."""
    from infodcl.store import sha256_file
    return {name: sha256_file(Path(contracts_dir) / f"{name}.json") for name in SUITE_FILES}


def validate_stage(cfg: PipelineConfig, store: ArtifactStore, ingest: StageResult,
                   force: bool = False) -> StageResult:
    """Run the data contracts on the ingest output; output `validation.json` and `data_docs/`.

    On failure nothing is stored under the stage's fingerprint: the report goes to
    `<store.root>/validate/_failed/<fp16>/` and a ContractError names the failed expectations.
    """
    settings = cfg.validate_
    stage_fp = fingerprint(STAGE, STAGE_VERSION, settings.model_dump(mode="json"), ingest.fingerprint,
                           contract_hashes())
    data_dir = Path(ingest.path)

    def build(tmp: Path) -> dict[str, Any]:
        if not settings.enabled:
            atomic_write_json(tmp / VALIDATION_FILE, {"success": True, "skipped": "validate.enabled is false"})
            return {"success": True, "skipped": True, "n_expectations": 0, "n_failed": 0}
        report = run_contracts(data_dir, tmp, cold_start=settings.cold_start, sample_rows=settings.sample_rows)
        failed_dir = store.root / STAGE / FAILED_DIR / stage_fp[:16]
        if report.success:
            shutil.rmtree(failed_dir, ignore_errors=True)   # an older failure of the same inputs is stale now
        else:
            message = failure_message(report, data_dir, failed_dir, settings.sample_rows)
            _keep_failed_report(tmp, failed_dir)
            raise ContractError(message)
        return {"success": True, "n_expectations": report.n_expectations, "n_failed": 0,
                "seconds": round(report.seconds, 3)}

    return store.run_stage(STAGE, stage_fp, build, force=force,
                           meta={"ingest_fingerprint": ingest.fingerprint, "data_dir": str(data_dir)})
