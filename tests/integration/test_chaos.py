"""Processes SIGKILLed at random points under a steady SIP load (tests/chaos.py): every
call that got a final answer is in ClickHouse and reaches a final status, and once
the calls ended no plan or backend slot is held: 0 lost, 0 leaked, 0 stuck.

The short worker loop runs in the default suite; `-m chaos` runs longer loops for the
worker and the sink (bench/chaos.py runs every scenario)."""

from __future__ import annotations

import os
import random

import pytest

from tests import chaos
from tests.stack import roomy_config, running_stack

pytestmark = pytest.mark.integration
SEED = int(os.environ.get("TRUNKLINE_CHAOS_SEED", random.randrange(1 << 30)))


def _run(kafka_bootstrap, tmp_path, scenario: str, kills: int) -> chaos.Outcome:
    rng = random.Random(SEED)
    env = {"TRUNKLINE_REDIRECT_TIMEOUT_MS": "2000"}
    with running_stack(
        kafka_bootstrap,
        tmp_path,
        edges=("edge-a",),
        env=env,
        config=roomy_config(),
        capacity=100_000,
    ) as s:
        if scenario == "worker":
            fault = lambda load, log: chaos.kill_worker(s, rng, load, kills, log)  # noqa: E731
        else:
            fault = lambda load, log: chaos.kill_sink(s, rng, load, kills, log)  # noqa: E731
        outcome = chaos.with_load(s, f"{scenario} x{kills}", fault, rate=20)
    print(outcome.line())
    return outcome


def _check(outcome: chaos.Outcome) -> None:
    why = f"seed {SEED}: {outcome.line()}; {outcome.events}"
    if outcome.diagnosis:  # the settle timed out: what the workers and ClickHouse held
        why += "\n" + "\n".join(outcome.diagnosis)
    assert outcome.lost == 0 and outcome.leaked == 0 and outcome.stuck == 0, why
    assert outcome.unanswered == 0, why  # the edge never died: it answered every INVITE
    assert outcome.in_clickhouse == outcome.offered, why


def test_the_sink_killed_at_random_points_under_load_loses_nothing(kafka_bootstrap, tmp_path):
    _check(_run(kafka_bootstrap, tmp_path, "sink", kills=3))


def test_a_worker_killed_at_random_points_under_load_loses_nothing(kafka_bootstrap, tmp_path):
    _check(_run(kafka_bootstrap, tmp_path, "worker", kills=3))


@pytest.mark.chaos
def test_chaos_worker_random_kills(kafka_bootstrap, tmp_path):
    _check(_run(kafka_bootstrap, tmp_path, "worker", kills=8))


@pytest.mark.chaos
def test_chaos_sink_random_kills(kafka_bootstrap, tmp_path):
    _check(_run(kafka_bootstrap, tmp_path, "sink", kills=8))
