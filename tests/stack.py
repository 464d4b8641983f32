"""A running proxy tier for tests and benchmarks: config, workers, sink, SIP edges, and
for the backends either a heartbeat publisher standing in for them or real media nodes."""

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
from typing import Any

import yaml

from edge.sip.uac import UAC, Call
from schemas import SingleObjectCodec
from tests.harness import ROOT, Service, Sink, Worker, child_env, free_port, run_cli
from tests.samples import sample
from trunkline.core.admin import apply_all
from trunkline.core.kafka import Outgoing, make_producer, partition_for, publish_all
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
    workers: list[Service] = field(default_factory=list)  # worker first
    #: process name (edge id, backend id) -> its process, to kill and restart one
    named: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    restart: dict[str, Any] = field(default_factory=dict)  # name -> starts it again

    def uac(self, edge: str = "edge-a", transport: str = "UDP") -> UAC:
        return UAC("127.0.0.1", self.edges[edge], transport)

    def publish(self, topic: str, key: str, name: str, record: dict) -> None:
        publish_all(
            make_producer(self.settings.kafka_bootstrap),
            [Outgoing(topic, key.encode(), CODEC.encode(name, record))],
        )


def _heartbeats(
    s: Settings,
    stop: threading.Event,
    capacity: int = 100,
    backends: tuple[tuple[str, str], ...] = (("backend-1", "us-east-1"),),
) -> None:
    """A heartbeat a second for each (backend id, region id), standing in for nodes."""
    producer = make_producer(s.kafka_bootstrap, **{"log_level": 3})
    while not stop.is_set():
        for backend_id, region_id in backends:
            hb = sample("BackendHeartbeat")
            hb.update(backend_id=backend_id, region_id=region_id, capacity=capacity, active_calls=0)
            producer.produce(
                HEARTBEATS.name(s.topic_prefix),
                key=region_id.encode(),
                value=CODEC.encode("BackendHeartbeat", hb),
            )
        producer.flush(5)
        stop.wait(1.0)


def roomy_config(limit: int = 100_000) -> dict:
    """A copy of CONFIG whose plans and backends all allow `limit` concurrent calls: for
    load and fault tests, where a plan's or backend's limit must never be what refuses."""
    config = json.loads(json.dumps(CONFIG))
    for entry in (*config["plans"], *config["backends"]):
        entry["maxConcurrentCalls"] = limit
    return config


def spread_config(partitions: int, capacity: int = 1_000_000) -> tuple[dict, list[str]]:
    """A config whose businesses and regions cover every one of `partitions` decision
    partitions (one business and one region per partition, each business's number in
    its own region, a backend per region), so several workers share the work whatever
    partitions each is assigned; and the numbers, one per business."""

    def keys(stem: str) -> list[str]:
        found: dict[int, str] = {}
        i = 0
        while len(found) < partitions:
            key = f"{stem}-{i}"
            found.setdefault(partition_for(key.encode(), partitions), key)
            i += 1
        return [found[p] for p in range(partitions)]

    businesses, regions = keys("bz"), keys("rg")
    numbers = [f"+1555100{i:04d}" for i in range(partitions)]
    config = {
        "plans": [{"id": "wide", "maxConcurrentCalls": capacity}],
        "businesses": [{"id": b, "name": b, "plan": "wide"} for b in businesses],
        "routes": [{"id": f"r-{b}", "businessId": b} for b in businesses],
        "numbers": [
            {
                "id": f"n-{b}",
                "businessId": b,
                "provider": "SIP",
                "number": n,
                "routeId": f"r-{b}",
                "regionId": r,
                "allowedSourceIps": ["127.0.0.1"],
            }
            for b, r, n in zip(businesses, regions, numbers, strict=True)
        ],
        "backends": [
            {
                "id": f"backend-{r}",
                "regionId": r,
                "sipAddress": "127.0.0.1:5070",
                "mediaUrl": "ws://127.0.0.1:8081",
                "maxConcurrentCalls": capacity,
            }
            for r in regions
        ],
    }
    return config, numbers


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
    workers: int = 1,
    media_nodes: int = 0,
    heartbeat_backends: tuple[tuple[str, str], ...] = (("backend-1", "us-east-1"),),
    edge_args: dict[str, tuple[str, ...]] | None = None,
) -> Iterator[Stack]:
    """With `media`, backend-1 is a real media node (`trunkline media`) on a free port
    instead of the heartbeat stand-in; `media_args` are added to its command line (e.g.
    `("--media-timeout", "3")`). `media_nodes` > 1 runs that many (backend-1,
    backend-2, ...; one the config lacks is added in backend-1's region). `workers`
    workers share the decision path (one consumer group; set
    TRUNKLINE_DECISION_PARTITIONS in `env`). `edge_args[edge id]` are added to that
    edge's command line (e.g. its TLS listener)."""
    media = media or media_nodes > 0
    media_nodes = max(media_nodes, 1 if media else 0)
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
    apply_all(s.kafka_bootstrap, s.topic_prefix, s.app_id, s.decision_partitions)
    cfg = state / "config.yaml"
    config = json.loads(json.dumps(config or CONFIG))
    nodes = {f"backend-{i + 1}": (free_port(), free_port()) for i in range(media_nodes)}
    media_port, ws_port = nodes.get("backend-1", (free_port(), free_port()))
    for backend_id, (sip_port, node_ws_port) in nodes.items():
        found = [b for b in config["backends"] if b["id"] == backend_id]
        if not found:
            found = [{**config["backends"][0], "id": backend_id}]
            config["backends"].append(found[0])
        found[0]["sipAddress"] = f"127.0.0.1:{sip_port}"
        found[0]["mediaUrl"] = f"ws://127.0.0.1:{node_ws_port}"  # provider answers use it
    cfg.write_text(yaml.safe_dump(config))
    done = run_cli(s, "config", "apply", str(cfg))
    assert done.returncode == 0, done.stderr
    stop = threading.Event()
    if not media:
        beat = threading.Thread(
            target=_heartbeats, args=(s, stop, capacity, heartbeat_backends), daemon=True
        )
        beat.start()
    sink = Sink(s)
    sink.start()
    all_workers = [Worker(s)]
    for _ in range(workers - 1):
        all_workers.append(Worker(s.with_overrides(worker_web_port=free_port())))
    ports = {e: free_port() for e in edges}
    metrics = {e: free_port() for e in edges}  # each edge's /metrics
    named: dict[str, subprocess.Popen[bytes]] = {}
    restart: dict[str, Any] = {}

    regions = {b["id"]: b["regionId"] for b in config["backends"]}

    def start_node(backend_id: str) -> subprocess.Popen[bytes]:
        sip_port, node_ws_port = nodes[backend_id]
        # backend-1's log is media.log (tests read it), another node's media-<id>.log
        name = "media.log" if backend_id == "backend-1" else f"media-{backend_id}.log"
        log = open(s.state_dir / name, "ab")  # noqa: SIM115
        named[backend_id] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "trunkline.cli",
                "media",
                "--server-id",
                backend_id,
                "--region",
                regions[backend_id],
                "--listen",
                f"127.0.0.1:{sip_port}",
                "--ws-listen",
                f"127.0.0.1:{node_ws_port}",
                *media_args,
            ],
            env=child_env(s),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        return named[backend_id]

    def start_edge(edge_id: str) -> subprocess.Popen[bytes]:
        named[edge_id] = _start_edge(
            s, edge_id, ports[edge_id], metrics[edge_id], (edge_args or {}).get(edge_id, ())
        )
        return named[edge_id]

    try:
        for w in all_workers:  # one at a time: each joins the group and recovers
            w.start()
        for e in ports:
            start_edge(e)
            restart[e] = lambda e=e: start_edge(e)
        for backend_id in nodes:
            start_node(backend_id)
            restart[backend_id] = lambda b=backend_id: start_node(b)
        # routing holds each node's heartbeats (with several workers: the one deciding
        # the node's region)
        for backend_id in nodes or [b for b, _ in heartbeat_backends]:
            deadline = time.monotonic() + 30
            while not any(backend_id in w.get("/state/routing-heartbeats/") for w in all_workers):
                assert time.monotonic() < deadline, f"no worker holds {backend_id}'s heartbeats"
                time.sleep(0.2)
        yield Stack(
            s,
            all_workers[0],
            sink,
            ports,
            list(named.values()),
            media_ws_port=ws_port if media else 0,
            media_sip_port=media_port if media else 0,
            edge_metrics=metrics,
            workers=all_workers,
            named=named,
            restart=restart,
        )
    finally:
        stop.set()
        for p in named.values():
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        for w in all_workers:
            w.stop()
        sink.stop()
