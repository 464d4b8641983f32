"""Billing for the operator: rated calls and totals from ClickHouse `billing_records`
(through the sink's read API when it owns the embedded engine, like the call history)."""

from __future__ import annotations

from typing import Any

from streams import queries
from trunkline.core.settings import Settings
from trunkline.stack.base import BadInput
from trunkline.stack.calls import CallHistory


class Billing:
    def __init__(self, s: Settings) -> None:
        self.history = CallHistory(s)

    def rated(
        self, business: str | None = None, since: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Rated calls, newest start first; money as exact decimal strings."""
        try:
            since_s = queries.parse_duration(since) if since else None
        except ValueError as exc:
            raise BadInput(f"--since: {exc}") from exc
        params = {"business": business or "", "since": since or "", "limit": str(limit)}
        rows: list[dict[str, Any]] = self.history.read(
            "/billing/",
            params,
            lambda store: queries.list_billing(store, business, since_s, limit),
        )
        return rows

    def summary(self, business: str, month: str | None = None) -> list[dict[str, Any]]:
        """Totals per direction, provider and currency for a business (and month)."""
        try:
            month_key = queries.parse_month(month) if month else None
        except ValueError as exc:
            raise BadInput(f"--month: {exc}") from exc
        rows: list[dict[str, Any]] = self.history.read(
            "/billing/summary/",
            {"business": business, "month": month or ""},
            lambda store: queries.billing_summary(store, business, month_key),
        )
        return rows

    def close(self) -> None:
        self.history.close()
