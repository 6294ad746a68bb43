"""Readers for the raw interaction formats people actually have, each returning one raw Arrow table.

Issue 2 item 4. Raw table: user_id (str), item_id (str), rating (float64, null), timestamp (int64, null),
split (str, null: the source's own split label), plus `_source` / `_line` (file and 1-based line of each
row, dropped before writing) so that every later error can name the file and row. Big formats are parsed
with pyarrow (vectorised); only error paths fall back to scanning lines in Python to locate a bad row.
"""
from __future__ import annotations

import gzip
import json
import zlib
from itertools import chain
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from infodcl.errors import DataError

RAW_COLUMNS = ("user_id", "item_id", "rating", "timestamp", "split")
RAW_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("rating", pa.float64()),
                        ("timestamp", pa.int64()), ("split", pa.string())])
INTERNAL_COLUMNS = ("_source", "_line")
SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid", "validation": "valid",
                 "dev": "valid", "test": "test", "testing": "test"}
_BLOCK_BYTES = 16 << 20          # pyarrow block size: large enough for long adjacency / review lines
_INTEGER = r"^[0-9]+$"


# --------------------------------------------------------------------------- small helpers
def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise DataError(f"{path}: does not exist; expected {what}")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected {what}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; expected {what}")


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8", errors="replace") if path.suffix == ".gz" else \
        open(path, encoding="utf-8", errors="replace")


def _first_line(path: Path) -> tuple[int, str]:
    """The first non-blank line (1-based number, text); a DataError when there is none."""
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    return number, line.rstrip("\r\n")
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot be read as text ({exc})") from None
    raise DataError(f"{path}: file is empty (only blank lines); expected interaction rows")


def _delimiter_name(delimiter: str | None) -> str:
    return {None: "whitespace", " ": "space", "\t": "tab", ",": "comma", ";": "semicolon", ":": "colon",
            "|": "pipe"}.get(delimiter, repr(delimiter))


def _guess_delimiter(line: str) -> str | None:
    for candidate in ("::", "\t", ",", ";", "|", " "):
        if candidate in line:
            return candidate
    return None


def _field_count_error(path: Path, delimiter: str | None, expected: int, description: str,
                       skip_lines: int = 0) -> DataError:
    """Scan (error path only) for the first line whose field count differs; name file, line and fields."""
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if number <= skip_lines:
                continue
            text = line.rstrip("\r\n")
            fields = text.split() if delimiter is None else text.split(delimiter)
            if len(fields) != expected:
                hint = ""
                guess = _guess_delimiter(text)
                if guess is not None and guess != delimiter and len(fields) == 1:
                    hint = f"; the line looks {_delimiter_name(guess)}-separated (wrong delimiter?)"
                return DataError(f"{path}, line {number}: expected {expected} {_delimiter_name(delimiter)}-separated "
                                 f"fields ({description}), found {len(fields)}: {text[:120]!r}{hint}")
    return DataError(f"{path}: could not be parsed as {expected} {_delimiter_name(delimiter)}-separated fields "
                     f"({description})")


def _read_delimited(path: Path, names: list[str], delimiter: str, description: str, skip_rows: int = 0,
                    quoted: bool = False) -> pa.Table:
    """All columns as strings, one row per line (blank lines kept, so row i is line skip_rows + i + 1)."""
    _require_file(path, description)
    number, first = _first_line(path)
    if number > skip_rows:   # header-less: check the delimiter on the first data line before parsing
        fields = first.split(delimiter)
        if len(fields) != len(names):
            raise _field_count_error(path, delimiter, len(names), description, skip_lines=skip_rows)
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip_rows, block_size=_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if quoted else False,
                                             ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False))
    except pa.ArrowInvalid:
        raise _field_count_error(path, delimiter, len(names), description, skip_lines=skip_rows) from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read: {exc} (truncated or corrupt file?)") from None
    return table


def _lines(table_rows: int, first_line: int) -> pa.Array:
    return pa.array(np.arange(first_line, first_line + table_rows, dtype=np.int64))


def _first_true(mask: pa.Array | pa.ChunkedArray) -> int | None:
    mask = pc.fill_null(mask, True)
    if not pc.any(mask).as_py():
        return None
    return int(pc.index(mask, True).as_py())


def _where(path: Path, lines: pa.Array, index: int) -> str:
    line = lines[index].as_py() if lines is not None else None
    return f"{path}, line {line}" if line is not None else f"{path}, entry {index + 1}"


def _check_ids(path: Path, column: pa.Array, field: str, lines, integer: bool, fmt: str,
               clean: bool = False) -> pa.Array:
    """Ids as trimmed strings; blank ids, and non-integers where the format needs integers, are errors.

    `clean` = the caller's tokens are already trimmed and non-empty (whitespace-split adjacency lines).
    """
    if not clean:
        column = pc.utf8_trim_whitespace(column)
        bad = _first_true(pc.or_(pc.is_null(column), pc.equal(column, "")))
        if bad is not None:
            raise DataError(f"{_where(path, lines, bad)}: field {field} is blank or missing; expected an id")
    if integer:
        try:   # a cast is ~3x faster than a regex; the regex only runs to locate a bad id
            ok = not pc.any(pc.less(pc.cast(column, pa.int64()), 0)).as_py()
        except pa.ArrowInvalid:
            ok = False
        bad = None if ok else _first_true(pc.invert(pc.match_substring_regex(column, _INTEGER)))
        if bad is not None:
            raise DataError(f"{_where(path, lines, bad)}: {field} {column[bad].as_py()!r} is not a non-negative "
                            f"integer; the {fmt} format requires integer ids")
    return column


def _to_float(path: Path, column: pa.Array, field: str, lines) -> pa.Array:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        text = pc.utf8_trim_whitespace(column)
        bad = _first_true(pc.equal(text, ""))
        if bad is not None:
            raise DataError(f"{_where(path, lines, bad)}: field {field} is blank; expected a number")
        try:
            column = pc.cast(text, pa.float64())
        except pa.ArrowInvalid:
            numbers = pc.cast(pc.if_else(pc.match_substring_regex(
                text, r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$|^(?i:[+-]?(nan|inf|infinity))$"),
                text, None), pa.float64())
            bad = _first_true(pc.is_null(numbers))
            raise DataError(f"{_where(path, lines, bad)}: {field} {text[bad].as_py()!r} is not a number") from None
    column = pc.cast(column, pa.float64())
    bad = _first_true(pc.is_null(column))
    if bad is not None:
        raise DataError(f"{_where(path, lines, bad)}: field {field} is blank or missing; expected a number")
    return column


def _check_rating(path: Path, rating: pa.Array, lines) -> pa.Array:
    bad = _first_true(pc.invert(pc.is_finite(rating)))
    if bad is not None:
        raise DataError(f"{_where(path, lines, bad)}: rating {rating[bad].as_py()} is not finite; "
                        "expected a finite rating >= 0")
    bad = _first_true(pc.less(rating, 0.0))
    if bad is not None:
        raise DataError(f"{_where(path, lines, bad)}: rating {rating[bad].as_py()} is negative; expected a rating >= 0")
    return rating


def _to_timestamp(path: Path, column: pa.Array, lines) -> pa.Array:
    if pa.types.is_integer(column.type):
        column = pc.cast(column, pa.int64())
        bad = _first_true(pc.is_null(column))
        if bad is not None:
            raise DataError(f"{_where(path, lines, bad)}: field timestamp is blank or missing; expected an integer")
        return column
    seconds = _to_float(path, column, "timestamp", lines)   # RecBole writes timestamps as floats
    bad = _first_true(pc.invert(pc.is_finite(seconds)))
    if bad is not None:
        raise DataError(f"{_where(path, lines, bad)}: timestamp {seconds[bad].as_py()} is not finite")
    return pc.cast(pc.floor(seconds), pa.int64())


def build_raw(path: Path, user, item, *, fmt: str, lines=None, rating=None, timestamp=None, split=None,
              integer_ids: bool = False, clean_ids: bool = False) -> pa.Table:
    """Validate parsed columns of one file and assemble the raw table (plus `_source`, `_line`)."""
    user = pa.array(user) if not isinstance(user, (pa.Array, pa.ChunkedArray)) else user
    item = pa.array(item) if not isinstance(item, (pa.Array, pa.ChunkedArray)) else item
    user, item = (c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in (user, item))
    n = len(user)
    if lines is not None:
        lines = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else pa.array(lines, pa.int64())
    user = _check_ids(path, user, "user_id", lines, integer_ids, fmt, clean_ids)
    item = _check_ids(path, item, "item_id", lines, integer_ids, fmt, clean_ids)
    if rating is not None:
        rating = _check_rating(path, _to_float(path, _combine(rating), "rating", lines), lines)
    else:
        rating = pa.nulls(n, pa.float64())
    timestamp = _to_timestamp(path, _combine(timestamp), lines) if timestamp is not None else pa.nulls(n, pa.int64())
    if split is None:
        split_col = pa.nulls(n, pa.string())
    elif isinstance(split, str):
        split_col = pa.repeat(pa.scalar(split, pa.string()), n)
    else:
        split_col = _combine(split)
    return pa.table({"user_id": user, "item_id": item, "rating": rating, "timestamp": timestamp,
                     "split": split_col,
                     "_source": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)),
                                                               pa.array([str(path)], pa.string())),
                     "_line": lines if lines is not None else pa.nulls(n, pa.int64())})


def _combine(column):
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks()
    return column if isinstance(column, pa.Array) else pa.array(column)


def empty_raw() -> pa.Table:
    return build_raw(Path("-"), pa.array([], pa.string()), pa.array([], pa.string()), fmt="-")


def concat_raw(tables: list[pa.Table]) -> pa.Table:
    tables = [t.cast(tables[0].schema) for t in tables]
    return pa.concat_tables(tables).combine_chunks()


# --------------------------------------------------------------------------- split directories
_SPLIT_STEMS = {"train": ("train",), "valid": ("valid", "val", "validation", "dev"), "test": ("test",)}


def split_files(directory: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """train / valid (or val) / test files of a split directory; train is required."""
    found = {}
    for split, stems in _SPLIT_STEMS.items():
        for stem in stems:
            hits = [directory / f"{stem}{suffix}" for suffix in suffixes if (directory / f"{stem}{suffix}").is_file()]
            if hits:
                found[split] = hits[0]
                break
    if "train" not in found:
        names = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
        raise DataError(f"{directory}: split directory has no train file; expected train{suffixes[0]} "
                        f"(plus optional valid/val and test), found {names}")
    return found


def _per_split(path: Path, suffixes: tuple[str, ...], read_one: Callable[[Path, str | None], pa.Table]) -> pa.Table:
    if not path.exists():
        raise DataError(f"{path}: does not exist; expected a file or a directory of train/valid/test files")
    if path.is_dir():
        return concat_raw([read_one(file, split) for split, file in split_files(path, suffixes).items()])
    return read_one(path, None)


# --------------------------------------------------------------------------- the formats
def read_movielens_dat(path: Path, **_: Any) -> pa.Table:
    """MovieLens-1M/10M `ratings.dat`: UserID::MovieID::Rating::Timestamp."""
    description = "UserID::MovieID::Rating::Timestamp"
    _require_file(path, description)
    number, first = _first_line(path)
    if first.count("::") != 3:
        raise DataError(f"{path}, line {number}: expected 4 '::'-separated fields ({description}), "
                        f"found {first.count('::') + 1}: {first[:120]!r}")
    # pyarrow takes one-character delimiters: split on ':' and keep every other field.
    names = ["user", "_a", "item", "_b", "rating", "_c", "timestamp"]
    table = _read_delimited(path, names, ":", description)
    bad = _first_true(pc.or_(pc.or_(pc.not_equal(table["_a"], ""), pc.not_equal(table["_b"], "")),
                             pc.not_equal(table["_c"], "")).combine_chunks())
    if bad is not None:
        raise DataError(f"{path}, line {bad + 1}: expected '::' between fields ({description})")
    lines = _lines(table.num_rows, 1)
    return build_raw(path, table["user"], table["item"], rating=table["rating"], timestamp=table["timestamp"],
                     lines=lines, fmt="movielens_dat", integer_ids=True)


def read_movielens_udata(path: Path, **_: Any) -> pa.Table:
    """MovieLens-100K `u.data`: user item rating timestamp, tab-separated."""
    table = _read_delimited(path, ["user", "item", "rating", "timestamp"], "\t", "user item rating timestamp")
    return build_raw(path, table["user"], table["item"], rating=table["rating"], timestamp=table["timestamp"],
                     lines=_lines(table.num_rows, 1), fmt="movielens_udata", integer_ids=True)


def read_amazon_csv(path: Path, item_first: bool = False, **_: Any) -> pa.Table:
    """Amazon ratings-only CSV without header: user,item,rating,timestamp (2014) or item,user,... (2018)."""
    names = ["item", "user", "rating", "timestamp"] if item_first else ["user", "item", "rating", "timestamp"]
    table = _read_delimited(path, names, ",", ",".join(names), quoted=True)
    return build_raw(path, table["user"], table["item"], rating=table["rating"], timestamp=table["timestamp"],
                     lines=_lines(table.num_rows, 1), fmt="amazon_csv_2018" if item_first else "amazon_csv")


def read_amazon_csv_2018(path: Path, **_: Any) -> pa.Table:
    return read_amazon_csv(path, item_first=True)


_JSON_FIELDS = {"reviewerID": pa.string(), "asin": pa.string(), "overall": pa.float64(), "unixReviewTime": pa.int64()}


def _json_error(path: Path, cause: Exception) -> DataError:
    """Locate (error path only) the first review line that is not valid or lacks a typed key."""
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    review = json.loads(line)
                except json.JSONDecodeError as exc:
                    return DataError(f"{path}, line {number}: not valid JSON ({exc.msg}); expected one review "
                                     "object per line")
                if not isinstance(review, dict):
                    return DataError(f"{path}, line {number}: expected a JSON object, found {type(review).__name__}")
                for key, kind in (("overall", (int, float)), ("unixReviewTime", (int,)),
                                  ("reviewerID", (str,)), ("asin", (str,))):
                    if key in review and not isinstance(review[key], kind):
                        return DataError(f"{path}, line {number}: {key} is {review[key]!r}; expected "
                                         f"{'a number' if key == 'overall' else 'an integer' if key == 'unixReviewTime' else 'a string'}")
    except (OSError, EOFError, zlib.error) as exc:
        return DataError(f"{path}: truncated or corrupt gzip file ({exc}); re-download it")
    return DataError(f"{path}: cannot be parsed as JSON lines ({cause})")


def read_amazon_json(path: Path, **_: Any) -> pa.Table:
    """McAuley Amazon reviews, JSON lines (gzip or not): reviewerID, asin, overall, unixReviewTime."""
    _require_file(path, "Amazon review JSON lines (reviewerID, asin, overall, unixReviewTime)")
    if path.suffix == ".gz":
        _check_gzip(path)
    else:
        _first_line(path)
    options = pajson.ParseOptions(explicit_schema=pa.schema(list(_JSON_FIELDS.items())),
                                  unexpected_field_behavior="ignore")
    try:
        table = pajson.read_json(path, read_options=pajson.ReadOptions(block_size=_BLOCK_BYTES),
                                 parse_options=options)
    except (pa.ArrowInvalid, OSError, EOFError) as exc:
        raise _json_error(path, exc) from None
    # pyarrow skips blank lines, so a row number is only a line number when there are none (the usual case).
    lines = _lines(table.num_rows, 1)
    for key, field in (("reviewerID", "user_id (reviewerID)"), ("asin", "item_id (asin)"), ("overall", "rating (overall)")):
        bad = _first_true(pc.is_null(table[key]).combine_chunks())
        if bad is not None:
            raise DataError(f"{path}, line {bad + 1}: key {key!r} is missing or null; expected {field} in every review")
    return build_raw(path, table["reviewerID"], table["asin"], rating=table["overall"],
                     timestamp=table["unixReviewTime"] if pc.any(pc.is_valid(table["unixReviewTime"])).as_py()
                     else None, lines=lines, fmt="amazon_json")


def _check_gzip(path: Path) -> None:
    """Stream the whole gzip once: a truncated download fails here with the file named."""
    try:
        with gzip.open(path, "rb") as handle:
            while handle.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: truncated or corrupt gzip file ({exc}); re-download it") from None


_RECBOLE_ALIASES = {"user_id": "user", "userid": "user", "user": "user", "uid": "user",
                    "item_id": "item", "itemid": "item", "item": "item", "iid": "item", "movie_id": "item",
                    "rating": "rating", "timestamp": "timestamp", "x_label": "split"}


def read_recbole_inter(path: Path, **_: Any) -> pa.Table:
    """RecBole atomic `.inter` (tab, typed header `user_id:token`), also MMRec's (userID, itemID, x_label)."""
    _require_file(path, "a RecBole .inter file with a header such as user_id:token item_id:token")
    number, header = _first_line(path)
    raw_names = header.split("\t")
    roles = [_RECBOLE_ALIASES.get(name.split(":")[0].strip().lower()) for name in raw_names]
    for role, label in (("user", "user_id:token"), ("item", "item_id:token")):
        if role not in roles:
            raise DataError(f"{path}, line {number}: header has no {label} field; found {raw_names} "
                            "(expected tab-separated typed fields, e.g. user_id:token item_id:token rating:float)")
    names = [role if role else f"_extra{i}" for i, role in enumerate(roles)]
    table = _read_delimited(path, names, "\t", "\t".join(raw_names), skip_rows=number)
    lines = _lines(table.num_rows, number + 1)
    split = None
    if "split" in names:
        labels = pc.utf8_trim_whitespace(table["split"]).combine_chunks()
        split = pc.replace_substring_regex(labels, "^0$", "train")
        split = pc.replace_substring_regex(pc.replace_substring_regex(split, "^1$", "valid"), "^2$", "test")
        bad = _first_true(pc.invert(pc.is_in(split, pa.array(["train", "valid", "test"]))))
        if bad is not None:
            raise DataError(f"{path}, line {bad + number + 1}: x_label {labels[bad].as_py()!r}; expected 0, 1 or 2")
    return build_raw(path, table["user"], table["item"], lines=lines, fmt="recbole_inter",
                     rating=table["rating"] if "rating" in names else None,
                     timestamp=table["timestamp"] if "timestamp" in names else None, split=split)


def _pair_delimiter(path: Path, delimiter: str | None) -> str:
    if delimiter:
        return delimiter
    _, first = _first_line(path)
    return "\t" if "\t" in first else " "


def read_pairs(path: Path, delimiter: str | None = None, **_: Any) -> pa.Table:
    """`user item` pair files (integer ids); a directory of train/valid(val)/test files keeps that split."""
    def read_one(file: Path, split: str | None) -> pa.Table:
        _require_file(file, "'user item' lines")
        sep = _pair_delimiter(file, delimiter)
        table = _read_delimited(file, ["user", "item"], sep, "user item")
        return build_raw(file, table["user"], table["item"], split=split, lines=_lines(table.num_rows, 1),
                         fmt="pairs", integer_ids=True)
    return _per_split(Path(path), (".txt", ".tsv", ".csv", ""), read_one)


def read_adjacency(path: Path, **_: Any) -> pa.Table:
    """LightGCN adjacency lines `user item item ...`; a directory of train/test(/valid) files keeps the split."""
    def read_one(file: Path, split: str | None) -> pa.Table:
        _require_file(file, "'user item item ...' lines")
        _first_line(file)
        # One string column per line (a delimiter that never occurs), then a vectorised whitespace split.
        table = pacsv.read_csv(file, read_options=pacsv.ReadOptions(column_names=["line"], block_size=_BLOCK_BYTES),
                               parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False,
                                                                ignore_empty_lines=False),
                               convert_options=pacsv.ConvertOptions(column_types={"line": pa.string()},
                                                                    strings_can_be_null=False))
        tokens = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(table["line"].combine_chunks()))
        lengths = pc.list_value_length(tokens)
        has_user = pc.greater(lengths, 0)                               # blank lines carry no user
        line_numbers = np.arange(1, table.num_rows + 1, dtype=np.int64)
        tokens, lengths = pc.filter(tokens, has_user), pc.filter(lengths, has_user)
        line_numbers = line_numbers[has_user.to_numpy(zero_copy_only=False)]
        users = pc.list_element(tokens, 0)
        items = pc.list_flatten(pc.list_slice(tokens, 1))
        owner = np.repeat(np.arange(len(users)), np.maximum(lengths.to_numpy() - 1, 0))  # (n_pairs,) row of each item
        return build_raw(file, pc.take(users, pa.array(owner)), items, split=split,
                         lines=pa.array(line_numbers[owner]), fmt="adjacency", integer_ids=True, clean_ids=True)
    return _per_split(Path(path), (".txt", ""), read_one)


def _load_json(path: Path) -> Any:
    _require_file(path, "a JSON file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from None


def _is_set(values: np.ndarray) -> np.ndarray:
    return np.not_equal(values, None)


def _invert_map(path: Path, mapping: Any) -> dict[int, str]:
    if not isinstance(mapping, dict):
        raise DataError(f"{path}: expected a JSON object {{original id: integer id}}")
    inverted = {}
    for original, index in mapping.items():
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise DataError(f"{path}: id of {original!r} is {index!r}; expected a non-negative integer")
        inverted[index] = str(original)
    return inverted


def read_lattice_json(path: Path, **_: Any) -> pa.Table:
    """LATTICE/MMRec split files `{"user": [items]}` (train/val/test.json, maybe under 5-core/) with
    user2id.json / item2id.json restoring the original ids when present."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: does not exist; expected a directory with train/val/test .json split files")
    if path.is_dir() and not any(path.glob("train*.json")) and (path / "5-core").is_dir():
        split_dir = path / "5-core"
    else:
        split_dir = path
    maps = {}
    for role in ("user", "item"):
        for candidate in (split_dir / f"{role}2id.json", split_dir.parent / f"{role}2id.json"):
            if candidate.is_file():
                maps[role] = _invert_map(candidate, _load_json(candidate))
                break

    # index -> original id as one array, so restoring a whole split is a single fancy-indexing step
    tables = {}
    for role, lookup in maps.items():
        table = np.full(max(lookup) + 1 if lookup else 0, None, dtype=object)
        table[np.fromiter(lookup.keys(), dtype=np.int64, count=len(lookup))] = list(lookup.values())
        tables[role] = table

    def restore(file: Path, ids: np.ndarray, role: str) -> pa.Array:
        if role not in tables:
            return pc.cast(pa.array(ids), pa.string())
        table = tables[role]
        known = ids < len(table)
        known[known] = _is_set(table[ids[known]])
        if not known.all():
            missing = np.unique(ids[~known])
            raise DataError(f"{file}: {role} id {missing[0]} is not in {role}2id.json "
                            f"({len(missing)} ids missing); expected every id to map to an original id")
        return pa.array(table[ids], pa.string())

    def read_one(file: Path, split: str | None) -> pa.Table:
        content = _load_json(file)
        if not isinstance(content, dict):
            raise DataError(f"{file}: expected a JSON object {{user id: [item ids]}}, found {type(content).__name__}")
        keys = list(content)
        for key in keys:
            if not isinstance(content[key], list):
                raise DataError(f"{file}: user {key!r}: expected a list of item ids, found {content[key]!r:.60}")
            if not str(key).isdigit():
                raise DataError(f"{file}: user key {key!r} is not a non-negative integer; the lattice_json format "
                                "requires integer ids")
        lengths = np.fromiter((len(content[k]) for k in keys), dtype=np.int64, count=len(keys))
        items = list(chain.from_iterable(content[k] for k in keys))
        # All-integer lists (the normal case) convert in one C call; only an error looks item by item.
        try:
            item_ids = np.array(items) if items else np.zeros(0, np.int64)
            integer_ok = item_ids.dtype.kind in "iu" and bool((item_ids >= 0).all())
        except (TypeError, ValueError, OverflowError):
            integer_ok = False
        if not integer_ok:
            item_array = np.array(items, dtype=object)
            integer = np.fromiter((isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items),
                                  dtype=bool, count=len(items))
            index = int(np.argmin(integer))
            owner = keys[int(np.searchsorted(np.cumsum(lengths), index, side="right"))]
            raise DataError(f"{file}: user {owner!r}: item {item_array[index]!r} is not a non-negative integer; "
                            "the lattice_json format requires integer ids")
        users = np.repeat(np.array([int(k) for k in keys], dtype=np.int64), lengths)
        item_ids = item_ids.astype(np.int64)
        return build_raw(file, restore(file, users, "user"), restore(file, item_ids, "item"), split=split,
                         fmt="lattice_json")

    return _per_split(split_dir, (".json",), read_one)


_COLUMN_GUESSES = {"user": ("user_id", "userid", "user", "uid", "reviewerid", "visitorid"),
                   "item": ("item_id", "itemid", "item", "iid", "movieid", "movie_id", "asin", "product_id"),
                   "rating": ("rating", "overall", "score"), "timestamp": ("timestamp", "time", "unixreviewtime", "ts"),
                   "split": ("split",)}


def _map_columns(path: Path, available: list[str], columns: dict[str, str] | None) -> dict[str, str]:
    """role -> column name; explicit mappings must exist, else user/item are guessed from common names."""
    columns = dict(columns or {})
    unknown_roles = set(columns) - set(_COLUMN_GUESSES)
    if unknown_roles:
        raise DataError(f"dataset.columns: unknown role(s) {sorted(unknown_roles)}; expected {sorted(_COLUMN_GUESSES)}")
    for role, name in columns.items():
        if name not in available:
            raise DataError(f"{path}: column {name!r} (dataset.columns.{role}) not found; the file has columns "
                            f"{available}")
    lowered = {c.lower(): c for c in available}
    for role, guesses in _COLUMN_GUESSES.items():
        if role not in columns:
            hit = next((lowered[g] for g in guesses if g in lowered), None)
            if hit is not None:
                columns[role] = hit
    for role in ("user", "item"):
        if role not in columns:
            raise DataError(f"{path}: no {role} column; the file has columns {available}; "
                            f"set dataset.columns.{role}=<column name>")
    return columns


def read_table(path: Path, fmt: str = "csv", columns: dict[str, str] | None = None, delimiter: str | None = None,
               column_names: list[str] | None = None, **_: Any) -> pa.Table:
    """Generic CSV / TSV (header row, or `column_names` for header-less files) / Parquet with a column mapping."""
    path = Path(path)
    if fmt == "parquet" or path.suffix == ".parquet":
        _require_file(path, "a Parquet file")
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
        first_line = 1
        if table.num_rows == 0:
            raise DataError(f"{path}: file is empty (0 rows); expected interaction rows")
    else:
        sep = delimiter or ("\t" if fmt == "tsv" or path.suffix in (".tsv", ".tab") else ",")
        _require_file(path, f"{_delimiter_name(sep)}-separated rows with a header")
        number, header = _first_line(path)
        names = list(column_names) if column_names else [n.strip().strip('"') for n in header.split(sep)]
        if not column_names and len(names) == 1 and _guess_delimiter(header) not in (None, sep):
            raise DataError(f"{path}, line {number}: header {header[:120]!r} has one field when split on "
                            f"{_delimiter_name(sep)}; it looks {_delimiter_name(_guess_delimiter(header))}-separated "
                            "(set dataset.delimiter)")
        skip = 0 if column_names else number
        table = _read_delimited(path, names, sep, sep.join(names), skip_rows=skip, quoted=True)
        first_line = skip + 1
        if table.num_rows == 0:
            raise DataError(f"{path}: has a header but no rows; expected interaction rows")
    mapping = _map_columns(path, table.column_names, columns)
    lines = _lines(table.num_rows, first_line)
    split = None
    if "split" in mapping:
        labels = pc.utf8_lower(pc.utf8_trim_whitespace(pc.cast(table[mapping["split"]], pa.string()))).combine_chunks()
        split = pc.take(pa.array(list(SPLIT_ALIASES.values()) + [None]), pc.fill_null(
            pc.index_in(labels, pa.array(list(SPLIT_ALIASES))), len(SPLIT_ALIASES)))
        bad = _first_true(pc.is_null(split))
        if bad is not None:
            raise DataError(f"{_where(path, lines, bad)}: split {labels[bad].as_py()!r}; expected train, valid or test")
    as_text = lambda name: pc.cast(table[name], pa.string())  # noqa: E731  (integer id columns become strings)
    return build_raw(path, as_text(mapping["user"]), as_text(mapping["item"]), lines=lines, fmt=fmt,
                     rating=table[mapping["rating"]] if "rating" in mapping else None,
                     timestamp=table[mapping["timestamp"]] if "timestamp" in mapping else None, split=split)


READERS: dict[str, Callable[..., pa.Table]] = {
    "movielens_dat": read_movielens_dat,
    "movielens_udata": read_movielens_udata,
    "amazon_csv": read_amazon_csv,
    "amazon_csv_2018": read_amazon_csv_2018,
    "amazon_json": read_amazon_json,
    "recbole_inter": read_recbole_inter,
    "pairs": read_pairs,
    "adjacency": read_adjacency,
    "lattice_json": read_lattice_json,
    "csv": lambda path, **kw: read_table(path, fmt="csv", **kw),
    "tsv": lambda path, **kw: read_table(path, fmt="tsv", **kw),
    "parquet": lambda path, **kw: read_table(path, fmt="parquet", **kw),
}


FORMAT_ALIASES = {"movielens_1m": "movielens_dat", "ratings_dat": "movielens_dat", "movielens_100k": "movielens_udata",
                  "u_data": "movielens_udata", "udata": "movielens_udata", "amazon": "amazon_csv",
                  "amazon_reviews": "amazon_json", "jsonl": "amazon_json", "recbole": "recbole_inter",
                  "inter": "recbole_inter", "mmrec": "recbole_inter", "pair": "pairs", "lightgcn": "adjacency",
                  "lattice": "lattice_json", "mmrec_json": "lattice_json"}


def canonical_format(fmt: str, path: str | Path | None = None) -> str:
    """A reader name from what a user may type (`amazon-csv`, `recbole`, `lightgcn`, `movielens`, ...)."""
    name = fmt.strip().lower().replace("-", "_")
    if name == "movielens":   # one word for both MovieLens layouts: `::` ratings.dat or tab u.data
        return "movielens_udata" if path is not None and Path(path).name.endswith(".data") else "movielens_dat"
    name = FORMAT_ALIASES.get(name, name)
    if name not in READERS:
        raise DataError(f"dataset.format: unknown format {fmt!r}; expected one of {sorted(READERS)} "
                        f"(or an alias: {sorted(FORMAT_ALIASES) + ['movielens']})")
    return name


def detect_format(path: str | Path) -> str:
    """Guess a reader from the path (a user may always pass the format instead)."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        if any(path.glob("train*.json")) or (path / "5-core").is_dir():
            return "lattice_json"
        train = next((p for p in (path / "train.txt", path / "train") if p.is_file()), None)
        if train is not None:
            _, first = _first_line(train)
            return "adjacency" if len(first.split()) > 2 else "pairs"
        if any(path.glob("*.inter")):
            raise DataError(f"{path}: a directory of .inter files; pass the .inter file itself")
        raise DataError(f"{path}: cannot tell the format of this directory; pass dataset.format "
                        f"(one of {sorted(READERS)})")
    if name == "ratings.dat" or name.endswith(".dat"):
        return "movielens_dat"
    if name == "u.data" or name.endswith(".data"):
        return "movielens_udata"
    if name.endswith((".json", ".json.gz", ".jsonl", ".jsonl.gz")):
        return "amazon_json"
    if name.endswith(".inter"):
        return "recbole_inter"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith(".csv"):
        return "csv"
    if path.exists() and path.is_file() and path.stat().st_size:
        _, first = _first_line(path)
        fields = first.split()
        if all(f.isdigit() for f in fields) and len(fields) >= 2:
            return "pairs" if len(fields) == 2 else "adjacency"
    raise DataError(f"{path}: cannot tell the format from the name; pass dataset.format (one of {sorted(READERS)})")


def read_raw(fmt: str, path: str | Path, **options: Any) -> pa.Table:
    """Read a source with the named reader; options are reader keywords (delimiter, columns, column_names)."""
    fmt = canonical_format(fmt, path)
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: does not exist; expected a {fmt} file or directory")
    return READERS[fmt](path, **{k: v for k, v in options.items() if v is not None})


def source_files(path: str | Path) -> list[Path]:
    """Every regular file a source reads (a directory: all files beneath it, sorted)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path]
