"""The metadata stage: outputs, reuse/force, embeddings switch, external channels, load_channels, pretraining."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from infodcl.config import ConfigError, EvalConfig, PretrainConfig, load_config
from infodcl.data.dataset import InteractionData
from infodcl.data.synthetic import synthetic_dataset
from infodcl.errors import DataError
from infodcl.metadata import pretrain as pretrain_module
from infodcl.metadata.channels import knowledge_channel, social_channel
from infodcl.metadata.similarity import load_graph
from infodcl.metadata.stage import load_channels, metadata_stage
from infodcl.store import ArtifactStore, StageResult

EXPECTED_FILES = ["pretrained_user.npy", "pretrained_item.npy", "pretrained_user_layer0.npy",
                  "pretrained_item_layer0.npy", "user_similarity.npz", "item_similarity.npz", "user_similarity.json",
                  "item_similarity.json",
                  "pretrain_history.json", "channel_social.npy", "channel_social.json",
                  "channel_knowledge.npy", "channel_knowledge.json", "manifest.json"]


def write_ingest_dir(path: Path, data: InteractionData) -> StageResult:
    """A minimal ingest-stage output (the canonical tables of infodcl/data/dataset.py) for `data`."""
    path.mkdir(parents=True)
    frames = [pd.DataFrame({"user": u, "item": i, "split": split}) for split, (u, i) in data.pairs.items()]
    pd.concat(frames, ignore_index=True).to_parquet(path / "interactions.parquet")
    pd.DataFrame({"user": np.arange(data.n_users), "original_id": [f"U{u}" for u in range(data.n_users)]}
                 ).to_parquet(path / "users.parquet")
    pd.DataFrame({"item": np.arange(data.n_items), "original_id": [f"I{i}" for i in range(data.n_items)]}
                 ).to_parquet(path / "items.parquet")
    (path / "dataset.json").write_text(json.dumps({"name": "tiny", "n_users": data.n_users,
                                                   "n_items": data.n_items}))
    return StageResult("ingest", "f" * 64, path, reused=False)


class FakePretrain:
    """Stands in for LightGCN pretraining: fixed random tables, counts its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, data, pretrain, seed, eval_cfg=None, checkpoint_path=None, resume=True, progress=True):
        self.calls.append({"seed": seed, "resume": resume, "checkpoint_path": checkpoint_path})
        rng = np.random.default_rng(seed)
        tables = [rng.normal(size=(n, pretrain.dim)).astype(np.float32)
                  for n in (data.n_users, data.n_items, data.n_users, data.n_items)]
        return pretrain_module.PretrainResult(*tables, best_epoch=10, best_valid={"recall@20": 0.5},
                                              test_at_best={"recall@20": 0.4}, history=[{"epoch": 10}])


@pytest.fixture
def setup(tmp_path, monkeypatch, tiny_data):
    fake = FakePretrain()
    monkeypatch.setattr(pretrain_module, "pretrain_lightgcn", fake)
    ingest = write_ingest_dir(tmp_path / "ingest", tiny_data)
    store = ArtifactStore(tmp_path / "artifacts")
    cfg = load_config(overrides=["metadata.pretrain.dim=8", "metadata.knowledge_topk=5"])
    return cfg, store, ingest, fake, tiny_data


def test_outputs_and_channels_match_the_definitions(setup):
    cfg, store, ingest, fake, data = setup
    result = metadata_stage(cfg, store, ingest, progress=False)
    assert not result.reused and sorted(p.name for p in result.path.iterdir()) == sorted(EXPECTED_FILES)
    assert result.summary["channels"] == ["social", "knowledge"]
    assert fake.calls[0]["seed"] == cfg.models["infodcl"].train.seed
    user = np.load(result.path / "pretrained_user.npy")
    item = np.load(result.path / "pretrained_item.npy")
    user_graph, user_card = load_graph(result.path / "user_similarity.npz")
    item_graph, item_card = load_graph(result.path / "item_similarity.npz")
    assert user_card["interactions_fingerprint"] == item_card["interactions_fingerprint"]
    assert user_card["ingest_fingerprint"] == ingest.fingerprint
    assert (np.diff(item_graph.indptr) <= 5).all()
    channels = load_channels(result.path)
    assert list(channels) == ["social", "knowledge"]
    train = data.train_matrix
    np.testing.assert_allclose(channels["social"], social_channel(user_graph, train, user, item), rtol=1e-6)
    np.testing.assert_allclose(channels["knowledge"], knowledge_channel(item_graph, item), rtol=1e-6)
    card = json.loads((result.path / "channel_social.json").read_text())
    assert card["shape"] == [data.n_items, 8] and card["inputs"]["embeddings"] == "propagated"
    assert set(card["row_norm"]) == {"mean", "min", "max"}


def test_rerun_reuses_and_force_recomputes(setup):
    cfg, store, ingest, fake, _ = setup
    first = metadata_stage(cfg, store, ingest, progress=False)
    second = metadata_stage(cfg, store, ingest, progress=False)
    assert second.reused and second.fingerprint == first.fingerprint and len(fake.calls) == 1
    assert second.summary == first.summary
    forced = metadata_stage(cfg, store, ingest, force=True, progress=False)
    assert not forced.reused and forced.fingerprint == first.fingerprint and len(fake.calls) == 2
    assert fake.calls[1]["resume"] is False


def test_layer0_switch_changes_fingerprint_and_tables(setup):
    cfg, store, ingest, fake, _ = setup
    propagated = metadata_stage(cfg, store, ingest, progress=False)
    cfg_layer0 = load_config(overrides=["metadata.pretrain.dim=8", "metadata.knowledge_topk=5",
                                        "metadata.embeddings=layer0"])
    layer0 = metadata_stage(cfg_layer0, store, ingest, progress=False)
    assert layer0.fingerprint != propagated.fingerprint
    item0 = np.load(layer0.path / "pretrained_item_layer0.npy")
    item_graph, _ = load_graph(layer0.path / "item_similarity.npz")
    np.testing.assert_allclose(load_channels(layer0.path, ["knowledge"])["knowledge"],
                               knowledge_channel(item_graph, item0), rtol=1e-6)


def test_external_channel_and_load_order(setup, tmp_path):
    cfg, store, ingest, fake, data = setup
    features = pd.DataFrame({"item_id": [f"I{i}" for i in range(data.n_items)][::-1],
                             "f0": np.arange(data.n_items, dtype=float)[::-1], "f1": 1.0})
    features.to_parquet(tmp_path / "text.parquet")
    cfg = load_config(overrides=["metadata.pretrain.dim=8", f"metadata.external.text={tmp_path / 'text.parquet'}",
                                 "metadata.channels=[knowledge, text]"])
    result = metadata_stage(cfg, store, ingest, progress=False)
    assert result.summary["channels"] == ["knowledge", "text"]
    channels = load_channels(result.path)
    np.testing.assert_array_equal(channels["text"][:, 0], np.arange(data.n_items))
    assert list(load_channels(result.path, ["text", "knowledge"])) == ["text", "knowledge"]
    with pytest.raises(ConfigError, match=r"\['social'\] are not in the metadata output"):
        load_channels(result.path, ["social"])
    # A changed feature file is a different stage output.
    features.assign(f1=2.0).to_parquet(tmp_path / "text.parquet")
    assert metadata_stage(cfg, store, ingest, progress=False).fingerprint != result.fingerprint


def test_bad_external_file_fails_without_output(setup, tmp_path):
    cfg, store, ingest, fake, data = setup
    np.save(tmp_path / "image.npy", np.zeros((data.n_items - 1, 4)))
    cfg = load_config(overrides=["metadata.pretrain.dim=8", f"metadata.external.image={tmp_path / 'image.npy'}"])
    with pytest.raises(DataError, match=rf"image\.npy: has {data.n_items - 1} rows but the dataset has {data.n_items}"):
        metadata_stage(cfg, store, ingest, progress=False)
    assert not list((store.root / "metadata").glob("*/manifest.json"))


def test_unknown_channel_is_a_config_error(setup):
    cfg, store, ingest, fake, _ = setup
    cfg = load_config(overrides=["metadata.channels=[social, visual]"])
    with pytest.raises(ConfigError, match=r"'visual' is neither a built-in channel"):
        metadata_stage(cfg, store, ingest, progress=False)
    assert fake.calls == []


def test_pretrain_wires_model_and_trainer(monkeypatch, tiny_data):
    """pretrain_lightgcn builds LightGCN with the pretrain settings and hands the trainer spec-9 settings."""
    import infodcl.train as train_module
    seen = {}

    def fake_train_model(model, data, train_cfg, eval_cfg, checkpoint_path=None, resume=True):
        seen.update(model=model, train_cfg=train_cfg, checkpoint_path=checkpoint_path, resume=resume)
        return train_module.TrainResult(best_epoch=20, best_valid={"recall@20": 0.3}, test_at_best={},
                                        history=[], epochs_run=70, seconds_per_epoch=0.1, stopped_early=True)

    monkeypatch.setattr(train_module, "train_model", fake_train_model)
    pretrain = PretrainConfig(dim=8, layers=2)
    result = pretrain_module.pretrain_lightgcn(tiny_data, pretrain, seed=7, checkpoint_path="ck.pt", progress=False)
    train_cfg = seen["train_cfg"]
    assert (train_cfg.epochs, train_cfg.eval_every, train_cfg.patience, train_cfg.seed) == (500, 10, 5, 7)
    assert train_cfg.select_on == "valid" and seen["model"].layers == 2 and seen["model"].l2 == 1e-4
    assert result.user.shape == (tiny_data.n_users, 8) and result.item_layer0.shape == (tiny_data.n_items, 8)
    user, item = seen["model"].propagate()
    np.testing.assert_allclose(result.item, item.detach().numpy())
    np.testing.assert_allclose(result.user_layer0, seen["model"].user_embedding.detach().numpy())
    assert result.best_epoch == 20 and result.record()["epochs_run"] == 70


def test_real_pretraining_is_seeded_and_finite():
    """A short real LightGCN pretraining on tiny data: tables finite, history with valid metrics."""
    data = synthetic_dataset(n_users=60, n_items=40, n_interactions=600, seed=0)
    pretrain = PretrainConfig(dim=8, layers=2, max_epochs=10, eval_every=5, patience=2, lr=0.01)
    result = pretrain_module.pretrain_lightgcn(data, pretrain, seed=3, eval_cfg=EvalConfig(ks=[20]),
                                               progress=False)
    assert np.isfinite(result.user).all() and np.isfinite(result.item).all()
    assert result.best_epoch in (5, 10) and "recall@20" in result.best_valid
    assert not np.allclose(result.user, result.user_layer0)
    again = pretrain_module.pretrain_lightgcn(data, pretrain, seed=3, eval_cfg=EvalConfig(ks=[20]),
                                              progress=False)
    np.testing.assert_array_equal(again.item, result.item)   # the seed fixes the run
