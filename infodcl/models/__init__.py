"""Recommenders under one contract (spec sections 2-5): BPR-MF, LightGCN and InfoDCL."""
from __future__ import annotations

import numpy as np

from infodcl.config import ConfigError, ModelConfig
from infodcl.data.dataset import InteractionData
from infodcl.errors import DataError
from infodcl.models.base import Batch, Recommender

__all__ = ["Batch", "Recommender", "build_model", "select_channels"]


def select_channels(model_cfg: ModelConfig, channels: dict[str, np.ndarray] | None,
                    n_items: int) -> dict[str, np.ndarray]:
    """The channels InfoDCL uses, in order: `model.channels`, or every given channel when that is None.

    Each must be a finite float (n_items, f) matrix; float32 copies are returned.
    """
    available = dict(channels or {})
    names = list(available) if model_cfg.channels is None else list(model_cfg.channels)
    if not names:
        raise ConfigError("model.channels: InfoDCL needs at least one metadata channel, none was given")
    if len(set(names)) != len(names):
        raise ConfigError(f"model.channels: a channel is listed twice in {names}")
    selected = {}
    for name in names:
        if name not in available:
            raise ConfigError(f"model.channels: channel {name!r} is not available; built channels: {list(available)}")
        if "." in name or not name:
            raise ConfigError(f"model.channels: channel name {name!r} must be non-empty and contain no '.'")
        rows = np.asarray(available[name])
        if rows.ndim != 2 or rows.shape[0] != n_items or rows.shape[1] < 1:
            raise DataError(f"channel {name!r}: expected a ({n_items}, f) matrix (one row per item), "
                            f"got shape {rows.shape}")
        if not np.issubdtype(rows.dtype, np.number):
            raise DataError(f"channel {name!r}: expected numeric values, got dtype {rows.dtype}")
        rows = rows.astype(np.float32)
        bad = ~np.isfinite(rows)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(f"channel {name!r}: row {row} (item index) holds a non-finite value")
        selected[name] = rows
    return selected


def build_model(model_cfg: ModelConfig, data: InteractionData,
                channels: dict[str, np.ndarray] | None = None) -> Recommender:
    """The recommender `model_cfg.name` for this dataset; InfoDCL also takes the metadata channels (ordered)."""
    if model_cfg.name == "mf":
        from infodcl.models.mf import MF
        return MF(data.n_users, data.n_items, model_cfg)
    if model_cfg.name == "lightgcn":
        from infodcl.models.lightgcn import LightGCN
        return LightGCN(data.n_users, data.n_items, data.train_matrix, model_cfg)
    if model_cfg.name == "infodcl":
        from infodcl.models.infodcl import InfoDCL
        return InfoDCL(data.n_users, data.n_items, data.train_matrix,
                       select_channels(model_cfg, channels, data.n_items), model_cfg)
    raise ConfigError(f"model.name: unknown model {model_cfg.name!r}; expected infodcl, lightgcn or mf")
