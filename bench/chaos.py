"""Chaos under a steady SIP load (tests/chaos.py): each scenario runs its own stack (sink,
worker, SIP edge, media node or heartbeat stand-in) on a private broker this script
starts, breaks something while calls flow at --rate per second, lets the stack settle,
and prints per scenario: offered, answered by code, terminal in ClickHouse, held slots
after settling, the legitimate calls' INVITE -> final p99, and lost / leaked / stuck
(the target is 0 / 0 / 0).

Scenarios (--scenarios, comma-separated; default all):
  worker-kills    SIGKILL the worker at random points, --kills times (restarted at once)
  sink-kills      SIGKILL the ClickHouse sink at random points
  billing-kills   SIGKILL the billing worker at random points: every finished call is
                  still rated once (unrated counts those without a billing record)
  webhooks-kills  SIGKILL the lifecycle webhook service at random points: every finished
                  call's call.ended still reaches a local receiver (undelivered)
  edge-kill       SIGKILL the SIP edge (restarted on the same port; INVITEs it held
                  unanswered are reported apart: a real caller retransmits)
  media-kill      SIGKILL the media node while real calls (302, INVITE, RTP) are live on it
  broker-restart  stop and start the broker under load
  broker-outage   the broker away --outage seconds (60)
  flood           one source sends 2000 INVITEs/s (never ACKing) beside the load

    .venv/bin/python -m bench.chaos [--scenarios ...] [--kills 10] [--rate 20]
        [--outage 60] [--seed N]
"""

from __future__ import annotations

import argparse
import base64
import copy
import random
import tempfile
import threading
import time
from pathlib import Path

from bench._util import machine_speed, speed_line
from tests import chaos
from tests.harness import Service, free_port
from tests.load import Load
from tests.receiver import Receiver
from tests.stack import CONFIG, running_stack
from trunkline.core import kafka_local
from trunkline.core.settings import Settings

HOOK_SECRET = "whsec_" + base64.b64encode(b"trunkline-chaos-webhook-secret-32").decode()


def undelivered(receiver: Receiver, call_ids: set[str], timeout: float = 120) -> int:
    """Finished calls whose call.ended webhook the receiver has not accepted, once every
    one arrived or `timeout` passed (retries after the kills take a while)."""
    deadline = time.monotonic() + timeout
    while True:
        got = {
            x.payload["data"]["id"]
            for x in receiver.accepted("hooks")
            if x.payload and x.payload.get("type") == "call.ended"
        }
        missing = len(call_ids - got)
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(1.0)


SCENARIOS = (
    "worker-kills",
    "sink-kills",
    "billing-kills",
    "webhooks-kills",
    "edge-kill",
    "media-kill",
    "broker-restart",
    "broker-outage",
    "flood",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--kills", type=int, default=10, help="worker kills (others: a third)")
    ap.add_argument("--rate", type=float, default=20.0, help="legitimate calls per second")
    ap.add_argument("--outage", type=float, default=60.0, help="broker-outage seconds")
    ap.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    args = ap.parse_args()
    wanted = args.scenarios.split(",")
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="trunkline-chaos-"))
    paths = kafka_local.BrokerPaths(root / "kafka")
    cache = Settings.from_env().cache_dir
    port, controller = free_port(), free_port()
    kafka_local.start(paths, cache, port, controller)
    bootstrap = f"127.0.0.1:{port}"
    config = copy.deepcopy(CONFIG)
    for plan in config["plans"]:
        plan["maxConcurrentCalls"] = 100_000
    for backend in config["backends"]:
        backend["maxConcurrentCalls"] = 100_000
    for number in config["numbers"]:  # the flood's source (127.0.0.2) must not be trusted
        if number.get("allowedSourceIps") == ["127.0.0.0/8"]:
            number["allowedSourceIps"] = ["127.0.0.1"]
    env = {"TRUNKLINE_REDIRECT_TIMEOUT_MS": "2000"}
    few = max(1, args.kills // 3)
    outcomes: list[chaos.Outcome] = []
    print(speed_line(machine_speed()), flush=True)
    print(f"# seed {args.seed}, {args.rate:g} legitimate calls/s", flush=True)
    try:
        for name in wanted:
            media = name == "media-kill"
            hooks = name == "webhooks-kills"
            receiver = Receiver(HOOK_SECRET, free_port()).start() if hooks else None
            scenario_config = copy.deepcopy(config)
            if receiver is not None:
                scenario_config["webhookSubscriptions"] = [
                    {
                        "id": "chaos",
                        "url": receiver.url("hooks"),
                        "events": ["call.ended"],
                        "businessId": "b-main",
                        "secret": {"env": "TL_CHAOS_HOOK_SECRET"},
                        "allowPrivateTargets": True,
                    }
                ]
            with running_stack(
                bootstrap,
                root / name,
                edges=("edge-a",),
                env={
                    **env,
                    "TRUNKLINE_WEBHOOKS_WEB_PORT": str(free_port()),
                    "TRUNKLINE_WEBHOOK_RETRY_SCHEDULE": "100ms,200ms,500ms,1s",
                },
                config=scenario_config,
                capacity=100_000,
                media=media,
                media_args=("--capacity", "100000") if media else (),
            ) as s:
                billing = Service(s.settings, "billing-worker")
                if name == "billing-kills":
                    billing.start(timeout=120)
                if hooks:  # the webhook service instead: the same kill loop
                    billing = Service(
                        s.settings, "webhooks", env={"TL_CHAOS_HOOK_SECRET": HOOK_SECRET}
                    )
                    billing.start(timeout=120)

                def fault(
                    load: Load, log: list[str], name: str = name, billing: Service = billing
                ) -> None:
                    if name == "worker-kills":
                        chaos.kill_worker(s, rng, load, args.kills, log)
                    elif name == "sink-kills":
                        chaos.kill_sink(s, rng, load, few, log)
                    elif name in ("billing-kills", "webhooks-kills"):
                        chaos.kill_service(billing, rng, load, few, log)
                    elif name == "edge-kill":
                        chaos.kill_named(s, "edge-a", rng, load, few, log)
                    elif name == "media-kill":
                        chaos.kill_named(
                            s,
                            "backend-1",
                            rng,
                            load,
                            few,
                            log,
                            ready=chaos.live_calls_on(s, "backend-1"),
                        )
                    elif name == "broker-restart":
                        chaos.wait_routed(load, rng.randint(1, 40))
                        chaos.restart_broker(paths, cache, port, controller, 0, log)
                    elif name == "broker-outage":
                        chaos.wait_routed(load, rng.randint(1, 40))
                        chaos.restart_broker(paths, cache, port, controller, args.outage, log)
                    elif name == "flood":
                        sent: list[int] = []
                        t = threading.Thread(
                            target=lambda: sent.append(chaos.flood(s.edges["edge-a"], 20))
                        )
                        t.start()
                        t.join()
                        log.append(f"flood: {sent[0]} INVITEs in 20 s from 127.0.0.2")

                started = time.monotonic()
                try:
                    outcome = chaos.with_load(
                        s,
                        name,
                        fault,
                        rate=args.rate,
                        settle_s=150,
                        media_callers=4 if media else 0,
                        billing=name == "billing-kills",
                    )
                    if receiver is not None:
                        outcome.undelivered = undelivered(receiver, outcome.call_ids)
                finally:
                    billing.stop()
                    if receiver is not None:
                        receiver.stop()
                outcomes.append(outcome)
                print(outcome.line(), flush=True)
                print(
                    f"    {time.monotonic() - started:.0f} s; " + "; ".join(outcome.events),
                    flush=True,
                )
    finally:
        kafka_local.stop(paths)
    print(speed_line(machine_speed()), flush=True)
    print("\n# summary (lost / leaked / stuck; target 0 / 0 / 0)")
    for o in outcomes:
        print(o.line())


if __name__ == "__main__":
    main()
