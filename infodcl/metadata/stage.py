"""The metadata stage: pretrained LightGCN tables, both similarity graphs and every channel, in the artifact store.

Spec section 1 (auxiliary metadata) as a pipeline stage; INTERFACES "Stage API" item 3 lists its outputs.
"""
from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from infodcl.config import ConfigError, PipelineConfig, fingerprint
from infodcl.data.dataset import InteractionData
from infodcl.errors import DataError
from infodcl.metadata import pretrain as pretrain_module
from infodcl.metadata.channels import (BUILTIN_CHANNELS, check_channel_name, knowledge_channel,
                                       read_external_features, social_channel, write_channel)
from infodcl.metadata.similarity import (interactions_fingerprint, item_similarity, save_graph,
                                         user_similarity)
from infodcl.store import MANIFEST, ArtifactStore, StageResult, atomic_write_bytes, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

STAGE_NAME = "metadata"
STAGE_VERSION = 1
USER_GRAPH_FILE = "user_similarity.npz"
ITEM_GRAPH_FILE = "item_similarity.npz"
PRETRAIN_HISTORY_FILE = "pretrain_history.json"
TABLE_FILES = {"user": "pretrained_user.npy", "item": "pretrained_item.npy",
               "user_layer0": "pretrained_user_layer0.npy", "item_layer0": "pretrained_item_layer0.npy"}


def channel_names(cfg: PipelineConfig) -> list[str]:
    """The channels to build, in order: metadata.channels, then any external file not listed there."""
    names = list(cfg.metadata.channels)
    names += [name for name in cfg.metadata.external if name not in names]
    if len(set(names)) != len(names):
        raise ConfigError(f"metadata.channels: a channel is listed twice: {names}")
    for name in names:
        check_channel_name(name)
        if name not in BUILTIN_CHANNELS and name not in cfg.metadata.external:
            raise ConfigError(f"metadata.channels: {name!r} is neither a built-in channel {list(BUILTIN_CHANNELS)} "
                              f"nor an external feature file (set metadata.external.{name}=PATH)")
        if name in BUILTIN_CHANNELS and name in cfg.metadata.external:
            raise ConfigError(f"metadata.external.{name}: {name!r} is a built-in channel name; choose another")
    if not names:
        raise ConfigError("metadata.channels: no channel to build")
    return names


def external_file_digests(cfg: PipelineConfig) -> dict[str, str]:
    """sha256 of each external feature file, so that a changed file invalidates the stage."""
    digests = {}
    for name, path in sorted(cfg.metadata.external.items()):
        if not Path(path).is_file():
            raise DataError(f"{path}: external feature file of channel {name!r} (metadata.external.{name}) "
                            "does not exist")
        digests[name] = sha256_file(path)
    return digests


def metadata_fingerprint(cfg: PipelineConfig, ingest: StageResult) -> str:
    return fingerprint(STAGE_NAME, STAGE_VERSION, cfg.metadata.model_dump(mode="json"), ingest.fingerprint,
                       pretrain_module.pretrain_seed(cfg), external_file_digests(cfg))


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


def build_metadata(cfg: PipelineConfig, data: InteractionData, out_dir: Path, seed: int,
                   checkpoint_path: Path | None = None, resume: bool = True, progress: bool = True,
                   upstream: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every metadata output into out_dir; return the stage summary."""
    meta_cfg = cfg.metadata
    names = channel_names(cfg)
    seconds: dict[str, float] = {}
    train = data.train_matrix
    source_fp = interactions_fingerprint(train)
    provenance = {"interactions_fingerprint": source_fp, **(upstream or {})}

    started = time.perf_counter()
    log.info("metadata: pretraining LightGCN (seed %d)", seed)
    pretrained = pretrain_module.pretrain_lightgcn(data, meta_cfg.pretrain, seed, cfg.evaluate,
                                                   checkpoint_path=checkpoint_path, resume=resume,
                                                   progress=progress)
    for key, filename in TABLE_FILES.items():
        _save_npy(out_dir / filename, getattr(pretrained, key))
    atomic_write_json(out_dir / PRETRAIN_HISTORY_FILE, pretrained.record())
    seconds["pretrain"] = time.perf_counter() - started

    started = time.perf_counter()
    user_graph = user_similarity(train, meta_cfg.social_topk, meta_cfg.chunk_rows, progress=progress)
    user_card = save_graph(out_dir / USER_GRAPH_FILE, user_graph,
                           {"kind": "user-user Jaccard over train item sets (spec 1.2)",
                            "topk": meta_cfg.social_topk, **provenance})
    seconds["user_graph"] = time.perf_counter() - started
    started = time.perf_counter()
    item_graph = item_similarity(train, meta_cfg.knowledge_topk, meta_cfg.chunk_rows, progress=progress)
    item_card = save_graph(out_dir / ITEM_GRAPH_FILE, item_graph,
                           {"kind": "item-item Jaccard over train user sets (spec 1.3)",
                            "topk": meta_cfg.knowledge_topk, **provenance})
    seconds["item_graph"] = time.perf_counter() - started

    user_emb, item_emb = pretrained.tables(meta_cfg.embeddings)
    tables = {"embeddings": meta_cfg.embeddings, "pretrain_seed": seed,
              "pretrain_best_epoch": pretrained.best_epoch}
    cards = {}
    for name in names:
        started = time.perf_counter()
        if name == "social":
            matrix = social_channel(user_graph, train, user_emb, item_emb)
            source = f"social: Jaccard-weighted neighbour mean of pretrained user embeddings ({USER_GRAPH_FILE})"
            inputs = {**provenance, **tables, "graph": USER_GRAPH_FILE, "topk": meta_cfg.social_topk}
        elif name == "knowledge":
            matrix = knowledge_channel(item_graph, item_emb)
            source = f"knowledge: mean pretrained embedding of the top-k similar items ({ITEM_GRAPH_FILE})"
            inputs = {**provenance, **tables, "graph": ITEM_GRAPH_FILE, "topk": meta_cfg.knowledge_topk}
        else:
            matrix, notes = read_external_features(meta_cfg.external[name], data.n_items, data.item_ids)
            source = notes["source"]
            inputs = {**provenance, **notes}
        cards[name] = write_channel(out_dir, name, matrix, source, inputs)
        seconds[f"channel_{name}"] = time.perf_counter() - started

    return {"n_users": data.n_users, "n_items": data.n_items, "channels": names,
            "channel_shapes": {name: card["shape"] for name, card in cards.items()},
            "embeddings": meta_cfg.embeddings, "pretrain_seed": seed,
            "pretrain": {"best_epoch": pretrained.best_epoch, "best_valid": pretrained.best_valid,
                         "test_at_best": pretrained.test_at_best},
            "user_graph": {"nnz": user_card["nnz"], "topk": meta_cfg.social_topk,
                           "rows_without_neighbour": user_card["rows_without_neighbour"]},
            "item_graph": {"nnz": item_card["nnz"], "topk": meta_cfg.knowledge_topk,
                           "rows_without_neighbour": item_card["rows_without_neighbour"]},
            "interactions_fingerprint": source_fp,
            "seconds": {key: round(value, 3) for key, value in seconds.items()}}


def metadata_stage(cfg: PipelineConfig, store: ArtifactStore, ingest: StageResult, force: bool = False,
                   progress: bool = True) -> StageResult:
    """Build (or reuse) the metadata stage's outputs for one ingested dataset.

    Fingerprint: stage name, version, cfg.metadata, the ingest fingerprint, the pretraining seed and the
    sha256 of every external feature file. Pretraining resumes from `store.work_path("metadata", fp)`
    unless forced.
    """
    channel_names(cfg)                       # a bad channel list fails before any work
    seed = pretrain_module.pretrain_seed(cfg)
    fp = metadata_fingerprint(cfg, ingest)
    checkpoint_path = store.work_path(STAGE_NAME, fp) / "pretrain.pt"

    def build(out_dir: Path) -> dict[str, Any]:
        data = InteractionData.from_dir(ingest.path)
        return build_metadata(cfg, data, out_dir, seed, checkpoint_path=checkpoint_path, resume=not force,
                              progress=progress, upstream={"ingest_fingerprint": ingest.fingerprint})

    result = store.run_stage(STAGE_NAME, fp, build, force=force,
                             meta={"upstream": {"ingest": ingest.fingerprint}, "seed": seed})
    if not result.reused and checkpoint_path.is_file():
        checkpoint_path.unlink()             # the output is complete; the resumable scratch is not needed
    return result


def load_channels(metadata_dir: str | Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Channel matrices (float32, n_items x f) by name, in order: names, or every channel of the stage.

    Without names, the order is the one the stage built (its manifest summary), else file-name order.
    """
    metadata_dir = Path(metadata_dir)
    available = sorted(p.name[len("channel_"):-len(".npy")] for p in metadata_dir.glob("channel_*.npy"))
    if names is None:
        manifest = metadata_dir / MANIFEST
        ordered = None
        if manifest.is_file():
            ordered = json.loads(manifest.read_text()).get("summary", {}).get("channels")
        names = [n for n in ordered if n in available] if ordered else available
        if not names:
            raise DataError(f"{metadata_dir}: no channel_<name>.npy file; is this a metadata stage output?")
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ConfigError(f"channels {unknown} are not in the metadata output {metadata_dir}; "
                          f"available: {available}")
    return {name: np.load(metadata_dir / f"channel_{name}.npy", allow_pickle=False).astype(np.float32, copy=False)
            for name in names}
