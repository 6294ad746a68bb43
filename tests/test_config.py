"""The typed config: the YAML files under configs/, overrides, and errors that name the key.

Issue 2 item 2 and spec section 6 (reference hyper-parameters, written out in configs/office.yaml).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infodcl.config import ConfigError, PipelineConfig, config_dir, fingerprint, load_config

CONFIG_FILES = sorted(Path(config_dir()).glob("*.yaml"))


def test_office_config_is_the_reference_run_script():
    cfg = load_config("office")
    run = cfg.models["infodcl"]
    model, train = run.model, run.train
    assert (model.dim, train.batch_size, train.lr, train.optimizer) == (64, 2000, 0.005, "adam")
    assert (model.steps, model.schedule, model.tau, model.inference_layers) == (200, "exp", 0.5, 2)
    weights = model.weights
    assert (weights.rec, weights.bpr, weights.reg, weights.cb, weights.cl) == (0.4, 0.6, 0.003, 5e-5, 5e-6)
    assert (train.seed, train.eval_every) == (2024, 10)
    assert (cfg.models["lightgcn"].model.layers, cfg.models["lightgcn"].train.lr) == (3, 1e-3)
    assert cfg.dataset.name == "office"


def test_ml1m_uses_batch_1024():
    cfg = load_config("ml-1m")
    assert {run.train.batch_size for run in cfg.models.values()} == {1024}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.name for p in CONFIG_FILES])
def test_every_config_file_loads_and_names_its_models(path):
    raw = yaml.safe_load(path.read_text()) or {}
    cfg = load_config(path.stem if path.stem != "default" else None)
    # A `models:` mapping replaces the defaults, so each run must say which model it is.
    for key, run in (raw.get("models") or {}).items():
        assert run["model"]["name"] == cfg.models[key].model.name == key


def test_unknown_override_key_is_named():
    with pytest.raises(ConfigError, match="models.infodcl.train.bogus"):
        load_config("office", ["models.infodcl.train.bogus=1"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"models\.mf\.train\.lr"):
        load_config("office", ["models.mf.train.lr=fast"])


def test_unknown_key_in_a_config_file_is_named(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("evaluate: {kz: [20]}\n")
    with pytest.raises(ConfigError, match="evaluate.kz"):
        load_config("office", config_file=extra)


def test_layers_later_win(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("models: {mf: {train: {lr: 0.01}}}\nrunner: {seeds: [1, 2]}\n")
    cfg = load_config("office", ["models.mf.train.lr=0.02"], extra)
    assert cfg.models["mf"].train.lr == 0.02
    assert cfg.models["mf"].model.name == "mf"            # office.yaml's run is merged, not replaced
    assert cfg.runner.seeds == [1, 2]


def test_fingerprint_is_stable_and_sensitive():
    a = PipelineConfig().models["mf"].model_dump(mode="json")
    b = dict(a, train=dict(a["train"], lr=0.5))
    assert fingerprint("train", a) == fingerprint("train", dict(a))
    assert fingerprint("train", a) != fingerprint("train", b)


def test_yaml_anchors_are_copied_per_use(tmp_path):
    # Runs sharing a `train` block through an anchor: overriding one run must not change the others.
    extra = tmp_path / "anchors.yaml"
    extra.write_text("models:\n"
                     "  infodcl: {model: {name: infodcl}, train: &shared {epochs: 4, lr: 0.005}}\n"
                     "  mf: {model: {name: mf}, train: *shared}\n")
    cfg = load_config(None, ["models.mf.train.lr=0.002"], extra)
    assert (cfg.models["infodcl"].train.lr, cfg.models["mf"].train.lr) == (0.005, 0.002)
    assert cfg.models["infodcl"].train.epochs == cfg.models["mf"].train.epochs == 4


def test_yaml_model_run_keeps_its_defaults(tmp_path):
    """A YAML file that tunes one field of a default run keeps that run's name and other defaults."""
    from infodcl.config import load_config
    path = tmp_path / "partial.yaml"
    path.write_text("models:\n  lightgcn:\n    train: {lr: 0.01}\n")
    cfg = load_config("office", config_file=path)
    assert cfg.models["lightgcn"].model.name == "lightgcn"
    assert cfg.models["lightgcn"].train.lr == 0.01
    assert set(cfg.models) >= {"infodcl", "lightgcn", "mf"}
