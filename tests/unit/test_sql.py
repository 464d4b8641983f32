"""`trunkline sql`: the read-only check before a query leaves, and the output formats."""

import csv
import io
import json

import pytest

from streams.queries import ReadOnlyError, check_read_only
from trunkline.cli.sql import render


@pytest.mark.parametrize(
    ("query", "sent"),
    [
        ("SELECT 1", "SELECT 1"),
        ("select 1;", "select 1"),
        ("SELECT 1 ;; ", "SELECT 1"),
        ("  WITH x AS (SELECT 1) SELECT * FROM x", "  WITH x AS (SELECT 1) SELECT * FROM x"),
        ("SHOW TABLES", "SHOW TABLES"),
        ("describe table calls", "describe table calls"),
        ("DESC calls", "DESC calls"),
        ("-- why\nSELECT 2", "-- why\nSELECT 2"),
        ("/* a; b */ SELECT 3", "/* a; b */ SELECT 3"),
        ("SELECT ';', 'it''s', 'a\\'b', \"c;d\", `e;f`", None),
        ("SELECT 1; -- done", "SELECT 1"),
        ("SELECT 1 -- ends with ;", "SELECT 1"),
        ("SELECT format FROM t", None),  # FORMAT as a name, not a clause
    ],
)
def test_read_only_queries_pass(query, sent):
    assert check_read_only(query) == (sent if sent is not None else query)


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("", "no query given"),
        ("  ;  ", "no query given"),
        ("-- only a comment", "no query given"),
        ("INSERT INTO calls SELECT 1", "not INSERT"),
        ("DROP TABLE call_events_log", "not DROP"),
        ("ALTER TABLE t DELETE WHERE 1", "not ALTER"),
        ("SET readonly = 0", "not SET"),
        ("OPTIMIZE TABLE t FINAL", "not OPTIMIZE"),
        ("SYSTEM STOP MERGES", "not SYSTEM"),
        ("EXPLAIN SELECT 1", "not EXPLAIN"),
        ("SELECT 1; DROP TABLE t", "one statement at a time"),
        ("SELECT 1;\nINSERT INTO t VALUES (1)", "one statement at a time"),
        ("/* SELECT */ DELETE FROM t WHERE 1", "not DELETE"),
        ("-- SELECT\nDROP TABLE t", "not DROP"),
        ("SELECT 1 FORMAT CSV", "leave FORMAT out"),
        ("SELECT 1 INTO OUTFILE '/tmp/x.csv'", "INTO OUTFILE writes a file"),
        ("SELECT 'unterminated", "unterminated ' literal"),
        ("SELECT 1 /* open", "unterminated /* comment"),
    ],
)
def test_anything_else_is_refused_with_why(query, why):
    with pytest.raises(ReadOnlyError, match=why.replace("*", r"\*")):
        check_read_only(query)


RESULT = {
    "columns": ["hour", "business_id", "attempts", "rejections", "acd_s"],
    "types": ["DateTime", "String", "UInt64", "Map(UInt16, UInt64)", "Nullable(Float64)"],
    "rows": [
        ["2026-01-05 10:00:00", "b-1", 4, {"486": 1}, 48.0],
        ["2026-01-05 11:00:00", "b,2", 1, {}, None],
    ],
    "truncated": False,
}


def test_json_output_is_one_object_per_row(capsys):
    render(RESULT, "json")
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {
        "hour": "2026-01-05 10:00:00",
        "business_id": "b-1",
        "attempts": 4,
        "rejections": {"486": 1},
        "acd_s": 48.0,
    }
    assert rows[1]["acd_s"] is None


def test_csv_output_has_a_header_quotes_and_nested_values_as_json(capsys):
    render(RESULT, "csv")
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == RESULT["columns"]
    assert rows[1] == ["2026-01-05 10:00:00", "b-1", "4", '{"486":1}', "48.0"]
    assert rows[2] == ["2026-01-05 11:00:00", "b,2", "1", "{}", ""]  # NULL is empty


def test_table_output_shows_every_column_and_row(capsys):
    render(RESULT, "table")
    text = capsys.readouterr().out
    for word in ("business_id", "rejections", "b-1", "b,2", '{"486":1}', "48.0"):
        assert word in text
