"""Flood control at the SIP edge (edge/sip/flood.py) on a hand-held clock."""

from edge.sip.flood import FloodGuard, Limits

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
