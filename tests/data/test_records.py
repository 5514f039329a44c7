"""Rows as read_rows gives them: columns renamed before validation (and a missing or misspelt one named), every
bad row reported together."""

import pytest
from helpers import ROWS, only_rows, validate, write_jsonl, write_parquet

from lit_instruct.data.problems import DataError
from lit_instruct.data.records import check_columns, read_rows

datasets = pytest.importorskip("datasets")
pytestmark = pytest.mark.usefixtures("datasets_cache")


def test_columns_are_renamed_before_validation(tmp_path):
    theirs = [{"question": r["prompt"], "answer": r["response"], "prompt": "unused", "extra": "x"} for r in ROWS]
    expected = [{"prompt": r["prompt"], "response": r["response"], "extra": "x"} for r in ROWS]
    columns = {"prompt": "question", "response": "answer"}
    for path in (write_jsonl(tmp_path / "t.jsonl", theirs), write_parquet(tmp_path / "t.parquet", theirs)):
        assert only_rows(read_rows(path, validate, columns=columns)) == expected, path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_missing_mapped_column_names_file_and_columns(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    (write_jsonl if suffix == ".jsonl" else write_parquet)(path, [{"question": "q", "output": "a"}])
    with pytest.raises(DataError) as err:
        read_rows(path, validate, columns={"prompt": "question", "response": "answer"})
    message = str(err.value)
    assert message == f"{path}: column 'answer' (for 'response') not found; the columns are: 'question', 'output'"


def test_unknown_field_in_columns_is_a_value_error():
    check_columns({"prompt": "question"}, {"prompt", "response"})
    check_columns(None, {"prompt"})
    with pytest.raises(ValueError, match=r"unknown field 'promt' \(did you mean 'prompt'\?\)"):
        check_columns({"promt": "question"}, {"prompt", "response"})


def test_bad_parquet_rows_are_reported_together_by_row(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[2]["prompt"] = None
    rows[4]["response"] = ""
    path = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(DataError) as err:
        read_rows(path, validate)
    message = str(err.value)
    assert message.startswith(f"2 problem(s) in {path}:")
    assert f"{path}:row 3: field 'prompt' must be a string, got NoneType" in message
    assert f"{path}:row 5: field 'response' is empty" in message
