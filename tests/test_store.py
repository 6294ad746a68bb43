"""Artifact store: fingerprinted stage directories, atomic builds, reuse and forced rebuilds."""
from __future__ import annotations

import json

import pytest

from infodcl.config import fingerprint
from infodcl.store import ArtifactStore, atomic_write_json


def _write(tmp, text="hello"):
    (tmp / "out.txt").write_text(text)
    return {"rows": len(text)}


def test_build_then_reuse(tmp_path):
    store = ArtifactStore(tmp_path)
    fp = fingerprint("stage", {"a": 1})
    first = store.run_stage("ingest", fp, _write)
    assert not first.reused and first.summary == {"rows": 5}
    assert (first.path / "out.txt").read_text() == "hello"
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["fingerprint"] == fp and "out.txt" in manifest["files"]
    calls = []
    second = store.run_stage("ingest", fp, lambda tmp: calls.append(tmp) or {})
    assert second.reused and second.summary == {"rows": 5} and calls == []


def test_failed_build_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)
    fp = fingerprint("x")

    def broken(tmp):
        (tmp / "half.txt").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.run_stage("ingest", fp, broken)
    assert store.lookup("ingest", fp) is None
    assert list((tmp_path / "ingest").iterdir()) == []


def test_force_rebuilds_in_place(tmp_path):
    store = ArtifactStore(tmp_path)
    fp = fingerprint("y")
    store.run_stage("s", fp, lambda tmp: _write(tmp, "one"))
    rebuilt = store.run_stage("s", fp, lambda tmp: _write(tmp, "two!"), force=True)
    assert not rebuilt.reused and (rebuilt.path / "out.txt").read_text() == "two!"
    assert [p.name for p in (tmp_path / "s").iterdir()] == [fp[:16]]


def test_directory_without_manifest_is_not_reused(tmp_path):
    store = ArtifactStore(tmp_path)
    fp = fingerprint("z")
    store.stage_path("s", fp).mkdir(parents=True)
    assert store.lookup("s", fp) is None


def test_fingerprint_is_order_independent_for_mappings():
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_atomic_write_json_replaces(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_json(target, {"v": 1})
    atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
