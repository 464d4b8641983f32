"""The SIP proxy tier on a real broker: SIP in, Kafka, Faust admission and routing, SIP out.

One stack for the module: a worker process, a sink, two SIP edge processes and a
heartbeat publisher standing in for backend-1 (no media node: the 302 is the end here;
tests/integration/test_media.py follows it)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import yaml

from edge.sip.message import NameAddr
from edge.sip.uac import Call
from tests.harness import run_cli
from tests.samples import sample
from tests.stack import Stack, running_stack
from trunkline.core.kafka import read_compacted
from trunkline.core.topics import ADMISSION

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(kafka_bootstrap, tmp_path_factory.mktemp("proxy")) as s:
        yield s


def _release(stack: Stack, call_id: str, business: str) -> None:
    ended = sample("CallEnded", call_id=call_id)
    ended["business_id"] = business
    stack.publish(ADMISSION.name(stack.settings.topic_prefix), business, "CallEnded", ended)


def _queue_id(response) -> str:
    contact = NameAddr.parse(response.headers.get("contact"))
    return contact.uri.headers["X-CallQueue-Id"]


def test_limit_one_two_simultaneous_invites_then_release(stack):
    uac = stack.uac()
    a, b = Call("+15550000001"), Call("+15550000001")
    uac.request("INVITE", a)
    uac.request("INVITE", b)
    uac.collect([a, b])
    for c in (a, b):
        uac.ack(c)
    assert a.responses[0].status == 100
    statuses = sorted(c.final.status for c in (a, b))
    assert statuses == [302, 486]
    winner = a if a.final.status == 302 else b
    loser = b if winner is a else a
    assert "limit reached: 1/1" in loser.final.headers.get("warning")
    contact = NameAddr.parse(winner.final.headers.get("contact"))
    assert (contact.uri.user, contact.uri.host, contact.uri.port) == (
        "+15550000001",
        "127.0.0.1",
        5070,
    )
    # still busy while the first call lives; once it ends, a new call gets in
    _busy_until_released(stack, uac, _queue_id(winner.final))
    uac.close()


def _busy_until_released(stack, uac, queue_id):
    """b-limit's one slot is held by `queue_id`: a new call gets 486 until that call ends
    (as its media node would report), then a new call gets in."""
    assert uac.invite(Call("+15550000001")).status == 486
    _release(stack, queue_id, "b-limit")
    stack.worker.poll("/state/admission-active/", lambda s: s.get("b-limit") == [])
    again = Call("+15550000001")
    assert uac.invite(again).status == 302
    _release(stack, _queue_id(again.final), "b-limit")


@pytest.mark.parametrize(
    ("number", "status", "warning"),
    [
        ("+15550000003", 403, "source IP 127.0.0.1 is not in allowedSourceIps of number n-acl"),
        ("+15559999999", 404, "number +15559999999 is not provisioned"),
        ("+15550000005", 503, "no live backend with room in region ap-south-1"),
    ],
)
def test_rejections(stack, number, status, warning):
    uac = stack.uac()
    final = uac.invite(Call(number))
    uac.close()
    assert final.status == status
    assert warning in final.headers.get("warning")
    if status == 503:
        assert final.headers.get("retry-after") == "5"


def test_provider_mismatch_is_404(stack):
    uac = stack.uac()
    call = Call("+15550000004", uri_headers="X-Business-Id=b-main&X-Phone-Id=n-tw")
    final = uac.invite(call)
    uac.close()
    assert final.status == 404
    assert "is a TWILIO number, the call came over SIP" in final.headers.get("warning")


def test_retransmitted_invite_gets_the_identical_302(stack):
    uac = stack.uac()
    call = Call("+15550000002")
    first = uac.request("INVITE", call)
    uac.collect([call])
    assert call.final.status == 302
    uac.send_raw(first)  # the 302 was "lost": the caller retransmits
    again = None
    while again is None or again.status < 200:
        again = uac.receive(5)
        assert again is not None
    assert bytes(again) == bytes(call.final)
    uac.ack(call)
    _release(stack, _queue_id(call.final), "b-main")
    uac.close()


@contextmanager
def _decisions_held_back(stack: Stack) -> Iterator[None]:
    """The worker stopped (SIGSTOP) so no decision can come: an INVITE waits at the edge
    for as long as this lasts. Short (well inside the group's 10 s session), then SIGCONT."""
    assert stack.worker.proc is not None
    stack.worker.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        stack.worker.proc.send_signal(signal.SIGCONT)


def _until(uac, call: Call, done, timeout: float = 10.0) -> list:
    """Every response to `call` received until `done(responses)` holds (or the timeout)."""
    got: list = []
    deadline = time.monotonic() + timeout
    while not done(got) and time.monotonic() < deadline:
        r = uac.receive(max(0.05, deadline - time.monotonic()))
        if r is not None and r.call_id == call.call_id:
            got.append(r)
    return got


def _cancel_answered(got) -> bool:
    methods = {(r.cseq[1], r.status >= 200) for r in got}
    return ("CANCEL", True) in methods and ("INVITE", True) in methods


@pytest.mark.parametrize(("edge", "transport"), [("edge-a", "UDP"), ("edge-b", "TCP")])
def test_cancel_while_the_decision_is_held_back_is_487_and_holds_no_slot(stack, edge, transport):
    """CANCEL wins for sure: the worker is stopped while the INVITE waits, so the edge
    answers 200 to the CANCEL and 487 to the INVITE, never a 302. Once the worker runs
    again it admits and routes the offer it finds and then the edge's CallEnded(cancelled)
    behind it releases both slots; the history says Cancelled."""
    uac = stack.uac(edge, transport)
    call = Call("+15550000006")  # b-cancel: a plan of one slot
    with _decisions_held_back(stack):
        uac.request("INVITE", call)
        trying = _until(uac, call, lambda got: bool(got))
        assert [r.status for r in trying] == [100]  # the edge holds the INVITE, undecided
        uac.request("CANCEL", call)
        got = trying + _until(uac, call, _cancel_answered)
    assert [(r.cseq[1], r.status) for r in got if r.status >= 200] in (
        [("CANCEL", 200), ("INVITE", 487)],
        [("INVITE", 487), ("CANCEL", 200)],  # UDP may reorder two datagrams
    )
    call.responses = got
    assert call.final.status == 487 and call.final.reason == "Request Terminated"
    uac.ack(call)
    queue_id = call.final.headers.get("x-callqueue-id")
    # the worker decided the offer after all (the history has its CallRouted), then the
    # cancel released what it held
    entry = stack.sink.poll(
        f"/calls/{queue_id}/?events=1",
        lambda e: (
            isinstance(e, dict)
            and {"CallAdmitted", "CallRouted", "CallEnded"}
            <= {ev["event_type"] for ev in e.get("events", [])}
        ),
    )
    assert entry["status"] == "Cancelled" and entry["reason"] == "cancelled"
    assert entry["statusCode"] == 487
    stack.worker.poll("/state/admission-active/", lambda a: queue_id not in a.get("b-cancel", []))
    stack.worker.poll("/state/routing-open/", lambda o: queue_id not in o.get("us-east-1", {}))
    # the decision that reached the edge after the 487 is dropped: no 302 for this call
    assert 302 not in [r.status for r in _until(uac, call, lambda got: False, timeout=1.0)]
    # and the one slot is free: a new call for the business gets through
    again = Call("+15550000006")
    assert uac.invite(again).status == 302
    _release(stack, _queue_id(again.final), "b-cancel")
    stack.worker.poll("/state/admission-active/", lambda a: a.get("b-cancel", []) == [])
    uac.close()


def test_two_edges_each_get_their_own_answers(stack):
    ua, ub = stack.uac("edge-a"), stack.uac("edge-b")
    calls_a = [Call("+15550000002") for _ in range(5)]
    calls_b = [Call("+15550000002") for _ in range(5)]
    for c in calls_a:
        ua.request("INVITE", c)
    for c in calls_b:
        ub.request("INVITE", c)
    ua.collect(calls_a)
    ub.collect(calls_b)
    for uac, calls in ((ua, calls_a), (ub, calls_b)):
        for c in calls:
            assert c.final is not None and c.final.status == 302, c.responses
            uac.ack(c)
            _release(stack, _queue_id(c.final), "b-main")
        uac.close()


def test_tcp_transport(stack):
    uac = stack.uac(transport="TCP")
    call = Call("+15550000002")
    final = uac.invite(call)
    assert final.status == 302
    _release(stack, _queue_id(final), "b-main")
    uac.close()


def test_malformed_input_gets_400_or_is_dropped(stack):
    uac = stack.uac()
    call = Call("+15550000002")
    bad = uac.build("INVITE", call, cseq_method="OPTIONS")
    uac.send_raw(bad)
    r = None
    while r is None or r.status < 200:
        r = uac.receive(5)
        assert r is not None
    assert r.status == 400 and "CSeq method OPTIONS does not match" in r.reason
    uac.send_raw(b"\x00\xff garbage")
    uac.send_raw(b"INVITE sip:x@y SIP/2.0\r\n\r\n")
    assert uac.receive(1) is None  # nothing addressable: dropped
    # and the edge still works
    ok = Call("+15550000002")
    assert uac.invite(ok).status == 302
    _release(stack, _queue_id(ok.final), "b-main")
    uac.close()


def test_queue_entry_shows_the_proxy_work(stack):
    uac = stack.uac()
    call = Call("+15550000002")
    final = uac.invite(call)
    uac.close()
    queue_id = _queue_id(final)
    entry = stack.sink.poll(
        f"/calls/{queue_id}/", lambda e: isinstance(e, dict) and e.get("status") == "ProcessedProxy"
    )
    assert entry["providerCallId"] == call.call_id
    assert entry["processingProxyServerId"] == "edge-a"
    assert entry["processingBackendServerId"] == "backend-1"
    assert entry["routeNumberId"] == "n-main" and entry["businessId"] == "b-main"
    assert [log["message"] for log in entry["logs"]][-1] == "Call routed to backend-1"
    _release(stack, queue_id, "b-main")
    rejected = stack.uac().invite(Call("+15550000003"))
    assert rejected.status == 403
    listed = run_cli(stack.settings, "calls", "list", "--business", "b-main", "--json")
    rows = yaml.safe_load(listed.stdout)
    assert any(
        r["status"] == "Rejected" and r["status_code"] == 403 and "allowedSourceIps" in r["reason"]
        for r in rows
    )


def test_a_killed_worker_comes_back_holding_the_same_slots(stack):
    """Killed the moment the slot shows, before or after the commit that covers it: the
    changelogs (written through the emitter once the outputs are in) and the events not
    yet committed, processed again, rebuild the held slots after SIGKILL: the plan is
    still full and the backend reservation still open. (tests/integration/test_crashes.py
    kills while calls are in flight.)"""
    uac = stack.uac()
    held = Call("+15550000001")
    assert uac.invite(held).status == 302
    queue_id = _queue_id(held.final)
    stack.worker.poll("/state/admission-active/", lambda s: s.get("b-limit") == [queue_id])
    stack.worker.stop(signal.SIGKILL)  # no shutdown hooks, no final flush or commit
    stack.worker.start()
    stack.worker.poll(
        "/state/admission-active/", lambda s: s.get("b-limit") == [queue_id], timeout=60
    )
    # each table recovers from its own changelog, and the web views answer during the
    # recovery: admission's slot showing does not mean routing's reservation is read yet
    stack.worker.poll(
        "/state/routing-open/", lambda s: queue_id in s.get("us-east-1", {}), timeout=60
    )
    # routing's side of each held plan slot (what tests/chaos.py reports on a leak)
    stack.worker.poll(
        "/state/admitted-routing/", lambda s: s.get(queue_id) == "RESERVED", timeout=60
    )
    _busy_until_released(stack, uac, queue_id)
    uac.close()


def _changelog_when(bootstrap: str, topic: str, ready, timeout: float = 10.0) -> dict:
    """The compacted view of `topic` once `ready` holds of it (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        view = read_compacted(bootstrap, topic)
        if ready(view) or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def test_finished_calls_are_forgotten_after_the_retention(kafka_bootstrap, tmp_path):
    """Slots and reservations of finished calls are deleted (tombstones) once
    TRUNKLINE_STATE_RETENTION_MS has passed, and stay deleted after a restart."""
    env = {"TRUNKLINE_STATE_RETENTION_MS": "2000"}
    with running_stack(kafka_bootstrap, tmp_path, edges=("edge-a",), env=env) as s:
        uac = s.uac()
        routed, blocked = Call("+15550000002"), Call("+15550000003")
        assert uac.invite(routed).status == 302
        assert uac.invite(blocked).status == 403  # admission's ACL: a finished slot
        sizes = s.worker.poll(
            "/state/sizes/",
            lambda b: b["admission-slots"] == 2 and b["routing-reservations"] == 1,
        )
        assert sizes["admission-finished"] == 1  # the 403 is finished; the 302 still holds
        _release(s, _queue_id(routed.final), "b-main")
        empty = {
            "admission-slots": 0,
            "admission-finished": 0,
            "routing-reservations": 0,
            "routing-finished": 0,
        }
        s.worker.poll("/state/sizes/", lambda b: b == empty, timeout=30)
        # deleted with tombstones in the changelogs, so recovery cannot bring them back
        ids = [
            json.dumps(c.final.headers.get("x-callqueue-id")).encode() for c in (routed, blocked)
        ]
        app_id = s.settings.app_id
        # changelog records linger up to 50 ms in the emitter (streams/emitter.py)
        slots = _changelog_when(
            kafka_bootstrap,
            f"{app_id}-admission-slots-changelog",
            lambda c: all(k in c and c[k] is None for k in ids),
        )
        assert [slots[k] for k in ids] == [None, None]
        held = _changelog_when(
            kafka_bootstrap,
            f"{app_id}-routing-reservations-changelog",
            lambda c: ids[0] in c and c[ids[0]] is None,
        )
        assert held[ids[0]] is None and ids[1] not in held  # the 403 never reached routing
        # the changelogs hold tombstones: a restarted worker (its tables recovered once it
        # decides a new call) holds only the new call
        s.worker.stop(signal.SIGKILL)
        restarted_ms = time.time() * 1000
        s.worker.start()
        # processing again: a heartbeat sent after the restart has reached routing
        s.worker.poll(
            "/state/routing-heartbeats/",
            lambda b: (
                b.get("backend-1", {}).get("envelope", {}).get("occurred_at", 0) > restarted_ms
            ),
            timeout=60,
        )
        again = Call("+15550000002")
        assert uac.invite(again).status == 302
        assert s.worker.get("/state/sizes/") == {
            "admission-slots": 1,
            "admission-finished": 0,
            "routing-reservations": 1,
            "routing-finished": 0,
        }
        uac.close()
