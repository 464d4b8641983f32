"""Bad and hostile input at the SIP edge, on a real stack: each bad message costs only
itself, and an identifier we do not know is refused without being stored."""

from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest

from edge.sip.message import NameAddr
from edge.sip.uac import UAC, Call
from tests.samples import sample
from tests.stack import Stack, running_stack
from trunkline.core.kafka import read_compacted
from trunkline.core.topics import ADMISSION, CALL_EVENTS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(kafka_bootstrap, tmp_path_factory.mktemp("input"), edges=("edge-a",)) as s:
        yield s


def _bad_to(uac: UAC, call: Call) -> bytes:
    """An INVITE whose To header holds a URI with no valid host."""
    good = uac.build("INVITE", call)
    start = good.index(b"\r\nTo: ") + 2
    end = good.index(b"\r\n", start)
    return good[:start] + b"To: <sip:@@@:bad>" + good[end:]


def _final(uac: UAC, timeout: float = 10) -> object:
    r = None
    while r is None or r.status < 200:
        r = uac.receive(timeout)
        assert r is not None, "no final response"
    return r


def _release(stack: Stack, response) -> None:
    queue_id = NameAddr.parse(response.headers.get("contact")).uri.headers["X-CallQueue-Id"]
    ended = sample("CallEnded", call_id=queue_id)
    ended["business_id"] = "b-main"
    stack.publish(ADMISSION.name(stack.settings.topic_prefix), "b-main", "CallEnded", ended)


def test_an_unreadable_to_uri_gets_400_over_udp(stack):
    uac = stack.uac()
    uac.send_raw(_bad_to(uac, Call("+15550000002")))
    r = _final(uac)
    assert r.status == 400 and "no valid host" in r.reason
    ok = uac.invite(Call("+15550000002"))
    assert ok is not None and ok.status == 302
    _release(stack, ok)
    uac.close()


def test_a_bad_message_on_tcp_costs_only_itself(stack):
    """The bad INVITE and a valid one behind it arrive in one segment: the first gets its
    400, the second its 302, on the same connection."""
    uac = stack.uac(transport="TCP")
    bad, good = Call("+15550000002"), Call("+15550000002")
    uac.send_raw(_bad_to(uac, bad) + uac.build("INVITE", good))
    answers: dict[str, int] = {}
    while len(answers) < 2:
        r = uac.receive(10)
        assert r is not None, f"connection closed or silent; got {answers}"
        if r.status >= 200:
            answers[r.call_id] = r.status
            if r.status == 302:
                _release(stack, r)
    assert answers == {bad.call_id: 400, good.call_id: 302}
    uac.close()


HOSTILE = {
    "sql": "'; DROP TABLE calls;--",
    "nul": "b-main\x00evil",
    "long": "Z" * 8192,
}


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_a_hostile_business_id_is_refused_and_never_stored(stack, what):
    value = HOSTILE[what]
    uac = stack.uac()
    call = Call("+15550000002", uri_headers="X-Business-Id=" + urllib.parse.quote(value))
    final = uac.invite(call)
    assert final is not None and final.status == 404
    warning = final.headers.get("warning")
    assert "not found" in warning and len(warning) < 200
    assert value not in warning and "\x00" not in warning
    uac.close()
    history = read_compacted(
        stack.settings.kafka_bootstrap, CALL_EVENTS.name(stack.settings.topic_prefix)
    )
    queue_id = final.headers.get("x-callqueue-id")
    assert queue_id.encode() in history  # the refusal is in the history...
    blob = b"".join(v for v in history.values() if v)
    assert value.encode() not in blob  # ...without the caller's string
    assert b"DROP TABLE" not in blob and b"\x00evil" not in blob and b"Z" * 100 not in blob


def test_a_call_id_that_is_not_a_callid_gets_400(stack):
    uac = stack.uac()
    call = Call("+15550000002", call_id="bad call id\x01" + "x" * 300)
    uac.send_raw(uac.build("INVITE", call))
    r = _final(uac)
    assert r.status == 400 and "not an RFC 3261 callid" in r.reason
    uac.close()


def test_the_edge_exposes_prometheus_metrics_that_move_with_a_call(stack):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = f"http://127.0.0.1:{stack.edge_metrics['edge-a']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    before = scrape()
    uac = stack.uac()
    final = uac.invite(Call("+15550000002"))
    assert final is not None and final.status == 302
    _release(stack, final)
    uac.close()
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("trunkline_sip_requests_total", method="INVITE") == 1
    assert moved("trunkline_sip_responses_total", code="302") == 1
    assert moved("trunkline_sip_invite_final_seconds_count", code="302") == 1
    assert moved("trunkline_sip_decisions_total", decision="CallRouted") == 1
    assert moved("trunkline_sip_published_total", outcome="queued") == 1
