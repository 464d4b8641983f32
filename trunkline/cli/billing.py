"""`billing list|summary`: rated calls and totals from ClickHouse (billing_records)."""

from __future__ import annotations

import argparse
import json

from rich.table import Table

from trunkline.cli.common import EXIT_OK, Context, Subparsers, out, print_json


def register(sub: Subparsers) -> None:
    b = sub.add_parser("billing", help="rated calls from ClickHouse (billing_records)")
    bsub = b.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = bsub.add_parser("list", help="rated calls, newest first")
    ls.add_argument("--business", help="only this business id")
    ls.add_argument("--since", help="only calls started within this duration (30s, 15m, 24h, 7d)")
    ls.add_argument("--limit", type=int, default=100, choices=range(1, 100_001), metavar="N")
    ls.add_argument(
        "--json", action="store_true", help="one JSON object per line (amounts as decimal strings)"
    )
    sm = bsub.add_parser("summary", help="totals per direction and provider for a business")
    sm.add_argument("--business", required=True, help="the business id")
    sm.add_argument("--month", help="only calls started in this month, e.g. 2026-11")
    sm.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_billing)


COLUMNS = (
    ("call", "call_id"),
    ("business", "business_id"),
    ("direction", "direction"),
    ("provider", "provider"),
    ("started", "started_at"),
    ("talk s", "talk_seconds"),
    ("billable s", "billable_seconds"),
    ("plan", "rate_plan_id"),
    ("per min", "per_minute"),
    ("amount", "amount"),
    ("reason", "reason"),
)


def _money(value: object, currency: object) -> str:
    return f"{value} {currency}".strip() if value is not None else ""


def cmd_billing(args: argparse.Namespace, ctx: Context) -> int:
    from trunkline.stack.billing import Billing

    billing = Billing(ctx.settings)
    try:
        if args.action == "summary":
            rows = billing.summary(args.business, args.month)
        else:
            rows = billing.rated(args.business, args.since, args.limit)
    finally:
        billing.close()
    if args.action == "list":
        if args.json:
            for r in rows:
                print(json.dumps(r, default=str), flush=True)
            return EXIT_OK
        table = Table()
        for title, _ in COLUMNS:
            table.add_column(title, overflow="fold", no_wrap=title == "call")
        for r in rows:
            cells = []
            for _title, key in COLUMNS:
                value = r.get(key)
                if key in ("amount", "per_minute"):
                    cells.append(_money(value, r.get("currency")))
                elif key == "rate_plan_id" and value:
                    cells.append(f"{value} v{r.get('rate_plan_version')} ({r.get('increment')})")
                else:
                    cells.append("" if value is None else str(value))
            table.add_row(*cells)
        out().print(table)
        return EXIT_OK
    if args.json:
        print_json(rows)
        return EXIT_OK
    table = Table(title=f"business {args.business}" + (f", {args.month}" if args.month else ""))
    for title in ("direction", "provider", "calls", "connected", "talk s", "billable s",
                  "amount", "provider cost"):  # fmt: skip
        table.add_column(title)
    for r in rows:
        table.add_row(
            r["direction"],
            r["provider"],
            str(r["calls"]),
            str(r["connected"]),
            str(r["talk_seconds"]),
            str(r["billable_seconds"]),
            _money(r["amount"], r["currency"]),
            _money(r["provider_cost"], r["currency"]),
        )
    out().print(table)
    return EXIT_OK
