"""Artifact store: stage outputs in directories keyed by a fingerprint, written atomically with a manifest.

Design doc "Stages and the artifacts they hand on": a stage whose output exists is reused unless forced;
a failed or interrupted stage leaves no half-written directory behind (temp dir + rename).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

MANIFEST = "manifest.json"


@dataclass
class StageResult:
    """What one stage produced (or found already produced)."""
    stage: str
    fingerprint: str
    path: Path
    reused: bool
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that readers see either the old content or the new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


class ArtifactStore:
    """Directories `<root>/<stage>/<fingerprint[:16]>/` holding one stage's complete output."""

    def __init__(self, root: str | os.PathLike = "artifacts"):
        self.root = Path(root).resolve()

    def stage_path(self, stage: str, fingerprint: str) -> Path:
        return self.root / stage / fingerprint[:16]

    def work_path(self, stage: str, fingerprint: str) -> Path:
        """A persistent scratch directory for resumable work (e.g. training checkpoints)."""
        path = self.root / "_work" / stage / fingerprint[:16]
        path.mkdir(parents=True, exist_ok=True)
        return path

    def lookup(self, stage: str, fingerprint: str) -> Path | None:
        """The complete output of a stage, or None. Only a directory with a manifest counts."""
        path = self.stage_path(stage, fingerprint)
        manifest = path / MANIFEST
        if manifest.is_file():
            try:
                if json.loads(manifest.read_text()).get("fingerprint") == fingerprint:
                    return path
            except json.JSONDecodeError:
                return None
        return None

    def manifest(self, path: str | os.PathLike) -> dict[str, Any]:
        return json.loads((Path(path) / MANIFEST).read_text())

    @contextlib.contextmanager
    def build(self, stage: str, fingerprint: str, meta: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield an empty temp dir; on success add a manifest and rename it into place.

        On any exception the temp dir is removed, so no half-written artifact is ever visible.
        """
        final = self.stage_path(stage, fingerprint)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
        started = time.time()
        try:
            yield tmp
            files = {}
            for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
                rel = file.relative_to(tmp).as_posix()
                files[rel] = {"bytes": file.stat().st_size, "sha256": sha256_file(file)}
            manifest = {**(meta or {}), "stage": stage, "fingerprint": fingerprint, "created": time.time(),
                        "build_seconds": round(time.time() - started, 3), "files": files}
            atomic_write_json(tmp / MANIFEST, manifest)
            if final.exists():
                # A forced rebuild: swap the old output out, then remove it.
                trash = final.parent / f".{final.name}.old-{os.getpid()}-{int(time.time() * 1e6)}"
                os.replace(final, trash)
                os.replace(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def run_stage(self, stage: str, fingerprint: str, build_fn: Callable[[Path], dict[str, Any]],
                  force: bool = False, meta: dict[str, Any] | None = None) -> StageResult:
        """Reuse the stage's stored output, or build it with `build_fn(tmp_dir) -> summary`.

        The summary is kept in the manifest so a reused stage reports the same numbers.
        """
        started = time.perf_counter()
        existing = None if force else self.lookup(stage, fingerprint)
        if existing is not None:
            summary = self.manifest(existing).get("summary", {})
            return StageResult(stage, fingerprint, existing, True, summary, time.perf_counter() - started)
        # `meta` is read when the manifest is written, after build_fn ran, so the summary goes in atomically.
        record: dict[str, Any] = dict(meta or {})
        with self.build(stage, fingerprint, record) as tmp:
            record["summary"] = build_fn(tmp) or {}
        path = self.stage_path(stage, fingerprint)
        return StageResult(stage, fingerprint, path, False, record["summary"], time.perf_counter() - started)
