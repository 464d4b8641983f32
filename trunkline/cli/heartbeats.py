"""`heartbeats`: BackendHeartbeat for configured backends (a stand-in for media nodes)."""

from __future__ import annotations

import argparse

from trunkline.cli.common import EXIT_OK, Context, Subparsers


def register(sub: Subparsers) -> None:
    hb = sub.add_parser(
        "heartbeats", help="publish backend heartbeats (a stand-in for media nodes)"
    )
    hb.add_argument(
        "--backend", action="append", help="backend id (repeatable; default: all configured)"
    )
    hb.add_argument("--interval", type=float, default=1.0, help="seconds between heartbeats")
    hb.add_argument(
        "--capacity", type=int, help="capacity to announce (default: the configured max)"
    )
    hb.add_argument(
        "--count", type=int, default=0, help="stop after N rounds (default: run until stopped)"
    )
    hb.set_defaults(func=cmd_heartbeats)


def cmd_heartbeats(args: argparse.Namespace, ctx: Context) -> int:
    from trunkline.stack import heartbeats

    heartbeats.publish(ctx.settings, args.backend, args.interval, args.capacity, args.count)
    return EXIT_OK
