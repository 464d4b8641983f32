"""The services the local stack runs, as data: how each is started (a `trunkline`
command in its own process, with the stack's settings in its environment), where it
answers, and how its health is read. `up` starts LOCAL_SERVICES in order and waits for
each, `down` stops them in reverse, `status` probes them; a new service is one more
`Service` in that tuple (plus its command in trunkline.cli).

Media nodes are started per backend of the config whose SIP address is on this machine.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge.sip.ping import options_ping
from trunkline.core.config import Config
from trunkline.core.settings import Settings

HEARTBEATS = "heartbeats"  # the heartbeat stand-in's process name
MEDIA_PREFIX = "media-"


def cli_argv(*args: str) -> list[str]:
    """A `trunkline` command as a child process (the venv's Python, this package)."""
    return [sys.executable, "-m", "trunkline.cli", *args]


def get_json(url: str, timeout: float = 3.0) -> Any:
    """GET `url` as JSON; raises OSError (nothing answers) or ValueError (not JSON)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.load(resp)


def get_health(url: str, timeout: float = 3.0) -> Any:
    """GET a health page that answers 503 with a JSON body while not ready: the body
    either way; raises OSError (nothing answers) or ValueError (not JSON)."""
    try:
        return get_json(url, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 503:
            raise
        with exc:
            return json.load(exc)


def _worker_ready(s: Settings, h: Any) -> str | None:
    """The worker is ready once it joined its group and recovered its tables."""
    if not isinstance(h, dict) or not h.get("ready"):
        return None
    return f"web {s.worker_url}, {len(h['tables'])} tables, group joined, tables recovered"


def local_host(host: str) -> str:
    """The address to reach a listener bound to `host` from this machine."""
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


def _sip_ping(s: Settings) -> int | None:
    host, _, port = s.sip_listen.rpartition(":")
    return options_ping(local_host(host), int(port))


def _http_base(s: Settings) -> str:
    host, _, port = s.http_listen.rpartition(":")
    return f"http://{local_host(host)}:{port}"


@dataclass(frozen=True)
class Service:
    name: str  # its pid and log name
    title: str  # for the operator
    args: Callable[[Settings], list[str]]  # the `trunkline` command that runs it
    address: Callable[[Settings], str]  # where it answers
    address_key: str  # "web" or "listen" (status)
    probe: Callable[[Settings], Any]  # its health now; OSError/ValueError: not answering
    health_key: str  # "health" or "options" (status)
    ready: Callable[[Settings, Any], str | None]  # from a probe: a summary once ready


SINK = Service(
    name="sink",
    title="ClickHouse sink",
    args=lambda s: ["sink"],
    address=lambda s: s.sink_url,
    address_key="web",
    probe=lambda s: get_json(f"{s.sink_url}/health/"),
    health_key="health",
    ready=lambda s, h: (
        f"reads on {s.sink_url}, ClickHouse {s.clickhouse_dsn}" if h["sink"].get("alive") else None
    ),
)
WORKER = Service(
    name="worker",
    title="worker (config tables, admission, routing)",
    args=lambda s: ["worker"],
    address=lambda s: s.worker_url,
    address_key="web",
    # 503 with what it waits for until it can decide calls (streams/readiness.py)
    probe=lambda s: get_health(f"{s.worker_url}/health/"),
    health_key="health",
    ready=_worker_ready,
)
SIP_EDGE = Service(
    name="sip-edge",
    title="SIP edge (UDP and TCP)",
    args=lambda s: ["sip-edge", "--listen", s.sip_listen],
    address=lambda s: s.sip_listen,
    address_key="listen",
    probe=_sip_ping,
    health_key="options",
    ready=lambda s, status: f"answering OPTIONS on {s.sip_listen}" if status == 200 else None,
)

WEBHOOK_EDGE = Service(
    name="webhook-edge",
    title="webhook edge (Twilio, Telnyx, Vonage)",
    # provider secrets come from the environment `up` runs in (processes inherit it)
    args=lambda s: ["webhook-edge", "--listen", s.http_listen],
    address=lambda s: s.http_listen,
    address_key="listen",
    probe=lambda s: get_json(f"{_http_base(s)}/health"),
    health_key="health",
    ready=lambda s, h: (
        f"providers call {s.public_url}/webhooks/..., accounts: "
        + (", ".join(h["accounts"]) or "none")
        if "accounts" in h
        else None
    ),
)

BILLING_WORKER = Service(
    name="billing-worker",
    title="billing worker (call-events -> CallRated)",
    args=lambda s: ["billing-worker"],
    address=lambda s: s.billing_url,
    address_key="web",
    probe=lambda s: get_health(f"{s.billing_url}/health/"),
    health_key="health",
    ready=lambda s, h: (
        f"web {s.billing_url}, {len(h['tables'])} tables, group joined, tables recovered"
        if isinstance(h, dict) and h.get("ready")
        else None
    ),
)
WEBHOOKS = Service(
    name="webhooks",
    title="lifecycle webhooks (delivery service)",
    # subscription secrets come from the environment `up` runs in (processes inherit it)
    args=lambda s: ["webhooks"],
    address=lambda s: s.webhooks_url,
    address_key="web",
    probe=lambda s: get_json(f"{s.webhooks_url}/health/"),
    health_key="health",
    ready=lambda s, h: (
        f"{len(h['subscriptions'])} subscription(s), {h['pending']} pending"
        if h.get("ready")
        else None
    ),
)

#: started in this order, stopped in reverse
LOCAL_SERVICES: tuple[Service, ...] = (
    SINK, WORKER, BILLING_WORKER, SIP_EDGE, WEBHOOK_EDGE, WEBHOOKS,
)  # fmt: skip


@dataclass(frozen=True)
class MediaNodeSpec:
    backend_id: str
    region_id: str
    sip_address: str
    capacity: int
    ws_listen: str

    @property
    def name(self) -> str:
        return MEDIA_PREFIX + self.backend_id

    def args(self) -> list[str]:
        return [
            "media",
            "--server-id",
            self.backend_id,
            "--region",
            self.region_id,
            "--listen",
            self.sip_address,
            "--capacity",
            str(self.capacity),
            "--ws-listen",
            self.ws_listen,
        ]


def local_media_nodes(config: Config) -> list[MediaNodeSpec]:
    """A media node for each configured backend on this machine (a backend elsewhere
    runs on its own machine)."""
    nodes = []
    for rec in config.section("backends").values():
        b = rec.body
        host = b["sip_address"].rpartition(":")[0]
        if host.startswith("127.") or host == "localhost":
            nodes.append(
                MediaNodeSpec(
                    b["id"],
                    b["region_id"],
                    b["sip_address"],
                    int(b["max_concurrent_calls"]),
                    urllib.parse.urlparse(b["media_url"]).netloc,
                )
            )
    return nodes


def live_backends(s: Settings, now_ms: int) -> set[str]:
    """Backend ids whose last heartbeat routing holds is younger than the heartbeat
    timeout (the worker's view; a table entry alone may be a previous run's)."""
    held = get_json(f"{s.worker_url}/state/routing-heartbeats/")
    if not isinstance(held, dict):
        return set()
    return {
        backend_id
        for backend_id, beat in held.items()
        if now_ms - int(beat["envelope"]["occurred_at"]) < s.heartbeat_timeout_ms
    }
