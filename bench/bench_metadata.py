"""Benchmark of the metadata stage's graphs and channels at Electronics size (pretraining excluded).

Issue 4 "Done when": both Jaccard graphs and both channels for 32,886 users x 52,974 items x 337,837
interactions, seconds and peak memory, against an all-pairs Python loop on a sample, extrapolated.
Run: .venv/bin/python bench/bench_metadata.py [--alpha 0.7] [--social-topk 50|all] [--sample-users 300]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

from infodcl.data.synthetic import long_tail_pairs
from infodcl.metadata.channels import knowledge_channel, social_channel
from infodcl.metadata.similarity import item_similarity, user_similarity

N_USERS, N_ITEMS, N_INTERACTIONS = 32_886, 52_974, 337_837


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # ru_maxrss is KiB on Linux


def python_loop_user_jaccard(item_sets: list[set], sample: int) -> float:
    """The reference's approach: every (u, v) pair in Python, for `sample` users against all users. Seconds."""
    started = time.perf_counter()
    for u in range(sample):
        mine = item_sets[u]
        row = {}
        for v, theirs in enumerate(item_sets):
            if v != u:
                shared = len(mine & theirs)
                if shared:
                    row[v] = shared / (len(mine) + len(theirs) - shared)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alpha", type=float, default=0.7,
                        help="Zipf exponent of long_tail_pairs (0.7 ~ Amazon Office/Baby path density; "
                             "the generator's default 1.1 puts 68%% of users on one item)")
    parser.add_argument("--social-topk", default="50", help="user neighbours kept per user, or 'all'")
    parser.add_argument("--knowledge-topk", type=int, default=20)
    parser.add_argument("--chunk-rows", type=int, default=4096)
    parser.add_argument("--sample-users", type=int, default=300)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    social_topk = None if args.social_topk == "all" else int(args.social_topk)

    users, items = long_tail_pairs(N_USERS, N_ITEMS, N_INTERACTIONS, seed=0, alpha=args.alpha)
    train = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(N_USERS, N_ITEMS))
    item_degree = np.diff(train.tocsc().indptr)
    paths = int((item_degree.astype(np.int64) ** 2).sum())
    print(f"matrix: {N_USERS:,} users x {N_ITEMS:,} items, {train.nnz:,} interactions (alpha {args.alpha}); "
          f"top item has {item_degree.max():,} users ({item_degree.max() / N_USERS:.1%}), "
          f"{(item_degree == 0).sum():,} items have none; R R^T paths {paths:,} ({paths / N_USERS**2:.3f} n_u^2)")
    rng = np.random.default_rng(0)
    user_emb = rng.normal(size=(N_USERS, args.dim)).astype(np.float32)   # pretraining is excluded: random tables
    item_emb = rng.normal(size=(N_ITEMS, args.dim)).astype(np.float32)
    base_rss = peak_rss_gib()

    timings = {}
    started = time.perf_counter()
    user_graph = user_similarity(train, social_topk, args.chunk_rows, progress=True)
    timings["user graph"] = time.perf_counter() - started
    started = time.perf_counter()
    item_graph = item_similarity(train, args.knowledge_topk, args.chunk_rows, progress=True)
    timings["item graph"] = time.perf_counter() - started
    started = time.perf_counter()
    social = social_channel(user_graph, train, user_emb, item_emb)
    timings["social channel"] = time.perf_counter() - started
    started = time.perf_counter()
    knowledge = knowledge_channel(item_graph, item_emb)
    timings["knowledge channel"] = time.perf_counter() - started
    total = sum(timings.values())
    assert social.shape == knowledge.shape == (N_ITEMS, args.dim)

    print(f"user graph: top-k {social_topk or 'all'}, {user_graph.nnz:,} entries; "
          f"item graph: top-k {args.knowledge_topk}, {item_graph.nnz:,} entries")
    for name, seconds in timings.items():
        print(f"  {name:<18} {seconds:8.2f} s")
    print(f"total (graphs + channels): {total:.2f} s   target < 60 s   -> {'OK' if total < 60 else 'OVER'}")
    peak = peak_rss_gib()
    print(f"peak RSS: {peak:.2f} GiB (data + tables before: {base_rss:.2f} GiB)   target < 4 GiB   -> "
          f"{'OK' if peak < 4 else 'OVER'}")

    item_sets = [set(train.indices[train.indptr[u]:train.indptr[u + 1]]) for u in range(N_USERS)]
    sample = min(args.sample_users, N_USERS)
    loop_seconds = python_loop_user_jaccard(item_sets, sample)
    # The loop is O(n_u^2): `sample` rows of n_u pairs each; the full user graph has n_u rows.
    extrapolated = loop_seconds * N_USERS / sample
    print(f"python all-pairs loop (user graph only): {sample} users x {N_USERS:,} in {loop_seconds:.2f} s "
          f"-> {extrapolated:,.0f} s ({extrapolated / 3600:.2f} h) for all {N_USERS:,} users")
    print(f"ratio loop / sparse user graph: {extrapolated / timings['user graph']:.0f}x; "
          f"loop user graph / whole sparse metadata: {extrapolated / total:.0f}x")


if __name__ == "__main__":
    main()
