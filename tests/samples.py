"""One valid example record per top-level schema (shared by unit and integration tests)."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any


def envelope(call_id: str = "", producer: str = "test", at_ms: int | None = None) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "call_id": call_id,
        "occurred_at": at_ms if at_ms is not None else int(time.time() * 1000),
        "producer_id": producer,
    }


def sample(name: str, call_id: str = "q-1", at_ms: int | None = None) -> dict[str, Any]:
    env = envelope(call_id if name.startswith(("Call", "Outbound")) else "", at_ms=at_ms)
    bodies: dict[str, dict[str, Any]] = {
        "CallOffered": {
            "provider": "SIP", "provider_call_id": "a84b4c76e66710@pc33.atlanta.example.com",
            "direction": "INBOUND", "business_id": "123", "phone_id": "abc",
            "to_number": "+15551234567", "from_number": "+15550001111",
            "source_ip": "203.0.113.10", "source_port": 5060, "transport": "UDP",
            "offered_codecs": ["PCMU", "PCMA", "telephone-event"], "edge_id": "edge-1",
            "provider_account_id": "",
        },
        "CallAdmitted": {
            "business_id": "123", "phone_id": "abc", "route_id": "route-abc123",
            "region_id": "us-east-1", "plan_id": "starter", "agent": "greeting",
            "agent_options": {}, "edge_id": "edge-1", "provider": "SIP", "active_calls": 1,
            "provider_call_id": "a84b4c76e66710@pc33.atlanta.example.com",
            "max_concurrent_calls": 2,
        },
        "CallRejected": {
            "stage": "ADMISSION", "status_code": 403,
            "reason": "source IP 198.51.100.7 not in allowedSourceIps",
            "retry_after_s": None, "business_id": "123", "region_id": None, "edge_id": "edge-1",
        },
        "CallRouted": {
            "business_id": "123", "region_id": "us-east-1", "backend_id": "backend-2",
            "backend_sip_address": "127.0.0.1:5070", "backend_media_url": "ws://127.0.0.1:8081",
            "edge_id": "edge-1", "provider": "SIP", "bypass": False, "agent": "greeting",
            "agent_options": {},
            "provider_call_id": "a84b4c76e66710@pc33.atlanta.example.com",
            "redirect_deadline": 1_700_000_032_000,
        },
        "CallAccepted": {"backend_id": "backend-2", "region_id": "us-east-1", "agent": "greeting"},
        "CallProgress": {"provider": "TWILIO", "provider_call_id": "CA1",
                         "provider_status": "ringing", "business_id": "123"},
        "CallAnswered": {"backend_id": "backend-2", "codec": "PCMU/8000", "provider": None,
                         "provider_call_id": None, "provider_status": None},
        "CallEnded": {
            "reason": "completed", "hangup_side": "caller", "status_code": None,
            "business_id": "123", "region_id": "us-east-1", "backend_id": "backend-2",
            "setup_ms": 120, "talk_ms": 12_300, "codec": "PCMU/8000",
            "media": {"packets_sent": 615, "packets_received": 610, "packets_lost": 5,
                      "jitter_ms": 1.5, "mos": None},
            "detail": "",
            "provider": None, "provider_call_id": None, "hangup_cause": None,
            "provider_duration_ms": None,
        },
        "Plan": {"id": "starter", "name": "Starter", "max_concurrent_calls": 2,
                 "rate_plan_id": "std"},
        "Business": {"id": "123", "name": "Acme", "active": True, "plan_id": "starter",
                     "outbound_providers": []},
        "Route": {"id": "route-abc123", "business_id": "123", "agent": "greeting",
                  "agent_options": {"voice": "alloy"}},
        "PhoneNumber": {
            "id": "abc", "business_id": "123", "provider": "SIP", "number": "+15551234567",
            "route_id": "route-abc123", "region_id": "us-east-1", "is_e164": True,
            "allowed_source_ips": ["203.0.113.10", "127.0.0.0/8"], "provider_account_id": "",
        },
        "BackendServer": {
            "id": "backend-1", "region_id": "us-east-1", "sip_address": "127.0.0.1:5070",
            "media_url": "ws://127.0.0.1:8081", "max_concurrent_calls": 100, "enabled": True,
        },
        "BypassRule": {"id": "123-backend-1", "business_id": "123", "backend_id": "backend-1",
                       "phone_id": None},
        "BackendHeartbeat": {"backend_id": "backend-1", "region_id": "us-east-1",
                             "capacity": 100, "active_calls": 3, "interval_ms": 1000,
                             "draining": False, "started_at": 1_764_000_000_000},
        "RoutingTick": {"region_id": "us-east-1"},
        "PartitionTick": {"partition": 3},
        "ProviderAccount": {
            "id": "twilio-main", "kind": "TWILIO", "account_sid": "AC0123456789abcdef",
            "connection_id": None, "public_key": None, "application_id": None,
            "api_base_url": None, "secret_refs": {"authToken": "env:TWILIO_AUTH_TOKEN"},
        },
        "ApiKey": {"id": "k1", "business_id": "123", "sha256": "a" * 64},
        "OutboundCallRequested": {
            "provider": "TWILIO", "business_id": "456", "phone_id": "globex-twilio",
            "route_id": "", "to_number": "+4915112345678", "from_number": "+15557654321",
            "providers": ["twilio-main", "telnyx-main"],
            "from_numbers": {"twilio-main": "+15557654321", "telnyx-main": "+15557654322"},
            "ring_timeout_s": 30, "metadata": {"crm": "42"}, "api_key_id": "k1",
            "request_sha256": "b" * 64, "idempotency_key_sha256": "", "edge_id": "webhook-1",
        },
        "OutboundAttempt": {
            "attempt": 0, "provider": "TWILIO", "account_id": "twilio-main",
            "request_id": "r-1", "provider_call_id": "CA1", "from_number": "+15557654321",
            "to_number": "+4915112345678", "business_id": "456", "found_by_lookup": False,
        },
        "OutboundAttemptFailed": {
            "attempt": 0, "provider": "TWILIO", "account_id": "twilio-main",
            "reason": "http_5xx", "detail": "Service Unavailable", "http_status": 503,
            "provider_error_code": None, "retryable": True, "provider_call_id": "",
            "business_id": "456",
        },
        "OutboundReport": {
            "dialer_id": "webhook-1", "attempt": 0, "provider": "TWILIO",
            "account_id": "twilio-main", "provider_call_id": "CA1", "status": "ringing",
            "progress": "RINGING", "reason": "completed", "sip_code": None,
            "hangup_side": None, "duration_ms": None, "mos": None,
        },
        "CallCost": {
            "provider": "TELNYX", "provider_call_id": "v3:abc",
            "provider_account_id": "telnyx-main", "business_id": "123", "cost": "0.0042",
            "currency": "USD", "billed_seconds": 60,
        },
        "RatePlan": {
            "id": "std", "version": 1, "effective_from": 1767225600000, "currency": "USD",
            "inbound_per_minute": "0.0085", "outbound_per_minute": "0.014", "connect_fee": "0",
            "increment_first": 60, "increment_step": 60, "minimum_seconds": 0,
        },
        "WebhookSubscription": {
            "id": "crm", "url": "https://crm.example/hooks/calls",
            "events": ["call.answered", "call.ended", "call.rated"], "business_id": "123",
            "secret_ref": "env:CRM_WEBHOOK_SECRET", "allow_private_targets": False,
            "description": None,
        },
        "CallRated": {
            "business_id": "123", "direction": "INBOUND", "provider": "SIP",
            "provider_account_id": "", "provider_call_id": "a84b4c76e66710@pc33",
            "started_at": 1767225600000, "ended_at": 1767225661000, "connected": True,
            "talk_seconds": 61, "billable_seconds": 120, "rate_plan_id": "std",
            "rate_plan_version": 1, "increment": "60/60", "currency": "USD",
            "per_minute": Decimal("0.008500"), "connect_fee": Decimal("0.000000"),
            "amount": Decimal("0.017000"), "provider_cost": None, "provider_cost_currency": "",
            "reason": "", "rating_run": 1, "rated_event_id": "e-end",
        },
        "WebhookAttempt": {
            "subscription_id": "crm", "webhook_id": "msg_0123", "source_event_id": "e-end",
            "event_type": "call.ended", "business_id": "123",
            "url": "https://crm.example/hooks/calls", "attempt": 1, "status_code": 500,
            "error": "HTTP 500", "latency_ms": 12, "outcome": "retrying",
            "next_attempt_at": 1767225665000, "attempted_at": 1767225660000,
            "body": '{"type":"call.ended"}',
        },
        "WebhookCommand": {
            "action": "redeliver", "subscription_id": "crm", "webhook_id": "msg_0123",
            "source_event_id": "e-end", "event_type": "call.ended", "business_id": "123",
            "occurred_at": 1767225660000, "body": '{"type":"call.ended"}',
        },
    }  # fmt: skip
    return {"envelope": env, **bodies[name]}
