"""Prometheus metrics of one server (its own registry, so several apps in one process never clash).

Images per second is ``rate(imgclf_images_total[1m])``; the model digest is a label of
``imgclf_model_info``.

Usage::

    metrics = Metrics()
    metrics.observe("/v1/predict", 200, 0.012)
    body, content_type = metrics.render()
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """The server's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "imgclf_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "imgclf_request_seconds", "request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.images = Counter("imgclf_images", "images classified (rate() = images/s)", ["model"], registry=r)
        self.in_flight = Gauge("imgclf_in_flight_requests", "requests being handled", registry=r)
        self.queue_depth = Gauge("imgclf_queue_depth_images", "images waiting for inference", registry=r)
        self.batch_size = Histogram(
            "imgclf_batch_size_images", "images per forward-pass batch", buckets=BATCH_BUCKETS, registry=r
        )
        self.open_connections = Gauge("imgclf_open_connections", "HTTP connections open", registry=r)
        self.connections_closed = Counter(
            "imgclf_connections_closed",
            "connections the server closed early (deadline, cap, malformed request) by reason",
            ["reason"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "imgclf_client_disconnects", "requests whose client went away before the answer", registry=r
        )
        self.model_info = Gauge(
            "imgclf_model_info", "loaded models (value 1)", ["model", "digest", "arch"], registry=r
        )

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one finished request."""
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def set_model(self, name: str, digest: str, arch: str) -> None:
        """Publish ``name``'s current digest (the previous one's series is removed)."""
        for labels in [s.labels for m in self.model_info.collect() for s in m.samples]:
            if labels.get("model") == name:
                self.model_info.remove(labels["model"], labels["digest"], labels["arch"])
        self.model_info.labels(name, digest, arch).set(1)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
