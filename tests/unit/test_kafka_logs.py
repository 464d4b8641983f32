"""librdkafka's log lines during a broker outage: a repeated message passes once per
window, numbers in it do not make it new, and the next one that passes counts the rest."""

import logging

from trunkline.core.kafka import LIBRDKAFKA_LOG, RepeatFilter


def record(text: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("t", logging.ERROR, __file__, 1, text, args, None)


def test_a_repeated_message_passes_once_per_window_and_counts_the_rest():
    now = [100.0]
    f = RepeatFilter(every=10.0, clock=lambda: now[0])
    refused = "%s [%s] Connect to ipv4#127.0.0.1:%d failed (after %dms in state CONNECT)"
    assert f.filter(record(refused, "FAIL", "consumer-1", 40843, 0))
    for ms in range(1, 200):  # every 50 ms for 10 s
        now[0] += 0.05
        assert not f.filter(record(refused, "FAIL", "consumer-1", 40843, ms % 3))
    assert f.filter(record("%s [%s] Consumer group session timed out", "SESSTMOUT", "c-1"))
    now[0] += 0.1
    again = record(refused, "FAIL", "consumer-1", 40843, 1)
    assert f.filter(again)
    assert again.getMessage().endswith("(199 more like it held back)")


def test_every_client_of_the_module_logs_through_the_filtered_logger():
    assert any(isinstance(f, RepeatFilter) for f in LIBRDKAFKA_LOG.filters)
