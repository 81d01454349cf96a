"""Prometheus metrics: requests and latency per operation and outcome, and background work."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from byoi.errors import ByoiError

OK = "ok"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "byoi_requests_total",
            "API requests by operation and outcome (ok or the error code)",
            ["operation", "outcome"],
            registry=self.registry,
        )
        # Latency by outcome class (ok, client_error, server_error), not by error code: each label set is a
        # dozen bucket series, so the histogram stays at three per operation.
        self.duration = Histogram(
            "byoi_request_duration_seconds",
            "API request latency by operation and outcome (ok, client_error or server_error)",
            ["operation", "outcome"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )

    def record(self, operation: str, outcome: str, seconds: float) -> None:
        """Count one API request and its latency; `outcome` is "ok" or the error code it was answered with."""
        self.requests.labels(operation, outcome).inc()
        self.duration.labels(operation, outcome_class(outcome)).observe(seconds)

    def watch_work(self, waiting: Callable[[], dict[str, int]], running: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_WorkCollector(waiting, running))


def outcome_class(outcome: str) -> str:
    """The class of an outcome: ok, or server_error / client_error by the HTTP status of the error code."""
    if outcome == OK:
        return OK
    status = _statuses().get(outcome)
    if status is None:  # an error class defined after the first lookup: look again once
        _statuses.cache_clear()
        status = _statuses().get(outcome, 500)
    return "server_error" if status >= 500 else "client_error"


@cache
def _statuses() -> dict[str, int]:
    """Error code -> HTTP status, from the ByoiError tree (a leaf's class name is its code); a code outside
    it is counted as a server error."""
    found: dict[str, int] = {}
    pending: list[type[ByoiError]] = [ByoiError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls.status
        pending.extend(cls.__subclasses__())
    return found


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
