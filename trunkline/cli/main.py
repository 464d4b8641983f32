"""`trunkline`: the one command for operators. `trunkline --help` lists everything."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from trunkline.core import kafka_local, procs
from trunkline.core.settings import Settings, SettingsError, check_bootstrap

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


def _say(*parts: Any) -> None:
    print(*parts, flush=True)


def _broker_paths(s: Settings) -> kafka_local.BrokerPaths:
    return kafka_local.BrokerPaths(s.state_dir / "kafka")


# -- kafka -----------------------------------------------------------------------------
def cmd_kafka(args: argparse.Namespace, s: Settings) -> int:
    paths = _broker_paths(s)
    if args.action == "fetch":
        _say(f"Kafka jars in {kafka_local.fetch_jars(s.cache_dir)}")
    elif args.action == "up":
        pid = kafka_local.start(
            paths, s.cache_dir, s.kafka_port, s.kafka_controller_port, heap=args.heap
        )
        _say(
            f"Kafka broker running: pid {pid}, bootstrap 127.0.0.1:{s.kafka_port}, "
            f"log {paths.log_file}"
        )
    elif args.action == "down":
        stopped = kafka_local.stop(paths)
        _say("Kafka broker stopped" if stopped else "Kafka broker was not running")
        if args.wipe:
            import shutil

            shutil.rmtree(paths.root, ignore_errors=True)
            _say(f"wiped {paths.root}")
    else:
        st = kafka_local.status(paths)
        _say(json.dumps(st, indent=2))
        return EXIT_OK if st["running"] else EXIT_FAIL
    return EXIT_OK


# -- topics ----------------------------------------------------------------------------
def cmd_topics(args: argparse.Namespace, s: Settings) -> int:
    from trunkline.core.admin import apply_all
    from trunkline.core.topics import ALL_TOPICS, internal_topics

    if args.action == "list":
        specs = [(spec.name(s.topic_prefix), spec) for spec in ALL_TOPICS]
        specs += [(spec.name(""), spec) for spec in internal_topics(s.app_id)]
        for name, spec in specs:
            policy = "compact" if spec.compacted else f"delete {spec.retention_ms} ms"
            _say(f"{name:48} p={spec.partitions:<3} {policy:24} key={spec.key:10} {spec.doc}")
        return EXIT_OK
    for r in apply_all(s.kafka_bootstrap, s.topic_prefix, s.app_id):
        _say(f"{r.action:9} {r.name}" + (f"  ({r.detail})" if r.detail else ""))
    return EXIT_OK


# -- config ----------------------------------------------------------------------------
def _load_config_file(path: str) -> Any:
    from trunkline.core.config import ConfigError, load_config

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read config file {path}: {exc.strerror}", EXIT_USAGE) from exc
    try:
        return load_config(text)
    except ConfigError as exc:
        raise CliError(f"{path}: {exc}", EXIT_USAGE) from exc


def cmd_config(args: argparse.Namespace, s: Settings) -> int:
    from schemas.codec import make_codec
    from trunkline.core.topics import CONFIG_TOPICS

    if args.action == "show":
        return _config_show(args, s)
    config = _load_config_file(args.file)
    counts = {sec: len(config.section(sec)) for sec in CONFIG_TOPICS}
    summary = ", ".join(f"{n} {sec}" for sec, n in counts.items())
    if args.action == "check":
        _say(f"{args.file}: valid ({summary})")
        return EXIT_OK
    from trunkline.core.admin import apply_topics
    from trunkline.core.kafka import Outgoing, make_producer, publish_all, read_compacted

    apply_topics(s.kafka_bootstrap, s.topic_prefix, tuple(CONFIG_TOPICS.values()))
    codec = make_codec(s.schema_registry_url)
    now_ms = int(time.time() * 1000)
    out = [
        Outgoing(
            CONFIG_TOPICS[r.section].name(s.topic_prefix),
            r.key.encode(),
            codec.encode(r.avro_name, r.to_avro(now_ms)),
        )
        for r in config.records
    ]
    pruned: list[str] = []
    if args.prune:
        for section, spec in CONFIG_TOPICS.items():
            topic = spec.name(s.topic_prefix)
            wanted = set(config.section(section))
            for key, value in read_compacted(s.kafka_bootstrap, topic).items():
                if value is not None and key.decode() not in wanted:
                    out.append(Outgoing(topic, key, None))
                    pruned.append(f"{section}/{key.decode()}")
    n = publish_all(make_producer(s.kafka_bootstrap, log_level=3), out)
    _say(
        f"published {n} record(s) from {args.file} ({summary})"
        + (f"; deleted {', '.join(pruned)}" if pruned else "")
    )
    return EXIT_OK


def _config_show(args: argparse.Namespace, s: Settings) -> int:
    from schemas.codec import make_codec
    from trunkline.core.kafka import read_compacted
    from trunkline.core.topics import CONFIG_TOPICS

    codec = make_codec(s.schema_registry_url)
    sections = [args.section] if args.section else list(CONFIG_TOPICS)
    result: dict[str, Any] = {}
    for section in sections:
        if section not in CONFIG_TOPICS:
            raise CliError(
                f"unknown section {section!r}; one of {', '.join(CONFIG_TOPICS)}", EXIT_USAGE
            )
        items: dict[str, Any] = {}
        for key, value in read_compacted(
            s.kafka_bootstrap, CONFIG_TOPICS[section].name(s.topic_prefix)
        ).items():
            if value is None:
                continue
            _, record = codec.decode(value)
            record.pop("envelope", None)
            items[key.decode()] = record
        result[section] = items
    _say(json.dumps(result, indent=2, sort_keys=True))
    return EXIT_OK


# -- worker ----------------------------------------------------------------------------
def cmd_worker(args: argparse.Namespace, s: Settings) -> int:
    from streams.app import run_worker

    run_worker(s, loglevel=args.loglevel)
    return EXIT_OK


# -- SIP edge --------------------------------------------------------------------------
def cmd_sip_edge(args: argparse.Namespace, s: Settings) -> int:
    import asyncio
    import logging

    from edge.sip.service import SipEdge, run_edge
    from edge.sip.transport import Listen

    logging.basicConfig(
        level=getattr(logging, args.loglevel.upper()),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    )
    args.listen = args.listen or s.sip_listen
    try:
        listen = Listen.parse(args.listen)
        tls = Listen.parse(args.tls_listen) if args.tls_listen else None
    except ValueError as exc:
        raise CliError(f"--listen: {exc}", EXIT_USAGE) from exc
    if tls and not (args.tls_cert and args.tls_key):
        raise CliError("--tls-listen needs --tls-cert and --tls-key", EXIT_USAGE)
    for path in (args.tls_cert, args.tls_key):
        if path and not Path(path).is_file():
            raise CliError(f"TLS file {path} does not exist", EXIT_USAGE)
    if args.decision_timeout is not None:
        s = s.with_overrides(decision_timeout_s=args.decision_timeout)
    edge = SipEdge(
        s,
        args.edge_id,
        listen,
        tls_listen=tls,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        udp=not args.no_udp,
        tcp=not args.no_tcp,
    )
    try:
        asyncio.run(run_edge(edge))
    except OSError as exc:
        raise CliError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from exc
    return EXIT_OK


def cmd_media(args: argparse.Namespace, s: Settings) -> int:
    import asyncio
    import logging

    from edge.sip.transport import Listen
    from media.node import MediaNode, NodeConfig, run_node

    logging.basicConfig(
        level=getattr(logging, args.loglevel.upper()),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    )
    try:
        listen = Listen.parse(args.listen)
    except ValueError as exc:
        raise CliError(f"--listen: {exc}", EXIT_USAGE) from exc
    if args.capacity < 1:
        raise CliError("--capacity must be at least 1", EXIT_USAGE)
    ws = None
    if args.ws_listen:
        try:
            ws = Listen.parse(args.ws_listen)
        except ValueError as exc:
            raise CliError(f"--ws-listen: {exc}", EXIT_USAGE) from exc
    node = MediaNode(
        s,
        NodeConfig(
            args.server_id,
            args.region,
            listen,
            capacity=args.capacity,
            media_ip=args.media_ip or listen.host,
            media_timeout_s=args.media_timeout,
            ws_listen=ws,
        ),
    )
    try:
        asyncio.run(run_node(node))
    except OSError as exc:
        raise CliError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from exc
    return EXIT_OK


def cmd_heartbeats(args: argparse.Namespace, s: Settings) -> int:
    """Publish BackendHeartbeat for backends named in the config (a stand-in for a media
    node's own heartbeats, to exercise routing before media nodes exist)."""
    from schemas.codec import make_codec
    from trunkline.core.events import envelope
    from trunkline.core.kafka import Outgoing, make_producer, publish_all, read_compacted
    from trunkline.core.topics import BACKENDS, HEARTBEATS

    codec = make_codec(s.schema_registry_url)
    known = {}
    for key, value in read_compacted(s.kafka_bootstrap, BACKENDS.name(s.topic_prefix)).items():
        if value is not None:
            known[key.decode()] = codec.decode(value)[1]
    wanted = args.backend or sorted(known)
    missing = [b for b in wanted if b not in known]
    if missing:
        raise CliError(
            f"unknown backend(s) {', '.join(missing)}; configured: "
            f"{', '.join(sorted(known)) or 'none'}",
            EXIT_USAGE,
        )
    producer = make_producer(s.kafka_bootstrap, log_level=3)
    import uuid

    sent = 0
    while True:
        now = int(time.time() * 1000)
        out = []
        for backend_id in wanted:
            b = known[backend_id]
            record = {
                "envelope": envelope("", f"heartbeats-{backend_id}", now, str(uuid.uuid4())),
                "backend_id": backend_id,
                "region_id": b["region_id"],
                "capacity": args.capacity or b["max_concurrent_calls"],
                "active_calls": 0,
                "interval_ms": int(args.interval * 1000),
                "draining": False,
            }
            out.append(
                Outgoing(
                    HEARTBEATS.name(s.topic_prefix),
                    b["region_id"].encode(),
                    codec.encode("BackendHeartbeat", record),
                )
            )
        publish_all(producer, out)
        sent += 1
        if args.count and sent >= args.count:
            return EXIT_OK
        time.sleep(args.interval)


def cmd_call(args: argparse.Namespace, s: Settings) -> int:
    """Place a call through the SIP edge: follow its 302 to the media node, talk RTP for a
    few seconds, hang up; print what happened and the call's queue entry."""
    from media.caller import place_call

    target = args.edge or s.sip_listen
    host, _, port = target.rpartition(":")
    if not port.isdigit():
        raise CliError(f"--edge {target!r} is not host:port", EXIT_USAGE)
    host = "127.0.0.1" if host in ("", "0.0.0.0") else host
    r = place_call(host, int(port), args.number, seconds=args.seconds)
    for label, resp in (("edge", r.redirect), ("media node", r.answer)):
        if resp is not None:
            _say(f"{label}: SIP/2.0 {resp.status} {resp.reason}")
            for name in ("Contact", "Warning", "Retry-After"):
                if resp.headers.get(name):
                    _say(f"  {name}: {resp.headers.get(name)}")
    if r.answer is not None and r.answer.status == 200:
        _say(
            f"media: sent {r.packets_sent} RTP packets, received {r.packets_received} "
            f"(the greeting, then our audio echoed); BYE -> {r.bye_status}"
        )
    queue_id = r.queue_id or (r.redirect.headers.get("x-callqueue-id") if r.redirect else None)
    if queue_id and not args.no_entry:
        entry = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                entry = _read_calls(s, f"/calls/{urllib.parse.quote(queue_id, safe='')}/", {})
                if entry.get("status") not in (
                    "Queued",
                    "ProcessingProxy",
                    "ProcessedProxy",
                    "ProcessingBackend",
                    "InProgress",
                ):
                    break
            except CliError:
                entry = None
            time.sleep(0.3)
        if entry:
            _say(json.dumps(entry, indent=2))
    if r.error:
        raise CliError(r.error)
    return EXIT_OK


def cmd_sink(args: argparse.Namespace, s: Settings) -> int:
    from streams.clickhouse import ClickHouseUnavailable
    from streams.sink_service import run_sink

    try:
        run_sink(s, loglevel=args.loglevel)
    except ClickHouseUnavailable as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"cannot serve on {s.sink_url}: {exc.strerror or exc}") from exc
    return EXIT_OK


# -- calls -----------------------------------------------------------------------------
def _sink_get(s: Settings, path: str, params: dict[str, str]) -> Any:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v})
    url = f"{s.sink_url}{path}" + (f"?{query}" if query else "")
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.load(exc).get("error", exc.reason)
        except ValueError:
            detail = exc.reason
        raise CliError(str(detail), EXIT_USAGE if exc.code in (400, 404) else EXIT_FAIL) from exc


def _read_calls(s: Settings, path: str, params: dict[str, str]) -> Any:
    """Ask the sink (it owns embedded chDB); with a ClickHouse server, query directly."""
    from streams import queries

    if s.is_embedded_clickhouse:
        try:
            return _sink_get(s, path, params)
        except urllib.error.URLError:
            if procs.running_pid(s.state_dir, "sink") is not None:
                raise CliError(f"the sink runs but does not answer at {s.sink_url}") from None
        # no sink: open the embedded engine ourselves
    from streams.clickhouse import ClickHouseStore, ClickHouseUnavailable

    try:
        store = ClickHouseStore(s.clickhouse_dsn)
    except ClickHouseUnavailable as exc:
        raise CliError(str(exc)) from exc
    store.ensure_schema()
    if path == "/calls/":
        since = queries.parse_duration(params["since"]) if params.get("since") else None
        return queries.list_calls(
            store, params.get("business") or None, since, int(params.get("limit") or 100)
        )
    call_id = path.strip("/").split("/", 1)[1]
    entry = queries.show_call(store, call_id)
    if entry is None:
        raise CliError(f"no call {call_id!r}", EXIT_USAGE)
    if params.get("events"):
        entry["events"] = queries.call_events(store, call_id)
    return entry


def cmd_calls(args: argparse.Namespace, s: Settings) -> int:
    from streams.queries import parse_duration

    if args.action == "list":
        if args.since:
            try:
                parse_duration(args.since)
            except ValueError as exc:
                raise CliError(f"--since: {exc}", EXIT_USAGE) from exc
        rows = _read_calls(
            s,
            "/calls/",
            {"business": args.business or "", "since": args.since or "", "limit": str(args.limit)},
        )
        if args.json:
            _say(json.dumps(rows, indent=2))
            return EXIT_OK
        _say(
            f"{'ID':38} {'STATUS':18} {'BUSINESS':10} {'NUMBER':14} {'BACKEND':12} "
            f"{'CODE':4} {'ENQUEUED':24} REASON"
        )
        for r in rows:
            _say(
                f"{r['id']:38} {r['status']:18} {r['business_id']:10} {r['route_number_id']:14} "
                f"{r['backend']:12} {r['status_code'] or '':4} {r['enqueued_at'] or '':24} "
                f"{r['reason']}"
            )
        return EXIT_OK
    entry = _read_calls(
        s, f"/calls/{urllib.parse.quote(args.id, safe='')}/", {"events": "1" if args.events else ""}
    )
    _say(json.dumps(entry, indent=2))
    return EXIT_OK


# -- the local stack -------------------------------------------------------------------
def _wait_http(s: Settings, name: str, url: str, timeout: float, ready: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if procs.running_pid(s.state_dir, name) is None:
            log = procs.log_file(s.state_dir, name)
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise CliError(f"the {name} exited; log {log}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body: dict[str, Any] = json.load(resp)
            if ready(body):
                return body
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(0.5)
    raise CliError(f"the {name} did not become healthy at {url} in {timeout:.0f}s: {last}")


def _wait_edge(s: Settings, timeout: float) -> None:
    from edge.sip.ping import options_ping

    host, _, port = s.sip_listen.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procs.running_pid(s.state_dir, "sip-edge") is None:
            log = procs.log_file(s.state_dir, "sip-edge")
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise CliError(f"the SIP edge exited; log {log}:\n{tail}")
        if options_ping(host if host not in ("0.0.0.0", "") else "127.0.0.1", int(port)) == 200:
            return
        time.sleep(0.3)
    raise CliError(f"the SIP edge did not answer OPTIONS on {s.sip_listen} in {timeout:.0f}s")


def _env_for_children(s: Settings) -> dict[str, str]:
    return {
        "TRUNKLINE_STATE_DIR": str(s.state_dir),
        "TRUNKLINE_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "TRUNKLINE_TOPIC_PREFIX": s.topic_prefix,
        "TRUNKLINE_APP_ID": s.app_id,
        "TRUNKLINE_CLICKHOUSE_DSN": s.clickhouse_dsn,
        "TRUNKLINE_WORKER_WEB_PORT": str(s.worker_web_port),
        "TRUNKLINE_WORKER_WEB_HOST": s.worker_web_host,
        "TRUNKLINE_SINK_WEB_PORT": str(s.sink_web_port),
        "TRUNKLINE_SINK_WEB_HOST": s.sink_web_host,
        "TRUNKLINE_SIP_LISTEN": s.sip_listen,
        **(
            {"TRUNKLINE_SCHEMA_REGISTRY_URL": s.schema_registry_url}
            if s.schema_registry_url
            else {}
        ),
    }


def cmd_up(args: argparse.Namespace, s: Settings) -> int:
    config_path = args.config or str(DEFAULT_CONFIG)
    _load_config_file(config_path)  # refuse a bad config before starting anything
    s.state_dir.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("TRUNKLINE_KAFKA_BOOTSTRAP"):
        _say("* Kafka broker (KRaft, single node) ...")
        cmd_kafka(argparse.Namespace(action="up", heap=args.heap), s)
    _say("* topics ...")
    cmd_topics(argparse.Namespace(action="apply"), s)
    _say(f"* config {config_path} ...")
    cmd_config(argparse.Namespace(action="apply", file=config_path, prune=False), s)
    _say("* ClickHouse sink ...")
    sink_pid = procs.start(
        s.state_dir, "sink", [sys.executable, "-m", "trunkline.cli", "sink"], _env_for_children(s)
    )
    _wait_http(
        s, "sink", f"{s.sink_url}/health/", args.timeout, lambda h: bool(h["sink"].get("alive"))
    )
    _say(f"  sink pid {sink_pid}, reads on {s.sink_url}, ClickHouse {s.clickhouse_dsn}")
    _say("* worker (Faust app: config tables, admission, routing) ...")
    pid = procs.start(
        s.state_dir,
        "worker",
        [sys.executable, "-m", "trunkline.cli", "worker"],
        _env_for_children(s),
    )
    health = _wait_http(
        s, "worker", f"{s.worker_url}/health/", args.timeout, lambda h: "tables" in h
    )
    _say(f"  worker pid {pid}, web {s.worker_url}, tables {health['tables']}")
    _say(f"* SIP edge on {s.sip_listen} (UDP and TCP) ...")
    edge_pid = procs.start(
        s.state_dir,
        "sip-edge",
        [sys.executable, "-m", "trunkline.cli", "sip-edge", "--listen", s.sip_listen],
        _env_for_children(s),
    )
    _wait_edge(s, args.timeout)
    _say(f"  sip-edge pid {edge_pid}, answering OPTIONS on {s.sip_listen}")
    config = _load_config_file(config_path)
    for rec in config.section("backends").values():
        b = rec.body
        host = b["sip_address"].rpartition(":")[0]
        if not (host.startswith("127.") or host == "localhost"):
            continue  # a node elsewhere runs on its own machine
        name = f"media-{b['id']}"
        pid = procs.start(
            s.state_dir,
            name,
            [
                sys.executable,
                "-m",
                "trunkline.cli",
                "media",
                "--server-id",
                b["id"],
                "--region",
                b["region_id"],
                "--listen",
                b["sip_address"],
                "--capacity",
                str(b["max_concurrent_calls"]),
                "--ws-listen",
                urllib.parse.urlparse(b["media_url"]).netloc,
            ],
            _env_for_children(s),
        )
        _say(f"* media node {b['id']} ({b['region_id']}) on {b['sip_address']}, pid {pid}")
    if args.simulate_backends:
        hb_pid = procs.start(
            s.state_dir,
            "heartbeats",
            [sys.executable, "-m", "trunkline.cli", "heartbeats"],
            _env_for_children(s),
        )
        _say(
            f"* simulated backend heartbeats (pid {hb_pid}): routing sees the configured "
            "backends as live"
        )
    _say("")
    _say(
        "trunkline is up. Logs: "
        + str(s.state_dir / "logs")
        + ", broker log: "
        + str(_broker_paths(s).log_file)
    )
    _say("  trunkline call +15551234567   place a call through the edge")
    _say("  trunkline status      what runs where")
    _say("  trunkline calls list  calls from ClickHouse")
    _say("  trunkline down        stop everything")
    return EXIT_OK


def cmd_down(args: argparse.Namespace, s: Settings) -> int:
    names = ["heartbeats", "sip-edge", "worker", "sink"]
    run_dir = s.state_dir / "run"
    names += sorted(p.stem for p in run_dir.glob("media-*.pid")) if run_dir.exists() else []
    for name in names:
        _say(f"{name} stopped" if procs.stop(s.state_dir, name) else f"{name} was not running")
    if not os.environ.get("TRUNKLINE_KAFKA_BOOTSTRAP"):
        cmd_kafka(argparse.Namespace(action="down", wipe=args.wipe), s)
    return EXIT_OK


def _edge_status(s: Settings) -> dict[str, Any]:
    from edge.sip.ping import options_ping

    pid = procs.running_pid(s.state_dir, "sip-edge")
    host, _, port = s.sip_listen.rpartition(":")
    answer = options_ping(host if host != "0.0.0.0" else "127.0.0.1", int(port)) if pid else None
    return {
        "running": pid is not None,
        "pid": pid,
        "listen": s.sip_listen,
        "options": answer,
        "log": str(procs.log_file(s.state_dir, "sip-edge")),
    }


def _service_status(s: Settings, name: str, url: str) -> dict[str, Any]:
    pid = procs.running_pid(s.state_dir, name)
    health: Any = None
    if pid is not None:
        try:
            with urllib.request.urlopen(f"{url}/health/", timeout=3) as resp:
                health = json.load(resp)
        except (urllib.error.URLError, OSError, ValueError):
            health = "not answering"
    return {
        "running": pid is not None,
        "pid": pid,
        "web": url,
        "log": str(procs.log_file(s.state_dir, name)),
        "health": health,
    }


def cmd_status(args: argparse.Namespace, s: Settings) -> int:
    broker = kafka_local.status(_broker_paths(s))
    report = {
        "state_dir": str(s.state_dir),
        "kafka": {**broker, "bootstrap": s.kafka_bootstrap},
        "worker": _service_status(s, "worker", s.worker_url),
        "sink": _service_status(s, "sink", s.sink_url),
        "sip_edge": _edge_status(s),
        "media_nodes": {
            path.stem: procs.running_pid(s.state_dir, path.stem)
            for path in sorted((s.state_dir / "run").glob("media-*.pid"))
        }
        if (s.state_dir / "run").exists()
        else {},
        "heartbeats_standin": procs.running_pid(s.state_dir, "heartbeats"),
        "clickhouse": s.clickhouse_dsn,
        "topic_prefix": s.topic_prefix,
    }
    _say(json.dumps(report, indent=2))
    return (
        EXIT_OK if broker["running"] or os.environ.get("TRUNKLINE_KAFKA_BOOTSTRAP") else EXIT_FAIL
    )


# -- parser ----------------------------------------------------------------------------
def _port_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is outside 1..65535")
    return value


def _bootstrap_arg(text: str) -> str:
    try:
        return check_bootstrap(text, "--bootstrap")
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trunkline", description="Event-sourced telephony pipeline: operator commands."
    )
    p.add_argument("--state-dir", help="state folder (env TRUNKLINE_STATE_DIR, default ./.state)")
    p.add_argument(
        "--bootstrap",
        type=_bootstrap_arg,
        help="Kafka bootstrap servers (env TRUNKLINE_KAFKA_BOOTSTRAP)",
    )
    p.add_argument(
        "--kafka-port",
        type=_port_arg,
        help="local broker port (env TRUNKLINE_KAFKA_PORT, default 19092)",
    )
    p.add_argument(
        "--web-port",
        type=_port_arg,
        help="worker web port (env TRUNKLINE_WORKER_WEB_PORT, default 6066)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the local stack (broker, topics, config, worker)")
    up.add_argument("--config", help="config YAML (default examples/config.yaml)")
    up.add_argument("--heap", default="512m", help="broker JVM heap (default 512m)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for health")
    up.add_argument(
        "--simulate-backends",
        action="store_true",
        help="publish heartbeats for the configured backends (a stand-in until "
        "media nodes exist: calls get a 302 to an address nothing answers)",
    )
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop the local stack")
    down.add_argument("--wipe", action="store_true", help="also delete the broker's data")
    down.set_defaults(func=cmd_down)
    sub.add_parser("status", help="what runs where").set_defaults(func=cmd_status)

    k = sub.add_parser("kafka", help="the local single-node Kafka broker")
    k.add_argument("action", choices=["up", "down", "status", "fetch"])
    k.add_argument("--heap", default="512m", help="JVM heap (default 512m)")
    k.add_argument("--wipe", action="store_true", help="with down: delete the data folder")
    k.set_defaults(func=cmd_kafka)

    t = sub.add_parser("topics", help="the declared topics")
    t.add_argument("action", choices=["apply", "list"])
    t.set_defaults(func=cmd_topics)

    c = sub.add_parser("config", help="validate, publish or show operator config")
    csub = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    chk = csub.add_parser("check", help="validate a YAML file without connecting to anything")
    chk.add_argument("file")
    app_ = csub.add_parser("apply", help="validate, then publish to the compacted config topics")
    app_.add_argument("file")
    app_.add_argument(
        "--prune",
        action="store_true",
        help="delete (tombstone) records that are in the topics but not the file",
    )
    show = csub.add_parser("show", help="print the config as the topics hold it")
    show.add_argument("section", nargs="?")
    c.set_defaults(func=cmd_config)

    w = sub.add_parser("worker", help="run the Faust worker in the foreground")
    w.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    w.set_defaults(func=cmd_worker)

    sk = sub.add_parser("sink", help="run the ClickHouse sink (and its read API) in the foreground")
    sk.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    sk.set_defaults(func=cmd_sink)

    e = sub.add_parser(
        "sip-edge", help="run the SIP proxy edge (redirect server) in the foreground"
    )
    e.add_argument("--edge-id", default="edge-1", help="this edge's id (decisions are keyed by it)")
    e.add_argument(
        "--listen", help="UDP and TCP address (env TRUNKLINE_SIP_LISTEN, default 127.0.0.1:5060)"
    )
    e.add_argument("--no-udp", action="store_true", help="do not listen on UDP")
    e.add_argument("--no-tcp", action="store_true", help="do not listen on TCP")
    e.add_argument("--tls-listen", help="TLS address, e.g. 127.0.0.1:5061 (needs cert and key)")
    e.add_argument("--tls-cert", help="PEM certificate chain for TLS")
    e.add_argument("--tls-key", help="PEM private key for TLS")
    e.add_argument(
        "--decision-timeout",
        type=float,
        help="seconds to wait for a decision before 503 "
        "(env TRUNKLINE_DECISION_TIMEOUT_MS, default 5)",
    )
    e.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    e.set_defaults(func=cmd_sip_edge)

    md = sub.add_parser("media", help="run a media node (SIP backend listener, RTP, agents)")
    md.add_argument("--server-id", required=True, help="the backend id in the config")
    md.add_argument("--region", required=True, help="its region id")
    md.add_argument("--listen", default="127.0.0.1:5070", help="SIP UDP address (host:port)")
    md.add_argument("--media-ip", help="address for RTP (default: the --listen host)")
    md.add_argument("--capacity", type=int, default=100, help="concurrent calls announced")
    md.add_argument("--ws-listen", help="provider media WebSockets host:port (Twilio at /twilio)")
    md.add_argument(
        "--media-timeout",
        type=float,
        default=10.0,
        help="seconds without RTP before the call is ended",
    )
    md.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    md.set_defaults(func=cmd_media)

    hb = sub.add_parser(
        "heartbeats", help="publish backend heartbeats (a stand-in for media nodes)"
    )
    hb.add_argument(
        "--backend", action="append", help="backend id (repeatable; default: all configured)"
    )
    hb.add_argument("--interval", type=float, default=1.0, help="seconds between heartbeats")
    hb.add_argument(
        "--capacity", type=int, help="capacity to announce (default: the configured max)"
    )
    hb.add_argument(
        "--count", type=int, default=0, help="stop after N rounds (default: run until stopped)"
    )
    hb.set_defaults(func=cmd_heartbeats)

    cl = sub.add_parser("call", help="place a call through the SIP edge and the media node")
    cl.add_argument("number", help="the dialled number, e.g. +15551234567")
    cl.add_argument("--edge", help="edge host:port (default TRUNKLINE_SIP_LISTEN)")
    cl.add_argument("--seconds", type=float, default=3.0, help="how long to talk (default 3)")
    cl.add_argument("--no-entry", action="store_true", help="do not print the queue entry")
    cl.set_defaults(func=cmd_call)

    calls = sub.add_parser("calls", help="calls from ClickHouse")
    csub2 = calls.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = csub2.add_parser("list", help="recent calls, newest first")
    ls.add_argument("--business", help="only this business id")
    ls.add_argument("--since", help="only calls enqueued within this duration (30s, 15m, 2h, 7d)")
    ls.add_argument("--limit", type=int, default=100, choices=range(1, 10001), metavar="N")
    ls.add_argument("--json", action="store_true")
    sh = csub2.add_parser("show", help="one call's queue entry with its logs")
    sh.add_argument("id")
    sh.add_argument("--events", action="store_true", help="include the raw lifecycle events")
    calls.set_defaults(func=cmd_calls)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        env = dict(os.environ)
        if args.state_dir:
            env["TRUNKLINE_STATE_DIR"] = args.state_dir
        if args.bootstrap:
            env["TRUNKLINE_KAFKA_BOOTSTRAP"] = args.bootstrap
            os.environ["TRUNKLINE_KAFKA_BOOTSTRAP"] = args.bootstrap
        if args.kafka_port:
            env["TRUNKLINE_KAFKA_PORT"] = str(args.kafka_port)
        if args.web_port:
            env["TRUNKLINE_WORKER_WEB_PORT"] = str(args.web_port)
        settings = Settings.from_env(env)
    except SettingsError as exc:
        print(f"trunkline: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args, settings))
    except CliError as exc:
        print(f"trunkline: {exc}", file=sys.stderr)
        return exc.code
    except kafka_local.KafkaLocalError as exc:
        print(f"trunkline: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except Exception as exc:  # broker down, ClickHouse down...: say what, no traceback
        from trunkline.core.admin import BrokerUnavailable
        from trunkline.core.kafka import PublishError

        if isinstance(exc, (BrokerUnavailable, PublishError)):
            print(f"trunkline: {exc}", file=sys.stderr)
            return EXIT_FAIL
        raise


if __name__ == "__main__":
    sys.exit(main())
