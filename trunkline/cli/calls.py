"""`calls list|show`: calls from ClickHouse (through the sink's read API)."""

from __future__ import annotations

import argparse

from rich.table import Table

from streams.queries import parse_duration
from trunkline.cli.common import EXIT_OK, EXIT_USAGE, CliError, Context, Subparsers, out, print_json


def register(sub: Subparsers) -> None:
    calls = sub.add_parser("calls", help="calls from ClickHouse")
    csub = calls.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = csub.add_parser("list", help="recent calls, newest first")
    ls.add_argument("--business", help="only this business id")
    ls.add_argument("--since", help="only calls enqueued within this duration (30s, 15m, 2h, 7d)")
    ls.add_argument("--limit", type=int, default=100, choices=range(1, 10001), metavar="N")
    ls.add_argument("--json", action="store_true")
    sh = csub.add_parser("show", help="one call's queue entry with its logs (JSON)")
    sh.add_argument("id")
    sh.add_argument("--events", action="store_true", help="include the raw lifecycle events")
    calls.set_defaults(func=cmd_calls)


COLUMNS = (
    ("id", "id"),
    ("status", "status"),
    ("business", "business_id"),
    ("number", "route_number_id"),
    ("backend", "backend"),
    ("code", "status_code"),
    ("enqueued", "enqueued_at"),
    ("reason", "reason"),
)


def cmd_calls(args: argparse.Namespace, ctx: Context) -> int:
    from trunkline.stack.calls import CallHistory

    history = CallHistory(ctx.settings)
    try:
        if args.action == "show":
            print_json(history.show_call(args.id, args.events))
            return EXIT_OK
        if args.since:
            try:
                parse_duration(args.since)
            except ValueError as exc:
                raise CliError(f"--since: {exc}", EXIT_USAGE) from exc
        rows = history.list_calls(args.business, args.since, args.limit)
    finally:
        history.close()
    if args.json:
        print_json(rows)
        return EXIT_OK
    table = Table()
    for title, _ in COLUMNS:
        table.add_column(title, overflow="fold", no_wrap=title == "id")
    for r in rows:
        table.add_row(*(str(r.get(key) or "") for _, key in COLUMNS))
    out().print(table)
    return EXIT_OK
