"""Benchmark of the ingest stage on every catalog dataset present in the local mirror (../shared/data).

Issue 2 "done when": ingest of the largest dataset (ml-1m, 1M interactions) takes seconds, not minutes.
Prints per dataset: raw rows, read / prepare / whole-stage seconds, rows/s, and the read time of a
naive per-line Python parser on the same files (side by side, with the ratio). Run:
    .venv/bin/python bench/bench_ingest.py [--repeat 3] [dataset ...]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("INFODCL_DATA_MIRROR", str((REPO.parent / "shared" / "data").resolve()))

from infodcl.config import PipelineConfig  # noqa: E402
from infodcl.data.catalog import load_catalog  # noqa: E402
from infodcl.data.download import mirror_dir  # noqa: E402
from infodcl.data.ingest import ingest_stage, read_source, resolve_source  # noqa: E402
from infodcl.data.prepare import Recipe, prepare  # noqa: E402
from infodcl.store import ArtifactStore  # noqa: E402


def naive_pairs(fmt: str, path: Path) -> int:
    """The obvious per-line Python parser for the same format; returns the interactions it read."""
    pairs = []
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if fmt == "lattice_json":
            if file.name.endswith("2id.json"):
                continue
            for user, items in json.loads(file.read_text()).items():
                for item in items:
                    pairs.append((int(user), int(item)))
            continue
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rt") as handle:
            for line in handle:
                if fmt == "amazon_json":
                    review = json.loads(line)
                    pairs.append((review["reviewerID"], review["asin"], float(review["overall"]),
                                  int(review["unixReviewTime"])))
                else:
                    fields = line.split()
                    if fmt == "adjacency":
                        user = int(fields[0])
                        pairs.extend((user, int(item)) for item in fields[1:])
                    else:
                        pairs.append((int(fields[0]), int(fields[1])))
    return len(pairs)


def best_of(repeat: int, fn):
    times, value = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - started)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", help="catalog names (default: every one in the mirror)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N timings")
    args = parser.parse_args()
    mirror = mirror_dir()
    catalog = load_catalog()
    names = args.datasets or [n for n, e in catalog.items()
                              if mirror is not None and all((mirror / e.root / f.path).is_file() for f in e.files)]
    print(f"mirror: {mirror}; best of {args.repeat}")
    header = (f"{'dataset':<22}{'raw rows':>10}{'read s':>9}{'prep s':>9}{'stage s':>9}{'rows/s':>12}"
              f"{'naive s':>9}{'naive/read':>11}{'reuse s':>9}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as root:
        store = ArtifactStore(root)
        for name in names:
            cfg = PipelineConfig()
            cfg.dataset.name = name
            source = resolve_source(cfg.dataset)
            read_s, raw = best_of(args.repeat, lambda: read_source(source))
            prep_s, _ = best_of(args.repeat, lambda: prepare(raw, Recipe.from_dict(source.recipe)))
            stage_s, result = best_of(args.repeat, lambda: ingest_stage(cfg, store, force=True))
            reuse_s, reused = best_of(args.repeat, lambda: ingest_stage(cfg, store))
            assert reused.reused
            naive_s, naive_rows = best_of(1, lambda: naive_pairs(source.format, source.path))
            assert naive_rows == raw.num_rows, (name, naive_rows, raw.num_rows)
            print(f"{name:<22}{raw.num_rows:>10,}{read_s:>9.3f}{prep_s:>9.3f}{stage_s:>9.3f}"
                  f"{raw.num_rows / stage_s:>12,.0f}{naive_s:>9.3f}{naive_s / read_s:>10.1f}x{reuse_s:>9.3f}")
    print("read = parse + validate into the raw table; stage = resolve + checksum + read + prepare + write "
          "Parquet + manifest (force=True); naive = per-line Python parse only (no validation); "
          "reuse = stage call that finds the stored output")


if __name__ == "__main__":
    main()
