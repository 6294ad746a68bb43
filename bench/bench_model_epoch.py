"""Seconds per training epoch (forward + backward + Adam step) of InfoDCL, LightGCN and MF on Office's train graph.

Not a paper section: the speed target of issue 3 (an InfoDCL epoch on Office < 2.5 s on 2 CPU cores).
Batches are random train pairs with uniform negatives (no rejection): the model's cost, not the sampler's.
Usage: python bench/bench_model_epoch.py [--threads 2] [--epochs 3] [--profile]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from infodcl.config import ModelConfig, PSNetConfig
from infodcl.data.dataset import InteractionData
from infodcl.data.synthetic import long_tail_pairs
from infodcl.models import build_model
from infodcl.models.base import Batch

OFFICE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "office" / "train.txt"


def office_like() -> InteractionData:
    if OFFICE.is_file():
        pairs = np.loadtxt(OFFICE, dtype=np.int64)
        return InteractionData.from_pairs(4905, 2420, (pairs[:, 0], pairs[:, 1]), name="office")
    users, items = long_tail_pairs(4905, 2420, 40877, seed=0)
    return InteractionData.from_pairs(4905, 2420, (users, items), name="office-synthetic")


def epoch_seconds(model, data: InteractionData, batch_size: int, epochs: int,
                  clock=time.perf_counter) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    users, items = (torch.from_numpy(a) for a in data.pairs["train"])
    times = []
    for _ in range(epochs):
        start = clock()
        order = torch.randperm(len(users))
        for begin in range(0, len(users), batch_size):
            idx = order[begin:begin + batch_size]
            batch = Batch(users[idx], items[idx], torch.randint(0, data.n_items, (len(idx),)))
            loss = sum(model.loss(batch).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        times.append(clock() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = office_like()
    rng = np.random.default_rng(0)
    channels = {"social": rng.normal(size=(data.n_items, 64)).astype(np.float32),
                "knowledge": rng.normal(size=(data.n_items, 64)).astype(np.float32)}
    runs = {
        "infodcl (2 channels, reference CR)": (ModelConfig(name="infodcl"), 2000),
        "infodcl (2 channels, light CR)": (ModelConfig(name="infodcl", psnet=PSNetConfig(cr_form="light")), 2000),
        "infodcl (gaussian noise)": (ModelConfig(name="infodcl", noise="gaussian"), 2000),
        "lightgcn (3 layers)": (ModelConfig(name="lightgcn", layers=3), 2048),
        "mf": (ModelConfig(name="mf"), 2048),
    }
    print(f"{data.name}: {data.count('train')} train pairs, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    results = {}
    for label, (cfg, batch_size) in runs.items():
        torch.manual_seed(0)
        model = build_model(cfg, data, channels)
        epoch_seconds(model, data, batch_size, 1)  # warm-up
        times = epoch_seconds(model, data, batch_size, args.epochs)
        # CPU seconds of this process: on a shared machine closer to what an idle one would take (1 thread).
        cpu = epoch_seconds(model, data, batch_size, args.epochs, clock=time.process_time)
        results[label] = min(times)
        print(f"{label:38s} batch {batch_size}: {min(times):.3f} s/epoch wall (min of {args.epochs}; "
              f"median {np.median(times):.3f}), {min(cpu):.3f} s CPU")
    if args.profile:
        torch.manual_seed(0)
        model = build_model(ModelConfig(name="infodcl"), data, channels)
        from torch.profiler import profile
        with profile() as prof:
            epoch_seconds(model, data, 2000, 1)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    base = results["lightgcn (3 layers)"]
    print("ratios to lightgcn: " + ", ".join(f"{k.split(' (')[0] if k == 'mf' else k}: {v / base:.2f}"
                                             for k, v in results.items()))


if __name__ == "__main__":
    main()
