"""`up`, `down`, `status`: the local stack (trunkline.stack.local does the work)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from trunkline.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    Context,
    RichProgress,
    Subparsers,
    out,
    print_json,
    say,
)

if TYPE_CHECKING:
    from trunkline.stack.local import ServiceStatus


def register(sub: Subparsers) -> None:
    up = sub.add_parser("up", help="start the local stack (broker, topics, config, services)")
    up.add_argument("--config", type=Path, help="config YAML (default examples/config.yaml)")
    up.add_argument("--heap", default="512m", help="broker JVM heap (default 512m)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for health")
    up.add_argument(
        "--simulate-backends",
        action="store_true",
        help="also publish heartbeats for every configured backend (routing sees them live "
        "without media nodes)",
    )
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop the local stack")
    down.add_argument("--wipe", action="store_true", help="also delete the broker's data")
    down.set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="what runs where")
    status.add_argument("--json", action="store_true", help="the status as JSON")
    status.set_defaults(func=cmd_status)


def cmd_up(args: argparse.Namespace, ctx: Context) -> int:
    from trunkline.stack import local
    from trunkline.stack.config import DEFAULT_CONFIG

    s = ctx.settings
    options = local.UpOptions(
        config=args.config or DEFAULT_CONFIG,
        heap=args.heap,
        timeout=args.timeout,
        simulate_backends=args.simulate_backends,
        manage_broker=ctx.manage_broker,
    )
    with RichProgress() as progress:
        report = local.up(s, options, progress)
    say()
    broker_log = f", broker log: {report.broker.log}" if report.broker else ""
    say(f"trunkline is up. Logs: {report.logs}{broker_log}")
    say("  trunkline call +15551234567   place a call through the edge")
    say("  trunkline status              what runs where")
    say("  trunkline calls list          calls from ClickHouse")
    say("  trunkline down                stop everything")
    return EXIT_OK


def cmd_down(args: argparse.Namespace, ctx: Context) -> int:
    from trunkline.stack import local

    with RichProgress() as progress:
        report = local.down(ctx.settings, args.wipe, ctx.manage_broker, progress)
    if report.broker is not None and report.broker.wiped is not None:
        say(f"wiped {report.broker.wiped}")
    return EXIT_OK


def _health_text(svc: ServiceStatus) -> str:
    h = svc.health
    if not svc.running:
        return ""
    if svc.health_key == "options":
        return f"OPTIONS -> {h}" if h else "no answer to OPTIONS"
    if isinstance(h, dict):
        if "sink" in h:
            st = h["sink"]
            return ("alive" if st.get("alive") else "dead") + "".join(
                f", {k} {v}" for k, v in st.items() if k in ("inserted", "batches", "errors")
            )
        if "tables" in h:
            if h.get("waiting_for"):
                return "not ready: " + "; ".join(h["waiting_for"])
            return f"ready, {len(h['tables'])} tables, {len(h.get('agents', []))} agents"
    return str(h)


def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    from trunkline.stack import local

    st = local.status(ctx.settings, ctx.manage_broker)
    if args.json:
        print_json(st.as_dict())
        return EXIT_OK if st.ok else EXIT_FAIL
    table = Table(title=f"trunkline in {st.state_dir}", title_justify="left")
    for col in ("service", "state", "pid", "where", "health", "log"):
        table.add_column(col, overflow="fold")

    def state(running: bool) -> str:
        return "[green]running[/]" if running else "[red]stopped[/]"

    if ctx.manage_broker:
        table.add_row(
            "kafka",
            state(st.broker.running),
            str(st.broker.pid or ""),
            st.bootstrap,
            "",
            st.broker.log,
        )
    else:
        table.add_row("kafka", "[blue]external[/]", "", st.bootstrap, "", "")
    for svc in st.services:
        table.add_row(
            svc.name,
            state(svc.running),
            str(svc.pid or ""),
            svc.address,
            _health_text(svc),
            svc.log,
        )
    for name, pid in st.media_nodes.items():
        table.add_row(name, state(pid is not None), str(pid or ""), "", "", "")
    if st.heartbeats_standin is not None:
        table.add_row("heartbeats", state(True), str(st.heartbeats_standin), "", "stand-in", "")
    console = out()
    console.print(table)
    console.print(f"ClickHouse {st.clickhouse}, topic prefix {st.topic_prefix!r}", markup=False)
    return EXIT_OK if st.ok else EXIT_FAIL
