"""Lifecycle webhooks for the operator: what went where (ClickHouse `webhook_deliveries`,
through the sink's read API like the call history), and requests to the delivery service
(`webhook-commands`): send deliveries again, enable a subscription a 410 disabled."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from schemas.codec import make_codec
from streams import queries
from trunkline.core import kafka
from trunkline.core.events import derived_id, envelope
from trunkline.core.settings import Settings
from trunkline.core.topics import WEBHOOK_COMMANDS
from trunkline.stack.base import BadInput, StackError
from trunkline.stack.calls import CallHistory


@dataclass(frozen=True)
class Redelivery:
    subscription_id: str
    webhook_id: str
    event_id: str
    event_type: str
    call_id: str


class Webhooks:
    def __init__(self, s: Settings) -> None:
        self.settings = s
        self.history = CallHistory(s)

    def deliveries(
        self,
        subscription: str | None = None,
        failed: bool = False,
        since: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        try:
            since_s = queries.parse_duration(since) if since else None
        except ValueError as exc:
            raise BadInput(f"--since: {exc}") from exc
        params = {
            "subscription": subscription or "",
            "failed": "1" if failed else "",
            "since": since or "",
            "limit": str(limit),
        }
        rows: list[dict[str, Any]] = self.history.read(
            "/webhooks/deliveries/",
            params,
            lambda store: queries.list_deliveries(store, subscription, failed, since_s, limit),
        )
        return rows

    def attempts(self, subscription: str, webhook_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.history.read(
            "/webhooks/attempts/",
            {"subscription": subscription, "webhook_id": webhook_id},
            lambda store: queries.delivery_attempts(store, subscription, webhook_id),
        )
        return rows

    def redeliver(
        self,
        subscription: str,
        event_id: str | None = None,
        call_id: str | None = None,
        since: str | None = None,
    ) -> list[Redelivery]:
        """Ask the delivery service to send these deliveries again (same webhook-id, same
        body). Returns what was asked; BadInput when nothing matches."""
        if sum(x is not None for x in (event_id, call_id, since)) != 1:
            raise BadInput("give exactly one of --event, --call, --since")
        try:
            since_s = queries.parse_duration(since) if since else None
        except ValueError as exc:
            raise BadInput(f"--since: {exc}") from exc
        params = {
            "subscription": subscription,
            "event": event_id or "",
            "call": call_id or "",
            "since": since or "",
        }
        rows: list[dict[str, Any]] = self.history.read(
            "/webhooks/redeliverable/",
            params,
            lambda store: queries.redeliverable(store, subscription, event_id, call_id, since_s),
        )
        if not rows:
            raise BadInput(f"no delivery to subscription {subscription!r} matches")
        now = int(time.time() * 1000)
        codec = make_codec(self.settings.schema_registry_url)
        topic = WEBHOOK_COMMANDS.name(self.settings.topic_prefix)
        messages = []
        asked = []
        for r in rows:
            body = r["body"]
            try:
                at = _event_ms(json.loads(body).get("timestamp"))
            except ValueError:
                at = 0
            record = {
                "envelope": envelope(
                    r["call_id"], "cli", now, derived_id(r["webhook_id"], f"redeliver/{now}")
                ),
                "action": "redeliver",
                "subscription_id": subscription,
                "webhook_id": r["webhook_id"],
                "source_event_id": r["event_id"],
                "event_type": r["event_type"],
                "business_id": r.get("business_id") or "",
                "occurred_at": at,
                "body": body,
            }
            messages.append(
                kafka.Outgoing(topic, r["call_id"].encode(), codec.encode("WebhookCommand", record))
            )
            asked.append(
                Redelivery(
                    subscription, r["webhook_id"], r["event_id"], r["event_type"], r["call_id"]
                )
            )
        self._publish(messages)
        return asked

    def enable(self, subscription: str) -> None:
        """Enable a subscription the service disabled after a 410."""
        now = int(time.time() * 1000)
        record = {
            "envelope": envelope("", "cli", now, derived_id(subscription, f"enable/{now}")),
            "action": "enable",
            "subscription_id": subscription,
        }
        codec = make_codec(self.settings.schema_registry_url)
        topic = WEBHOOK_COMMANDS.name(self.settings.topic_prefix)
        self._publish([kafka.Outgoing(topic, b"", codec.encode("WebhookCommand", record))])

    def _publish(self, messages: list[kafka.Outgoing]) -> None:
        producer = kafka.make_producer(self.settings.kafka_bootstrap)
        try:
            kafka.publish_all(producer, messages)
        except kafka.PublishError as exc:
            raise StackError(f"asking the webhook service: {exc}") from exc

    def close(self) -> None:
        self.history.close()


def _event_ms(text: Any) -> int:
    from datetime import datetime

    if not isinstance(text, str):
        return 0
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
