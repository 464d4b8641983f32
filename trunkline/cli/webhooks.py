"""`webhooks`: run the lifecycle webhook delivery service; `webhooks deliveries`,
`redeliver`, `enable` for operators."""

from __future__ import annotations

import argparse

from rich.table import Table

from trunkline.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Context,
    Subparsers,
    add_loglevel,
    loglevel,
    out,
    print_json,
    say,
)


def register(sub: Subparsers) -> None:
    w = sub.add_parser(
        "webhooks",
        help="run the lifecycle webhook delivery service (no action), or look at deliveries",
    )
    add_loglevel(w)
    wsub = w.add_subparsers(dest="action", required=False, metavar="ACTION")
    run = wsub.add_parser("run", help="run the delivery service in the foreground (the default)")
    add_loglevel(run)
    d = wsub.add_parser("deliveries", help="what went where: status codes, attempts, latency")
    d.add_argument("--subscription", help="only this subscription id")
    d.add_argument("--failed", action="store_true", help="only deliveries not (yet) delivered")
    d.add_argument("--since", help="only deliveries attempted within this duration (1h, 2d)")
    d.add_argument("--webhook-id", help="every attempt of this delivery (needs --subscription)")
    d.add_argument("--limit", type=int, default=100, choices=range(1, 100_001), metavar="N")
    d.add_argument("--json", action="store_true")
    r = wsub.add_parser("redeliver", help="send deliveries again, with the same webhook-id")
    r.add_argument("--subscription", required=True, help="the subscription id")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--event", help="the event id delivered")
    which.add_argument("--call", help="every delivery of this call")
    which.add_argument("--since", help="every delivery attempted within this duration")
    e = wsub.add_parser("enable", help="enable a subscription a 410 Gone disabled")
    e.add_argument("--subscription", required=True, help="the subscription id")
    w.set_defaults(func=cmd_webhooks)


COLUMNS = (
    ("subscription", "subscription_id"),
    ("event", "event_type"),
    ("call", "call_id"),
    ("outcome", "outcome"),
    ("status", "status_code"),
    ("attempts", "attempts"),
    ("latency ms", "latency_ms"),
    ("last attempt", "last_attempt_at"),
    ("webhook-id", "webhook_id"),
    ("error", "error"),
)


def cmd_webhooks(args: argparse.Namespace, ctx: Context) -> int:
    if args.action in (None, "run"):
        from streams.webhooks.service import run_webhooks
        from trunkline.core.config import SecretError

        try:
            run_webhooks(ctx.settings, loglevel=loglevel(args, ctx))
        except SecretError as exc:
            raise CliError(f"webhooks refuses to start: {exc}", EXIT_USAGE) from exc
        except OSError as exc:
            raise CliError(
                f"cannot serve on {ctx.settings.webhooks_url}: {exc.strerror or exc}"
            ) from exc
        return EXIT_OK
    from trunkline.stack.webhooks import Webhooks

    hooks = Webhooks(ctx.settings)
    try:
        if args.action == "enable":
            hooks.enable(args.subscription)
            say(f"asked the webhook service to enable subscription {args.subscription}")
            return EXIT_OK
        if args.action == "redeliver":
            asked = hooks.redeliver(args.subscription, args.event, args.call, args.since)
            for a in asked:
                say(f"{a.webhook_id} {a.event_type} call {a.call_id} event {a.event_id}")
            say(f"asked the webhook service to send {len(asked)} delivery(ies) again")
            return EXIT_OK
        if args.webhook_id:
            if not args.subscription:
                raise CliError("--webhook-id needs --subscription", EXIT_USAGE)
            print_json(hooks.attempts(args.subscription, args.webhook_id))
            return EXIT_OK
        rows = hooks.deliveries(args.subscription, args.failed, args.since, args.limit)
    finally:
        hooks.close()
    if args.json:
        print_json(rows)
        return EXIT_OK
    table = Table()
    for title, _ in COLUMNS:
        table.add_column(title, overflow="fold")
    for row in rows:
        table.add_row(*("" if row.get(k) is None else str(row.get(k)) for _, k in COLUMNS))
    out().print(table)
    return EXIT_OK
