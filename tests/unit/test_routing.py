import itertools

import pytest

from streams import routing
from streams.config_view import ConfigView
from streams.routing import Input, Reservation, ResState, Settings, TransitionError, handle, step
from tests.samples import sample

NOW = 1_700_000_000_000
S = Settings(redirect_timeout_ms=10_000, heartbeat_timeout_ms=5_000)


def backend(bid, region="us-east-1", cap=2, enabled=True):
    return {
        "id": bid,
        "region_id": region,
        "sip_address": f"10.0.0.{bid[-1]}:5070",
        "media_url": f"ws://10.0.0.{bid[-1]}:8081",
        "max_concurrent_calls": cap,
        "enabled": enabled,
    }


def config(*backends, bypass=()):
    return ConfigView(
        {
            "backends": {b["id"]: b for b in backends},
            "bypassRules": {f"r{i}": r for i, r in enumerate(bypass)},
        }
    )


def hb(bid, region="us-east-1", at=NOW, capacity=100, active=0, draining=False):
    rec = sample("BackendHeartbeat", at_ms=at)
    rec.update(
        backend_id=bid, region_id=region, capacity=capacity, active_calls=active, draining=draining
    )
    return rec


def admitted(call_id="q-1", at=NOW, **changes):
    rec = sample("CallAdmitted", call_id=call_id, at_ms=at)
    rec.update(changes)
    return rec


def test_routes_to_the_least_loaded_live_backend():
    cfg = config(backend("b1"), backend("b2"))
    beats = {"b1": hb("b1"), "b2": hb("b2")}
    out = handle("CallAdmitted", admitted(), None, cfg, beats, {"b1": 1}, S)
    routed = out.emits[0].record
    assert (out.emits[0].dest, out.emits[0].key, out.emits[0].name) == (
        "decisions",
        "edge-1",
        "CallRouted",
    )
    assert routed["backend_id"] == "b2" and routed["backend_sip_address"] == "10.0.0.2:5070"
    assert routed["redirect_deadline"] == NOW + 10_000 and routed["bypass"] is False
    assert out.reservations["q-1"].state is ResState.RESERVED
    assert out.reservations["q-1"].backend_id == "b2"


@pytest.mark.parametrize(
    ("beats", "why"),
    [
        ({}, "no heartbeat ever"),
        ({"b1": hb("b1", at=NOW - 6_000)}, "heartbeat too old"),
        ({"b1": hb("b1", draining=True)}, "draining"),
        ({"b1": hb("b1", capacity=1, active=1)}, "its own report says full"),
    ],
)
def test_no_live_backend_with_room_is_503(beats, why):
    out = handle("CallAdmitted", admitted(), None, config(backend("b1")), beats, {}, S)
    rejected = out.emits[0].record
    assert rejected["status_code"] == 503 and rejected["retry_after_s"] == 5, why
    assert [(e.dest, e.key) for e in out.emits] == [
        ("decisions", "edge-1"),
        ("admission", "123"),
        ("call-events", "q-1"),
    ]
    assert out.reservations["q-1"].state is ResState.REJECTED


def test_capacity_counts_our_reservations():
    cfg = config(backend("b1", cap=1))
    beats = {"b1": hb("b1")}
    index = routing.LoadIndex()
    first = handle("CallAdmitted", admitted("q-1"), None, cfg, beats, index.load, S)
    index.apply("q-1", None, first.reservations["q-1"])
    assert index.load == {"b1": 1}
    second = handle("CallAdmitted", admitted("q-2"), None, cfg, beats, index.load, S)
    assert second.emits[0].record["status_code"] == 503


def test_region_affinity_and_disabled_backends():
    cfg = config(backend("b1", region="eu-west-1"), backend("b2", enabled=False))
    beats = {"b1": hb("b1", region="eu-west-1"), "b2": hb("b2")}
    out = handle("CallAdmitted", admitted(), None, cfg, beats, {}, S)
    assert out.emits[0].name == "CallRejected"


def test_bypass_rule_wins_when_usable_and_falls_back_otherwise():
    rules = [{"id": "r", "business_id": "123", "backend_id": "b2", "phone_id": None}]
    cfg = config(backend("b1"), backend("b2"), bypass=rules)
    out = handle(
        "CallAdmitted", admitted(), None, cfg, {"b1": hb("b1"), "b2": hb("b2")}, {"b2": 1}, S
    )
    assert out.emits[0].record["backend_id"] == "b2" and out.emits[0].record["bypass"] is True
    down = handle("CallAdmitted", admitted(), None, cfg, {"b1": hb("b1")}, {}, S)
    assert down.emits[0].record["backend_id"] == "b1" and down.emits[0].record["bypass"] is False


def test_release_frees_the_slot_once():
    cfg = config(backend("b1"))
    index = routing.LoadIndex()
    routed = handle("CallAdmitted", admitted(), None, cfg, {"b1": hb("b1")}, index.load, S)
    res = routed.reservations["q-1"]
    index.apply("q-1", None, res)
    ended = sample("CallEnded", call_id="q-1")
    freed = handle("CallEnded", ended, res, cfg, {}, index.load, S)
    assert freed.reservations["q-1"].state is ResState.RELEASED
    index.apply("q-1", res, freed.reservations["q-1"])
    assert index.load == {"b1": 0}
    again = handle("CallEnded", ended, freed.reservations["q-1"], cfg, {}, index.load, S)
    assert again.reservations == {} and again.emits == []


def test_accepted_then_ended():
    cfg = config(backend("b1"))
    index = routing.LoadIndex()
    routed = handle("CallAdmitted", admitted(), None, cfg, {"b1": hb("b1")}, {}, S)
    index.apply("q-1", None, routed.reservations["q-1"])
    acc = handle(
        "CallAccepted",
        sample("CallAccepted", call_id="q-1"),
        routed.reservations["q-1"],
        cfg,
        {},
        index.load,
        S,
    )
    assert acc.reservations["q-1"].state is ResState.ACCEPTED
    index.apply("q-1", routed.reservations["q-1"], acc.reservations["q-1"])
    assert index.load == {"b1": 1} and index.due("us-east-1", NOW + 99_999) == []


def test_redirect_deadline_releases_and_ends_the_call():
    cfg = config(backend("b1"))
    routed = handle("CallAdmitted", admitted(), None, cfg, {"b1": hb("b1")}, {}, S)
    res = routed.reservations["q-1"]
    index = routing.LoadIndex()
    index.apply("q-1", None, res)
    assert index.due("us-east-1", NOW + 9_999) == []
    assert index.due("us-east-1", NOW + 10_000) == ["q-1"]
    assert routing.expire("q-1", res, NOW + 9_999).emits == []
    out = routing.expire("q-1", res, NOW + 10_000)
    index.apply("q-1", res, out.reservations["q-1"])
    assert index.load == {"b1": 0} and index.due("us-east-1", NOW + 10_000) == []
    ended = out.emits[0].record
    assert (out.emits[0].dest, out.emits[0].key) == ("admission", "123")
    assert ended["reason"] == "redirect_timeout" and ended["backend_id"] == "b1"
    accepted = Reservation(ResState.ACCEPTED, "us-east-1", "123", "b1", NOW)
    assert routing.expire("q-1", accepted, NOW + 99_999).emits == []


def test_duplicate_admission_repeats_the_decision():
    cfg = config(backend("b1"))
    routed = handle("CallAdmitted", admitted(), None, cfg, {"b1": hb("b1")}, {}, S)
    again = handle("CallAdmitted", admitted(), routed.reservations["q-1"], cfg, {}, {"b1": 1}, S)
    assert again.reservations == {} and [e.record for e in again.emits] == [
        e.record for e in routed.emits
    ]


def test_reservation_json_round_trip():
    r = Reservation(ResState.RESERVED, "eu", "1", "b", 5, {"name": "CallRouted", "record": {}})
    assert Reservation.from_json(r.to_json()) == r


def test_every_state_input_pair():
    for state, event in itertools.product([None, *ResState], Input):
        target = routing.TRANSITIONS[state].get(event)
        if target is None:
            with pytest.raises(TransitionError, match="cannot take"):
                step(state, event)
        else:
            assert step(state, event) is target


def test_a_node_that_stops_heartbeating_loses_its_calls():
    cfg = config(backend("b1"))
    index = routing.LoadIndex()
    routed = handle("CallAdmitted", admitted(), None, cfg, {"b1": hb("b1")}, {}, S)
    res = routed.reservations["q-1"]
    index.apply("q-1", None, res)
    acc = handle("CallAccepted", sample("CallAccepted", call_id="q-1"), res, cfg, {}, index.load, S)
    index.apply("q-1", res, acc.reservations["q-1"])
    beats = {"b1": hb("b1", at=NOW)}
    assert routing.lost_backends(index.load, beats, "us-east-1", NOW + 5_000, S) == []
    assert routing.lost_backends(index.load, beats, "us-east-1", NOW + 5_001, S) == ["b1"]
    assert routing.lost_backends(index.load, beats, "eu-west-1", NOW + 9_000, S) == []
    assert index.calls_on("b1") == ["q-1"]
    out = routing.backend_lost("q-1", acc.reservations["q-1"], NOW + 5_001)
    ended = out.emits[0].record
    assert (out.emits[0].dest, ended["reason"], ended["backend_id"]) == (
        "admission",
        "backend_lost",
        "b1",
    )
    index.apply("q-1", acc.reservations["q-1"], out.reservations["q-1"])
    assert index.load == {"b1": 0} and index.calls_on("b1") == []
    assert routing.backend_lost("q-1", out.reservations["q-1"], NOW + 6_000).emits == []
