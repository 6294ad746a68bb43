"""Readers of the raw interaction formats: parsed values on small hand-written files, and bad input."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from infodcl.data.readers import RAW_COLUMNS, detect_format, read_raw
from infodcl.errors import DataError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def rows(table) -> list[tuple]:
    columns = [table[c].to_pylist() for c in RAW_COLUMNS]
    return list(zip(*columns))


def test_movielens_dat(tmp_path):
    path = write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1357::5::978298709\n")
    table = read_raw("movielens_dat", path)
    assert rows(table) == [("1", "1193", 5.0, 978300760, None), ("1", "661", 3.0, 978302109, None),
                           ("2", "1357", 5.0, 978298709, None)]
    assert table["_line"].to_pylist() == [1, 2, 3]
    assert detect_format(path) == "movielens_dat"


def test_movielens_udata(tmp_path):
    path = write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    assert rows(read_raw("movielens_udata", path)) == [("196", "242", 3.0, 881250949, None),
                                                       ("186", "302", 3.0, 891717742, None)]


def test_amazon_csv_both_column_orders(tmp_path):
    path = write(tmp_path / "ratings.csv", "A39HTATAQ9V7YF,0205616461,5.0,1369699200\nA3JM6GV9MNOF9X,0558925278,3.0,1355443200\n")
    assert rows(read_raw("amazon_csv", path))[0] == ("A39HTATAQ9V7YF", "0205616461", 5.0, 1369699200, None)
    swapped = rows(read_raw("amazon_csv_2018", path))[0]
    assert swapped[:2] == ("0205616461", "A39HTATAQ9V7YF")


def test_amazon_json_plain_and_gzip(tmp_path):
    reviews = [{"overall": 5.0, "reviewerID": "U1", "asin": "B1", "unixReviewTime": 100, "style": {"Size:": "M"}},
               {"overall": 2, "reviewerID": "U2", "asin": "B1", "unixReviewTime": 200, "vote": "3"}]
    text = "".join(json.dumps(r) + "\n" for r in reviews)
    plain = write(tmp_path / "r.json", text)
    zipped = tmp_path / "r.json.gz"
    zipped.write_bytes(gzip.compress(text.encode()))
    expected = [("U1", "B1", 5.0, 100, None), ("U2", "B1", 2.0, 200, None)]
    assert rows(read_raw("amazon_json", plain)) == expected
    assert rows(read_raw("amazon_json", zipped)) == expected


def test_truncated_gzip_names_the_file(tmp_path):
    text = "".join(json.dumps({"overall": 5.0, "reviewerID": f"U{i}", "asin": "B1", "unixReviewTime": i}) + "\n"
                   for i in range(2000))
    data = gzip.compress(text.encode())
    path = tmp_path / "cut.json.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.json\.gz: truncated or corrupt gzip"):
        read_raw("amazon_json", path)


def test_amazon_json_bad_value_names_line(tmp_path):
    path = write(tmp_path / "r.json", '{"overall": 5.0, "reviewerID": "U1", "asin": "B1", "unixReviewTime": 1}\n'
                                      '{"overall": "great", "reviewerID": "U1", "asin": "B2", "unixReviewTime": 1}\n')
    with pytest.raises(DataError, match=r"r\.json, line 2: overall is 'great'; expected a number"):
        read_raw("amazon_json", path)


def test_amazon_json_missing_key(tmp_path):
    path = write(tmp_path / "r.json", '{"overall": 5.0, "reviewerID": "U1", "asin": "B1"}\n{"overall": 4.0, "asin": "B2"}\n')
    with pytest.raises(DataError, match=r"r\.json, line 2: key 'reviewerID' is missing"):
        read_raw("amazon_json", path)


def test_recbole_inter_typed_header(tmp_path):
    path = write(tmp_path / "ml.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                        "1\t10\t4.0\t881250949.0\n2\t20\t1.5\t881250950.0\n")
    table = read_raw("recbole_inter", path)
    assert rows(table) == [("1", "10", 4.0, 881250949, None), ("2", "20", 1.5, 881250950, None)]
    assert table["_line"].to_pylist() == [2, 3]


def test_mmrec_inter_with_split_label(tmp_path):
    path = write(tmp_path / "baby.inter", "userID\titemID\trating\ttimestamp\tx_label\n"
                                          "0\t5\t5.0\t1\t0\n0\t6\t4.0\t2\t1\n0\t7\t3.0\t3\t2\n")
    assert read_raw("recbole_inter", path)["split"].to_pylist() == ["train", "valid", "test"]


def test_recbole_header_without_item_field(tmp_path):
    path = write(tmp_path / "x.inter", "user_id:token\tproduct:token\n1\t2\n")
    with pytest.raises(DataError, match=r"x\.inter, line 1: header has no item_id:token field"):
        read_raw("recbole_inter", path)


def test_pairs_directory_keeps_given_split_with_val_name(tmp_path):
    write(tmp_path / "d" / "train.txt", "0 1\n0 2\n1 1\n")
    write(tmp_path / "d" / "val.txt", "0 3\n")
    write(tmp_path / "d" / "test.txt", "1 2\n")
    table = read_raw("pairs", tmp_path / "d")
    assert rows(table) == [("0", "1", None, None, "train"), ("0", "2", None, None, "train"),
                           ("1", "1", None, None, "train"), ("0", "3", None, None, "valid"),
                           ("1", "2", None, None, "test")]
    assert detect_format(tmp_path / "d") == "pairs"


def test_pairs_wrong_delimiter(tmp_path):
    path = write(tmp_path / "train.txt", "0,1\n0,2\n")
    with pytest.raises(DataError, match=r"train\.txt, line 1: expected 2 space-separated fields \(user item\), "
                                        r"found 1: '0,1'; the line looks comma-separated"):
        read_raw("pairs", path)


def test_pairs_non_integer_id(tmp_path):
    path = write(tmp_path / "train.txt", "0 1\n0 2\nalice 3\n")
    with pytest.raises(DataError, match=r"train\.txt, line 3: user_id 'alice' is not a non-negative integer; "
                                        r"the pairs format requires integer ids"):
        read_raw("pairs", path)


def test_pairs_blank_line_is_a_blank_field(tmp_path):
    path = write(tmp_path / "train.txt", "0 1\n\n0 2\n")
    with pytest.raises(DataError, match=r"train\.txt, line 2: field user_id is blank"):
        read_raw("pairs", path)


def test_pairs_ragged_line(tmp_path):
    path = write(tmp_path / "train.txt", "0 1\n0 2 7\n")
    with pytest.raises(DataError, match=r"train\.txt, line 2: expected 2 space-separated fields \(user item\), found 3"):
        read_raw("pairs", path)


def test_adjacency_lines(tmp_path):
    write(tmp_path / "g" / "train.txt", "0 5 6 7\n1 5\n2\n")
    write(tmp_path / "g" / "test.txt", "0 8\n1  9 \n")
    table = read_raw("adjacency", tmp_path / "g")
    assert [(u, i, s) for u, i, _, _, s in rows(table)] == [
        ("0", "5", "train"), ("0", "6", "train"), ("0", "7", "train"), ("1", "5", "train"),
        ("0", "8", "test"), ("1", "9", "test")]
    assert table["_line"].to_pylist() == [1, 1, 1, 2, 1, 2]
    assert detect_format(tmp_path / "g") == "adjacency"


def test_adjacency_non_integer_item_names_line(tmp_path):
    path = write(tmp_path / "train.txt", "0 5 6\n1 5 x7\n")
    with pytest.raises(DataError, match=r"train\.txt, line 2: item_id 'x7' is not a non-negative integer"):
        read_raw("adjacency", path)


def test_lattice_json_restores_original_ids(tmp_path):
    root = tmp_path / "baby"
    write(root / "5-core" / "train.json", json.dumps({"0": [0, 1], "1": [1]}))
    write(root / "5-core" / "val.json", json.dumps({"0": [2], "1": []}))
    write(root / "5-core" / "test.json", json.dumps({"1": [0]}))
    write(root / "user2id.json", json.dumps({"AX": 0, "AY": 1}))
    write(root / "item2id.json", json.dumps({"B0": 0, "B1": 1, "B2": 2}))
    table = read_raw("lattice_json", root)
    assert [(u, i, s) for u, i, _, _, s in rows(table)] == [
        ("AX", "B0", "train"), ("AX", "B1", "train"), ("AY", "B1", "train"), ("AX", "B2", "valid"),
        ("AY", "B0", "test")]
    assert detect_format(root) == "lattice_json"


def test_lattice_json_id_missing_from_map(tmp_path):
    write(tmp_path / "train.json", json.dumps({"0": [0, 5]}))
    write(tmp_path / "item2id.json", json.dumps({"B0": 0}))
    with pytest.raises(DataError, match=r"train\.json: item id 5 is not in item2id\.json"):
        read_raw("lattice_json", tmp_path)


def test_generic_csv_with_column_mapping(tmp_path):
    path = write(tmp_path / "mine.csv", "who,what,stars,when\nu1,i1,4.5,10\nu2,i1,3,11\n")
    table = read_raw("csv", path, columns={"user": "who", "item": "what", "rating": "stars", "timestamp": "when"})
    assert rows(table) == [("u1", "i1", 4.5, 10, None), ("u2", "i1", 3.0, 11, None)]
    assert table["_line"].to_pylist() == [2, 3]


def test_generic_tsv_guesses_common_names_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = write(tmp_path / "mine.tsv", "userId\tmovieId\trating\n1\t2\t5\n")
    assert rows(read_raw("tsv", path)) == [("1", "2", 5.0, None, None)]
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": ["a", "b"], "split": ["train", "Test"]}), tmp_path / "m.parquet")
    assert rows(read_raw("parquet", tmp_path / "m.parquet")) == [("1", "a", None, None, "train"),
                                                                 ("2", "b", None, None, "test")]


def test_generic_csv_misnamed_column(tmp_path):
    path = write(tmp_path / "mine.csv", "user,item,score\nu1,i1,4\n")
    with pytest.raises(DataError, match=r"mine\.csv: column 'rating_value' \(dataset\.columns\.rating\) not found; "
                                        r"the file has columns \['user', 'item', 'score'\]"):
        read_raw("csv", path, columns={"rating": "rating_value"})


def test_generic_csv_missing_item_column(tmp_path):
    path = write(tmp_path / "mine.csv", "user,score\nu1,4\n")
    with pytest.raises(DataError, match=r"mine\.csv: no item column; the file has columns \['user', 'score'\]"):
        read_raw("csv", path)


def test_generic_csv_semicolon_file_read_as_comma(tmp_path):
    path = write(tmp_path / "mine.csv", "user;item\nu1;i1\n")
    with pytest.raises(DataError, match=r"mine\.csv, line 1: header 'user;item' has one field .* semicolon-separated"):
        read_raw("csv", path)


@pytest.mark.parametrize("rating, message", [
    ("", r"line 3: field rating is blank; expected a number"),
    ("nan", r"line 3: rating nan is not finite; expected a finite rating >= 0"),
    ("inf", r"line 3: rating inf is not finite"),
    ("-1", r"line 3: rating -1.0 is negative; expected a rating >= 0"),
    ("five", r"line 3: rating 'five' is not a number"),
])
def test_bad_ratings_name_the_line(tmp_path, rating, message):
    path = write(tmp_path / "ratings.csv", f"u1,i1,4,100\nu1,i2,5,101\nu2,i1,{rating},102\n")
    with pytest.raises(DataError, match=r"ratings\.csv, " + message):
        read_raw("amazon_csv", path)


def test_blank_id_field(tmp_path):
    path = write(tmp_path / "ratings.csv", "u1,i1,4,100\n,i2,5,101\n")
    with pytest.raises(DataError, match=r"ratings\.csv, line 2: field user_id is blank or missing; expected an id"):
        read_raw("amazon_csv", path)


def test_bad_timestamp(tmp_path):
    path = write(tmp_path / "u.data", "1\t2\t3\t100\n1\t3\t3\tyesterday\n")
    with pytest.raises(DataError, match=r"u\.data, line 2: timestamp 'yesterday' is not a number"):
        read_raw("movielens_udata", path)


@pytest.mark.parametrize("fmt, name", [("pairs", "train.txt"), ("movielens_dat", "ratings.dat"),
                                       ("amazon_json", "r.json"), ("csv", "x.csv"), ("recbole_inter", "x.inter")])
def test_empty_file(tmp_path, fmt, name):
    path = tmp_path / name
    path.write_text("")
    with pytest.raises(DataError, match=rf"{name.replace('.', '[.]')}: file is empty"):
        read_raw(fmt, path)


def test_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match=r"nothing\.txt: does not exist"):
        read_raw("pairs", tmp_path / "nothing.txt")
    with pytest.raises(DataError, match=r"unknown format 'xls'"):
        read_raw("xls", tmp_path)


def test_movielens_dat_single_colon_is_wrong_delimiter(tmp_path):
    path = write(tmp_path / "ratings.dat", "1:1193:5:978300760\n")
    with pytest.raises(DataError, match=r"ratings\.dat, line 1: expected 4 '::'-separated fields"):
        read_raw("movielens_dat", path)


@pytest.mark.parametrize("bad_item", ["1.5", '"7"', "-2"])
def test_lattice_json_non_integer_item(tmp_path, bad_item):
    write(tmp_path / "train.json", '{"0": [0, 1], "1": [2, ' + bad_item + ']}')
    with pytest.raises(DataError, match=r"train\.json: user '1': item .* is not a non-negative integer"):
        read_raw("lattice_json", tmp_path)


def test_format_aliases_a_user_may_type(tmp_path):
    from infodcl.data.readers import canonical_format
    assert canonical_format("amazon-csv") == "amazon_csv"
    assert canonical_format("recbole") == "recbole_inter"
    assert canonical_format("lightgcn") == "adjacency"
    assert canonical_format("movielens", tmp_path / "u.data") == "movielens_udata"
    assert canonical_format("movielens", tmp_path / "ratings.dat") == "movielens_dat"
    with pytest.raises(DataError, match=r"unknown format 'excel'; expected one of"):
        canonical_format("excel")
