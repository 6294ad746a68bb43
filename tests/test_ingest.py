"""The ingest stage: preparation steps, bad input (message + nothing stored), catalog/download, real data."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from infodcl.config import DataConfig, PipelineConfig
from infodcl.data.catalog import load_catalog
from infodcl.data.dataset import InteractionData
from infodcl.data.download import download_url, fetch_dataset
from infodcl.data.ingest import effective_recipe, ingest_path, ingest_stage
from infodcl.data.prepare import Recipe, prepare, ratio_split
from infodcl.data.readers import READERS, build_raw, concat_raw
from infodcl.errors import DataError
from infodcl.store import ArtifactStore

PARQUETS = ("interactions.parquet", "users.parquet", "items.parquet", "raw_interactions.parquet")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def raw_table(users, items, ratings=None, timestamps=None, split=None, source="src.csv"):
    return build_raw(Path(source), pa.array(users, pa.string()), pa.array(items, pa.string()), fmt="test",
                     rating=None if ratings is None else pa.array(ratings, pa.float64()),
                     timestamp=None if timestamps is None else pa.array(timestamps, pa.int64()),
                     split=split, lines=pa.array(np.arange(1, len(users) + 1)))


def assert_nothing_stored(root: Path) -> None:
    stage_dir = root / "ingest"
    assert not stage_dir.exists() or not any(stage_dir.iterdir()), list(stage_dir.iterdir())


def catalog_cfg(name: str) -> PipelineConfig:
    cfg = PipelineConfig()
    cfg.dataset.name = name
    return cfg


def use_toy_catalog(tmp_path: Path, monkeypatch, url: str, sha256: str | None, mirror: Path | None = None,
                    recipe: str | None = None) -> None:
    """A one-file `toy` catalog entry (train.txt from `url`), mirror and download cache under tmp_path."""
    recipe_line = f"\n  recipe: {recipe}" if recipe else ""
    catalog = write(tmp_path / "catalog.yaml", f"""
toy:
  format: pairs
  root: toy
  entry: train.txt
  files:
    - path: train.txt
      urls: [{url}]
      sha256: {sha256 if sha256 is not None else "null"}{recipe_line}
""")
    monkeypatch.setenv("INFODCL_CATALOG", str(catalog))
    monkeypatch.setenv("INFODCL_DATA_MIRROR", str(mirror or tmp_path / "empty-mirror"))
    monkeypatch.setenv("INFODCL_DATA_CACHE", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- preparation steps
def test_dedup_keeps_earliest_by_timestamp_and_counts_dropped():
    raw = raw_table(["u1", "u1", "u1", "u2"], ["i1", "i1", "i2", "i1"], ratings=[1, 5, 3, 4],
                    timestamps=[30, 10, 20, 40])
    prepared = prepare(raw, Recipe(split="random", split_ratios=(1, 0, 0)))
    assert prepared.stats["dedup_dropped"] == 1
    table = prepared.interactions.to_pydict()
    # (u1, i1) keeps the row with timestamp 10 (rating 5), not the first row read (timestamp 30).
    kept = {(u, i): (r, t) for u, i, r, t in zip(table["user"], table["item"], table["rating"], table["timestamp"])}
    assert kept[(0, 0)] == (5.0, 10)
    assert len(kept) == 3


def test_duplicates_without_dedup_name_both_rows():
    raw = raw_table(["u1", "u2", "u1"], ["i1", "i1", "i1"])
    with pytest.raises(DataError, match=r"src\.csv, line 3: duplicate interaction \(user u1, item i1\) already at "
                                        r"src\.csv, line 1; 1 duplicated rows in all"):
        prepare(raw, Recipe(dedup=False))


def test_iterative_kcore():
    # k=2. Round 1 drops d (1 interaction); then z has only c -> round 2 drops (c, z); then c has only
    # (c, y) -> round 3 drops it. The 2x2 block a,b x x,y is what survives.
    raw = raw_table(["a", "a", "b", "b", "c", "c", "d"], ["x", "y", "x", "y", "y", "z", "z"])
    prepared = prepare(raw, Recipe(kcore=2, split="random", split_ratios=(1, 0, 0)))
    assert prepared.interactions.num_rows == 4
    assert prepared.users["original_id"].to_pylist() == ["a", "b"]
    assert prepared.items["original_id"].to_pylist() == ["x", "y"]
    assert prepared.stats["kcore_dropped"] == 3


def test_rating_threshold_to_implicit():
    raw = raw_table(["u", "u", "u", "v"], ["a", "b", "c", "a"], ratings=[5, 3, 4, 1])
    prepared = prepare(raw, Recipe(rating_threshold=4, split="random", split_ratios=(1, 0, 0)))
    assert prepared.interactions.num_rows == 2
    assert prepared.stats["threshold_dropped"] == 2


def test_dense_ids_numeric_order_when_all_integers_else_lexicographic():
    numeric = prepare(raw_table(["10", "9", "2"], ["1", "1", "1"]), Recipe(split="random", split_ratios=(1, 0, 0)))
    assert numeric.users["original_id"].to_pylist() == ["2", "9", "10"]
    assert numeric.stats["id_order"]["users"] == "numeric"
    mixed = prepare(raw_table(["b", "10", "9"], ["1", "1", "1"]), Recipe(split="random", split_ratios=(1, 0, 0)))
    assert mixed.users["original_id"].to_pylist() == ["10", "9", "b"]
    assert mixed.stats["id_order"]["users"] == "lexicographic"


def test_ratio_split_counts_per_user():
    # user 0: 10 rows -> 8/1/1; user 1: 1 row -> train only; user 2: 2 rows -> round(0.2)=0 each -> 2 train;
    # user 3: 5 rows -> round(0.5 half-up)=1 valid, 1 test, 3 train.
    users = np.repeat([0, 1, 2, 3], [10, 1, 2, 5])
    labels = ratio_split(users, np.random.default_rng(0).permutation(len(users)), (0.8, 0.1, 0.1))
    counts = {u: np.bincount(labels[users == u], minlength=3).tolist() for u in range(4)}
    assert counts == {0: [8, 1, 1], 1: [1, 0, 0], 2: [2, 0, 0], 3: [3, 1, 1]}


def test_temporal_split_puts_latest_in_test():
    raw = raw_table(["u"] * 10 + ["v"] * 10, [f"i{k}" for k in range(20)],
                    timestamps=list(range(10, 0, -1)) + list(range(100, 110)))
    prepared = prepare(raw, Recipe(split="temporal"))
    table = prepared.interactions.to_pydict()
    by_split = {s: sorted(t for t, sp in zip(table["timestamp"], table["split"]) if sp == s) for s in ("valid", "test")}
    assert by_split == {"valid": [9, 108], "test": [10, 109]}


def test_temporal_split_without_timestamps_is_an_error():
    with pytest.raises(DataError, match=r"dataset\.split=temporal needs timestamps, and the source src\.csv has none"):
        prepare(raw_table(["u", "u"], ["a", "b"]), Recipe(split="temporal"))


def test_random_split_is_seeded():
    raw = raw_table([f"u{k % 7}" for k in range(200)], [f"i{k}" for k in range(200)])
    first = prepare(raw, Recipe(split="random", seed=3)).interactions
    again = prepare(raw, Recipe(split="random", seed=3)).interactions
    other = prepare(raw, Recipe(split="random", seed=4)).interactions
    assert first.equals(again)
    assert not first.equals(other)


def test_valid_from_train_carves_only_train():
    train = raw_table(["u"] * 10 + ["v"] * 10, [f"i{k}" for k in range(20)], split="train", source="train.txt")
    test = raw_table(["u", "v"], ["t1", "t2"], split="test", source="test.txt")
    prepared = prepare(concat_raw([train, test]), Recipe(split="given", valid_from_train=0.2, seed=1))
    splits = prepared.stats["splits"]
    assert splits == {"train": 16, "valid": 4, "test": 2}
    table = prepared.interactions.to_pydict()
    items = prepared.items["original_id"].to_pylist()
    assert sorted(items[i] for i, s in zip(table["item"], table["split"]) if s == "test") == ["t1", "t2"]


def test_cold_start_user_in_test_is_an_error_naming_file_and_line(tmp_path):
    write(tmp_path / "d" / "train.txt", "0 1\n0 2\n1 1\n")
    write(tmp_path / "d" / "test.txt", "1 2\n7 1\n")
    with pytest.raises(DataError, match=r"test\.txt, line 2: user 7 is in the test split but has no train "
                                        r"interaction \(1 such users\); cold-start users cannot be evaluated"):
        ingest_path(tmp_path / "d", "pairs", ArtifactStore(tmp_path / "store"))
    assert_nothing_stored(tmp_path / "store")


def test_items_unseen_in_train_are_kept_and_counted(tmp_path):
    write(tmp_path / "d" / "train.txt", "0 1\n1 1\n")
    write(tmp_path / "d" / "valid.txt", "0 5\n")
    write(tmp_path / "d" / "test.txt", "1 6\n1 7\n")
    result = ingest_path(tmp_path / "d", "pairs", ArtifactStore(tmp_path / "store"))
    card = json.loads((result.path / "dataset.json").read_text())
    assert card["preparation"]["cold_start_items"] == {"valid": 1, "test": 2}
    assert card["splits"] == {"train": 2, "valid": 1, "test": 2}


# --------------------------------------------------------------------------- bad input at the stage level
def _fashion_like_gzip(path: Path, n: int = 3000) -> bytes:
    text = "".join(json.dumps({"overall": 5.0, "reviewerID": f"U{i % 50}", "asin": f"B{i % 40}",
                               "unixReviewTime": i}) + "\n" for i in range(n))
    return gzip.compress(text.encode())


BAD_INPUTS = {
    "empty file": ("train.txt", "", "pairs", {}, r"train\.txt: file is empty"),
    "wrong delimiter": ("train.txt", "0;1\n1;2\n", "pairs", {},
                        r"train\.txt, line 1: expected 2 space-separated fields \(user item\), found 1: '0;1'; "
                        r"the line looks semicolon-separated"),
    "misnamed column": ("mine.csv", "user,product\nu,i\n", "csv", {"columns": {"user": "user", "item": "item_id"}},
                        r"mine\.csv: column 'item_id' \(dataset\.columns\.item\) not found; the file has columns "
                        r"\['user', 'product'\]"),
    "missing column": ("mine.csv", "user,rating\nu,5\n", "csv", {},
                       r"mine\.csv: no item column; the file has columns \['user', 'rating'\]"),
    "non-numeric id": ("u.data", "1\t2\t5\t100\nx\t3\t4\t101\n", "movielens_udata", {},
                       r"u\.data, line 2: user_id 'x' is not a non-negative integer"),
    "NaN rating": ("r.csv", "u,i,5,1\nu,j,NaN,2\n", "amazon_csv", {}, r"r\.csv, line 2: rating nan is not finite"),
    "blank field": ("r.csv", "u,i,5,1\nu,,4,2\n", "amazon_csv", {}, r"r\.csv, line 2: field item_id is blank"),
    "negative rating": ("r.csv", "u,i,5,1\nu,j,-2,2\n", "amazon_csv", {}, r"r\.csv, line 2: rating -2\.0 is negative"),
    "infinite rating": ("r.csv", "u,i,inf,1\n", "amazon_csv", {}, r"r\.csv, line 1: rating inf is not finite"),
    "duplicated rows without dedup": ("r.csv", "u,i,5,1\nv,i,5,1\nu,i,5,1\n", "amazon_csv", {"dedup": False},
                                      r"r\.csv, line 3: duplicate interaction \(user u, item i\) already at "
                                      r"\S*r\.csv, line 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_message_and_nothing_stored(tmp_path, case):
    name, content, fmt, options, message = BAD_INPUTS[case]
    path = write(tmp_path / "data" / name, content)
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(DataError, match=message):
        ingest_path(path, fmt, store, **options)
    assert_nothing_stored(tmp_path / "store")


def test_truncated_gzip_stage(tmp_path):
    data = _fashion_like_gzip(tmp_path)
    path = tmp_path / "reviews.json.gz"
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(DataError, match=r"reviews\.json\.gz: truncated or corrupt gzip file"):
        ingest_path(path, "amazon_json", ArtifactStore(tmp_path / "store"))
    assert_nothing_stored(tmp_path / "store")


def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.csv: does not exist \(dataset\.path\)"):
        ingest_path(tmp_path / "nowhere.csv", "csv", ArtifactStore(tmp_path / "store"))
    assert not (tmp_path / "store").exists()


def test_catalog_checksum_mismatch(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    write(mirror / "toy" / "train.txt", "0 1\n1 1\n")
    expected = hashlib.sha256(b"something else").hexdigest()
    actual = hashlib.sha256(b"0 1\n1 1\n").hexdigest()
    use_toy_catalog(tmp_path, monkeypatch, "http://127.0.0.1:9/never-used", expected, mirror=mirror)
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(DataError, match=rf"toy/train\.txt: sha256 mismatch: the catalog expects {expected}, "
                                        rf"the file has {actual}"):
        ingest_stage(catalog_cfg("toy"), store)
    assert_nothing_stored(tmp_path / "store")


# --------------------------------------------------------------------------- download
class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    requests: list = []

    def do_GET(self):  # noqa: N802 (http.server API)
        self.requests.append(self.headers.get("Range"))
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _RangeHandler.requests = []
    yield server, _RangeHandler
    server.shutdown()
    server.server_close()


def test_download_resumes_part_file_and_checks_sha256(tmp_path, http_server):
    server, handler = http_server
    handler.payload = b"".join(f"{u} {u % 7}\n".encode() for u in range(5000))
    url = f"http://127.0.0.1:{server.server_address[1]}/train.txt"
    dest = tmp_path / "cache" / "train.txt"
    dest.parent.mkdir(parents=True)
    (dest.parent / "train.txt.part").write_bytes(handler.payload[:1000])
    download_url(url, dest, hashlib.sha256(handler.payload).hexdigest())
    assert dest.read_bytes() == handler.payload
    assert handler.requests == ["bytes=1000-"]
    assert not (dest.parent / "train.txt.part").exists()


def test_download_checksum_mismatch_leaves_no_file(tmp_path, http_server):
    server, handler = http_server
    handler.payload = b"0 1\n"
    url = f"http://127.0.0.1:{server.server_address[1]}/train.txt"
    wrong = "0" * 64
    actual = hashlib.sha256(handler.payload).hexdigest()
    with pytest.raises(DataError, match=rf"train\.txt.part: sha256 mismatch: the catalog expects {wrong}, "
                                        rf"the file has {actual}"):
        download_url(url, tmp_path / "train.txt", wrong)
    assert list(tmp_path.iterdir()) == []


def test_catalog_dataset_downloaded_when_not_mirrored(tmp_path, http_server, monkeypatch):
    server, handler = http_server
    handler.payload = b"0 1\n0 2\n1 2\n"
    port = server.server_address[1]
    use_toy_catalog(tmp_path, monkeypatch, f"http://127.0.0.1:{port}/train.txt",
                    hashlib.sha256(handler.payload).hexdigest(), recipe="{split: random, split_ratios: [1, 0, 0]}")
    result = ingest_stage(catalog_cfg("toy"), ArtifactStore(tmp_path / "store"))
    assert result.summary["n_interactions"] == 3
    assert (tmp_path / "cache" / "toy" / "train.txt").read_bytes() == handler.payload


def test_unreachable_source_is_a_retryable_download_error(tmp_path, monkeypatch):
    """A network failure is DownloadError (the ingest task retries it); it still names file and URL."""
    import socket

    from infodcl.errors import DownloadError
    with socket.socket() as probe:           # a local port nobody listens on: connection refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    use_toy_catalog(tmp_path, monkeypatch, f"http://127.0.0.1:{port}/train.txt", None)
    with pytest.raises(DownloadError, match=rf"toy: could not obtain train\.txt:\n  http://127\.0\.0\.1:{port}/train\.txt"):
        ingest_stage(catalog_cfg("toy"), ArtifactStore(tmp_path / "store"))
    assert not (tmp_path / "store" / "ingest").exists() or list((tmp_path / "store" / "ingest").iterdir()) == []


def test_retry_condition_retries_downloads_only():
    """The ingest task's retry condition: a download failure is retried, a bad file or config is not."""
    from types import SimpleNamespace

    from flows.stages import _retry_transient
    from infodcl.errors import DataError, DownloadError

    def state(error):
        return SimpleNamespace(result=lambda raise_on_failure=False: error)
    assert _retry_transient(None, None, state(DownloadError("office: could not obtain train.txt")))
    assert not _retry_transient(None, None, state(DataError("train.txt, line 3: expected an integer")))


# --------------------------------------------------------------------------- catalog and recipes
def test_packaged_catalog_lists_required_datasets_with_known_readers():
    catalog = load_catalog()
    assert {"office", "ml-1m", "ml-100k", "baby", "electronics", "taobao", "amazon-fashion-5core"} <= set(catalog)
    for entry in catalog.values():
        assert entry.format in READERS
        assert all(f.urls for f in entry.files)


def test_ml1m_recipe_carves_valid_and_explicit_config_wins():
    entry = load_catalog()["ml-1m"]
    assert effective_recipe(DataConfig(name="ml-1m"), entry)["valid_from_train"] == 0.1
    assert effective_recipe(DataConfig(name="ml-1m", valid_from_train=0.2), entry)["valid_from_train"] == 0.2


def test_user_csv_end_to_end_loads_as_interaction_data(tmp_path):
    lines = "".join(f"user{u},item{(u * 3 + k) % 11},{1 + k % 5},{1000 + k}\n" for u in range(12) for k in range(10))
    path = write(tmp_path / "mine.csv", "who,what,stars,when\n" + lines)
    result = ingest_path(path, "csv", ArtifactStore(tmp_path / "store"),
                         columns={"user": "who", "item": "what", "rating": "stars", "timestamp": "when"},
                         split="temporal")
    data = InteractionData.from_dir(result.path)
    assert (data.n_users, data.n_items) == (12, 11)
    assert {s: data.count(s) for s in ("train", "valid", "test")} == {"train": 96, "valid": 12, "test": 12}
    assert data.user_ids[0] == "user0" and data.user_ids[2] == "user10"   # lexicographic order of string ids
    raw = pa.parquet.read_table(result.path / "raw_interactions.parquet")
    assert raw.column_names == ["user_id", "item_id", "rating", "timestamp", "split"]
    assert raw.num_rows == 120


# --------------------------------------------------------------------------- real data
def _parquet_bytes(path: Path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in PARQUETS}


@pytest.mark.realdata
def test_office_given_split_reuse_and_identical_force(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("INFODCL_DATA_MIRROR", str(shared_data))
    store = ArtifactStore(tmp_path / "store")
    cfg = catalog_cfg("office")
    first = ingest_stage(cfg, store)
    assert not first.reused
    card = json.loads((first.path / "dataset.json").read_text())
    assert (card["n_users"], card["n_items"], card["n_interactions"]) == (4905, 2420, 53258)
    assert card["splits"] == {"train": 40877, "valid": 5880, "test": 6501}
    assert card["preparation"]["cold_start_items"] == {"valid": 3, "test": 3}
    assert card["preparation"]["split_method"] == "given"
    assert card["matches_expected"] is True
    assert card["checksums"]["train.txt"] == "db0718524de439a656f0a1a604ce0a3655b34bd1373454d73fa9ebdba809ba01"
    # Office ids are 0-based integers: the dense index equals the original id.
    data = InteractionData.from_dir(first.path)
    assert data.user_ids[:3].tolist() == ["0", "1", "2"] and data.item_ids[2419] == "2419"
    before = _parquet_bytes(first.path)

    again = ingest_stage(cfg, store)
    assert again.reused and again.fingerprint == first.fingerprint and again.summary == first.summary
    forced = ingest_stage(cfg, store, force=True)
    assert not forced.reused and forced.fingerprint == first.fingerprint
    assert _parquet_bytes(forced.path) == before


@pytest.mark.realdata
def test_amazon_fashion_dedup(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("INFODCL_DATA_MIRROR", str(shared_data))
    result = ingest_stage(catalog_cfg("amazon-fashion-5core"), ArtifactStore(tmp_path / "store"))
    assert (result.summary["n_users"], result.summary["n_items"], result.summary["n_interactions"]) == (406, 31, 3042)
    assert result.summary["dedup_dropped"] == 134
    raw = pa.parquet.read_table(result.path / "raw_interactions.parquet")
    assert raw.num_rows == 3176


@pytest.mark.realdata
@pytest.mark.slow
def test_baby_lattice_json(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("INFODCL_DATA_MIRROR", str(shared_data))
    result = ingest_stage(catalog_cfg("baby"), ArtifactStore(tmp_path / "store"))
    assert (result.summary["n_users"], result.summary["n_items"], result.summary["n_interactions"]) == \
        (19445, 7050, 160792)
    assert result.summary["splits"] == {"train": 119674, "valid": 20559, "test": 20559}
    data = InteractionData.from_dir(result.path)
    assert data.item_ids[0].startswith(("0", "9", "B"))       # original ASINs restored, not integers
    assert not data.user_ids[0].isdigit()


@pytest.mark.realdata
@pytest.mark.slow
def test_ml1m_adjacency_with_carved_valid(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("INFODCL_DATA_MIRROR", str(shared_data))
    result = ingest_stage(catalog_cfg("ml-1m"), ArtifactStore(tmp_path / "store"))
    summary = result.summary
    assert (summary["n_users"], summary["n_items"], summary["n_interactions"]) == (6040, 3706, 1000209)
    splits = summary["splits"]
    assert splits["test"] == 200042 and splits["train"] + splits["valid"] == 800167
    assert 0.09 < splits["valid"] / 800167 < 0.11
    card = json.loads((result.path / "dataset.json").read_text())
    assert "valid_note" in card and card["recipe"]["valid_from_train"] == 0.1


@pytest.mark.realdata
def test_mirror_files_match_catalog_checksums(shared_data):
    catalog = load_catalog()
    for name in ("office", "ml-1m", "baby", "amazon-fashion-5core"):
        root, checksums = fetch_dataset(catalog[name], mirror=shared_data, cache=Path("/nonexistent"))
        assert root == shared_data / catalog[name].root
        assert checksums == {f.path: f.sha256 for f in catalog[name].files}
