"""Table values are flat (strings and numbers): CPython's cyclic GC does not track them,
so the calls a worker retains never lengthen its full collections."""

import gc

from streams import admission, routing
from streams.retention import mark_done

DECISION = {
    "name": "CallAdmitted",
    "record": {
        "envelope": {"event_id": "e1", "call_id": "c1", "occurred_at": 5, "producer_id": "a"},
        "business_id": "b1",
        "codecs": ["PCMU", "PCMA"],
        "max_concurrent_calls": 10,
    },
}


def test_slot_values_are_flat_untracked_and_round_trip():
    slot = admission.Slot(admission.SlotState.ADMITTED, "b1", "r1", DECISION)
    value = slot.to_json()
    assert not gc.is_tracked(value)
    done = mark_done(value, None, 1, 1_000)
    assert not gc.is_tracked(done)
    assert admission.Slot.from_json(value) == slot
    assert admission.Slot.from_json(done) == slot


def test_reservation_values_are_flat_untracked_and_round_trip():
    res = routing.Reservation(routing.ResState.RESERVED, "r1", "b1", "be-1", 9_000, DECISION)
    value = res.to_json()
    assert not gc.is_tracked(value)
    assert not gc.is_tracked(mark_done(value, None, 0, 1_000))
    assert routing.Reservation.from_json(value) == res


def test_values_written_with_nested_decisions_still_read():
    # changelogs written by workers before the flat form hold the decision as an object
    old_slot = {"state": "ADMITTED", "business_id": "b1", "region_id": "r1", "decision": DECISION}
    assert admission.Slot.from_json(old_slot) == admission.Slot(
        admission.SlotState.ADMITTED, "b1", "r1", DECISION
    )
    old_res = {"state": "RESERVED", "region_id": "r1", "decision": DECISION}
    assert routing.Reservation.from_json(old_res).decision == DECISION
    assert admission.Slot.from_json({"state": "RELEASED", "business_id": "b1"}).decision is None
