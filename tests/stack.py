"""A running proxy tier for tests and benchmarks: config, worker, sink, SIP edges, and
for backend-1 either a heartbeat publisher standing in for it or a real media node."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edge.sip.uac import UAC, Call
from schemas import SingleObjectCodec
from tests.harness import ROOT, Service, Sink, Worker, child_env, free_port, run_cli
from tests.samples import sample
from trunkline.core.admin import apply_all
from trunkline.core.kafka import Outgoing, make_producer, publish_all
from trunkline.core.settings import Settings
from trunkline.core.topics import HEARTBEATS

CODEC = SingleObjectCodec()

CONFIG = {
    "plans": [{"id": "one", "maxConcurrentCalls": 1}, {"id": "wide", "maxConcurrentCalls": 50}],
    "businesses": [
        {"id": "b-limit", "name": "Limited", "plan": "one"},
        {"id": "b-main", "name": "Main", "plan": "wide"},
        {"id": "b-cancel", "name": "Cancel", "plan": "one"},
    ],
    "routes": [{"id": f"r-{b}", "businessId": f"b-{b}"} for b in ("limit", "main", "cancel")],
    "numbers": [
        {
            "id": "n-limit",
            "businessId": "b-limit",
            "provider": "SIP",
            "number": "+15550000001",
            "routeId": "r-limit",
            "regionId": "us-east-1",
            "allowedSourceIps": ["127.0.0.0/8"],
        },
        {
            "id": "n-main",
            "businessId": "b-main",
            "provider": "SIP",
            "number": "+15550000002",
            "routeId": "r-main",
            "regionId": "us-east-1",
            "allowedSourceIps": ["127.0.0.1"],
        },
        {
            "id": "n-acl",
            "businessId": "b-main",
            "provider": "SIP",
            "number": "+15550000003",
            "routeId": "r-main",
            "regionId": "us-east-1",
            "allowedSourceIps": ["203.0.113.10"],
        },
        {
            "id": "n-tw",
            "businessId": "b-main",
            "provider": "Twilio",
            "number": "+15550000004",
            "routeId": "r-main",
            "regionId": "us-east-1",
        },
        {
            "id": "n-nowhere",
            "businessId": "b-main",
            "provider": "SIP",
            "number": "+15550000005",
            "routeId": "r-main",
            "regionId": "ap-south-1",
        },
        {
            "id": "n-cancel",
            "businessId": "b-cancel",
            "provider": "SIP",
            "number": "+15550000006",
            "routeId": "r-cancel",
            "regionId": "us-east-1",
        },
    ],
    "backends": [
        {
            "id": "backend-1",
            "regionId": "us-east-1",
            "sipAddress": "127.0.0.1:5070",
            "mediaUrl": "ws://127.0.0.1:8081",
            "maxConcurrentCalls": 100,
        },
        {
            "id": "backend-9",
            "regionId": "ap-south-1",
            "sipAddress": "127.0.0.1:5079",
            "mediaUrl": "ws://127.0.0.1:8089",
            "maxConcurrentCalls": 100,
        },
    ],
}


@dataclass
class Stack:
    settings: Settings
    worker: Service
    sink: Service
    edges: dict[str, int]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    media_ws_port: int = 0
    edge_metrics: dict[str, int] = field(default_factory=dict)  # edge id -> /metrics port
    media_sip_port: int = 0

    def uac(self, edge: str = "edge-a", transport: str = "UDP") -> UAC:
        return UAC("127.0.0.1", self.edges[edge], transport)

    def publish(self, topic: str, key: str, name: str, record: dict) -> None:
        publish_all(
            make_producer(self.settings.kafka_bootstrap),
            [Outgoing(topic, key.encode(), CODEC.encode(name, record))],
        )


def _heartbeats(s: Settings, stop: threading.Event, capacity: int = 100) -> None:
    producer = make_producer(s.kafka_bootstrap, **{"log_level": 3})
    while not stop.is_set():
        hb = sample("BackendHeartbeat")
        hb.update(backend_id="backend-1", region_id="us-east-1", capacity=capacity, active_calls=0)
        producer.produce(
            HEARTBEATS.name(s.topic_prefix),
            key=b"us-east-1",
            value=CODEC.encode("BackendHeartbeat", hb),
        )
        producer.flush(5)
        stop.wait(1.0)


def _start_edge(
    s: Settings, edge_id: str, port: int, metrics_port: int, args: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    log = open(s.state_dir / f"{edge_id}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trunkline.cli",
            "sip-edge",
            "--edge-id",
            edge_id,
            "--listen",
            f"127.0.0.1:{port}",
            "--metrics-listen",
            f"127.0.0.1:{metrics_port}",
            *args,
        ],
        env=child_env(s),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, (s.state_dir / f"{edge_id}.log").read_text()
        uac = UAC("127.0.0.1", port)
        call = Call("ping")
        uac.request("OPTIONS", call)
        r = uac.receive(0.5)
        uac.close()
        if r is not None and r.status == 200:
            return proc
    raise AssertionError(f"{edge_id} never answered OPTIONS")


@contextmanager
def running_stack(
    kafka_bootstrap: str,
    state: Path,
    edges: tuple[str, ...] = ("edge-a", "edge-b"),
    env: dict[str, str] | None = None,
    config: dict | None = None,
    capacity: int = 100,
    media: bool = False,
    media_args: tuple[str, ...] = (),
    edge_args: dict[str, tuple[str, ...]] | None = None,
) -> Iterator[Stack]:
    """With `media`, backend-1 is a real media node (`trunkline media`) on a free port
    instead of the heartbeat stand-in; `media_args` are added to its command line (e.g.
    `("--media-timeout", "3")`), `edge_args[edge id]` to that edge's (e.g. its TLS
    listener)."""
    tag = uuid.uuid4().hex[:8]
    s = Settings.from_env(
        {
            "TRUNKLINE_STATE_DIR": str(state),
            "TRUNKLINE_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "TRUNKLINE_TOPIC_PREFIX": f"p{tag}.",
            "TRUNKLINE_APP_ID": f"proxy-test-{tag}",
            "TRUNKLINE_WORKER_WEB_PORT": str(free_port()),
            "TRUNKLINE_SINK_WEB_PORT": str(free_port()),
            "TRUNKLINE_REDIRECT_TIMEOUT_MS": "60000",
            **(env or {}),
        }
    )
    state.mkdir(parents=True, exist_ok=True)
    apply_all(s.kafka_bootstrap, s.topic_prefix, s.app_id)
    cfg = state / "config.yaml"
    config = json.loads(json.dumps(config or CONFIG))
    media_port, ws_port = free_port(), free_port()
    if media:
        for b in config["backends"]:
            if b["id"] == "backend-1":
                b["sipAddress"] = f"127.0.0.1:{media_port}"
                b["mediaUrl"] = f"ws://127.0.0.1:{ws_port}"  # what provider answers point at
    cfg.write_text(yaml.safe_dump(config))
    done = run_cli(s, "config", "apply", str(cfg))
    assert done.returncode == 0, done.stderr
    stop = threading.Event()
    if not media:
        beat = threading.Thread(target=_heartbeats, args=(s, stop, capacity), daemon=True)
        beat.start()
    sink = Sink(s)
    sink.start()
    worker = Worker(s)
    worker.start()
    ports = {e: free_port() for e in edges}
    metrics = {e: free_port() for e in edges}  # each edge's /metrics
    procs = []
    try:
        procs = [
            _start_edge(s, e, p, metrics[e], (edge_args or {}).get(e, ())) for e, p in ports.items()
        ]
        if media:
            log = open(s.state_dir / "media.log", "wb")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "trunkline.cli",
                        "media",
                        "--server-id",
                        "backend-1",
                        "--region",
                        "us-east-1",
                        "--listen",
                        f"127.0.0.1:{media_port}",
                        "--ws-listen",
                        f"127.0.0.1:{ws_port}",
                        *media_args,
                    ],
                    env=child_env(s),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                )
            )
        worker.poll("/state/routing-heartbeats/", lambda b: "backend-1" in b)
        yield Stack(
            s,
            worker,
            sink,
            ports,
            procs,
            media_ws_port=ws_port if media else 0,
            media_sip_port=media_port if media else 0,
            edge_metrics=metrics,
        )
    finally:
        stop.set()
        for p in procs:
            p.terminate()
            p.wait(10)
        worker.stop()
        sink.stop()
