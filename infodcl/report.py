"""Report stage: the comparison table of several runs (like the paper's Table 2) and their training plots.

Spec section 8 (Table 2: Recall/NDCG @20/@50) and section 7 (per-term loss curves, training time per epoch vs Recall@20,
and for InfoDCL runs the SNR of x_t per timestep and the singular-vector alignment of `infodcl.analysis`).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Mapping

from infodcl.config import PipelineConfig, fingerprint
from infodcl.store import ArtifactStore, StageResult, atomic_write_bytes, atomic_write_json

STAGE_NAME = "report"
STAGE_VERSION = 2   # 2: SNR / singular-alignment analyses of InfoDCL runs, loss_balance.png
TABLE_METRICS = ("recall@20", "recall@50", "ndcg@20", "ndcg@50")
SPLITS = ("valid", "test")
PLOTS = ("loss_curves.png", "valid_recall.png", "time_vs_recall.png")
ANALYSIS_FILES = ("snr.png", "snr.json", "singular_alignment.json")
# Fixed settings of the spec-section-7 analyses (part of the fingerprint): a seeded sample of items, evenly
# spaced timesteps for the SNR curves, a few timesteps (fractions of T) and top-k for the alignment.
ANALYSIS_SETTINGS = {"seed": 0, "sample_items": 512, "snr_timesteps": 20,
                     "alignment_fractions": [0.0, 0.25, 0.5, 0.75, 1.0], "alignment_k": 8}


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def comparison_rows(evaluations: Mapping[str, StageResult],
                    trainings: Mapping[str, StageResult]) -> list[dict[str, Any]]:
    """One row per run: model, seed, valid/test metrics of the evaluate stage, training time."""
    rows = []
    for run_key, evaluation in evaluations.items():
        metrics = _read_json(Path(evaluation.path) / "metrics.json", {})
        training = trainings.get(run_key)
        train_metrics = _read_json(Path(training.path) / "train_metrics.json", {}) if training else {}
        row: dict[str, Any] = {"run": run_key, "model_run": train_metrics.get("model_run", run_key),
                               "model": train_metrics.get("model", evaluation.summary.get("model")),
                               "seed": train_metrics.get("seed"), "best_epoch": train_metrics.get("best_epoch"),
                               "epochs_run": train_metrics.get("epochs_run"),
                               "seconds_per_epoch": train_metrics.get("seconds_per_epoch")}
        for split in SPLITS:
            for name in TABLE_METRICS:
                row[f"{split} {name}"] = metrics.get(split, {}).get(name)
        rows.append(row)
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample (n - 1) standard deviation; one value has no spread."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seed_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds for every model run (`infodcl`, `infodcl_gauss`, ...) with 2+ seeds.

    Grouped by the configured run, not the model class: an ablation of InfoDCL is its own row.
    """
    by_run: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_run.setdefault(str(row["model_run"]), []).append(row)
    summary = []
    for model_run, group in by_run.items():
        if len(group) < 2:
            continue
        entry: dict[str, Any] = {"model_run": model_run, "model": group[0]["model"], "n_seeds": len(group),
                                 "seeds": [r["seed"] for r in group]}
        for split in SPLITS:
            for name in TABLE_METRICS:
                values = [r[f"{split} {name}"] for r in group if r[f"{split} {name}"] is not None]
                if values:
                    entry[f"{split} {name}"] = _mean_std(values)
        summary.append(entry)
    return summary


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return f"{value[0]:.4f} ± {value[1]:.4f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], summary: list[dict[str, Any]], dataset: str) -> str:
    columns = [f"{split} {name}" for split in SPLITS for name in TABLE_METRICS]
    header = ["run", "model", "seed"] + [c.replace("recall", "R").replace("ndcg", "N") for c in columns] \
        + ["s/epoch", "best epoch"]
    lines = [f"# Comparison on {dataset}", "",
             "Full ranking over all items, train items masked (valid items too for test); "
             "the epoch of each run is chosen on valid Recall@20 and test is reported at that epoch.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        seconds = row.get("seconds_per_epoch")
        cells = [row["run"], row["model"], row["seed"]] + [row[c] for c in columns] \
            + [None if seconds is None else f"{seconds:.3f}", row.get("best_epoch")]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    if summary:
        lines += ["", "## Mean ± std over seeds", "",
                  "| run | model | seeds | " + " | ".join(c.replace("recall", "R").replace("ndcg", "N") for c in columns)
                  + " |", "|" + "---|" * (len(columns) + 3)]
        for entry in summary:
            lines.append("| " + " | ".join([entry["model_run"], entry["model"], str(entry["n_seeds"])]
                                           + [_fmt(entry.get(c)) for c in columns]) + " |")
    return "\n".join(lines) + "\n"


def _loss_panel(ax, history: list[dict[str, Any]], title: str) -> None:
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    terms = sorted({t for h in history for t in (h.get("terms") or {})})
    for term in terms:
        ax.plot(epochs, [(h.get("terms") or {}).get(term, float("nan")) for h in history], label=term)
    if not terms:
        ax.plot(epochs, [h.get("loss", float("nan")) for h in history], label="loss")
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss term (weighted)")
    ax.legend(fontsize=7)


def training_curves_png(history: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """One run's per-term loss curves (left) and valid Recall@20 (right) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")            # files only; never a display
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    _loss_panel(left, history, title)
    points = [(h["epoch"], h["valid"]["recall@20"]) for h in history
              if isinstance(h.get("valid"), dict) and "recall@20" in h["valid"]]
    if points:
        right.plot(*zip(*points), marker="o")
    right.set_xlabel("epoch")
    right.set_ylabel("valid Recall@20")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _plot(out_dir: Path, rows: list[dict[str, Any]], histories: dict[str, list[dict[str, Any]]]) -> None:
    import matplotlib
    matplotlib.use("Agg")            # files only; never a display
    import matplotlib.pyplot as plt

    # Per-term training loss curves, one panel per run (spec section 7: reconstruction vs BPR ...).
    n = max(1, len(histories))
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.5), squeeze=False)
    for ax, (run_key, history) in zip(axes[0], histories.items()):
        _loss_panel(ax, history, run_key)
    fig.tight_layout()
    fig.savefig(out_dir / "loss_curves.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for run_key, history in histories.items():
        points = [(h["epoch"], h["valid"]["recall@20"]) for h in history
                  if isinstance(h.get("valid"), dict) and "recall@20" in h["valid"]]
        if points:
            ax.plot(*zip(*points), marker="o", label=run_key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid Recall@20")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "valid_recall.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for row in rows:
        x, y = row.get("seconds_per_epoch"), row.get("test recall@20")
        if x is not None and y is not None:
            ax.scatter([x], [y])
            ax.annotate(row["run"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("seconds per training epoch")
    ax.set_ylabel("test Recall@20")
    fig.tight_layout()
    fig.savefig(out_dir / "time_vs_recall.png", dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- InfoDCL analyses (spec section 7)
def _saved_model_config(training: StageResult) -> dict[str, Any] | None:
    """The model config stored in a train stage's model.pt (None when there is no model.pt)."""
    import torch

    model_file = Path(training.path) / "model.pt"
    if not model_file.is_file():
        return None
    return torch.load(model_file, map_location="cpu", weights_only=True).get("model_config")


def load_run_model(store: ArtifactStore, training: StageResult):
    """Rebuild a trained model with `evaluate.load_trained_model`, finding its ingest and metadata outputs in
    the store through the train manifest's upstream fingerprints. Returns (model, saved) or raises LookupError.
    """
    from infodcl.data.dataset import InteractionData
    from infodcl.evaluate import load_trained_model

    upstream = store.manifest(training.path).get("upstream") or {}
    ingest_path = store.lookup("ingest", upstream.get("ingest") or "")
    if ingest_path is None:
        raise LookupError(f"{training.path}: its ingest output {upstream.get('ingest')!r} is not in the store")
    metadata = None
    if upstream.get("metadata"):
        metadata_path = store.lookup("metadata", upstream["metadata"])
        if metadata_path is not None:
            metadata = StageResult("metadata", upstream["metadata"], metadata_path, True)
    data = InteractionData.from_dir(ingest_path)
    try:
        return load_trained_model(Path(training.path) / "model.pt", data, metadata, "cpu")
    except ValueError as error:   # e.g. the metadata output is gone from the store
        raise LookupError(str(error)) from error


def diffusion_analyses(model, settings: Mapping[str, Any] = ANALYSIS_SETTINGS) -> tuple[dict, dict]:
    """(snr record, singular-alignment record) of one InfoDCL model on a seeded item sample."""
    import numpy as np
    import torch

    from infodcl.analysis import sample_items, singular_vector_alignment, snr, snr_per_timestep

    seed = int(settings["seed"])
    items = sample_items(model.n_items, settings["sample_items"], seed)
    steps = model.diffusion.steps
    timesteps = sorted({int(round(x)) for x in np.linspace(0, steps - 1, int(settings["snr_timesteps"]))})
    curves = {kind: snr_per_timestep(model, items, timesteps, kind, seed) for kind in ("informative", "gaussian")}
    with torch.no_grad():
        x0_snr = snr(model.item_embedding[torch.as_tensor(items)])
    snr_record = {"model_noise": "informative" if model.informative_noise else "gaussian",
                  "n_items": len(items), "seed": seed, "timesteps": timesteps, "x0": x0_snr,
                  **{kind: {name: [float(v) for v in values] for name, values in by_channel.items()}
                     for kind, by_channel in curves.items()}}
    k = min(int(settings["alignment_k"]), model.item_embedding.shape[1], len(items))
    alignment: dict[str, Any] = {"k": k, "n_items": len(items), "seed": seed, "by_timestep": []}
    for fraction in settings["alignment_fractions"]:
        t = int(round(float(fraction) * (steps - 1)))
        by_channel = singular_vector_alignment(model, items, t, k, seed)
        alignment["by_timestep"].append({"t": t, **{
            source: {name: {"diagonal": [round(float(v), 6) for v in np.diag(matrices[source])],
                            "matrix": [[round(float(v), 6) for v in row] for row in matrices[source]]}
                     for name, matrices in by_channel.items()}
            for source in ("x0", "noise")}})
    return snr_record, alignment


def _snr_png(path: Path, records: Mapping[str, dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")            # files only; never a display
    import matplotlib.pyplot as plt

    n = max(1, len(records))
    fig, axes = plt.subplots(1, n, figsize=(4.8 * n, 3.6), squeeze=False)
    for ax, (run_key, record) in zip(axes[0], records.items()):
        for colour, name in enumerate(record["informative"]):
            for kind, style in (("informative", "-"), ("gaussian", "--")):
                ax.plot(record["timesteps"], record[kind][name], style, color=f"C{colour}", label=f"{name} {kind}")
        ax.axhline(record["x0"], color="grey", linestyle=":", label="x0")
        ax.set_yscale("log")
        ax.set_title(f"{run_key} (noise: {record['model_noise']})", fontsize=9)
        ax.set_xlabel("timestep t")
        ax.set_ylabel("SNR of x_t (Eq. 17)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _loss_balance_png(path: Path, histories: Mapping[str, list], balance_weights: Mapping[str, float]) -> bool:
    """Reconstruction vs BPR curves of InfoDCL runs with and without the balance loss; False when not both kinds."""
    if not (any(w > 0 for w in balance_weights.values()) and any(w == 0 for w in balance_weights.values())):
        return False
    import matplotlib
    matplotlib.use("Agg")            # files only; never a display
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for run_key, weight in balance_weights.items():
        history = histories.get(run_key) or []
        epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
        label = f"{run_key} (w_cb={weight:g})"
        for ax, term in ((left, "rec"), (right, "bpr")):
            ax.plot(epochs, [(h.get("terms") or {}).get(term, float("nan")) for h in history], label=label)
    for ax, term in ((left, "reconstruction (rec)"), (right, "BPR")):
        ax.set_title(f"{term}, with vs without the balance loss", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss term (weighted)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_analyses(out_dir: Path, store: ArtifactStore, trainings: Mapping[str, StageResult],
                   histories: Mapping[str, list]) -> dict[str, Any]:
    """snr.png / snr.json / singular_alignment.json for every InfoDCL run (and loss_balance.png when there are
    runs with and without the balance loss). Returns {"files": [...], "analysed": [...], "skipped": {run: why}}."""
    import torch

    snr_records, alignments, balance_weights, skipped = {}, {}, {}, {}
    for run_key, training in trainings.items():
        model_cfg = _saved_model_config(training)
        if not model_cfg or model_cfg.get("name") != "infodcl":
            continue
        balance_weights[run_key] = float((model_cfg.get("weights") or {}).get("cb", 0.0))
        try:
            model, _ = load_run_model(store, training)
        except LookupError as error:
            skipped[run_key] = str(error)
            continue
        threads = torch.get_num_threads()
        torch.set_num_threads(1)   # (512, d) matrices: on a busy 2-core machine thread hand-offs cost ~30x
        try:
            snr_records[run_key], alignments[run_key] = diffusion_analyses(model)
        finally:
            torch.set_num_threads(threads)
    files = []
    if snr_records:
        atomic_write_json(out_dir / "snr.json", snr_records)
        atomic_write_json(out_dir / "singular_alignment.json", alignments)
        _snr_png(out_dir / "snr.png", snr_records)
        files += list(ANALYSIS_FILES)
    if _loss_balance_png(out_dir / "loss_balance.png", histories, balance_weights):
        files.append("loss_balance.png")
    return {"files": files, "analysed": list(snr_records), "skipped": skipped}


def report_fingerprint(cfg: PipelineConfig, evaluations: Mapping[str, StageResult],
                       trainings: Mapping[str, StageResult]) -> str:
    return fingerprint(STAGE_NAME, STAGE_VERSION, cfg.dataset.name,
                       {k: v.fingerprint for k, v in evaluations.items()},
                       {k: v.fingerprint for k, v in trainings.items()}, ANALYSIS_SETTINGS)


def report_stage(cfg: PipelineConfig, store: ArtifactStore, evaluations: dict[str, StageResult],
                 trainings: dict[str, StageResult], force: bool = False) -> StageResult:
    """comparison.md / comparison.csv / report.json and the PNG plots for the given runs (keyed by run name)."""
    fp = report_fingerprint(cfg, evaluations, trainings)

    def build(out_dir: Path) -> dict[str, Any]:
        import pandas as pd

        rows = comparison_rows(evaluations, trainings)
        summary = seed_summary(rows)
        atomic_write_bytes(out_dir / "comparison.md", markdown_table(rows, summary, cfg.dataset.name).encode())
        pd.DataFrame(rows).to_csv(out_dir / "comparison.csv", index=False)
        histories = {k: _read_json(Path(t.path) / "history.json", []) for k, t in trainings.items()}
        _plot(out_dir, rows, histories)
        analyses = write_analyses(out_dir, store, trainings, histories)
        atomic_write_json(out_dir / "report.json", {"rows": rows, "seed_summary": summary,
                                                    "analysis_settings": ANALYSIS_SETTINGS, "analyses": analyses})
        ranked = [r for r in rows if r.get("valid recall@20") is not None]
        best = max(ranked, key=lambda r: r["valid recall@20"]) if ranked else None
        return {"runs": len(rows), "best_run": best["run"] if best else None,
                "best_valid_recall@20": best["valid recall@20"] if best else None,
                "best_test_recall@20": best["test recall@20"] if best else None,
                "files": ["comparison.md", "comparison.csv", "report.json", *PLOTS, *analyses["files"]],
                "analysis_skipped": analyses["skipped"]}

    return store.run_stage(STAGE_NAME, fp, build, force=force,
                           meta={"upstream": {"evaluate": {k: v.fingerprint for k, v in evaluations.items()},
                                              "train": {k: v.fingerprint for k, v in trainings.items()}}})
