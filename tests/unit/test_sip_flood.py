"""Flood control at the SIP edge (edge/sip/flood.py) on a hand-held clock."""

import random

from edge.sip.flood import FloodGuard, Limits
from trunkline.core.throttle import TokenBucket

LIMITS = Limits(rate=10, burst=20, trusted_rate=100, trusted_burst=200, retransmit_rate=2)


def test_a_source_over_its_limit_is_dropped_and_others_are_not():
    guard = FloodGuard(LIMITS)
    passed = sum(guard.allow_request("198.51.100.1", 0.0) for _ in range(1000))
    assert passed == 20 and guard.dropped == 980
    assert guard.allow_request("198.51.100.2", 0.0)  # another source has its own bucket
    assert guard.allow_request("198.51.100.1", 0.1)  # one token a tenth of a second


def test_sources_of_a_trunk_get_the_trusted_limit():
    guard = FloodGuard(LIMITS)
    guard.trust(["203.0.113.0/24", "not-an-ip"])
    assert sum(guard.allow_request("203.0.113.7", 0.0) for _ in range(1000)) == 200
    assert sum(guard.allow_request("198.51.100.1", 0.0) for _ in range(1000)) == 20


def test_retransmissions_to_a_source_are_budgeted():
    guard = FloodGuard(LIMITS)
    sent = [guard.allow_retransmit("198.51.100.1", 0.0) for _ in range(5)]
    assert sent == [True, True, False, False, False] and guard.skipped_retransmits == 3
    assert guard.allow_retransmit("198.51.100.1", 0.5)


def test_the_least_recently_seen_sources_are_forgotten():
    guard = FloodGuard(Limits(rate=1, burst=1, max_sources=2))
    assert guard.allow_request("10.0.0.1", 0.0) and not guard.allow_request("10.0.0.1", 0.0)
    guard.allow_request("10.0.0.2", 0.0)
    guard.allow_request("10.0.0.3", 0.0)  # 10.0.0.1 is forgotten: a full bucket again
    assert guard.allow_request("10.0.0.1", 0.0)


def test_the_fast_refusal_of_an_empty_bucket_decides_as_the_bucket_would():
    """A source whose bucket is empty is refused until its next token is due without
    touching the bucket: the same answers as a plain token bucket, request by request."""
    rng = random.Random(17)
    guard = FloodGuard(LIMITS)
    bucket = TokenBucket(LIMITS.rate, LIMITS.burst)
    now, answers = 0.0, []
    for _ in range(20_000):
        now += rng.choice((0.0, 0.0001, 0.001, 0.05, 0.3))
        answers.append(guard.allow_request("198.51.100.1", now))
        assert answers[-1] == bucket.take(now), f"request {len(answers)} at {now}"
    assert guard.dropped == answers.count(False) > 1000 and answers.count(True) > 1000


def test_a_batch_is_judged_by_source_before_anything_reads_the_datagrams():
    """`admit` keeps, in order, what is within each source's limit; a flooding source's
    surplus is dropped and counted; keep-alives are neither kept nor charged."""
    guard = FloodGuard(LIMITS)
    flood = [(b"INVITE %d" % i, ("198.51.100.9", 5060)) for i in range(100)]
    trunk = [(b"INVITE trunk %d" % i, ("203.0.113.7", 5070)) for i in range(5)]
    keepalives = [(b"\r\n\r\n", ("203.0.113.7", 5070)), (b"", ("198.51.100.9", 5060))]
    batch = [*flood[:50], trunk[0], *keepalives, *flood[50:], *trunk[1:]]
    admitted = guard.admit(batch, 0.0)
    assert admitted.requests == [*flood[:20], *trunk]  # the flood's burst of 20, the trunk
    assert (admitted.received, admitted.dropped) == (105, 80)
    assert admitted.last_dropped == "198.51.100.9" and guard.dropped == 80
    # keep-alives spent nothing: the trunk still has its burst less the 5 it sent
    assert len(guard.admit(trunk * 10, 0.0).requests) == 15
