"""Source files of catalog datasets: local mirror first, else a resumable, checksummed, atomic download.

Issue 2 item 3: `$INFODCL_DATA_MIRROR/<root>/<path>` (layout of ../shared/data) for air-gapped clusters,
else each URL in turn into `$INFODCL_DATA_CACHE` (default ~/.cache/infodcl/data) via `<file>.part` + Range.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from infodcl.data.catalog import CatalogEntry, SourceFile
from infodcl.errors import DataError, DownloadError
from infodcl.store import sha256_file

MIRROR_ENV = "INFODCL_DATA_MIRROR"
CACHE_ENV = "INFODCL_DATA_CACHE"
CHUNK_BYTES = 1 << 20


def mirror_dir() -> Path | None:
    value = os.environ.get(MIRROR_ENV)
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "infodcl" / "data"


def verify_checksum(path: Path, expected: str | None) -> str:
    """sha256 of `path`; a DataError naming the file and both hashes when it differs from `expected`."""
    actual = sha256_file(path)
    if expected is not None and actual != expected.lower():
        raise DataError(f"{path}: sha256 mismatch: the catalog expects {expected}, the file has {actual} "
                        "(a corrupt or different file; delete it or fix the catalog entry)")
    return actual


def download_url(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download `url` to `dest`: resume `dest.part` with an HTTP Range request, check sha256, rename atomically."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "infodcl-ingest"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            # 206 = the server honoured the Range; anything else sends the whole file again.
            resumed = have > 0 and getattr(response, "status", None) == 206
            with open(part, "ab" if resumed else "wb") as handle:
                while block := response.read(CHUNK_BYTES):
                    handle.write(block)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not have:   # 416: nothing left past what the .part already holds
            raise
    try:
        verify_checksum(part, sha256)
    except DataError as exc:
        part.unlink(missing_ok=True)      # a corrupt partial file must not be resumed again
        raise DataError(f"{url} -> {exc}") from None
    os.replace(part, dest)
    return dest


def _extract_member(archive: Path, member: str, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as bundle, bundle.open(member) as source:
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as target:
                shutil.copyfileobj(source, target, CHUNK_BYTES)
    except KeyError:
        raise DataError(f"{archive}: archive has no member {member!r}") from None
    except zipfile.BadZipFile as exc:
        archive.unlink(missing_ok=True)
        raise DataError(f"{archive}: not a valid zip archive ({exc})") from None
    os.replace(tmp, dest)


def _fetch_file(entry: CatalogEntry, source: SourceFile, dest: Path) -> None:
    """Put one source file at `dest` by trying each URL; a DataError lists every failed attempt."""
    if source.manual or not source.urls:
        where = mirror_dir() or f"${MIRROR_ENV}"
        raise DataError(f"{entry.name}: {source.path} cannot be downloaded automatically; fetch it by hand from "
                        f"{', '.join(source.urls) or 'its publisher'} and place it at {where}/{entry.root}/{source.path}")
    failures = []
    network_failed = False
    for url in source.urls:
        try:
            if source.archive == "zip":
                archive = dest.parent / ".archives" / hashlib.sha256(url.encode()).hexdigest()[:16] / Path(url).name
                if not archive.exists():
                    download_url(url, archive)
                _extract_member(archive, source.member or source.path, dest)
                verify_checksum(dest, source.sha256)
            else:
                download_url(url, dest, source.sha256)
            return
        except DataError as exc:
            with contextlib.suppress(FileNotFoundError):
                if source.archive:
                    dest.unlink()
            failures.append(str(exc))
        except (OSError, urllib.error.URLError) as exc:
            network_failed = True
            failures.append(f"{url}: {exc}")
    # Only a network failure may succeed on a retry; a wrong checksum or a bad archive stays wrong.
    error = DownloadError if network_failed else DataError
    raise error(f"{entry.name}: could not obtain {source.path}:\n  " + "\n  ".join(failures) +
                f"\n(offline? put the files under ${MIRROR_ENV}/{entry.root}/)")


def fetch_dataset(entry: CatalogEntry, mirror: Path | None = None, cache: Path | None = None) -> tuple[Path, dict[str, str]]:
    """The local directory holding all of a dataset's files, and each file's sha256.

    The mirror is used in place when it holds every file (checksums verified); otherwise missing
    files are downloaded into the cache, and files the mirror does have are copied next to them.
    """
    mirror = mirror_dir() if mirror is None else mirror
    cache = cache_dir() if cache is None else cache
    if mirror is not None:
        mirror_root = Path(mirror) / entry.root
        if all((mirror_root / f.path).is_file() for f in entry.files):
            return mirror_root, {f.path: verify_checksum(mirror_root / f.path, f.sha256) for f in entry.files}
    cache_root = Path(cache) / entry.root
    checksums = {}
    for source in entry.files:
        dest = cache_root / source.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        mirrored = Path(mirror) / entry.root / source.path if mirror is not None else None
        if not dest.is_file():
            if mirrored is not None and mirrored.is_file():
                verify_checksum(mirrored, source.sha256)
                fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
                os.close(fd)
                shutil.copyfile(mirrored, tmp)
                os.replace(tmp, dest)
            else:
                _fetch_file(entry, source, dest)
        checksums[source.path] = verify_checksum(dest, source.sha256)
    return cache_root, checksums
