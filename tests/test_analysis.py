"""Spec section 7 analyses (infodcl.analysis): SNR of x_t (paper Eq. 17), singular-vector alignment, t-SNE,
and their report output (snr.png, snr.json, singular_alignment.json, loss_balance.png)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from infodcl.analysis import (item_embedding_tsne, sample_items, singular_vector_alignment,
                              singular_vector_cosines, snr, snr_per_timestep)
from infodcl.config import EvalConfig, LossWeights, ModelConfig, PipelineConfig, TrainConfig
from infodcl.data.synthetic import synthetic_dataset
from infodcl.models import build_model
from infodcl.store import ArtifactStore

DIM, STEPS, N_ITEMS = 16, 20, 40


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model_config(**overrides) -> ModelConfig:
    # Linear schedule from beta 1e-8: x_t at t=0 is x0 up to 1e-4 x noise; beta_end 0.5 drowns x0 by t = T-1.
    base = dict(name="infodcl", dim=DIM, steps=STEPS, schedule="linear", beta_start=1e-8, beta_end=0.5)
    return ModelConfig(**{**base, **overrides})


def tiny_channels(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"social": rng.standard_normal((N_ITEMS, 8)).astype(np.float32),
            "knowledge": rng.standard_normal((N_ITEMS, 12)).astype(np.float32)}


@pytest.fixture
def model():
    data = synthetic_dataset(n_users=60, n_items=N_ITEMS, n_interactions=600, seed=0)
    torch.manual_seed(0)
    built = build_model(tiny_model_config(), data, tiny_channels())
    with torch.no_grad():
        # A per-dimension offset gives x0 a real signal (mean) to lose; N(0, 0.1^2) tables have almost none.
        built.item_embedding += torch.linspace(-0.3, 0.3, DIM)
    return built


def numpy_snr(x: np.ndarray) -> float:
    """Eq. 17 written out: per column mean^2 / population variance over the rows, averaged over columns."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x.mean(axis=0) ** 2 / x.var(axis=0)))


# --------------------------------------------------------------------------- SNR
def test_snr_of_a_hand_computed_matrix():
    # Column 0: mean 2, variance 1 -> 4; column 1: mean 1, variance 1 -> 1; averaged: 2.5.
    assert snr(torch.tensor([[1.0, 0.0], [3.0, 2.0]])) == pytest.approx(2.5)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((30, 5)) + np.arange(5)
    assert snr(x) == pytest.approx(numpy_snr(x), rel=1e-12)
    with pytest.raises(ValueError, match="B >= 2"):
        snr(torch.ones(1, 4))


def test_snr_at_t0_is_the_snr_of_x0_when_the_noise_weight_vanishes(model):
    assert float(model.diffusion.sqrt_one_minus_alpha_bar[0]) < 2e-4      # noise weight ~1e-4 at t=0
    items = sample_items(N_ITEMS, 32, seed=1)
    x0 = model.item_embedding.detach()[torch.as_tensor(items)].numpy()   # (32, d)
    expected = numpy_snr(x0)
    assert expected > 1.0                                                 # the offset makes it a real signal
    for kind in ("informative", "gaussian"):
        curves = snr_per_timestep(model, items, [0], kind, seed=0)
        assert set(curves) == {"social", "knowledge"}
        for values in curves.values():
            assert values.shape == (1,)
            assert values[0] == pytest.approx(expected, rel=2e-3)


def test_snr_falls_with_t_for_gaussian_noise(model):
    items = sample_items(N_ITEMS, N_ITEMS, seed=0)
    timesteps = list(range(0, STEPS, 2))
    for values in snr_per_timestep(model, items, timesteps, "gaussian", seed=0).values():
        steps = np.diff(values)
        assert values[-1] < 0.05 * values[0]                              # x0 is drowned by the end
        assert (steps < 0).mean() >= 0.8 and steps.mean() < 0


def test_snr_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone(model):
    items = sample_items(N_ITEMS, 24, seed=2)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = snr_per_timestep(model, items, [0, 5, 19], "informative", seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    again = snr_per_timestep(model, items, [0, 5, 19], "informative", seed=7)
    other = snr_per_timestep(model, items, [0, 5, 19], "informative", seed=8)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
        assert not np.array_equal(first[name], other[name])              # the noise really comes from the seed
    assert model.training                                                 # its mode is restored


def test_snr_rejects_bad_arguments(model):
    with pytest.raises(ValueError, match="outside 0..19"):
        snr_per_timestep(model, [0, 1, 2], [STEPS], "gaussian")
    with pytest.raises(ValueError, match="'informative' or 'gaussian'"):
        snr_per_timestep(model, [0, 1, 2], [0], "uniform")


# --------------------------------------------------------------------------- singular-vector alignment
def test_singular_vector_cosines_of_a_matrix_with_itself_are_the_identity():
    rng = np.random.default_rng(0)
    # Orthonormal columns scaled 6..1: the right singular vectors are exactly the axes e_0..e_5, in order.
    orthonormal, _ = np.linalg.qr(rng.standard_normal((50, 6)))
    a = orthonormal * np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])           # (50, 6)
    np.testing.assert_allclose(singular_vector_cosines(a, a, 4), np.eye(4), atol=1e-9)
    # Scale and sign do not change singular directions; |cos| ignores the arbitrary sign.
    np.testing.assert_allclose(singular_vector_cosines(a, -3.0 * a, 4), np.eye(4), atol=1e-9)
    # Swapping the two strongest columns swaps the first two directions: e_0 <-> e_1.
    swapped = a[:, [1, 0, 2, 3, 4, 5]]
    np.testing.assert_allclose(singular_vector_cosines(a, swapped, 3),
                               [[0, 1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-9)


def test_alignment_values_are_cosines_and_deterministic(model):
    items = sample_items(N_ITEMS, 32, seed=0)
    result = singular_vector_alignment(model, items, t=5, k=4, seed=0)
    assert set(result) == {"social", "knowledge"}
    for by_source in result.values():
        assert set(by_source) == {"x0", "noise"}
        for matrix in by_source.values():
            assert matrix.shape == (4, 4)
            assert np.all((matrix >= 0) & (matrix <= 1))
    again = singular_vector_alignment(model, items, t=5, k=4, seed=0)
    for name in result:
        for source in ("x0", "noise"):
            np.testing.assert_array_equal(result[name][source], again[name][source])


def test_item_embedding_tsne_is_seeded(model):
    pytest.importorskip("sklearn")
    items = sample_items(N_ITEMS, 30, seed=0)
    first = item_embedding_tsne({"infodcl": model}, items, seed=0, perplexity=5)
    again = item_embedding_tsne({"infodcl": model}, items, seed=0, perplexity=5)
    assert first["infodcl"].shape == (30, 2)
    np.testing.assert_allclose(first["infodcl"], again["infodcl"])


# --------------------------------------------------------------------------- report output
def _put_ingest(store: ArtifactStore, data):
    """The ingest stage's tables for `data`, stored under a fingerprint (so the report can find them)."""
    def build(out_dir):
        data.write_dir(out_dir)
        return {}
    return store.run_stage("ingest", "a" * 64, build)


def _put_metadata(store: ArtifactStore, channels: dict[str, np.ndarray]):
    """channel_<name>.npy files as the metadata stage writes them (what load_channels reads)."""
    def build(out_dir):
        for name, rows in channels.items():
            np.save(out_dir / f"channel_{name}.npy", rows)
        return {"channels": list(channels)}
    return store.run_stage("metadata", "b" * 64, build)


@pytest.mark.slow
def test_report_writes_the_analyses_of_infodcl_runs(tmp_path):
    from infodcl.evaluate import evaluate_stage
    from infodcl.report import ANALYSIS_FILES, report_stage
    from infodcl.train import train_stage

    data = synthetic_dataset(n_users=60, n_items=N_ITEMS, n_interactions=600, seed=0)
    store = ArtifactStore(tmp_path / "store")
    ingest, metadata = _put_ingest(store, data), _put_metadata(store, tiny_channels())
    cfg = PipelineConfig()
    fast = TrainConfig(epochs=2, eval_every=1, patience=10, batch_size=128, progress=False, device="cpu")
    cfg.models = {"infodcl": {"model": tiny_model_config(), "train": fast},
                  "infodcl_nocb": {"model": tiny_model_config(weights=LossWeights(cb=0.0)), "train": fast},
                  "mf": {"model": ModelConfig(name="mf", dim=DIM), "train": fast}}
    cfg.evaluate = EvalConfig(ks=[10, 20], chunk_size=32, topk_export=3)
    trainings, evaluations = {}, {}
    for run in cfg.models:
        trainings[run] = train_stage(cfg, store, run, ingest, metadata)
        evaluations[run] = evaluate_stage(cfg, store, run, ingest, metadata, trainings[run])

    report = report_stage(cfg, store, evaluations, trainings)
    files = {p.name for p in report.path.iterdir()}
    assert set(ANALYSIS_FILES) | {"loss_balance.png"} <= files
    assert set(ANALYSIS_FILES) | {"loss_balance.png"} <= set(report.summary["files"])
    snr_record = json.loads((report.path / "snr.json").read_text())
    assert set(snr_record) == {"infodcl", "infodcl_nocb"}                  # mf has no diffusion
    record = snr_record["infodcl"]
    assert record["model_noise"] == "informative" and record["n_items"] == N_ITEMS
    assert record["timesteps"][0] == 0 and record["timesteps"][-1] == STEPS - 1
    for kind in ("informative", "gaussian"):
        for values in record[kind].values():
            assert len(values) == len(record["timesteps"]) and np.all(np.isfinite(values))
    # The report's numbers are the library's numbers on the same seeded sample.
    from infodcl.report import ANALYSIS_SETTINGS, load_run_model
    model, _ = load_run_model(store, trainings["infodcl"])
    items = sample_items(N_ITEMS, ANALYSIS_SETTINGS["sample_items"], ANALYSIS_SETTINGS["seed"])
    direct = snr_per_timestep(model, items, record["timesteps"], "gaussian", ANALYSIS_SETTINGS["seed"])
    np.testing.assert_allclose(record["gaussian"]["social"], direct["social"], rtol=1e-12)
    alignment = json.loads((report.path / "singular_alignment.json").read_text())["infodcl"]
    assert [entry["t"] for entry in alignment["by_timestep"]] == [0, 5, 10, 14, 19]
    for entry in alignment["by_timestep"]:
        for source in ("x0", "noise"):
            for by_channel in entry[source].values():
                assert len(by_channel["diagonal"]) == alignment["k"]
                assert all(0 <= v <= 1 for v in by_channel["diagonal"])
    assert report.summary["analysis_skipped"] == {}

    # A run whose ingest output is not in the store is reported as skipped, not failed.
    other = ArtifactStore(tmp_path / "other")
    moved = other.stage_path("train", trainings["infodcl"].fingerprint)
    shutil.copytree(trainings["infodcl"].path, moved)
    lone = type(trainings["infodcl"])("train", trainings["infodcl"].fingerprint, moved, True, {})
    skipped = report_stage(cfg, other, {"infodcl": evaluations["infodcl"]}, {"infodcl": lone})
    assert "infodcl" in skipped.summary["analysis_skipped"]
    assert "ingest" in skipped.summary["analysis_skipped"]["infodcl"]
    assert not (skipped.path / "snr.json").exists()
