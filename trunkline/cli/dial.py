"""`dial TO --from NUMBER_ID`: an outbound call through the REST API (the HTTP edge's
`POST /v1/calls`), printing each attempt and, with `--wait`, the outcome.

The API key is `--api-key` or the environment variable `TRUNKLINE_API_KEY` (prefer the
variable: a command line is visible to other users in `ps`). It is deliberately not one
of the settings: settings are handed to every process `up` starts."""

from __future__ import annotations

import argparse
import os
from typing import Any

from trunkline.cli.common import EXIT_OK, Context, Subparsers, print_json, say


def register(sub: Subparsers) -> None:
    d = sub.add_parser("dial", help="place an outbound call through a provider (the REST API)")
    d.add_argument("to", help="the number to call, E.164 (e.g. +4915112345678)")
    d.add_argument("--from", dest="from_number", required=True, help="fromNumberId: our number")
    d.add_argument(
        "--provider",
        action="append",
        default=[],
        help="provider account id, in failover order (repeat; default: the business's order)",
    )
    d.add_argument("--route", help="routeId (default: the number's route)")
    d.add_argument("--idempotency-key", help="Idempotency-Key header: a retry is the same call")
    d.add_argument("--wait", action="store_true", help="follow the call until it is over")
    d.add_argument("--wait-timeout", type=float, default=300.0, help="seconds (default 300)")
    d.add_argument("--api", help="the API's base URL (default http://TRUNKLINE_HTTP_LISTEN)")
    d.add_argument("--api-key", help="the API key (default: env TRUNKLINE_API_KEY)")
    d.add_argument("--json", action="store_true", help="print the call as JSON")
    d.set_defaults(func=cmd_dial)


def cmd_dial(args: argparse.Namespace, ctx: Context) -> int:
    from trunkline.stack.dial import ApiClient, dial

    client = ApiClient(
        args.api or f"http://{ctx.settings.http_listen}",
        args.api_key or os.environ.get("TRUNKLINE_API_KEY", ""),
    )
    shown: set[tuple[int, str]] = set()
    last_status: list[str] = []

    def on_view(call: dict[str, Any]) -> None:
        for a in call.get("attempts") or []:
            if (a["attempt"], a["outcome"]) in shown:
                continue
            shown.add((a["attempt"], a["outcome"]))
            if a["outcome"] == "placed":
                say(f"attempt {a['attempt']}: {a['provider']} ({a['providerKind']}) placed "
                    f"call {a.get('providerCallId') or '?'}")  # fmt: skip
            else:
                code = f" code {a['errorCode']}" if a.get("errorCode") else ""
                http = f" HTTP {a['httpStatus']}" if a.get("httpStatus") else ""
                say(f"attempt {a['attempt']}: {a['provider']} ({a['providerKind']}) failed: "
                    f"{a['reason']}{http}{code}")  # fmt: skip
        status = str(call.get("status"))
        if not last_status or last_status[-1] != status:
            last_status.append(status)
            say(f"call {call['id']}: {status} (backend {call.get('backend') or '-'})")

    result = dial(
        client,
        args.to,
        args.from_number,
        args.provider or None,
        args.route,
        args.idempotency_key,
        args.wait,
        args.wait_timeout,
        on_view=None if args.json else on_view,
    )
    if args.json:
        print_json(result.call)
    return EXIT_OK
