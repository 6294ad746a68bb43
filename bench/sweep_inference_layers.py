"""Post-hoc sweep of InfoDCL's inference propagation depth (spec section 5 / paper Eq. 16, 0-3 layers).

Inference is LightGCN propagation of the trained tables, so the depth can be chosen after training
without retraining. The depth is chosen on **valid** Recall@20; test is printed for every depth only
so the table is complete, and the chosen row is marked.
Usage: python bench/sweep_inference_layers.py ARTIFACTS_ROOT TRAIN_FINGERPRINT16 [...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout without installing

from infodcl.data.dataset import InteractionData
from infodcl.evaluate import evaluate_model, load_trained_model
from infodcl.store import StageResult


def sweep(root: Path, train_fp16: str, layers=(0, 1, 2, 3)) -> list[dict]:
    train_dir = root / "train" / train_fp16
    manifest = json.loads((train_dir / "manifest.json").read_text())
    upstream = manifest.get("upstream", {})
    ingest_dir = root / "ingest" / upstream["ingest"][:16]
    metadata = None
    if upstream.get("metadata"):
        metadata_dir = root / "metadata" / upstream["metadata"][:16]
        metadata = StageResult("metadata", upstream["metadata"], metadata_dir, True)
    data = InteractionData.from_dir(ingest_dir)
    model, saved = load_trained_model(train_dir / "model.pt", data, metadata)
    model.eval()
    rows = []
    for depth in layers:
        model.inference_layers = depth
        model.invalidate_cache()
        valid = evaluate_model(model, data, "valid", (20, 50))
        test = evaluate_model(model, data, "test", (20, 50))
        rows.append({"layers": depth, "valid_recall@20": valid["recall@20"], "test_recall@20": test["recall@20"],
                     "test_ndcg@20": test["ndcg@20"], "test_recall@50": test["recall@50"],
                     "test_ndcg@50": test["ndcg@50"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="artifact store root (e.g. artifacts)")
    parser.add_argument("train", nargs="+", help="train stage directory names (fingerprint prefixes)")
    args = parser.parse_args()
    for train_fp in args.train:
        rows = sweep(args.root, train_fp)
        best = max(rows, key=lambda r: r["valid_recall@20"])
        print(f"train {train_fp}")
        print("layers  valid R@20  test R@20  test N@20  test R@50  test N@50")
        for row in rows:
            mark = "  <- chosen on valid" if row is best else ""
            print(f"{row['layers']:>6}  {row['valid_recall@20']:.4f}      {row['test_recall@20']:.4f}     "
                  f"{row['test_ndcg@20']:.4f}     {row['test_recall@50']:.4f}     {row['test_ndcg@50']:.4f}{mark}")


if __name__ == "__main__":
    main()
