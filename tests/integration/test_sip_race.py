"""A plan limit under a race: 40 INVITEs for one business, 20 over UDP and 20 over TCP,
split across two SIP edges and sent back to back (within a few milliseconds). Admission,
the one writer of the business's count, must give exactly `limit` calls a 302 and every
other call a 486; the routed calls (no backend ever takes them) end at the redirect
deadline and give their slots back, after which the same race has the same outcome. The
SIP answers, the worker's state and the ClickHouse history agree on every call."""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from edge.sip.uac import UAC, Call
from tests.stack import CONFIG, Stack, running_stack

pytestmark = pytest.mark.integration

LIMIT = 5
NUMBER = "+15550000007"
PER_LEG = 10  # calls per (edge, transport): 2 edges x (UDP, TCP) x 10 = 40


def _config() -> dict:
    config = copy.deepcopy(CONFIG)
    config["plans"].append({"id": "five", "maxConcurrentCalls": LIMIT})
    config["businesses"].append({"id": "b-race", "name": "Race", "plan": "five"})
    config["routes"].append({"id": "r-race", "businessId": "b-race"})
    config["numbers"].append(
        {
            "id": "n-race",
            "businessId": "b-race",
            "provider": "SIP",
            "number": NUMBER,
            "routeId": "r-race",
            "regionId": "us-east-1",
            "allowedSourceIps": ["127.0.0.0/8"],
        }
    )
    return config


@pytest.fixture
def stack(kafka_bootstrap: str, tmp_path) -> Iterator[Stack]:
    env = {"TRUNKLINE_REDIRECT_TIMEOUT_MS": "3000"}
    with running_stack(kafka_bootstrap, tmp_path, env=env, config=_config()) as s:
        yield s


def _race(stack: Stack) -> list[tuple[str, Call]]:
    """Send the 40 INVITEs back to back; returns (transport, call) once every call has
    its final answer (ACKed)."""
    legs: list[tuple[UAC, list[Call]]] = []
    for edge in ("edge-a", "edge-b"):
        for transport in ("UDP", "TCP"):
            uac = stack.uac(edge, transport)  # TCP: connected before the race starts
            legs.append((uac, [Call(NUMBER) for _ in range(PER_LEG)]))
    invites = [(uac, uac.build("INVITE", c)) for uac, calls in legs for c in calls]
    # interleave the legs so every edge and transport is busy at once
    order = [invites[leg * PER_LEG + i] for i in range(PER_LEG) for leg in range(len(legs))]
    started = time.monotonic()
    for uac, data in order:
        uac.send_raw(data)
    sent_ms = (time.monotonic() - started) * 1000
    # a few ms unless the machine stalls us; far inside the 3 s redirect deadline, so no
    # slot can come back while the race is still being decided
    assert sent_ms < 1000, f"the race took {sent_ms:.1f} ms to send"
    out = []
    for uac, calls in legs:
        uac.collect(calls, timeout=15)
        for c in calls:
            assert c.final is not None, f"no final answer over {uac.transport}: {c.responses}"
            uac.ack(c)
            out.append((uac.transport, c))
        uac.close()
    return out


def _queue_id(call: Call) -> str:
    assert call.final is not None
    qid = call.final.headers.get("x-callqueue-id")
    assert qid
    return qid


def test_forty_simultaneous_invites_across_two_edges_get_exactly_the_plan_limit(stack):
    history: dict[str, tuple[int, str]] = {}  # queue id -> (SIP final status, edge's view)
    for _ in range(2):  # the second race runs on the slots the first one gave back
        calls = _race(stack)
        finals = Counter(c.final.status for _, c in calls)
        assert finals == {302: LIMIT, 486: 40 - LIMIT}, finals
        for transport in ("UDP", "TCP"):  # both transports took part in the winners' race
            assert sum(1 for t, c in calls if t == transport) == 20
        routed = {_queue_id(c) for _, c in calls if c.final.status == 302}
        busy = [c for _, c in calls if c.final.status == 486]
        for c in busy:
            assert f"limit reached: {LIMIT}/{LIMIT}" in c.final.headers.get("warning")
        assert all(c.responses[0].status == 100 for _, c in calls)
        # the worker holds exactly the calls that got a 302: in admission and in routing
        held = stack.worker.get("/state/admission-active/")
        assert sorted(held.get("b-race", [])) == sorted(routed)
        assert routed <= set(stack.worker.get("/state/routing-open/").get("us-east-1", {}))
        for c in (c for _, c in calls):
            history[_queue_id(c)] = (c.final.status, c.call_id)
        # no backend takes them: routing's redirect deadline ends them and frees both slots
        stack.worker.poll(
            "/state/admission-active/", lambda a: a.get("b-race", []) == [], timeout=20
        )
        stack.worker.poll(
            "/state/routing-open/", lambda o, r=routed: not r & set(o.get("us-east-1", {}))
        )
    assert len(history) == 80
    assert stack.worker.get("/state/routing-held/").get("backend-1", 0) == 0
    # ClickHouse has every call once, with the outcome the caller heard
    rows = stack.sink.poll(
        "/calls/?business=b-race&limit=1000",
        lambda rs: len(rs) == 80 and all(r["status"] in ("Failed", "Rejected") for r in rs),
        timeout=30,
    )
    assert {r["id"] for r in rows} == set(history)
    for r in rows:
        status, sip_call_id = history[r["id"]]
        assert r["provider_call_id"] == sip_call_id
        if status == 302:
            assert (r["status"], r["reason"], r["backend"]) == (
                "Failed",
                "redirect_timeout",
                "backend-1",
            )
        else:
            assert (r["status"], r["status_code"]) == ("Rejected", 486)
            assert f"limit reached: {LIMIT}/{LIMIT}" in r["reason"]
