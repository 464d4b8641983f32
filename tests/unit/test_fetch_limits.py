"""The worker's fetch policy (streams/app.py): a long poll for one byte when the consumer
is quiet, the short 1 KiB poll whenever records are on their way to the agents."""

from streams.patches import (
    FETCH_MAX_WAIT_MS,
    FETCH_MIN_BYTES,
    IDLE_FETCH_MAX_WAIT_MS,
    STUCK_AFTER_S,
    fetch_limits,
)

BUSY = (FETCH_MIN_BYTES, FETCH_MAX_WAIT_MS)
QUIET = (1, IDLE_FETCH_MAX_WAIT_MS)


def test_after_an_empty_fetch_with_nothing_buffered_the_next_is_a_long_poll_for_a_byte():
    assert fetch_limits(True, [], now=100.0) == QUIET
    assert QUIET[1] > BUSY[1] and QUIET[0] < BUSY[0]


def test_after_a_fetch_that_brought_records_the_next_is_short():
    assert fetch_limits(False, [], now=100.0) == BUSY


def test_records_waiting_for_the_agents_keep_fetches_short():
    # their partition is left out of the next fetch: a long poll would hold its records
    assert fetch_limits(True, [100.0 - STUCK_AFTER_S / 2], now=100.0) == BUSY


def test_records_nobody_consumes_do_not_keep_the_worker_polling():
    # Faust's own changelog partitions: fetched once after recovery, never read again
    stuck = 100.0 - STUCK_AFTER_S - 0.1
    assert fetch_limits(True, [stuck], now=100.0) == QUIET
    assert fetch_limits(True, [stuck, 99.99], now=100.0) == BUSY
