"""`replay rebuild|events|clean`: rebuild the projections from the topics into shadows,
verify and swap them; export or re-publish events (trunkline/stack/replay.py)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from trunkline.cli.common import EXIT_FAIL, EXIT_OK, Context, Subparsers, err, out, print_json, say


def register(sub: Subparsers) -> None:
    r = sub.add_parser("replay", help="rebuild projections from the topics; export/re-publish")
    rsub = r.add_subparsers(dest="action", required=True, metavar="ACTION")
    times = (
        "TIME: ISO 8601 (UTC unless it says otherwise), epoch milliseconds, "
        "a duration ago (15m, 2h, 7d) or now"
    )
    rb = rsub.add_parser(
        "rebuild",
        help="rebuild every projection into shadow copies (ClickHouse tables, machine tables)",
        description="Reads each topic up to the end offsets it records at start and "
        "rebuilds the ClickHouse tables into <table>__shadow and the machines' tables in "
        f"memory. {times}.",
    )
    rb.add_argument("--from", dest="from_", metavar="TIME", help="ClickHouse rows from TIME")
    rb.add_argument("--to", metavar="TIME", help="stop at the records of TIME (default: now)")
    rb.add_argument("--verify", action="store_true", help="compare shadow and live per table")
    rb.add_argument(
        "--swap",
        action="store_true",
        help="promote the shadows: the ClickHouse tables (old kept until clean) and the "
        "machine tables as the next table generation (workers use it once restarted)",
    )
    rb.add_argument(
        "--force",
        action="store_true",
        help="with --swap: promote even while workers run the live generation "
        "(restart them right after)",
    )
    rb.add_argument("--json", action="store_true", help="the report as JSON")
    ev = rsub.add_parser(
        "events",
        help="export decoded events (JSON lines) or re-publish them unchanged",
        description=f"Reads a topic between two times. {times}.",
    )
    ev.add_argument("--topic", required=True, help="call-events, admission, routing, billing...")
    ev.add_argument("--from", dest="from_", metavar="TIME")
    ev.add_argument("--to", metavar="TIME")
    ev.add_argument("--call", help="only this call id")
    ev.add_argument("--business", help="only this business id")
    ev.add_argument("--type", help="only this record type (CallEnded...)")
    dest = ev.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", type=Path, metavar="FILE.jsonl", help="write JSON lines here")
    dest.add_argument("--to-topic", metavar="NAME", help="re-publish the records' bytes here")
    dest.add_argument("--dry-run", action="store_true", help="only count")
    ev.add_argument(
        "--force", action="store_true", help="allow --to-topic to be a live input topic"
    )
    ev.add_argument("--json", action="store_true", help="the counts as JSON")
    cl = rsub.add_parser(
        "clean",
        help="drop the tables a swap kept (__old), any shadows, and the Faust topics and "
        "consumer groups of every table generation but the active one",
    )
    cl.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_replay)


class RebuildBar:
    """A rich progress bar per phase on stderr: records, events/s and what is left."""

    def __init__(self) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
            TextColumn("[cyan]{task.fields[rate]}[/]"),
            TextColumn("lag {task.fields[lag]}"),
            TimeElapsedColumn(),
            console=err(),
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RebuildBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def phase(self, what: str, total: int) -> None:
        self._task = self._progress.add_task(escape(what), total=max(total, 1), rate="", lag=total)
        if total == 0:
            self._progress.update(self._task, completed=1)

    def advance(self, done: int) -> None:
        if self._task is None:
            return
        self._progress.update(self._task, advance=done)
        task = self._progress.tasks[self._task]
        speed = task.speed
        left = max(0, int((task.total or 0) - task.completed))
        rate = f"{speed:,.0f} ev/s" if speed else ""
        self._progress.update(self._task, rate=rate, lag=f"{left:,}")


def cmd_replay(args: argparse.Namespace, ctx: Context) -> int:
    from trunkline.stack import replay
    from trunkline.stack.base import BadInput

    s = ctx.settings
    if args.action == "clean":
        cleaned = replay.clean(s)
        if args.json:
            print_json(asdict(cleaned))
        else:
            dropped = cleaned.dropped
            say("dropped: " + (", ".join(dropped) if dropped else "nothing to drop"))
            say(
                f"table generation {cleaned.generation} kept; deleted topics: "
                + (", ".join(cleaned.topics) or "none")
                + "; deleted consumer groups: "
                + (", ".join(cleaned.groups) or "none")
            )
        return EXIT_OK
    from_ms = replay.parse_time(args.from_, "--from") if args.from_ else None
    to_ms = replay.parse_time(args.to, "--to") if args.to else None
    if args.force and args.action == "rebuild" and not args.swap:
        raise BadInput("--force goes with --swap (it promotes while workers run)")
    if args.action == "events":
        where = replay.EventFilter(args.call, args.business, args.type)
        report = replay.events(
            s, args.topic, from_ms, to_ms, where, args.out, args.to_topic, args.force, args.dry_run
        )
        if args.json:
            print_json(asdict(report))
        else:
            what = f"-> {report.destination}" if report.destination else "(dry run)"
            say(
                f"{report.topic}: {report.read} read, {report.matched} matched, "
                f"{report.written} written {what}"
            )
        return EXIT_OK
    with RebuildBar() as bar:
        result = replay.rebuild(s, from_ms, to_ms, args.verify, args.swap, bar, force=args.force)
    if args.json:
        print_json(asdict(result) | {"equal": result.equal})
    else:
        _show(result)
    return EXIT_OK if (not args.verify or result.equal) else EXIT_FAIL


def _show(result: Any) -> None:
    rate = result.records / result.seconds if result.seconds else 0
    say(
        f"rebuilt from {result.records:,} records in {result.seconds:.1f} s ({rate:,.0f} ev/s) "
        f"through {result.via}"
    )
    say(
        "shadow rows: "
        + ", ".join(f"{t}__shadow {n:,}" for t, n in result.rows.items())
        + "; machine tables: "
        + ", ".join(f"{t} {n:,}" for t, n in result.machine_tables.items())
    )
    if result.undecodable or result.skipped:
        say(f"undecodable records: {result.undecodable}; refused by a machine: {result.skipped}")
    if result.checks:
        table = Table(title="verify: shadow vs live")
        for col in ("table", "kind", "live rows", "shadow rows", "result", "first differing"):
            table.add_column(col, overflow="fold")
        for c in result.checks:
            table.add_row(
                c.table, c.kind, str(c.live.get("count", "?")), str(c.shadow.get("count", "?")),
                "[green]equal[/]" if c.equal else "[red]different[/]",
                escape(", ".join(c.differing)),
            )  # fmt: skip
        out().print(table)
        for c in result.checks:
            if c.note:
                say(f"note: {c.table}: {c.note}")
    for swapped in result.swapped:
        say(f"swapped: {swapped['table']} ({swapped['rows']:,} rows); old kept as "
            f"{swapped['kept_as']} until `trunkline replay clean`")  # fmt: skip
    gen = result.generation
    if "previous" in gen:
        say(
            "promoted the machine tables as table generation "
            f"{gen['active']}: "
            + ", ".join(f"{topic} {n:,}" for topic, n in gen["topics"].items())
            + f"; groups {', '.join(gen['groups'])} at the rebuild's end offsets"
        )
        say(
            f"restart the workers to use generation {gen['active']} (running ones keep "
            f"generation {gen['previous']}, kept until `trunkline replay clean`)"
        )
    elif gen:
        say(f"table generation: {gen['active']} (the workers' live tables)")
    if result.checks and not result.equal:
        different = ", ".join(c.table for c in result.checks if not c.equal)
        say(f"different: {different} (`--swap` promotes the shadows)")
