import itertools

import pytest

from streams import admission
from streams.admission import Input, Slot, SlotState, TransitionError, handle, step
from streams.config_view import ConfigView
from tests.samples import sample

CONFIG = ConfigView(
    {
        "plans": {"starter": {"id": "starter", "max_concurrent_calls": 1}},
        "businesses": {
            "123": {"id": "123", "name": "Acme", "active": True, "plan_id": "starter"},
            "9": {"id": "9", "name": "Gone", "active": False, "plan_id": "starter"},
            "7": {"id": "7", "name": "NoPlan", "active": True, "plan_id": "platinum"},
        },
        "routes": {
            "r1": {"id": "r1", "business_id": "123", "agent": "greeting"},
            "r7": {"id": "r7", "business_id": "7", "agent": "greeting"},
        },
        "numbers": {
            "abc": {
                "id": "abc",
                "business_id": "123",
                "provider": "SIP",
                "number": "+15551234567",
                "route_id": "r1",
                "region_id": "us-east-1",
                "allowed_source_ips": ["203.0.113.10", "10.0.0.0/8"],
            },
            "tw": {
                "id": "tw",
                "business_id": "123",
                "provider": "TWILIO",
                "number": "+15557654321",
                "route_id": "r1",
                "region_id": "us-east-1",
                "allowed_source_ips": [],
            },
            "noroute": {
                "id": "noroute",
                "business_id": "123",
                "provider": "SIP",
                "number": "+15550000000",
                "route_id": "r-missing",
                "region_id": "x",
                "allowed_source_ips": [],
            },
            "n7": {
                "id": "n7",
                "business_id": "7",
                "provider": "SIP",
                "number": "+15557777777",
                "route_id": "r7",
                "region_id": "x",
                "allowed_source_ips": [],
            },
        },
    }
)


def offer(call_id="q-1", **changes):
    record = sample("CallOffered", call_id=call_id, at_ms=1_000)
    record.update(changes)
    return record


def decided(result):
    """The emits that carry the decision: every offer's first emit is its history copy."""
    copy, *rest = result.emits
    assert (copy.dest, copy.name) == ("call-events", "CallOffered")
    return rest


def test_admitted_call_holds_a_slot_and_goes_to_routing():
    r = handle("CallOffered", offer(), None, 0, CONFIG)
    assert r.slot.state is SlotState.ADMITTED
    assert [(e.dest, e.key, e.name) for e in r.emits] == [
        ("call-events", "q-1", "CallOffered"),
        ("routing", "us-east-1", "CallAdmitted"),
        ("call-events", "q-1", "CallAdmitted"),
    ]
    admitted = r.emits[1].record
    assert admitted["region_id"] == "us-east-1" and admitted["route_id"] == "r1"
    assert (admitted["active_calls"], admitted["max_concurrent_calls"]) == (1, 1)


@pytest.mark.parametrize(
    ("changes", "status", "reason"),
    [
        ({"business_id": "404"}, 404, "business 404 not found"),
        ({"business_id": "9"}, 403, "business 9 is not active"),
        ({"phone_id": "nope"}, 404, "number nope is not configured for business 123"),
        (
            {"phone_id": "", "to_number": "+19999999999"},
            404,
            "number +19999999999 is not configured",
        ),
        ({"phone_id": "tw"}, 404, "number tw is a TWILIO number, the call came over SIP"),
        ({"phone_id": "noroute"}, 404, "route r-missing is not configured"),
        ({"source_ip": "198.51.100.7"}, 403, "source IP 198.51.100.7 is not in allowedSourceIps"),
        ({"source_ip": "not-an-ip"}, 403, "source IP not-an-ip is not in allowedSourceIps"),
        (
            {"business_id": "7", "phone_id": "n7"},
            503,
            "plan platinum of business 7 is not configured",
        ),
    ],
)
def test_each_check_has_its_own_answer(changes, status, reason):
    r = handle("CallOffered", offer(**changes), None, 0, CONFIG)
    assert r.slot.state is SlotState.REJECTED
    decision = decided(r)
    rejected = decision[0].record
    assert [(e.dest, e.key) for e in decision] == [("decisions", "edge-1"), ("call-events", "q-1")]
    assert (rejected["status_code"], rejected["stage"]) == (status, "ADMISSION")
    assert reason in rejected["reason"]
    # a rejection before the number is known names no region
    if status == 404 and "is not configured for" in reason:
        assert rejected["region_id"] is None


def test_cidr_and_dialled_number_lookup():
    r = handle("CallOffered", offer(phone_id="", source_ip="10.1.2.3"), None, 0, CONFIG)
    assert r.slot.state is SlotState.ADMITTED
    assert decided(r)[0].record["phone_id"] == "abc"


def test_plan_limit_is_486_and_a_release_frees_it():
    index = admission.SlotIndex()

    def run(name, record, call_id):
        slot = slots.get(call_id)
        r = handle(name, record, slot, index.count("123"), CONFIG)
        index.apply(call_id, slot, r.slot)
        slots[call_id] = r.slot
        return r

    slots = {}
    run("CallOffered", offer("q-1"), "q-1")
    second = run("CallOffered", offer("q-2"), "q-2")
    assert decided(second)[0].record["status_code"] == 486
    assert "limit reached: 1/1" in decided(second)[0].record["reason"]
    # the number was found: the rejection names its region (rejections count per region)
    assert decided(second)[0].record["region_id"] == "us-east-1"
    released = run("CallEnded", sample("CallEnded", call_id="q-1"), "q-1")
    assert released.slot.state is SlotState.RELEASED and index.count("123") == 0
    assert [(e.dest, e.key) for e in released.emits] == [("routing", "us-east-1")]
    again = run("CallEnded", sample("CallEnded", call_id="q-1"), "q-1")  # exactly once
    assert again.emits == [] and index.count("123") == 0
    third = run("CallOffered", offer("q-3"), "q-3")
    assert third.slot.state is SlotState.ADMITTED and index.count("123") == 1


def test_duplicate_offer_repeats_the_same_decision_without_counting():
    first = handle("CallOffered", offer(), None, 0, CONFIG)
    again = handle("CallOffered", offer(), first.slot, 1, CONFIG)
    assert again.slot == first.slot
    assert [e.record for e in decided(again)] == [e.record for e in decided(first)]
    assert (
        decided(again)[0].record["envelope"]["event_id"]
        == decided(first)[0].record["envelope"]["event_id"]
    )


def test_end_before_offer_blocks_a_late_offer():
    early = handle("CallEnded", sample("CallEnded", call_id="q-1"), None, 0, CONFIG)
    assert early.slot.state is SlotState.RELEASED
    late = handle("CallOffered", offer(), early.slot, 0, CONFIG)
    assert late.slot.state is SlotState.RELEASED and decided(late) == []


def test_every_offer_is_copied_to_the_history_unchanged_ahead_of_its_decision():
    record = offer()
    fresh = handle("CallOffered", record, None, 0, CONFIG)
    again = handle("CallOffered", record, fresh.slot, 1, CONFIG)
    refused = handle("CallOffered", offer("q-2", business_id="404"), None, 0, CONFIG)
    for r, rec in ((fresh, record), (again, record)):
        assert (r.emits[0].key, r.emits[0].record) == ("q-1", rec)
        assert r.emits[0].record is rec  # the agent sends the bytes it received
    assert refused.emits[0].key == "q-2" and decided(refused)[0].name == "CallRejected"


def test_index_rebuilds_from_slots():
    index = admission.SlotIndex()
    slots = [
        ("a", Slot(SlotState.ADMITTED, "123")),
        ("b", Slot(SlotState.RELEASED, "123")),
        ("c", Slot(SlotState.ADMITTED, "9")),
        ("d", None),
    ]
    index.rebuild(slots)
    assert index.as_dict() == {"123": ["a"], "9": ["c"]}
    index.apply("a", slots[0][1], Slot(SlotState.RELEASED, "123"))
    assert index.count("123") == 0 and index.count("9") == 1


def test_slot_json_round_trip():
    r = handle("CallOffered", offer(), None, 0, CONFIG)
    assert Slot.from_json(r.slot.to_json()) == r.slot


def test_every_state_input_pair():
    for state, event in itertools.product([None, *SlotState], Input):
        target = admission.TRANSITIONS[state].get(event)
        if target is None:
            with pytest.raises(TransitionError, match="cannot take"):
                step(state, event)
        else:
            assert step(state, event) is target


def test_releases_routing_decided_are_not_sent_back_to_it():
    first = handle("CallOffered", offer(), None, 0, CONFIG)
    ended = sample("CallEnded", call_id="q-1")
    ended["envelope"]["producer_id"] = "routing"  # a redirect nobody took
    released = handle("CallEnded", ended, first.slot, 1, CONFIG)
    assert released.slot.state is SlotState.RELEASED and released.emits == []


def test_handle_builds_the_slot_from_the_table(monkeypatch):
    """handle() takes the new state from step(), never from a literal: change the table
    and the slot follows it."""
    table = {state: dict(row) for state, row in admission.TRANSITIONS.items()}
    table[SlotState.REJECTED][Input.RELEASE] = SlotState.RELEASED
    table[None][Input.RELEASE] = SlotState.REJECTED
    monkeypatch.setattr(admission, "TRANSITIONS", table)
    refused = handle("CallOffered", offer(business_id="404"), None, 0, CONFIG)
    ended = handle("CallEnded", sample("CallEnded", call_id="q-1"), refused.slot, 0, CONFIG)
    assert ended.slot.state is SlotState.RELEASED and ended.slot.decision is None
    early = handle("CallEnded", sample("CallEnded", call_id="q-2"), None, 0, CONFIG)
    assert early.slot.state is SlotState.REJECTED


def outbound_request(**changes) -> dict:
    r = sample("OutboundCallRequested", call_id="out-1")
    r.update(business_id="123", phone_id="tw", provider="TWILIO", edge_id="webhook-1",
             route_id="")  # fmt: skip
    r.update(changes)
    return r


def test_an_outbound_request_passes_the_same_gates_and_holds_a_slot():
    result = handle("OutboundCallRequested", outbound_request(), None, 0, CONFIG)
    assert result.slot is not None and result.slot.state is SlotState.ADMITTED
    names = [(e.dest, e.name) for e in result.emits]
    # its history copy keeps its own record type; the decision goes on to routing
    assert names == [("call-events", "OutboundCallRequested"), ("routing", "CallAdmitted"),
                     ("call-events", "CallAdmitted")]  # fmt: skip
    admitted = result.emits[1].record
    assert (admitted["route_id"], admitted["provider"], admitted["edge_id"]) == (
        "r1", "TWILIO", "webhook-1"
    )  # fmt: skip
    # the plan's one slot is taken: the next outbound request is refused like an offer
    full = handle("OutboundCallRequested", outbound_request(), None, 1, CONFIG)
    assert full.slot is not None and full.slot.state is SlotState.REJECTED
    assert full.emits[1].record["status_code"] == 486


def test_an_outbound_request_names_its_route_or_is_refused():
    other = handle("OutboundCallRequested", outbound_request(route_id="r7"), None, 0, CONFIG)
    assert other.emits[1].name == "CallRejected"
    assert other.emits[1].record["status_code"] == 404
    assert "route r7" in other.emits[1].record["reason"]
    mine = handle("OutboundCallRequested", outbound_request(route_id="r1"), None, 0, CONFIG)
    assert mine.emits[1].name == "CallAdmitted"


def test_a_repeated_outbound_request_is_a_duplicate_of_its_slot():
    first = handle("OutboundCallRequested", outbound_request(), None, 0, CONFIG)
    again = handle("OutboundCallRequested", outbound_request(), first.slot, 1, CONFIG)
    assert again.slot == first.slot
    assert [e.name for e in again.emits[1:]] == ["CallAdmitted", "CallAdmitted"]
    assert again.emits[1].record == first.emits[1].record  # the same decision, not a new one
