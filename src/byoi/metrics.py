"""Prometheus metrics: requests and latency per operation and outcome, and background work."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "byoi_requests_total",
            "API requests by operation and outcome (ok or the error code)",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "byoi_request_duration_seconds",
            "API request latency by operation",
            ["operation"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )

    def watch_work(self, waiting: Callable[[], dict[str, int]], running: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_WorkCollector(waiting, running))


class _WorkCollector(Collector):
    def __init__(self, waiting: Callable[[], dict[str, int]], running: Callable[[], dict[str, int]]) -> None:
        self._waiting, self._running = waiting, running

    def collect(self) -> Iterator[GaugeMetricFamily]:
        waiting = GaugeMetricFamily(
            "byoi_work_waiting", "Background work items due and not yet running", labels=["task"]
        )
        for task, n in self._waiting().items():
            waiting.add_metric([task], n)
        running = GaugeMetricFamily("byoi_work_running", "Background work items running now", labels=["task"])
        for task, n in self._running().items():
            running.add_metric([task], n)
        yield waiting
        yield running
