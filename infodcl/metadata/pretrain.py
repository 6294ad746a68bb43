"""LightGCN pretraining on the train split, early-stopped on valid Recall@20, for the metadata channels.

Spec section 1.1 (pretrain LightGCN, keep P_u, P_i) and section 9 (eval every 10 epochs, patience 5, at most
500 epochs, L2 1e-4 on layer-0 embeddings, seed = the run's seed; propagated or layer-0 tables as a switch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infodcl.config import EvalConfig, ModelConfig, PipelineConfig, PretrainConfig, TrainConfig
from infodcl.data.dataset import InteractionData

DEFAULT_SEED = 2024


@dataclass
class PretrainResult:
    """The best-valid LightGCN's tables, all float32 numpy: propagated (final) and layer-0."""
    user: np.ndarray              # (n_users, d) propagated P_u
    item: np.ndarray              # (n_items, d) propagated P_i
    user_layer0: np.ndarray       # (n_users, d)
    item_layer0: np.ndarray       # (n_items, d)
    best_epoch: int
    best_valid: dict[str, float]
    test_at_best: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def tables(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(user, item) tables that feed the channels: "propagated" or "layer0" (spec 9)."""
        if which == "propagated":
            return self.user, self.item
        if which == "layer0":
            return self.user_layer0, self.item_layer0
        raise ValueError(f"metadata.embeddings must be 'propagated' or 'layer0', got {which!r}")

    def record(self) -> dict[str, Any]:
        """pretrain_history.json content."""
        return {"best_epoch": self.best_epoch, "best_valid": self.best_valid,
                "test_at_best": self.test_at_best, "history": self.history, **self.extra}


def pretrain_seed(cfg: PipelineConfig) -> int:
    """metadata.pretrain.seed, else the run's train seed (the InfoDCL run's, else the first model's)."""
    if cfg.metadata.pretrain.seed is not None:
        return int(cfg.metadata.pretrain.seed)
    if "infodcl" in cfg.models:
        return int(cfg.models["infodcl"].train.seed)
    if cfg.models:
        return int(next(iter(cfg.models.values())).train.seed)
    return DEFAULT_SEED


def pretrain_configs(pretrain: PretrainConfig, seed: int,
                     progress: bool = True) -> tuple[ModelConfig, TrainConfig]:
    """The LightGCN model and trainer settings of a pretraining run (selection always on valid)."""
    model_cfg = ModelConfig(name="lightgcn", dim=pretrain.dim, layers=pretrain.layers, l2=pretrain.l2)
    train_cfg = TrainConfig(epochs=pretrain.max_epochs, batch_size=pretrain.batch_size, lr=pretrain.lr,
                            eval_every=pretrain.eval_every, patience=pretrain.patience, seed=seed,
                            select_on="valid", progress=progress)
    return model_cfg, train_cfg


def _numpy(table: torch.Tensor) -> np.ndarray:
    return table.detach().to("cpu", torch.float32).numpy().copy()


def pretrain_lightgcn(data: InteractionData, pretrain: PretrainConfig, seed: int,
                      eval_cfg: EvalConfig | None = None, checkpoint_path: str | Path | None = None,
                      resume: bool = True, progress: bool = True) -> PretrainResult:
    """Train LightGCN on data's train split with the shared trainer; return its best-valid tables.

    checkpoint_path makes an interrupted pretraining resumable (the trainer's own checkpoint).
    """
    from infodcl.models import build_model
    from infodcl.train import seed_everything, train_model

    model_cfg, train_cfg = pretrain_configs(pretrain, seed, progress)
    eval_cfg = eval_cfg or EvalConfig()
    seed_everything(seed)          # the initial tables are part of the seeded run
    model = build_model(model_cfg, data)
    result = train_model(model, data, train_cfg, eval_cfg, checkpoint_path=checkpoint_path, resume=resume)
    model.eval()
    with torch.no_grad():
        user, item = model.propagate()                              # (n_u, d), (n_i, d)
        user0, item0 = model.layer0()                               # (n_u, d), (n_i, d)
    return PretrainResult(user=_numpy(user), item=_numpy(item), user_layer0=_numpy(user0),
                          item_layer0=_numpy(item0), best_epoch=int(result.best_epoch),
                          best_valid=dict(result.best_valid), test_at_best=dict(result.test_at_best),
                          history=list(result.history),
                          extra={"epochs_run": getattr(result, "epochs_run", None),
                                 "stopped_early": getattr(result, "stopped_early", None),
                                 "seconds_per_epoch": getattr(result, "seconds_per_epoch", None),
                                 "seed": seed, "model": model_cfg.model_dump(mode="json"),
                                 "train": train_cfg.model_dump(mode="json")})
