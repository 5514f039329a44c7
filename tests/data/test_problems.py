"""A Problem names FILE:LINE or FILE:row N."""

from lit_instruct.data.problems import Problem, RowNumber


def test_problem_unit():
    assert str(Problem("f.jsonl", 3, "bad")) == "f.jsonl:3: bad"
    assert str(Problem("f.parquet", 3, "bad", "row")) == "f.parquet:row 3: bad"
    assert str(Problem("f.parquet", RowNumber(3), "bad")) == "f.parquet:row 3: bad"
