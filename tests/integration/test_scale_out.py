"""Scale-out and readiness on a real broker: a restarted worker's /health/ is 503 until it
can decide, and a call offered the moment it turns 200 is decided at once; two workers,
two SIP edges and two media nodes share decision topics of 4 partitions, one worker is
SIGKILLed under load, and the survivor's accounting is exact."""

from __future__ import annotations

import signal
import time
import urllib.error
from collections import Counter

import pytest

from edge.sip.message import NameAddr
from edge.sip.uac import Call
from schemas import SingleObjectCodec
from tests.load import Load
from tests.samples import sample
from tests.stack import Stack, roomy_config, running_stack
from trunkline.core.kafka import Outgoing, make_producer, partition_for, publish_all
from trunkline.core.topics import ADMISSION, CALL_EVENTS

pytestmark = pytest.mark.integration
CODEC = SingleObjectCodec()
TERMINAL = {"Rejected", "Failed", "Completed", "Cancelled"}


def test_a_restarted_worker_is_unready_until_it_can_decide(kafka_bootstrap, tmp_path):
    """SIGKILL, then a new worker process: its web page answers at once, but the group
    holds its join until the dead member's session expires (10 s), then recovery. Until
    then /health/ is 503 naming what it waits for; the first INVITE sent when it turns
    200 gets its 302 without waiting for anything else."""
    with running_stack(kafka_bootstrap, tmp_path, edges=("edge-a",), config=roomy_config()) as s:
        uac = s.uac()
        assert uac.invite(Call("+15550000002")).status == 302  # deciding before
        s.worker.stop(signal.SIGKILL)
        s.worker.start(wait=False)
        waited: Counter[str] = Counter()
        deadline = time.monotonic() + 90
        while True:
            assert time.monotonic() < deadline, (waited, s.worker.log_tail())
            assert s.worker.alive, s.worker.log_tail()
            try:
                status, body = s.worker.health()
            except OSError:  # the web server is not listening yet
                time.sleep(0.02)
                continue
            if status == 200:
                assert body["ready"] and body["waiting_for"] == []
                break
            assert status == 503 and not body["ready"], (status, body)
            waited.update(body["waiting_for"])
            time.sleep(0.02)
        offered = time.monotonic()
        final = uac.invite(Call("+15550000002"))
        took = time.monotonic() - offered
        uac.close()
        assert final.status == 302, final
        assert any("joining the consumer group" in w for w in waited), waited
        # promptly: far inside the edge's 5 s decision timeout (a worker that was not
        # ready yet would leave the edge waiting for the join and recovery)
        assert took < 2.0, (took, waited)


def _queue_id(response) -> str:
    return NameAddr.parse(response.headers.get("contact")).uri.headers["X-CallQueue-Id"]


def _release_all(s: Stack, calls: dict[str, str]) -> None:
    """CallEnded for each queue id -> business, to admission and the history, as a media
    node sends it."""
    topic = ADMISSION.name(s.settings.topic_prefix)
    history = CALL_EVENTS.name(s.settings.topic_prefix)
    out = []
    for call_id, business in calls.items():
        ended = sample("CallEnded", call_id=call_id)
        ended["business_id"] = business
        value = CODEC.encode("CallEnded", ended)
        out.append(Outgoing(topic, business.encode(), value))
        out.append(Outgoing(history, call_id.encode(), value))
    publish_all(make_producer(s.settings.kafka_bootstrap), out)


def _history(s: Stack, call_id: str) -> object:
    """One call's stored events, or why there are none (for a failure's message)."""
    try:
        return s.sink.get(f"/calls/{call_id}/?events=1")
    except urllib.error.HTTPError as exc:
        return exc.code


def test_two_workers_one_killed_under_load_keep_exact_accounts(kafka_bootstrap, tmp_path):
    """Four partitions, two workers (one group), two SIP edges, two media nodes in two
    regions; two businesses whose admission partitions and two regions whose routing
    partitions all differ, so both workers decide calls. One worker is SIGKILLed while
    calls come from both edges; the survivor takes its partitions over after the
    session timeout. Then: every INVITE got a final answer, the survivor holds exactly
    the calls that got a 302 (plan slots per business, backend slots per backend), and
    once those calls end every offered call is terminal in ClickHouse and nothing is
    held."""
    config = roomy_config()
    config["businesses"].append({"id": "b-west", "name": "West", "plan": "wide"})
    config["routes"].append({"id": "r-west", "businessId": "b-west"})
    config["numbers"].append(
        {
            "id": "n-west",
            "businessId": "b-west",
            "provider": "SIP",
            "number": "+15550000007",
            "routeId": "r-west",
            "regionId": "us-west-2",
            "allowedSourceIps": ["127.0.0.1"],
        }
    )
    config["backends"] = [
        {**config["backends"][0], "id": "backend-1", "regionId": "us-east-1"},
        {**config["backends"][0], "id": "backend-2", "regionId": "us-west-2"},
    ]
    keys = {"b-main": "+15550000002", "b-west": "+15550000007"}
    parts = {partition_for(k.encode(), 4) for k in (*keys, "us-east-1", "us-west-2")}
    assert len(parts) == 4, "the keys must spread over the partitions"
    env = {"TRUNKLINE_DECISION_PARTITIONS": "4", "TRUNKLINE_REDIRECT_TIMEOUT_MS": "600000"}
    with running_stack(
        kafka_bootstrap,
        tmp_path,
        edges=("edge-a", "edge-b"),
        env=env,
        config=config,
        workers=2,
        media_nodes=2,
    ) as s:
        for w in s.workers:  # both deciding: each holds active partitions
            w.poll("/health/", lambda b: b["ready"])
        loads = {
            (edge, business): Load(s.uac(edge), number, rate=8).start()
            for edge in s.edges
            for business, number in keys.items()
        }
        try:
            deadline = time.monotonic() + 60
            while sum(len(x.routed) for x in loads.values()) < 80:
                assert time.monotonic() < deadline, {k: x.finals for k, x in loads.items()}
                time.sleep(0.05)
            victim, survivor = s.workers[1], s.workers[0]
            victim.stop(signal.SIGKILL)
            # deciding everything again: the survivor took the dead worker's partitions
            survivor.poll("/health/", lambda b: b["ready"], timeout=60)
            seen = {k: len(x.routed) for k, x in loads.items()}
            deadline = time.monotonic() + 60
            while any(len(x.routed) < seen[k] + 10 for k, x in loads.items()):
                assert time.monotonic() < deadline, {k: x.finals for k, x in loads.items()}
                time.sleep(0.05)
        finally:
            for x in loads.values():
                x.stop()
        assert all(x.unanswered == 0 for x in loads.values())
        routed = {q: business for (_, business), x in loads.items() for q in x.routed}
        sent = sum(x.sent for x in loads.values())
        for business in keys:
            want = {q for q, b in routed.items() if b == business}
            try:
                survivor.poll(
                    "/state/admission-active/",
                    lambda body, b=business, w=want: set(body.get(b, [])) == w,
                    timeout=30,
                )
            except AssertionError:
                held = set(survivor.get("/state/admission-active/").get(business, []))
                odd = sorted(held ^ want)[:5]
                raise AssertionError(
                    {
                        "business": business,
                        "held, not 302'd": sorted(held - want),
                        "302'd, not held": sorted(want - held),
                        "history": {q: _history(s, q) for q in odd},
                    }
                ) from None
        # routing is one hop behind admission: a call the edge gave up on (503 at its
        # decision timeout while the group rebalanced) and that the survivor admitted
        # afterwards frees its plan slot first and its backend slot when routing reads
        # the release admission sent on
        by_backend = Counter("backend-1" if routed[q] == "b-main" else "backend-2" for q in routed)
        survivor.poll(
            "/state/routing-held/",
            lambda body: {k: v for k, v in body.items() if v} == dict(by_backend),
            timeout=30,
        )
        _release_all(s, routed)
        deadline = time.monotonic() + 90
        while True:
            calls = s.sink.get("/calls/?limit=10000")
            statuses = Counter(c["status"] for c in calls)
            if len(calls) == sent and set(statuses) <= TERMINAL:
                break
            assert time.monotonic() < deadline, (sent, len(calls), dict(statuses))
            time.sleep(0.5)
        survivor.poll("/state/admission-active/", lambda b: not any(b.values()), timeout=30)
        survivor.poll("/state/routing-held/", lambda b: not any(b.values()), timeout=30)
