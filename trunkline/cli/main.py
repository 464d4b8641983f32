"""`trunkline`: the one command for operators. `trunkline --help` lists everything.

One module per command group registers its commands (`register(subparsers)`) and
handles them (`cmd_*(args, ctx) -> exit status`) over trunkline.stack; this module
builds the parser from COMMAND_GROUPS, reads the settings (environment plus the global
flags), runs the command, and maps errors to exit statuses: 0 ok, 1 runtime failure,
2 bad input (arguments, settings, config). Adding a command is one module and one entry
in COMMAND_GROUPS.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from trunkline.cli import (
    billing,
    call,
    calls,
    config,
    dial,
    heartbeats,
    kafka,
    lifecycle,
    replay,
    report,
    services,
    sql,
    topics,
    webhooks,
)
from trunkline.cli.common import (
    EXIT_FAIL,
    EXIT_USAGE,
    CliError,
    Context,
    bootstrap_arg,
    port_arg,
)
from trunkline.core.settings import Settings, SettingsError
from trunkline.stack.base import BadInput, StackError

#: the command groups, in `trunkline --help` order
COMMAND_GROUPS = (
    lifecycle, kafka, topics, config, services, heartbeats, call, dial, calls, billing,
    webhooks, sql, report, replay,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trunkline", description="Event-sourced telephony pipeline: operator commands."
    )
    p.add_argument("--state-dir", help="state folder (env TRUNKLINE_STATE_DIR, default ./.state)")
    p.add_argument(
        "--bootstrap",
        type=bootstrap_arg,
        help="Kafka bootstrap servers (env TRUNKLINE_KAFKA_BOOTSTRAP)",
    )
    p.add_argument(
        "--kafka-port",
        type=port_arg,
        help="local broker port (env TRUNKLINE_KAFKA_PORT, default 19092)",
    )
    p.add_argument(
        "--web-port",
        type=port_arg,
        help="worker web port (env TRUNKLINE_WORKER_WEB_PORT, default 6066)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return p


def context(args: argparse.Namespace, environ: Mapping[str, str]) -> Context:
    """The settings: the environment, overridden by the global flags."""
    env = dict(environ)
    if args.state_dir:
        env["TRUNKLINE_STATE_DIR"] = args.state_dir
    if args.bootstrap:
        env["TRUNKLINE_KAFKA_BOOTSTRAP"] = args.bootstrap
    if args.kafka_port:
        env["TRUNKLINE_KAFKA_PORT"] = str(args.kafka_port)
    if args.web_port:
        env["TRUNKLINE_WORKER_WEB_PORT"] = str(args.web_port)
    return Context(Settings.from_env(env), manage_broker=not env.get("TRUNKLINE_KAFKA_BOOTSTRAP"))


def _fail(message: str, code: int) -> int:
    print(f"trunkline: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ctx = context(args, os.environ)
        return int(args.func(args, ctx))
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except (BadInput, SettingsError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except StackError as exc:
        return _fail(str(exc), EXIT_FAIL)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `trunkline ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAIL
    except Exception as exc:  # broker down, ClickHouse down...: say what, no traceback
        from trunkline.core.admin import BrokerUnavailable
        from trunkline.core.kafka import PublishError

        if isinstance(exc, BrokerUnavailable | PublishError):
            return _fail(str(exc), EXIT_FAIL)
        raise


if __name__ == "__main__":
    sys.exit(main())
