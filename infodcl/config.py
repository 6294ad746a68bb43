"""Typed configuration of the whole pipeline, loaded from YAML and `--set key=value` overrides.

Every hyper-parameter of spec sections 1-6 and every ablation switch of section 7 lives here,
with its default and a one-line comment; the resolved config is what gets logged and fingerprinted.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the key."""


class StrictModel(BaseModel):
    # An unknown key is an error naming the key, never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- data
class DataConfig(StrictModel):
    name: str = "office"                      # catalog name, or a label for a user's own data
    path: str | None = None                   # a user's own file or directory (bypasses the catalog)
    format: str | None = None                 # reader name (see infodcl.data.readers); None = catalog's
    columns: dict[str, str] = Field(default_factory=dict)  # generic CSV/TSV/Parquet: user/item/rating/timestamp -> column
    delimiter: str | None = None              # generic CSV/TSV delimiter (None = infer from suffix)
    rating_threshold: float | None = None     # keep rating >= threshold as implicit feedback (None = keep all)
    dedup: bool = True                        # drop repeated (user, item) pairs, keeping the earliest
    kcore: int = 0                            # iterative k-core on users and items (0 = off)
    split: Literal["auto", "given", "random", "temporal"] = "auto"  # auto = given when the source has one, else random
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)    # train/valid/test per user for random/temporal
    valid_from_train: float = 0.0             # carve a per-user valid share out of a given train split (train/test-only sources)
    seed: int = 2024                          # split seed


class ValidateConfig(StrictModel):
    enabled: bool = True                      # run the data contracts after ingest
    cold_start: Literal["forbid", "allow"] = "allow"  # valid/test items unseen in train: allow (documented) or fail
    sample_rows: int = 5                      # offending rows shown in a failure message


# --------------------------------------------------------------------------- metadata (spec section 1)
class PretrainConfig(StrictModel):
    dim: int = 64                             # embedding size d
    layers: int = 3                           # LightGCN propagation layers
    lr: float = 1e-3
    l2: float = 1e-4                          # on layer-0 embeddings of user, positive, negative (spec 9)
    batch_size: int = 2048
    max_epochs: int = 500
    eval_every: int = 10
    patience: int = 5                         # evaluations without a better valid Recall@20
    seed: int | None = None                   # None = the run's train seed (spec 9)


class MetadataConfig(StrictModel):
    channels: list[str] = Field(default_factory=lambda: ["social", "knowledge"])  # built-in or external names
    embeddings: Literal["propagated", "layer0"] = "propagated"  # which pretrained table feeds the channels (spec 9)
    social_topk: int | None = None            # user neighbours kept per user (None = all, where it fits)
    knowledge_topk: int = 20                  # item neighbours kept per item (spec 1.3)
    chunk_rows: int = 4096                    # rows of R R^T / R^T R computed at once (bounds memory)
    external: dict[str, str] = Field(default_factory=dict)  # channel name -> .npy / .parquet feature file
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)


# --------------------------------------------------------------------------- models (spec sections 2-5)
class PSNetConfig(StrictModel):
    sr: bool = True                           # spectral rectification (ablation: w/o SR)
    cr: bool = True                           # contextual re-encoding (ablation: w/o CR)
    cr_form: Literal["reference", "light"] = "reference"  # transformer encoder (reference) or linear+LayerNorm (paper)
    fix_signs: bool = False                   # make each singular vector's largest entry positive
    scale_singular: bool = False              # divide singular values by sqrt(B)
    standardize: bool = False                 # standardise the informative noise per row


class LossWeights(StrictModel):
    rec: float = 0.4                          # reconstruction
    bpr: float = 0.6                          # BPR on raw embeddings
    reg: float = 0.003                        # L2 regulariser
    cb: float = 5e-5                          # collaboration balance (ablation: w/o CBL = 0)
    cl: float = 5e-6                          # view contrast (InfoNCE, a sum over the batch)


class ModelConfig(StrictModel):
    name: Literal["infodcl", "lightgcn", "mf"] = "infodcl"
    dim: int = 64                             # embedding size d
    init: Literal["normal", "xavier"] = "normal"
    init_std: float = 0.1                     # N(0, std^2) init of the embedding tables
    # LightGCN / MF
    layers: int = 3                           # LightGCN layers used in training (lightgcn only)
    l2: float = 1e-4                          # L2 on layer-0 embeddings (lightgcn, mf)
    # InfoDCL
    inference_layers: int = 2                 # LightGCN propagation at inference (0-3)
    steps: int = 200                          # diffusion timesteps T
    schedule: Literal["exp", "linear", "cosine"] = "exp"
    beta_min: float = 0.1                     # exp schedule
    beta_max: float = 10.0                    # exp schedule
    beta_start: float = 1e-4                  # linear schedule
    beta_end: float = 0.02                    # linear schedule
    noise: Literal["informative", "gaussian"] = "informative"  # ablation: w/o PSNet
    denoiser: Literal["mlp1", "mlp2"] = "mlp1"
    channels: list[str] | None = None         # None = every channel the metadata stage built
    psnet: PSNetConfig = Field(default_factory=PSNetConfig)
    weights: LossWeights = Field(default_factory=LossWeights)
    tau: float = 0.5                          # InfoNCE temperature
    negatives: Literal["all", "in_batch", "sampled"] = "all"  # InfoNCE negatives
    num_sampled: int = 4096                   # negatives when negatives = sampled


class TrainConfig(StrictModel):
    epochs: int = 1000                        # at most
    batch_size: int = 2000
    lr: float = 0.005
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.0
    eval_every: int = 10                      # evaluate on valid every N epochs
    patience: int = 10                        # evaluations without a better valid Recall@20
    select_on: Literal["valid", "test"] = "valid"  # "test" only reproduces the reference's (biased) protocol
    seed: int = 2024
    device: str = "auto"                      # auto = cuda when present, else cpu
    num_threads: int | None = None            # torch CPU threads (None = torch default)
    progress: bool = True                     # progress bar per epoch


class ModelRunConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def _default_models() -> dict[str, ModelRunConfig]:
    return {
        "infodcl": ModelRunConfig(model=ModelConfig(name="infodcl"), train=TrainConfig(lr=0.005)),
        "lightgcn": ModelRunConfig(model=ModelConfig(name="lightgcn", layers=3),
                                   train=TrainConfig(lr=1e-3, batch_size=2048)),
        "mf": ModelRunConfig(model=ModelConfig(name="mf"), train=TrainConfig(lr=1e-3, batch_size=2048)),
    }


# --------------------------------------------------------------------------- evaluation, tracking, runner
class EvalConfig(StrictModel):
    ks: list[int] = Field(default_factory=lambda: [10, 20, 50])
    chunk_size: int = 1024                    # users scored at once (bounds memory for large catalogues)
    topk_export: int = 50                     # recommendations per user written to Parquet


class TrackingConfig(StrictModel):
    enabled: bool = True
    tracking_uri: str | None = None           # None = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd
    experiment: str = "infodcl"
    register_model: bool = True               # register the trained model as infodcl-<dataset>


class RunnerConfig(StrictModel):
    kind: Literal["sequential", "dask"] = "sequential"  # fan out (model, seed) runs through prefect-dask
    n_workers: int = 2                        # local Dask cluster size
    seeds: list[int] | None = None            # None = each model's train.seed


class StoreConfig(StrictModel):
    root: str = "artifacts"                   # artifact store root (relative to the cwd)


class PipelineConfig(StrictModel):
    dataset: DataConfig = Field(default_factory=DataConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    metadata: MetadataConfig = Field(default_factory=MetadataConfig)
    models: dict[str, ModelRunConfig] = Field(default_factory=_default_models)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def model_run(self, name: str) -> ModelRunConfig:
        if name not in self.models:
            raise ConfigError(f"models.{name}: unknown model run; configured: {sorted(self.models)}")
        return self.models[name]


# --------------------------------------------------------------------------- loading and overrides
def config_dir() -> Path:
    """The directory of YAML configs: $INFODCL_CONFIG_DIR, else the repository's configs/."""
    env = os.environ.get("INFODCL_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "configs"


def _deep_merge(base: dict, overlay: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return _unalias(data)


def _unalias(node: Any) -> Any:
    # YAML anchors (`train: *shared`) load as one shared dict; copy each use, or an override of one
    # run's `train.lr` would silently change every run that shares the anchor (deepcopy keeps sharing).
    if isinstance(node, dict):
        return {key: _unalias(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_unalias(value) for value in node]
    return node


# Mappings whose keys are the user's to choose; a new key under `models` starts from a default run.
_OPEN_MAPPINGS = {"models": lambda: ModelRunConfig().model_dump(mode="json"),
                  "metadata.external": lambda: None, "dataset.columns": lambda: None}


def apply_override(raw: dict, assignment: str) -> dict:
    """Apply one `a.b.c=value` override (value parsed as YAML) to a raw config dict.

    Unknown keys are rejected here, before validation, so the message names the exact key.
    """
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected key=value")
    dotted, _, text = assignment.partition("=")
    dotted = dotted.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {dotted}: value {text!r} is not valid YAML") from exc
    raw = copy.deepcopy(raw)
    node, reference = raw, _deep_merge(PipelineConfig().to_dict(), raw)
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        parent = ".".join(parts[:depth])
        if not isinstance(reference, dict):
            raise ConfigError(f"unknown config key {dotted!r}: {parent!r} is not a section")
        if part not in reference:
            if parent not in _OPEN_MAPPINGS:
                raise ConfigError(f"unknown config key {'.'.join(parts[: depth + 1])!r}")
            reference[part] = _OPEN_MAPPINGS[parent]()
        if depth == len(parts) - 1:
            node[part] = value
            break
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node, reference = node[part], reference[part]
    return raw


def load_config(dataset: str | None = None, overrides: list[str] | None = None,
                config_file: str | os.PathLike | None = None) -> PipelineConfig:
    """Resolve defaults <- configs/default.yaml <- configs/<dataset>.yaml <- config_file <- overrides."""
    # Start from the default model runs so a YAML file that tunes `models.lightgcn.train.lr` keeps the
    # run's name and every other default (a bare mapping would otherwise reset it to an InfoDCL run).
    raw: dict = {"models": {name: run.model_dump(mode="json") for name, run in _default_models().items()}}
    directory = config_dir()
    layers = [directory / "default.yaml"]
    if dataset:
        layers.append(directory / f"{dataset}.yaml")
    for path in layers:
        if path.is_file():
            raw = _deep_merge(raw, _read_yaml(path))
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"{path}: config file does not exist")
        raw = _deep_merge(raw, _read_yaml(path))
    if dataset:
        raw.setdefault("dataset", {})
        raw["dataset"].setdefault("name", dataset)
    for assignment in overrides or []:
        raw = apply_override(raw, assignment)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def fingerprint(*parts: Any) -> str:
    """A stable sha256 hex digest of JSON-serialisable parts (config sections, upstream fingerprints)."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
