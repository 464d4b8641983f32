"""The SIP proxy tier on a real broker: SIP in, Kafka, Faust admission and routing, SIP out.

One stack for the module: a worker process, two SIP edge processes and a heartbeat
publisher standing in for backend-1 (media nodes arrive with the media issue)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from edge.sip.message import NameAddr
from schemas import SingleObjectCodec
from tests.integration.conftest import ROOT, Worker, child_env, free_port, run_cli
from tests.samples import sample
from tests.sipclient import UAC, Call
from trunkline.admin import apply_topics
from trunkline.kafka_io import Outgoing, make_producer, publish_all
from trunkline.settings import Settings
from trunkline.topics import ADMISSION, HEARTBEATS

pytestmark = pytest.mark.integration
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
        {"id": "n-limit", "businessId": "b-limit", "provider": "SIP", "number": "+15550000001",
         "routeId": "r-limit", "regionId": "us-east-1", "allowedSourceIps": ["127.0.0.0/8"]},
        {"id": "n-main", "businessId": "b-main", "provider": "SIP", "number": "+15550000002",
         "routeId": "r-main", "regionId": "us-east-1", "allowedSourceIps": ["127.0.0.1"]},
        {"id": "n-acl", "businessId": "b-main", "provider": "SIP", "number": "+15550000003",
         "routeId": "r-main", "regionId": "us-east-1", "allowedSourceIps": ["203.0.113.10"]},
        {"id": "n-tw", "businessId": "b-main", "provider": "Twilio", "number": "+15550000004",
         "routeId": "r-main", "regionId": "us-east-1"},
        {"id": "n-nowhere", "businessId": "b-main", "provider": "SIP", "number": "+15550000005",
         "routeId": "r-main", "regionId": "ap-south-1"},
        {"id": "n-cancel", "businessId": "b-cancel", "provider": "SIP", "number": "+15550000006",
         "routeId": "r-cancel", "regionId": "us-east-1"},
    ],
    "backends": [
        {"id": "backend-1", "regionId": "us-east-1", "sipAddress": "127.0.0.1:5070",
         "mediaUrl": "ws://127.0.0.1:8081", "maxConcurrentCalls": 100},
        {"id": "backend-9", "regionId": "ap-south-1", "sipAddress": "127.0.0.1:5079",
         "mediaUrl": "ws://127.0.0.1:8089", "maxConcurrentCalls": 100},
    ],
}


@dataclass
class Stack:
    settings: Settings
    worker: Worker
    edges: dict[str, int]

    def uac(self, edge: str = "edge-a", transport: str = "UDP") -> UAC:
        return UAC("127.0.0.1", self.edges[edge], transport)

    def publish(self, topic: str, key: str, name: str, record: dict) -> None:
        publish_all(make_producer(self.settings.kafka_bootstrap),
                    [Outgoing(topic, key.encode(), CODEC.encode(name, record))])


def _heartbeats(s: Settings, stop: threading.Event) -> None:
    producer = make_producer(s.kafka_bootstrap, **{"log_level": 3})
    while not stop.is_set():
        hb = sample("BackendHeartbeat")
        hb.update(backend_id="backend-1", region_id="us-east-1", capacity=100, active_calls=0)
        producer.produce(HEARTBEATS.name(s.topic_prefix), key=b"us-east-1",
                         value=CODEC.encode("BackendHeartbeat", hb))
        producer.flush(5)
        stop.wait(1.0)


def _start_edge(s: Settings, edge_id: str, port: int) -> subprocess.Popen[bytes]:
    log = open(s.state_dir / f"{edge_id}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "trunkline.cli", "sip-edge", "--edge-id", edge_id,
         "--listen", f"127.0.0.1:{port}"], env=child_env(s), stdout=log,
        stderr=subprocess.STDOUT, cwd=ROOT)
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


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tag = uuid.uuid4().hex[:8]
    state = tmp_path_factory.mktemp("proxy")
    s = Settings.from_env({
        "TRUNKLINE_STATE_DIR": str(state), "TRUNKLINE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "TRUNKLINE_TOPIC_PREFIX": f"p{tag}.", "TRUNKLINE_APP_ID": f"proxy-test-{tag}",
        "TRUNKLINE_WORKER_WEB_PORT": str(free_port()),
        "TRUNKLINE_REDIRECT_TIMEOUT_MS": "60000",
    })
    apply_topics(s.kafka_bootstrap, s.topic_prefix)
    cfg = state / "config.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    done = run_cli(s, "config", "apply", str(cfg))
    assert done.returncode == 0, done.stderr
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeats, args=(s, stop), daemon=True)
    beat.start()
    worker = Worker(s)
    worker.start()
    edges = {"edge-a": free_port(), "edge-b": free_port()}
    procs = [_start_edge(s, e, p) for e, p in edges.items()]
    worker.poll("/state/routing-heartbeats/", lambda b: "backend-1" in b)
    try:
        yield Stack(s, worker, edges)
    finally:
        stop.set()
        for p in procs:
            p.terminate()
            p.wait(10)
        worker.stop()


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
    assert [r.status for r in a.responses][0] == 100
    statuses = sorted(c.final.status for c in (a, b))
    assert statuses == [302, 486]
    winner = a if a.final.status == 302 else b
    loser = b if winner is a else a
    assert "limit reached: 1/1" in loser.final.headers.get("warning")
    contact = NameAddr.parse(winner.final.headers.get("contact"))
    assert (contact.uri.user, contact.uri.host, contact.uri.port) == (
        "+15550000001", "127.0.0.1", 5070)
    queue_id = _queue_id(winner.final)
    # still busy while the first call lives
    c = Call("+15550000001")
    assert uac.invite(c).status == 486
    # the first call ends (as its media node would report), then a new call gets in
    _release(stack, queue_id, "b-limit")
    stack.worker.poll("/state/admission-active/", lambda s: s.get("b-limit") == [])
    d = Call("+15550000001")
    assert uac.invite(d).status == 302
    _release(stack, _queue_id(d.final), "b-limit")
    uac.close()


@pytest.mark.parametrize(("number", "status", "warning"), [
    ("+15550000003", 403, "source IP 127.0.0.1 is not in allowedSourceIps of number n-acl"),
    ("+15559999999", 404, "number +15559999999 is not provisioned"),
    ("+15550000005", 503, "no live backend with room in region ap-south-1"),
])
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


def test_cancel_gets_200_and_487_and_holds_no_slot(stack):
    # hold the edge's answer back: b-cancel's only slot is free, so we race the decision
    # by cancelling right away; whichever wins, no slot may stay held afterwards
    uac = stack.uac()
    call = Call("+15550000006")
    uac.request("INVITE", call)
    uac.request("CANCEL", call)
    got = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(r.status >= 200 and r.cseq[1] == "INVITE"
                                                  for r in got):
        r = uac.receive(1)
        if r is not None:
            got.append(r)
    cancel_ok = [r for r in got if r.cseq[1] == "CANCEL"]
    invite_final = [r for r in got if r.cseq[1] == "INVITE" and r.status >= 200]
    assert cancel_ok and cancel_ok[0].status == 200
    assert invite_final[0].status in (487, 302)
    call.responses = invite_final
    uac.ack(call)
    if invite_final[0].status == 302:  # the decision won the race: end it like a hang-up
        _release(stack, _queue_id(invite_final[0]), "b-cancel")
    stack.worker.poll("/state/admission-active/", lambda s: s.get("b-cancel", []) == [])
    # the slot is free: a new call for the one-slot business gets through
    again = Call("+15550000006")
    assert uac.invite(again).status == 302
    _release(stack, _queue_id(again.final), "b-cancel")
    uac.close()


def test_cancel_before_decision_is_487(stack):
    """Cancel while the edge waits: edge-b gets a decision timeout far away; the CANCEL
    arrives within microseconds, long before admission and routing answer."""
    uac = stack.uac("edge-b")
    call = Call("+15550000002")
    invite = uac.request("INVITE", call)
    cancel = invite.replace(b"INVITE sip:", b"CANCEL sip:", 1).replace(
        b"CSeq: 1 INVITE", b"CSeq: 1 CANCEL")
    uac.send_raw(cancel)
    uac.collect([call])
    assert call.final.status in (487, 302)
    uac.ack(call)
    if call.final.status == 302:
        _release(stack, _queue_id(call.final), "b-main")
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
    entry = stack.worker.poll(f"/calls/{queue_id}/",
                              lambda e: isinstance(e, dict) and e.get("status") == "ProcessedProxy")
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
    assert any(r["status"] == "Rejected" and r["status_code"] == 403 and
               "allowedSourceIps" in r["reason"] for r in rows)
