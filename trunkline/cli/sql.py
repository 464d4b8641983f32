"""`sql QUERY [--format table|json|csv] [--limit N]`: one read-only query on the
configured ClickHouse (through the sink when the engine is embedded).

Only SELECT, WITH, SHOW and DESCRIBE run: the query is checked before it leaves
(streams.queries.check_read_only) and ClickHouse runs it with `readonly=1`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

from rich.table import Table

from trunkline.cli.common import EXIT_OK, Context, Subparsers, err, out, print_json

FORMATS = ("table", "json", "csv")


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "sql",
        help="run one read-only query (SELECT, WITH, SHOW, DESCRIBE) on ClickHouse",
        description="Runs one read-only query on the configured ClickHouse, through the "
        "sink when the engine is embedded. Tables and views of the `trunkline` database "
        "need no prefix: SELECT * FROM calls_hourly.",
    )
    p.add_argument("query", help="the query; '-' reads it from standard input")
    p.add_argument("--format", choices=FORMATS, default="table", help="output (default table)")
    p.add_argument(
        "--limit",
        type=int,
        default=10_000,
        choices=range(1, 1_000_001),
        metavar="N",
        help="at most N rows (default 10000)",
    )
    p.set_defaults(func=cmd_sql)


def _text(value: Any) -> str:
    """A value for a table cell or CSV field: NULL empty, nested values as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def render(result: dict[str, Any], fmt: str) -> None:
    columns: list[str] = result["columns"]
    rows: list[list[Any]] = result["rows"]
    if fmt == "json":
        print_json([dict(zip(columns, row, strict=True)) for row in rows])
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_text(v) for v in row] for row in rows)
        sys.stdout.flush()
    else:
        table = Table()
        for name, kind in zip(columns, result["types"], strict=True):
            numeric = kind.removeprefix("Nullable(").startswith(("Int", "UInt", "Float", "Decimal"))
            table.add_column(name, justify="right" if numeric else "left", overflow="fold")
        for row in rows:
            table.add_row(*(_text(v) for v in row))
        out().print(table)


def cmd_sql(args: argparse.Namespace, ctx: Context) -> int:
    from trunkline.stack.calls import CallHistory

    query = sys.stdin.read() if args.query == "-" else args.query
    history = CallHistory(ctx.settings)
    try:
        result = history.sql(query, args.limit)
    finally:
        history.close()
    render(result, args.format)
    if result["truncated"]:
        err().print(f"[dim](the first {args.limit} rows; --limit N for more)[/]")
    return EXIT_OK
