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
    # blocked for the window although its bucket has refilled a token meanwhile
    assert not guard.allow_request("198.51.100.1", 0.1)
    assert guard.is_blocked("198.51.100.1", 1.9)
    # judged at the window's end: 981 requests in it, over 10/s x 2 s: blocked again
    assert not guard.allow_request("198.51.100.1", 2.0)
    # the next window saw only that one: let go, its bucket full again
    assert sum(guard.allow_request("198.51.100.1", 4.0) for _ in range(30)) == 20


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


def test_a_source_that_keeps_to_its_rate_is_never_blocked():
    rng = random.Random(17)
    guard = FloodGuard(LIMITS)
    sent = 0
    for second in range(2_000):  # bursts of up to a second's worth, once a second
        for _ in range(rng.randint(0, int(LIMITS.rate))):
            assert guard.allow_request("198.51.100.1", float(second)), second
            sent += 1
    assert guard.dropped == 0 and sent > 5_000


def test_a_flooder_gets_its_burst_and_then_nothing_while_it_floods():
    """Pike's blocking: 2,000 requests a second for a minute get the burst through and
    nothing after it, where a bare token bucket would pass 10 a second (600 more)."""
    guard = FloodGuard(LIMITS)
    plain = TokenBucket(LIMITS.rate, LIMITS.burst)
    passed = plain_passed = 0
    for i in range(120_000):
        now = i / 2000
        passed += guard.allow_request("198.51.100.9", now)
        plain_passed += plain.take(now)
    assert passed == LIMITS.burst
    assert plain_passed > 600
    assert guard.dropped == 120_000 - passed
    assert guard.allow_request("198.51.100.10", 59.9)  # nobody else is blocked


def test_a_source_slightly_over_its_rate_is_blocked_until_it_slows_down():
    guard = FloodGuard(LIMITS)
    now, passed_fast = 0.0, 0
    while now < 30.0:  # 15 a second against a rate of 10
        passed_fast += guard.allow_request("198.51.100.1", now)
        now += 1 / 15
    assert guard.is_blocked("198.51.100.1", now)
    assert passed_fast < LIMITS.burst + 10 * LIMITS.window * 2
    answers = []
    while now < 40.0:  # then 5 a second: let go within two windows, then always admitted
        answers.append((now, guard.allow_request("198.51.100.1", now)))
        now += 1 / 5
    first = next(t for t, ok in answers if ok)
    assert first < 30.0 + 2 * LIMITS.window + 0.5
    assert all(ok for t, ok in answers if t >= first)


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
