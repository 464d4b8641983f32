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


def test_handle_builds_the_state_from_the_table(monkeypatch):
    """handle() takes its new state from step(), never from a literal: change the table
    and the reservation follows it."""
    table = {state: dict(row) for state, row in routing.TRANSITIONS.items()}
    table[None][Input.ADMITTED_ROOM] = ResState.ACCEPTED
    table[ResState.REJECTED][Input.RELEASE] = ResState.RELEASED
    table[ResState.RESERVED][Input.DEADLINE] = ResState.ACCEPTED
    monkeypatch.setattr(routing, "TRANSITIONS", table)
    cfg = config(backend("b1", cap=1))
    routed = handle("CallAdmitted", admitted(), None, cfg, {"b1": hb("b1")}, {}, S)
    assert routed.reservations["q-1"].state is ResState.ACCEPTED
    full = handle("CallAdmitted", admitted("q-2"), None, cfg, {"b1": hb("b1")}, {"b1": 1}, S)
    rejected = full.reservations["q-2"]
    ended = handle("CallEnded", sample("CallEnded", call_id="q-2"), rejected, cfg, {}, {}, S)
    assert ended.reservations["q-2"].state is ResState.RELEASED
    reserved = Reservation(ResState.RESERVED, "us-east-1", "123", "b1", NOW)
    kept = routing.expire("q-3", reserved, NOW)
    assert kept.reservations["q-3"].state is ResState.ACCEPTED and kept.emits == []


def test_ticks_far_apart_mean_the_pipe_was_down():
    w = routing.NO_TICKS.after_tick(NOW, S)
    assert (w.last_tick_ms, w.down_ms, w.up_ms) == (NOW, 0, 0)  # the first tick is no gap
    w = w.after_tick(NOW + 50, S).after_tick(NOW + 1_050, S)  # 1 s apart: still no gap
    assert (w.down_ms, w.up_ms) == (0, 0)
    gap = w.after_tick(NOW + 14_000, S)
    assert (gap.last_tick_ms, gap.down_ms, gap.up_ms) == (NOW + 14_000, NOW + 1_050, NOW + 14_000)
    assert gap.after_tick(NOW + 900, S) == gap  # an old tick delivered again changes nothing
    # another gap inside the grace: judged as of the first gap's start, advanced by the
    # time ticks flowed in between (heartbeats had only that long to get through)
    again = gap.after_tick(NOW + 16_000, S)
    assert (again.down_ms, again.up_ms) == (NOW + 1_050, NOW + 16_000)
    flowing = gap
    for t in range(NOW + 14_050, NOW + 16_001, 50):
        flowing = flowing.after_tick(t, S)
    chained = flowing.after_tick(NOW + 19_000, S)
    assert (chained.down_ms, chained.up_ms) == (NOW + 1_050 + 2_000, NOW + 19_000)
    later = gap
    for t in range(NOW + 14_050, NOW + 19_101, 50):  # ticks all through the grace
        later = later.after_tick(t, S)
    later = later.after_tick(NOW + 25_000, S)  # a new gap after it
    assert (later.down_ms, later.up_ms) == (NOW + 19_100, NOW + 25_000)
    assert routing.Watch.from_json(gap.to_json()) == gap
    assert routing.Watch.from_json(None) == routing.NO_TICKS


def test_events_in_a_gap_or_its_grace_are_judged_as_before_the_gap():
    w = routing.Watch(last_tick_ms=NOW + 14_000, down_ms=NOW + 1_000, up_ms=NOW + 14_000)
    assert w.judged_at(NOW + 500, S) == NOW + 500  # before the gap: its own time
    assert w.judged_at(NOW + 7_000, S) == NOW + 1_000  # inside the gap
    assert w.judged_at(NOW + 18_999, S) == NOW + 1_000  # grace: heartbeat timeout after up
    assert w.judged_at(NOW + 14_050, S) == NOW + 1_000
    assert w.judged_at(NOW + 14_900, S) == NOW + 1_000
    quiet = routing.Watch(last_tick_ms=NOW, down_ms=0, up_ms=0)
    assert quiet.judged_at(NOW + 1_000, S) == NOW + 1_000
    assert quiet.judged_at(NOW + 1_001, S) == NOW  # no tick since: as of the last tick
    assert routing.NO_TICKS.judged_at(NOW, S) == NOW


def _region(backends=("b1",), cap=10):
    cfg = config(*(backend(b, cap=cap) for b in backends))
    return cfg, routing.LoadIndex(), {}


def _route(cfg, index, store, call_id, at, beats, watch=routing.NO_TICKS):
    out = handle("CallAdmitted", admitted(call_id, at=at), None, cfg, beats, index.load, S, watch)
    for c, res in out.reservations.items():
        index.apply(c, store.get(c), res)
        store[c] = res
    return out


def _tick(index, store, beats, watch, at):
    watch, out = routing.tick("us-east-1", at, watch, store.get, index, beats, S)
    for c, res in out.reservations.items():
        index.apply(c, store.get(c), res)
        store[c] = res
    return watch, out


def test_a_broker_outage_does_not_make_a_live_backend_lost():
    """Ticks every 50 ms, then none for 14 s (the broker away), and the backend's
    heartbeats sent meanwhile arrive a little after the first tick that follows."""
    cfg, index, store = _region()
    beats = {"b1": hb("b1", at=NOW)}
    watch = routing.NO_TICKS
    for t in range(0, 1_001, 50):
        watch, _ = _tick(index, store, beats, watch, NOW + t)
    _route(cfg, index, store, "q-1", NOW + 1_000, beats, watch)
    _accept(index, store, "q-1")
    up = NOW + 15_000  # the first tick after the outage
    watch, out = _tick(index, store, beats, watch, up)
    assert out.emits == [] and store["q-1"].state is ResState.ACCEPTED
    # a call admitted now is routed, not refused 503: the backend was live before the gap
    routed = _route(cfg, index, store, "q-2", up + 10, beats, watch)
    assert routed.emits[0].name == "CallRouted"
    _accept(index, store, "q-2")
    for t in range(up + 50, up + 4_951, 50):  # grace: the heartbeat timeout after `up`
        watch, out = _tick(index, store, beats, watch, t)
        assert out.emits == []
    beats["b1"] = hb("b1", at=up + 4_000)  # its heartbeats got through
    for t in range(up + 5_000, up + 9_001, 50):
        watch, out = _tick(index, store, beats, watch, t)
        assert out.emits == []
    assert {c: r.state for c, r in store.items()} == {
        "q-1": ResState.ACCEPTED,
        "q-2": ResState.ACCEPTED,
    }


def _accept(index, store, call_id):
    accepted = sample("CallAccepted", call_id=call_id)
    out = handle("CallAccepted", accepted, store[call_id], config(), {}, index.load, S)
    index.apply(call_id, store[call_id], out.reservations[call_id])
    store[call_id] = out.reservations[call_id]


def test_a_backend_silent_past_the_grace_after_an_outage_is_lost():
    cfg, index, store = _region()
    beats = {"b1": hb("b1", at=NOW)}
    watch, _ = _tick(index, store, beats, routing.NO_TICKS, NOW)
    _route(cfg, index, store, "q-1", NOW + 10, beats, watch)
    _accept(index, store, "q-1")
    up = NOW + 30_000
    for t in range(up, up + 5_000, 50):  # the grace: nothing is judged lost
        watch, out = _tick(index, store, beats, watch, t)
        assert out.emits == []
    watch, out = _tick(index, store, beats, watch, up + 5_000)  # no heartbeat since: lost
    assert [(e.dest, e.record["reason"]) for e in out.emits] == [
        ("admission", "backend_lost"),
        ("call-events", "backend_lost"),
    ]
    assert store["q-1"].state is ResState.RELEASED


def test_redirect_deadlines_wait_out_a_gap_too():
    """A CallAccepted sent during the outage may be read after the first tick that
    follows it: the deadline is judged as of before the gap until the grace is over."""
    cfg, index, store = _region()
    beats = {"b1": hb("b1", at=NOW)}
    watch, _ = _tick(index, store, beats, routing.NO_TICKS, NOW)
    _route(cfg, index, store, "q-1", NOW + 10, beats, watch)  # deadline NOW + 10_010
    up = NOW + 12_000
    watch, out = _tick(index, store, beats, watch, up)
    assert out.emits == [] and store["q-1"].state is ResState.RESERVED
    beats["b1"] = hb("b1", at=up + 1_000)
    for t in range(up + 50, up + 5_000, 50):
        watch, out = _tick(index, store, beats, watch, t)
        assert out.emits == []
    watch, out = _tick(index, store, beats, watch, up + 5_000)  # grace over: it is due
    assert [e.record["reason"] for e in out.emits] == ["redirect_timeout", "redirect_timeout"]


def test_a_tick_ends_each_call_once_even_when_it_is_due_and_its_backend_lost():
    cfg, index, store = _region()
    beats = {"b1": hb("b1", at=NOW)}
    watch, _ = _tick(index, store, beats, routing.NO_TICKS, NOW)
    _route(cfg, index, store, "q-1", NOW + 10, beats, watch)
    t = NOW
    while t < NOW + 11_000:  # ticks keep coming; the backend stopped heartbeating at NOW
        t += 50
        watch, out = _tick(index, store, beats, watch, t)
        if out.emits:
            break
    assert [e.record["reason"] for e in out.emits] == ["backend_lost", "backend_lost"]
    assert t == NOW + 5_050


def test_ticks_that_keep_stalling_still_let_deadlines_pass():
    """A worker whose ticks keep arriving more than a second apart (each gap inside the
    last one's grace) still judges time moving: as fast as ticks flowed between gaps."""
    cfg, index, store = _region()
    beats = {"b1": hb("b1", at=NOW)}
    watch, _ = _tick(index, store, beats, routing.NO_TICKS, NOW)
    _route(cfg, index, store, "q-1", NOW + 10, beats, watch)  # deadline NOW + 10_010
    _accept(index, store, "q-1")
    _route(cfg, index, store, "q-2", NOW + 20, beats, watch)  # never taken
    t, ended = NOW, []
    while t < NOW + 120_000 and not ended:
        t += 1_500  # a stall, then a second of ticks; the backend keeps heartbeating
        for _ in range(20):
            t += 50
            beats["b1"] = hb("b1", at=t)
            watch, out = _tick(index, store, beats, watch, t)
            ended += [e.record["reason"] for e in out.emits if e.dest == "admission"]
    assert ended == ["redirect_timeout"] and store["q-1"].state is ResState.ACCEPTED


def test_a_node_that_restarted_loses_the_calls_it_had_accepted_before():
    """A media node SIGKILLed and started again within the heartbeat timeout never
    looks lost; its next heartbeat's later `started_at` ends the calls its old process
    had accepted (they died with it), and only those."""
    cfg = config(backend("b1"))
    index = routing.LoadIndex()
    held: dict[str, Reservation] = {}
    started = NOW - 60_000

    def route_and_accept(call_id, accepted_at):
        routed = handle(
            "CallAdmitted", admitted(call_id), None, cfg, {"b1": hb("b1")}, index.load, S
        )
        res = routed.reservations[call_id]
        index.apply(call_id, None, res)
        held[call_id] = res
        if accepted_at is not None:
            acc = handle(
                "CallAccepted",
                sample("CallAccepted", call_id=call_id, at_ms=accepted_at),
                res,
                cfg,
                {},
                index.load,
                S,
            ).reservations[call_id]
            assert acc.accepted_ms == accepted_at
            index.apply(call_id, res, acc)
            held[call_id] = acc

    route_and_accept("q-old", NOW - 1_000)  # accepted by the old process
    route_and_accept("q-new", NOW + 500)  # the new process (started NOW) accepted it
    route_and_accept("q-waiting", None)  # routed, not taken yet: the new node may take it
    old = {**hb("b1", at=NOW - 2_000), "started_at": started}
    same = {**hb("b1", at=NOW + 1_000), "started_at": started}
    restarted = {**hb("b1", at=NOW + 1_000), "started_at": NOW}
    assert routing.backend_restarted(old, same, index.calls_on, held.get).reservations == {}
    unknown = {**old, "started_at": 0}  # a node that does not say: nothing to judge
    assert routing.backend_restarted(unknown, restarted, index.calls_on, held.get).emits == []
    out = routing.backend_restarted(old, restarted, index.calls_on, held.get)
    assert set(out.reservations) == {"q-old"}
    assert out.reservations["q-old"].state is ResState.RELEASED
    ended = [e.record for e in out.emits]
    assert {e["reason"] for e in ended} == {"backend_restarted"}
    assert {e["envelope"]["occurred_at"] for e in ended} == {NOW + 1_000}
    assert {e.dest for e in out.emits} == {"admission", "call-events"}
    # replayed, the same ids (derived from the call and the reason)
    again = routing.backend_restarted(old, restarted, index.calls_on, held.get)
    assert [e.record["envelope"]["event_id"] for e in again.emits] == [
        e["envelope"]["event_id"] for e in ended
    ]
