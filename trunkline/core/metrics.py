"""Prometheus metrics every process shares, on prometheus_client's one process registry.

Each service serves `exposition()` as `GET /metrics` (text format 0.0.4): the SIP edge
on TRUNKLINE_SIP_METRICS_LISTEN, the webhook edge, worker and sink on their web ports, a
media node on its WebSocket port, the webhook service on its own. Counters and
histograms are module-level objects in the service that moves them (docs/metrics.md
lists every name); what is a state rather than an event is read at scrape time:

- `ConsumerLag`: `trunkline_consumer_lag{group,topic,partition}`, how many records a
  consumer group's committed offset trails each partition's end (trunkline.core.kafka
  .GroupLag), and `trunkline_consumer_lag_up` (0 when the broker did not answer);
- `Snapshot`: gauges from a snapshot a service takes of its own state on its own loop
  (`update`), so the scrape, which may run on another thread, never walks live tables.

A service whose scrape may block (the lag asks the broker) produces the text off its
event loop (`run_in_executor(None, exposition)`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trunkline.core.kafka import GroupLag
from trunkline.core.throttle import LogThrottle

log = logging.getLogger("trunkline.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
_installed: dict[str, Collector] = {}
_install_lock = threading.Lock()


def exposition() -> bytes:
    """Every metric of this process, in the Prometheus text format."""
    return generate_latest(REGISTRY)


def install(key: str, collector: Collector) -> Collector:
    """Register `collector` in the process registry under `key`, replacing the one a
    previous instance installed (a service built twice in one process, as tests do)."""
    with _install_lock:
        old = _installed.pop(key, None)
        if old is not None:
            REGISTRY.unregister(old)
        REGISTRY.register(collector)
        _installed[key] = collector
    return collector


class ConsumerLag(Collector):
    """`trunkline_consumer_lag` for the given consumer groups, measured at each scrape."""

    def __init__(self, bootstrap: str, groups: Iterable[str], timeout: float = 2.0) -> None:
        self.groups = list(groups)
        self._bootstrap = bootstrap
        self._timeout = timeout
        self._lag: GroupLag | None = None
        self._lock = threading.Lock()
        self._failures = LogThrottle(60.0)

    def describe(self) -> list[Metric]:
        return []  # measured only when scraped, never at registration

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "trunkline_consumer_lag",
            "Records a consumer group's committed offset trails the partition's end by",
            labels=["group", "topic", "partition"],
        )
        up = GaugeMetricFamily(
            "trunkline_consumer_lag_up",
            "1 when the consumer lag could be measured at this scrape, 0 when the broker "
            "did not answer",
            labels=["group"],
        )
        ok = 1.0
        with self._lock:
            try:
                if self._lag is None:
                    self._lag = GroupLag(self._bootstrap, self.groups, self._timeout)
                for row in self._lag.measure():
                    lag.add_metric([row.group, row.topic, str(row.partition)], row.lag)
            except Exception as exc:  # the scrape must answer; lag_up says it is missing
                ok = 0.0
                summary = self._failures.note(time.monotonic(), str(exc))
                if summary is not None:
                    log.warning("consumer lag not measured (%d times): %s", *summary)
        for group in self.groups:
            up.add_metric([group], ok)
        yield lag
        yield up


class Snapshot(Collector):
    """Gauge families set from a snapshot (`update`), read as they are at scrape time."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, tuple[str, ...], dict[tuple[str, ...], float]]] = {}
        self._lock = threading.Lock()

    def update(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        samples: Mapping[tuple[str, ...], float],
    ) -> None:
        with self._lock:
            self._families[name] = (documentation, labels, dict(samples))

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families = list(self._families.items())
        for name, (documentation, labels, samples) in families:
            family = GaugeMetricFamily(name, documentation, labels=list(labels))
            for values, value in sorted(samples.items()):
                family.add_metric(list(values), value)
            yield family
