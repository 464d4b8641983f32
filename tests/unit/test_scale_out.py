"""Scale-out's pure pieces: the decision topics' partition count as a setting, a
mismatch with existing topics named before anything changes, and the worker's
readiness (what /health/ waits for)."""

from __future__ import annotations

import pytest

from streams.readiness import WorkerState, waiting_for
from trunkline.core.admin import PartitionMismatch, mismatch_error, mismatches
from trunkline.core.settings import Settings, SettingsError
from trunkline.core.topics import (
    ADMISSION,
    CALL_EVENTS,
    DECISIONS,
    HEARTBEATS,
    ROUTING,
    all_topics,
    internal_topics,
)


def test_decision_partitions_default_and_bounds():
    assert Settings.from_env({}).decision_partitions == 2
    assert Settings.from_env({"TRUNKLINE_DECISION_PARTITIONS": "8"}).decision_partitions == 8
    for bad in ("0", "65", "two", "-1", "1.5"):
        with pytest.raises(SettingsError, match="TRUNKLINE_DECISION_PARTITIONS"):
            Settings.from_env({"TRUNKLINE_DECISION_PARTITIONS": bad})


def test_the_count_shapes_the_decision_topics_and_changelogs_only():
    specs = {s.suffix: s for s in all_topics(8)}
    for spec in (ADMISSION, ROUTING, HEARTBEATS):
        assert specs[spec.suffix].partitions == 8
        assert specs[spec.suffix].keyed_state
    for spec in (CALL_EVENTS, DECISIONS):  # keyed by call and by edge: not the workers'
        assert specs[spec.suffix].partitions == spec.partitions
        assert not specs[spec.suffix].keyed_state
    changelogs = [s for s in internal_topics("app", 8) if s.suffix.endswith("-changelog")]
    assert len(changelogs) == 4
    assert all(s.partitions == 8 and s.keyed_state for s in changelogs)
    leader = next(s for s in internal_topics("app", 8) if "leader" in s.suffix)
    assert leader.partitions == 1


def test_a_mismatch_names_each_topic_and_the_way_out():
    existing = {
        "p.admission": 2,  # made with the default
        "p.routing": 4,  # matches
        "p.call-events": 6,  # not keyed state: never a mismatch
        "app-admission-slots-changelog": 2,
    }
    wrong = mismatches(existing, "p.", all_topics(4)) + mismatches(
        existing, "", internal_topics("app", 4)
    )
    assert wrong == [
        "p.admission has 2 partitions, TRUNKLINE_DECISION_PARTITIONS says 4",
        "app-admission-slots-changelog has 2 partitions, TRUNKLINE_DECISION_PARTITIONS says 4",
    ]
    error = mismatch_error(wrong)
    assert isinstance(error, PartitionMismatch)
    assert "fresh topics" in str(error)
    # topics that do not exist yet are not a mismatch (they are created with the count)
    assert mismatches({}, "p.", all_topics(4)) == []


@pytest.mark.parametrize(
    ("state", "ready", "says"),
    [
        (WorkerState(0, False, False, False), False, "joining the consumer group"),
        (WorkerState(3, True, False, False), False, "rebalancing (group generation 3)"),
        (WorkerState(3, True, True, False, remaining=120), False, "120 records left"),
        (WorkerState(3, False, False, True), True, ""),
        # a later rebalance (a worker joined or left): not ready until recovered again
        (WorkerState(4, True, False, True), False, "rebalancing (group generation 4)"),
        (WorkerState(4, True, True, True, remaining=7), False, "7 records left"),
    ],
)
def test_readiness(state, ready, says):
    waiting = waiting_for(state)
    assert (not waiting) is ready
    if says:
        assert says in waiting[0]
