"""`worker`, `billing-worker`, `sink`, `sip-edge`, `webhook-edge`, `media`: run one service in the
foreground (what `up` starts in the background, one process each)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from trunkline.cli.common import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Context,
    Subparsers,
    add_loglevel,
    loglevel,
)


def register(sub: Subparsers) -> None:
    w = sub.add_parser("worker", help="run the Faust worker in the foreground")
    add_loglevel(w)
    w.set_defaults(func=cmd_worker)

    bw = sub.add_parser(
        "billing-worker", help="run the billing worker (call-events -> CallRated) in the foreground"
    )
    add_loglevel(bw)
    bw.set_defaults(func=cmd_billing_worker)

    sk = sub.add_parser("sink", help="run the ClickHouse sink (and its read API) in the foreground")
    add_loglevel(sk)
    sk.set_defaults(func=cmd_sink)

    e = sub.add_parser(
        "sip-edge", help="run the SIP proxy edge (redirect server) in the foreground"
    )
    e.add_argument("--edge-id", default="edge-1", help="this edge's id (decisions are keyed by it)")
    e.add_argument(
        "--listen", help="UDP and TCP address (env TRUNKLINE_SIP_LISTEN, default 127.0.0.1:5060)"
    )
    e.add_argument(
        "--metrics-listen",
        help="Prometheus /metrics address (env TRUNKLINE_SIP_METRICS_LISTEN, "
        "default 127.0.0.1:9060)",
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
    add_loglevel(e)
    e.set_defaults(func=cmd_sip_edge)

    wh = sub.add_parser(
        "webhook-edge", help="run the provider webhook edge (Twilio, Telnyx, Vonage)"
    )
    wh.add_argument("--edge-id", default="webhook-1", help="this edge's id (decisions key)")
    wh.add_argument(
        "--dialer-id",
        help="the id of this process's outbound dialer (its journal key; default: the edge "
        "id). Unique per process: edges sharing an --edge-id need distinct dialer ids",
    )
    wh.add_argument(
        "--listen", help="HTTP address (env TRUNKLINE_HTTP_LISTEN, default 127.0.0.1:8080)"
    )
    add_loglevel(wh)
    wh.set_defaults(func=cmd_webhook_edge)

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
    add_loglevel(md)
    md.set_defaults(func=cmd_media)


def _logging(args: argparse.Namespace, ctx: Context, service: str) -> None:
    """TRUNKLINE_LOG_FORMAT's handler at the service's level (trunkline.core.logs)."""
    from trunkline.core import logs

    logs.setup(loglevel(args, ctx), ctx.settings.log_format, service)


def cmd_worker(args: argparse.Namespace, ctx: Context) -> int:
    from streams.app import run_worker
    from trunkline.core.admin import BrokerUnavailable, PartitionMismatch

    try:
        run_worker(ctx.settings, loglevel=loglevel(args, ctx))
    except PartitionMismatch as exc:
        raise CliError(f"worker refuses to start: {exc}", EXIT_USAGE) from exc
    except BrokerUnavailable as exc:
        raise CliError(f"worker: {exc}") from exc
    return EXIT_OK


def cmd_billing_worker(args: argparse.Namespace, ctx: Context) -> int:
    from streams.app import run_worker

    run_worker(ctx.settings, loglevel=loglevel(args, ctx), role="billing")
    return EXIT_OK


def cmd_sink(args: argparse.Namespace, ctx: Context) -> int:
    from streams.clickhouse import ClickHouseUnavailable
    from streams.sink_service import run_sink

    s = ctx.settings
    try:
        run_sink(s, loglevel=loglevel(args, ctx))
    except ClickHouseUnavailable as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"cannot serve on {s.sink_url}: {exc.strerror or exc}") from exc
    return EXIT_OK


def cmd_sip_edge(args: argparse.Namespace, ctx: Context) -> int:
    from edge.sip.service import SipEdge, run_edge
    from edge.sip.transport import Listen

    _logging(args, ctx, "sip-edge")
    s = ctx.settings
    address = args.listen or s.sip_listen
    try:
        listen = Listen.parse(address)
        tls = Listen.parse(args.tls_listen) if args.tls_listen else None
    except ValueError as exc:
        raise CliError(f"--listen: {exc}", EXIT_USAGE) from exc
    try:
        metrics = Listen.parse(args.metrics_listen or s.sip_metrics_listen)
    except ValueError as exc:
        raise CliError(f"--metrics-listen: {exc}", EXIT_USAGE) from exc
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
        metrics_listen=metrics,
    )
    try:
        asyncio.run(run_edge(edge))
    except OSError as exc:
        raise CliError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
    return EXIT_OK


def cmd_webhook_edge(args: argparse.Namespace, ctx: Context) -> int:
    from edge.sip.transport import Listen
    from edge.webhook.service import WebhookEdge, run_webhook_edge
    from trunkline.core.config import SecretError

    _logging(args, ctx, "webhook-edge")
    s = ctx.settings
    address = args.listen or s.http_listen
    try:
        listen = Listen.parse(address)
    except ValueError as exc:
        raise CliError(f"--listen: {exc}", EXIT_USAGE) from exc
    edge = WebhookEdge(s, args.edge_id, listen.host, listen.port, dialer_id=args.dialer_id)
    try:
        asyncio.run(run_webhook_edge(edge))
    except SecretError as exc:
        raise CliError(f"webhook edge refuses to start: {exc}", EXIT_USAGE) from exc
    except OSError as exc:
        raise CliError(f"cannot listen on {address}: {exc.strerror or exc}") from exc
    return EXIT_OK


def cmd_media(args: argparse.Namespace, ctx: Context) -> int:
    from edge.sip.transport import Listen
    from media.node import MediaNode, NodeConfig, run_node

    _logging(args, ctx, "media")
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
        ctx.settings,
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
