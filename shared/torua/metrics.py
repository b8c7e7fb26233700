"""Prometheus metrics for every service: request counts, errors and latency per endpoint (fed by
torua.endpoints), plus gauges each service reports at scrape time (nodes by status, replicas,
write-ahead-log lag). The same figures appear in the `$SRV.STATS` replies of the micro services.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics", "metrics", "process_memory_bytes", "GaugeReading"]

# (name, help, labels, samples) produced on demand: [(label values, value)]
GaugeReading = tuple[str, str, list[str], Iterable[tuple[list[str], float]]]
GaugeSource = Callable[[], GaugeReading]


def process_memory_bytes() -> int:
    """Resident set size of this process (Linux), 0 where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _Gauges(Collector):
    def __init__(self) -> None:
        self.sources: list[GaugeSource] = []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for source in self.sources:
            name, doc, labels, samples = source()
            family = GaugeMetricFamily(name, doc, labels=labels)
            for values, value in samples:
                family.add_metric(values, value)
            yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "torua_requests", "Requests handled", ["service", "endpoint"], registry=self.registry
        )
        self.errors = Counter(
            "torua_request_errors", "Requests answered with an error", ["service", "endpoint", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "torua_request_latency_seconds",
            "Time to answer a request",
            ["service", "endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self._gauges = _Gauges()
        self.registry.register(self._gauges)
        self._server: Any = None

    def observe(self, service: str, endpoint: str, seconds: float, code: int | None) -> None:
        self.requests.labels(service, endpoint).inc()
        self.latency.labels(service, endpoint).observe(seconds)
        if code is not None:
            self.errors.labels(service, endpoint, str(code)).inc()

    def add_gauges(self, source: GaugeSource) -> None:
        self._gauges.sources.append(source)

    def gauges(self) -> dict[str, Any]:
        """The scrape-time gauges as plain data, for `$SRV.STATS`."""
        out: dict[str, Any] = {"process_memory_bytes": process_memory_bytes()}
        for source in self._gauges.sources:
            name, _, labels, samples = source()
            out[name] = [{**dict(zip(labels, values)), "value": value} for values, value in samples]
        return out

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Serve `/metrics` on a background thread; port 0 picks a free one. Returns the port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)


metrics = Metrics()
