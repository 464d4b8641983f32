"""`topics apply|list`: the declared topics."""

from __future__ import annotations

import argparse

from rich.table import Table

from trunkline.cli.common import EXIT_OK, Context, RichProgress, Subparsers, out


def register(sub: Subparsers) -> None:
    t = sub.add_parser("topics", help="the declared topics")
    t.add_argument("action", choices=["apply", "list"])
    t.set_defaults(func=cmd_topics)


def cmd_topics(args: argparse.Namespace, ctx: Context) -> int:
    from trunkline.stack import topics
    from trunkline.stack.base import StackError

    if args.action == "list":
        try:  # the workers' topics are those of the active table generation
            generation = topics.generation(ctx.settings, timeout=3.0)
        except StackError:  # no broker: the names of generation 0
            generation = 0
        table = Table()
        for col in ("topic", "partitions", "cleanup", "key", "records"):
            table.add_column(col, overflow="fold")
        for row in topics.declared(ctx.settings, generation):
            table.add_row(row.name, str(row.partitions), row.policy, row.key, row.doc)
        out().print(table)
        return EXIT_OK
    with RichProgress() as progress:
        results = topics.apply(ctx.settings, progress)
    table = Table()
    for col in ("action", "topic", "detail"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(r.action, r.name, r.detail)
    out().print(table)
    return EXIT_OK
