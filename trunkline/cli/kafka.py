"""`kafka up|down|status|fetch`: the local single-node KRaft broker."""

from __future__ import annotations

import argparse

from trunkline.cli.common import EXIT_FAIL, EXIT_OK, Context, Subparsers, print_json, say


def register(sub: Subparsers) -> None:
    k = sub.add_parser("kafka", help="the local single-node Kafka broker")
    k.add_argument("action", choices=["up", "down", "status", "fetch"])
    k.add_argument("--heap", default="512m", help="JVM heap (default 512m)")
    k.add_argument("--wipe", action="store_true", help="with down: delete the data folder")
    k.set_defaults(func=cmd_kafka)


def cmd_kafka(args: argparse.Namespace, ctx: Context) -> int:
    from trunkline.stack import broker

    s = ctx.settings
    if args.action == "fetch":
        say(f"Kafka jars in {broker.fetch(s)}")
    elif args.action == "up":
        started = broker.start(s, args.heap)
        say(
            f"Kafka broker running: pid {started.pid}, bootstrap {started.bootstrap}, "
            f"log {started.log}"
        )
    elif args.action == "down":
        stopped = broker.stop(s, args.wipe)
        say("Kafka broker stopped" if stopped.was_running else "Kafka broker was not running")
        if stopped.wiped is not None:
            say(f"wiped {stopped.wiped}")
    else:
        st = broker.status(s)
        print_json(st.as_dict())
        return EXIT_OK if st.running else EXIT_FAIL
    return EXIT_OK
