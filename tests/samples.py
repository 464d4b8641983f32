"""One valid example record per top-level schema (shared by unit and integration tests)."""

from __future__ import annotations

import time
import uuid
from typing import Any


def envelope(call_id: str = "", producer: str = "test", at_ms: int | None = None) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "call_id": call_id,
        "occurred_at": at_ms if at_ms is not None else int(time.time() * 1000),
        "producer_id": producer,
    }


def sample(name: str, call_id: str = "q-1", at_ms: int | None = None) -> dict[str, Any]:
    env = envelope(call_id if name.startswith("Call") else "", at_ms=at_ms)
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
        "Plan": {"id": "starter", "name": "Starter", "max_concurrent_calls": 2},
        "Business": {"id": "123", "name": "Acme", "active": True, "plan_id": "starter"},
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
    }  # fmt: skip
    return {"envelope": env, **bodies[name]}
