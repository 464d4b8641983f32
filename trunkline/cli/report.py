"""`report [--since 24h] [--business ID] --out report.html`: one self-contained HTML page
with the analytics charts (trunkline/stack/report.py), from the embedded engine (through
the sink) or a ClickHouse server DSN."""

from __future__ import annotations

import argparse
from pathlib import Path

from streams.queries import parse_duration
from trunkline.cli.common import EXIT_OK, EXIT_USAGE, CliError, Context, Subparsers, say


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "report",
        help="write an HTML report: calls, concurrency, ASR/ACD/PDD, quality, billing, "
        "slowest decisions",
    )
    p.add_argument("--since", default="24h", help="the window before now (default 24h)")
    p.add_argument("--business", help="only this business id")
    p.add_argument("--out", required=True, type=Path, help="the HTML file to write")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace, ctx: Context) -> int:
    from trunkline.stack.calls import CallHistory
    from trunkline.stack.report import write_report

    try:
        since_s = parse_duration(args.since)
    except ValueError as exc:
        raise CliError(f"--since: {exc}", EXIT_USAGE) from exc
    history = CallHistory(ctx.settings)
    try:
        written = write_report(history.sql, args.out, since_s, args.business or None)
    finally:
        history.close()
    say(
        f"{written.path}: {written.calls} calls, {len(written.charts)} charts "
        f"({written.bytes // 1024} KiB, opens offline)"
    )
    return EXIT_OK
