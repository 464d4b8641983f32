"""`call NUMBER`: a demo call through the SIP edge and the media node."""

from __future__ import annotations

import argparse

from trunkline.cli.common import EXIT_OK, CliError, Context, Subparsers, print_json, say


def register(sub: Subparsers) -> None:
    cl = sub.add_parser("call", help="place a call through the SIP edge and the media node")
    cl.add_argument("number", help="the dialled number, e.g. +15551234567")
    cl.add_argument("--edge", help="edge host:port (default TRUNKLINE_SIP_LISTEN)")
    cl.add_argument("--seconds", type=float, default=3.0, help="how long to talk (default 3)")
    cl.add_argument("--no-entry", action="store_true", help="do not print the queue entry")
    cl.set_defaults(func=cmd_call)


def cmd_call(args: argparse.Namespace, ctx: Context) -> int:
    from trunkline.stack import call

    report = call.place(
        ctx.settings, args.number, args.edge, args.seconds, read_entry=not args.no_entry
    )
    for answer in report.answers:
        say(f"{answer.who}: SIP/2.0 {answer.status} {answer.reason}")
        for name, value in answer.headers.items():
            say(f"  {name}: {value}")
    if report.answered:
        say(
            f"media: sent {report.packets_sent} RTP packets, received "
            f"{report.packets_received} (the greeting, then our audio echoed); "
            f"BYE -> {report.bye_status}"
        )
    if report.entry:
        print_json(report.entry)
    if report.error:
        raise CliError(report.error)
    return EXIT_OK
