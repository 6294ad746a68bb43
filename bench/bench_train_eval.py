"""Office timings of the trainer and evaluator: seconds per epoch (InfoDCL, LightGCN, MF), a full evaluation, peak memory.

Not a paper section: the speed targets of issue 3 (InfoDCL epoch < 2.5 s, full evaluation of all users < 0.3 s
on 2 CPU cores). Epochs go through the real trainer loop (sampler with rejection, loss terms, Adam step).
Usage: python bench/bench_train_eval.py [--threads 2] [--epochs 2] [--models infodcl,lightgcn,mf] [--device auto]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout without installing

from infodcl.config import EvalConfig, PipelineConfig, load_config
from infodcl.data.dataset import InteractionData
from infodcl.evaluate import _metric_sums, evaluate_model, rank_users
from infodcl.sampler import BPRSampler
from infodcl.train import _run_epoch, make_optimizer, resolve_device, seed_everything

OFFICE_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "office"
EPOCH_TARGET_S = 2.5
EVAL_TARGET_S = 0.3


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # ru_maxrss is KiB on Linux


def load_office() -> tuple[InteractionData, str]:
    """Office through the real ingest stage (from the local mirror of the catalog's files when present)."""
    if OFFICE_DIR.is_dir():
        os.environ.setdefault("INFODCL_DATA_MIRROR", str(OFFICE_DIR.parent))
    from infodcl.data.ingest import ingest_stage
    from infodcl.store import ArtifactStore
    with tempfile.TemporaryDirectory() as tmp:
        result = ingest_stage(load_config("office"), ArtifactStore(tmp))
        return InteractionData.from_dir(result.path), "ingest stage"


def channels_for(data: InteractionData, dim: int = 64) -> tuple[dict[str, np.ndarray], str]:
    """Random stand-ins shaped like the metadata stage's two channels (cost depends on the shape only)."""
    rng = np.random.default_rng(0)
    return ({name: rng.standard_normal((data.n_items, dim)).astype(np.float32) for name in ("social", "knowledge")},
            "random (n_items x 64) x 2")


def bench_epochs(cfg: PipelineConfig, run: str, data: InteractionData, epochs: int, device: torch.device):
    from infodcl.models import build_model
    model_run = cfg.models[run]
    channels, note = channels_for(data) if model_run.model.name == "infodcl" else (None, "")
    seed_everything(2024)
    model = build_model(model_run.model, data, channels).to(device)
    optimizer = make_optimizer(model, model_run.train)
    sampler = BPRSampler(data, seed=2024)
    times, terms = [], {}
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        terms = _run_epoch(model, sampler, optimizer, epoch, model_run.train.batch_size, device, False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return model, times, terms, note


def bench_evaluation(model, data: InteractionData, eval_cfg: EvalConfig, repeats: int = 5):
    """Seconds to rank all items for ALL users (masked train items, top-50, metrics vectorised)."""
    model.eval()
    all_users = np.arange(data.n_users)
    k_max = max(eval_cfg.ks)
    truth_users, truth_items = data.pairs["test"]
    truth_keys = np.unique(truth_users * data.n_items + truth_items)
    n_truth = np.maximum(np.bincount(truth_users, minlength=data.n_users), 1)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.prepare_inference()
        for chunk, top_items, _ in rank_users(model, data, all_users, "test", k_max, eval_cfg.chunk_size):
            keys = chunk[:, None] * data.n_items + top_items
            found = np.searchsorted(truth_keys, keys)
            hits = truth_keys[np.minimum(found, len(truth_keys) - 1)] == keys
            _metric_sums(hits, n_truth[chunk], eval_cfg.ks)
        timings.append(time.perf_counter() - started)
    started = time.perf_counter()
    metrics = evaluate_model(model, data, "test", eval_cfg.ks, eval_cfg.chunk_size)
    split_seconds = time.perf_counter() - started
    return timings, split_seconds, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", default="infodcl,lightgcn,mf")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data, source = load_office()
    cfg = load_config("office")
    print(f"Office via {source}: {data.n_users} users x {data.n_items} items, "
          f"{data.count('train')} train interactions; torch {torch.__version__}, {args.threads} threads, {device}")
    print(f"{'model':10s} {'s/epoch':>8s} {'target':>7s} {'ratio':>6s} {'batch':>6s}  epochs(s)  [last epoch loss terms]")
    eval_model = None
    for run in args.models.split(","):
        model, times, terms, note = bench_epochs(cfg, run, data, args.epochs, device)
        # The first epoch carries one-off warm-up; report the mean of the rest when there are more.
        steady = float(np.mean(times[1:] if len(times) > 1 else times))
        target = EPOCH_TARGET_S if run == "infodcl" else float("nan")
        print(f"{run:10s} {steady:8.3f} {target:7.2f} {steady / target:6.2f} {cfg.models[run].train.batch_size:6d}  "
              f"{[round(t, 3) for t in times]}  {({k: round(v, 4) for k, v in terms.items()})} {note}")
        if eval_model is None or run == "lightgcn":
            eval_model = model
    print(f"peak RSS after training: {peak_rss_mib():.0f} MiB")
    timings, split_seconds, metrics = bench_evaluation(eval_model, data, cfg.evaluate)
    best = min(timings)
    print(f"full evaluation of all {data.n_users} users x {data.n_items} items (chunk {cfg.evaluate.chunk_size}, "
          f"top-{max(cfg.evaluate.ks)}, ks {cfg.evaluate.ks}): best {best:.3f} s, median {np.median(timings):.3f} s; "
          f"target {EVAL_TARGET_S} s, ratio {best / EVAL_TARGET_S:.2f}")
    print(f"evaluate_model(test, {len(data.users_with('test'))} users with GT): {split_seconds:.3f} s; "
          f"recall@20 {metrics['recall@20']:.4f} (untrained-ish model, timing only)")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
