"""`replay rebuild --swap` promotes the machine tables as a new table generation, on a
real broker and a real stack (SIP edge, decision worker, billing worker, sink).

b-limit's plan allows one call. One call holds that slot (302, never ended); a second
is refused (486). The swap is refused while the workers run; with them stopped it writes
generation 1. Workers started again are on generation 1, recover the promoted tables
(equal to the shadow), resume at the swap's offsets (the held call is not re-admitted),
and refuse a new b-limit call 486: the slot counted is the promoted one. `replay clean`
deletes generation 0's topics and groups and keeps generation 1's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from edge.sip.message import NameAddr
from edge.sip.uac import Call
from schemas import SingleObjectCodec
from tests.harness import Service, free_port, poll, run_cli
from tests.stack import Stack, running_stack
from trunkline.core import kafka
from trunkline.core.generations import generation_topics, table_key, worker_ids
from trunkline.core.settings import Settings
from trunkline.core.topics import CALL_EVENTS, ROUTING

pytestmark = pytest.mark.integration

CODEC = SingleObjectCodec()


def rebuild(s: Settings, *flags: str) -> tuple[int, Any]:
    done = run_cli(s, "replay", "rebuild", *flags, "--json", timeout=300)
    assert done.returncode in (0, 1, 2), done.stderr + done.stdout
    return done.returncode, (json.loads(done.stdout) if done.returncode != 2 else done.stderr)


def queue_id(call: Call) -> str:
    return NameAddr.parse(call.final.headers.get("contact")).uri.headers["X-CallQueue-Id"]


def admitted(s: Settings, call_id: str) -> int:
    """How many CallAdmitted records of `call_id` the routing topic holds."""
    ranges = kafka.offset_ranges(s.kafka_bootstrap, [ROUTING.name(s.topic_prefix)])
    count = 0
    for batch in kafka.read_ranges(s.kafka_bootstrap, ranges):
        for msg in batch:
            name, record = CODEC.decode(msg.value() or b"")
            count += name == "CallAdmitted" and record["envelope"]["call_id"] == call_id
    return count


def no_members(s: Settings, groups: tuple[str, ...]) -> bool:
    return not any(kafka.group_members(s.kafka_bootstrap, groups).values())


@pytest.fixture
def stack(kafka_bootstrap: str, tmp_path) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    env = {
        "TRUNKLINE_BILLING_WEB_PORT": str(free_port()),
        "TRUNKLINE_REDIRECT_TIMEOUT_MS": "600000",  # the held call keeps its slot
    }
    with running_stack(kafka_bootstrap, tmp_path / "state", edges=("edge-a",), env=env) as st:
        yield st


def test_swap_promotes_the_machine_tables_as_a_new_generation(stack):
    s = stack.settings
    app = s.app_id
    rater = Service(s, "billing-worker")
    rater.start()
    try:
        uac = stack.uac()
        held = Call("+15550000001")
        assert uac.invite(held).status == 302
        held_id = queue_id(held)
        refused = uac.invite(Call("+15550000001"))
        assert refused.status == 486
        assert stack.worker.get("/health/")["generation"] == 0
        # the billing worker has seen the history so far
        ends = kafka.offset_ranges(s.kafka_bootstrap, [CALL_EVENTS.name(s.topic_prefix)])
        poll(
            lambda: all(
                kafka.committed_offsets(
                    s.kafka_bootstrap, f"{app}-billing", [(r.topic, r.partition)]
                ).get((r.topic, r.partition), -1)
                >= r.end
                for r in ends
                if r.end
            ),
            60,
            "the billing worker to commit the history",
        )

        # refused while the workers run the live generation
        code, err = rebuild(s, "--swap")
        assert code == 2 and "workers are running table generation 0" in err, err
        assert f"{app} (1 member)" in err

        stack.worker.stop()
        rater.stop()
        poll(lambda: no_members(s, (app, f"{app}-billing")), 30, "the workers to leave")
        code, report = rebuild(s, "--swap")
        assert code == 0, report
        gen = report["generation"]
        assert (gen["active"], gen["previous"]) == (1, 0)
        assert gen["groups"] == [f"{app}-g1", f"{app}-billing-g1"]
        tables = report["machine_tables"]
        slots = tables["admission-slots"]
        assert gen["topics"] == {
            f"{app}-g1-admission-slots-changelog": slots,
            f"{app}-g1-routing-reservations-changelog": tables["routing-reservations"],
            f"{app}-g1-routing-heartbeats-changelog": tables["routing-heartbeats"],
            f"{app}-g1-routing-ticks-changelog": tables["routing-ticks"],
            f"{app}-billing-g1-billing-calls-changelog": tables["billing-calls"],
        }
        # the new changelog holds the shadow's entries, the held call's slot among them
        log = kafka.read_compacted(s.kafka_bootstrap, f"{app}-g1-admission-slots-changelog")
        assert len(log) == slots and table_key(held_id) in log
        # the new groups start where the rebuild stopped
        for topic, parts in report["ranges"].items():
            if topic.endswith(("billing", "webhook-deliveries")):
                continue  # ClickHouse only
            history = topic == CALL_EVENTS.name(s.topic_prefix)
            group = f"{app}-billing-g1" if history else f"{app}-g1"
            wanted = {(topic, p["partition"]): p["end"] for p in parts}
            assert kafka.committed_offsets(s.kafka_bootstrap, group, wanted) == wanted
        routed_before = admitted(s, held_id)
        assert routed_before == 1

        # workers started again use generation 1 and its tables
        stack.worker.start()
        rater.start()
        health = stack.worker.get("/health/")
        assert (health["app_id"], health["generation"]) == (f"{app}-g1", 1)
        assert rater.get("/health/")["app_id"] == f"{app}-billing-g1"
        assert stack.worker.get("/state/admission-active/").get("b-limit") == [held_id]
        # the plan's one slot is the promoted one: a new call is refused
        again = uac.invite(Call("+15550000001"))
        assert again.status == 486
        assert "limit reached: 1/1" in again.headers.get("warning")
        # it resumed at the swap's offsets: the held call was not admitted a second time
        assert admitted(s, held_id) == 1
        uac.close()

        # the promoted tables, as the new workers hold them, equal a fresh rebuild
        stack.worker.stop()
        rater.stop()
        poll(lambda: no_members(s, worker_ids(app, 1)), 30, "the workers to leave")
        code, report = rebuild(s, "--verify")
        assert report["generation"] == {"active": 1}
        machine = {c["table"]: c for c in report["checks"] if c["kind"] == "faust"}
        assert all(c["equal"] for c in machine.values()), machine
        assert machine["admission-slots"]["live"]["count"] >= slots
    finally:
        rater.stop()

    # clean deletes generation 0 (both workers) and keeps generation 1
    done = run_cli(s, "replay", "clean", "--json")
    assert done.returncode == 0, done.stderr
    cleaned = json.loads(done.stdout)
    assert cleaned["generation"] == 1
    old_topics = set(generation_topics(app, 0, s.decision_partitions))
    assert set(cleaned["topics"]) == old_topics
    assert set(cleaned["groups"]) == {app, f"{app}-billing"}
    poll(
        lambda: not any(kafka.topic_exists(s.kafka_bootstrap, t) for t in old_topics),
        60,
        "generation 0's topics to be deleted",
    )
    for topic in generation_topics(app, 1, s.decision_partitions):
        assert kafka.topic_exists(s.kafka_bootstrap, topic), topic
    assert not ({app, f"{app}-billing"} & set(kafka.group_ids(s.kafka_bootstrap)))
    assert {f"{app}-g1", f"{app}-billing-g1"} <= set(kafka.group_ids(s.kafka_bootstrap))
    done = run_cli(s, "replay", "clean", "--json")
    assert json.loads(done.stdout)["topics"] == [] and json.loads(done.stdout)["groups"] == []
