"""read_rows on every source it accepts: JSONL, JSON arrays, Parquet, Arrow, CSV, directories, hub names."""

import json

import pytest
from helpers import ROWS, only_rows, validate, write_csv, write_jsonl, write_parquet

from lit_instruct.data.problems import DataError, RowNumber
from lit_instruct.data.records import read_rows

datasets = pytest.importorskip("datasets")
pytestmark = pytest.mark.usefixtures("datasets_cache")


def test_every_format_gives_the_same_rows(tmp_path):
    expected = read_rows(write_jsonl(tmp_path / "rows.jsonl", ROWS), validate)
    assert [n for n, _ in expected] == [1, 2, 3, 4, 5, 6]
    assert only_rows(expected) == ROWS

    (tmp_path / "array.json").write_text(json.dumps(ROWS, indent=2))
    write_jsonl(tmp_path / "lines.json", ROWS)
    write_parquet(tmp_path / "rows.parquet", ROWS)
    write_csv(tmp_path / "rows.csv", ROWS)
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    (arrow_file,) = (tmp_path / "saved").glob("*.arrow")

    sources = {
        "array.json": tmp_path / "array.json",
        "lines.json": tmp_path / "lines.json",
        "parquet": tmp_path / "rows.parquet",
        "csv": str(tmp_path / "rows.csv"),
        "arrow file": arrow_file,
        "save_to_disk dir": tmp_path / "saved",
    }
    for name, source in sources.items():
        result = read_rows(source, validate)
        assert only_rows(result) == ROWS, name
        assert [n for n, _ in result] == [1, 2, 3, 4, 5, 6], name
        # JSON Lines keep line numbers; everything else is numbered by row.
        assert all(isinstance(n, RowNumber) for n, _ in result) == (name != "lines.json"), name
        assert all(type(v) is str for row in only_rows(result) for v in row.values()), name


def test_values_come_back_as_plain_python(tmp_path):
    rows = [{"prompt": "p", "completions": ["a", "b"], "ranking": [1, 0], "score": 0.5, "ok": True}] * 2
    result = only_rows(read_rows(write_parquet(tmp_path / "r.parquet", rows), lambda r: None))
    assert result == rows
    got = result[0]
    assert type(got["completions"]) is list and type(got["ranking"][0]) is int and type(got["ok"]) is bool


def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_missing_file_versus_hub_name(tmp_path, monkeypatch):
    """A path-looking source that does not exist is a missing file; any other name is a hub dataset."""
    offline(monkeypatch)
    monkeypatch.chdir(tmp_path)
    for name in ["missing.parquet", "./missing", "~/no/such/dir", "missing.csv", "missing.json", "./missing@test"]:
        with pytest.raises(DataError) as err:
            read_rows(name, validate)
        assert str(err.value) == f"{name}: file not found"
    for name in ["no-such-dataset", "nobody-here/no-such-dataset@test"]:
        with pytest.raises(DataError) as err:
            read_rows(name, validate)
        message = str(err.value)
        assert message.startswith(f"{name}: cannot load ("), message
        assert "\n" not in message and err.value.__cause__ is None
        assert "OfflineModeIsEnabled" in message


def test_unreadable_file_is_one_line_error(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_text("not parquet at all")
    with pytest.raises(DataError) as err:
        read_rows(path, validate)
    assert str(err.value).startswith(f"{path}: cannot load (")
    assert "\n" not in str(err.value)


def test_directory_split(tmp_path):
    train, test = ROWS[:4], ROWS[4:]
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "train.jsonl", train)
    write_jsonl(tmp_path / "data" / "test.jsonl", test)
    assert only_rows(read_rows(tmp_path / "data", validate)) == train
    assert only_rows(read_rows(f"{tmp_path / 'data'}@test", validate)) == test
    with pytest.raises(DataError, match=r"@validation: cannot load \(.*validation"):
        read_rows(f"{tmp_path / 'data'}@validation", validate)


def test_saved_dataset_dict_split(tmp_path):
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:4]), "test": datasets.Dataset.from_list(ROWS[4:])}
    ).save_to_disk(str(tmp_path / "dd"))
    assert only_rows(read_rows(f"{tmp_path / 'dd'}@test", validate)) == ROWS[4:]
    assert only_rows(read_rows(tmp_path / "dd", validate)) == ROWS[:4]


def test_json_array_bad_rows_and_single_object(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([ROWS[0], ["not", "an", "object"], {"prompt": 3, "response": "r"}]))
    with pytest.raises(DataError) as err:
        read_rows(path, validate)
    assert f"{path}:row 2: expected a JSON object, got list" in str(err.value)
    assert f"{path}:row 3: field 'prompt' must be a string, got int" in str(err.value)
    path.write_text(json.dumps(ROWS[0], indent=2))
    with pytest.raises(DataError, match="one JSON object; expected JSON Lines"):
        read_rows(path, validate)
