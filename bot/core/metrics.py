"""Prometheus metrics on a registry of our own (no module-global state)."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client import start_http_server as _start_http_server


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nightowl_requests", "Messages handled", ["platform", "outcome"],
                                registry=r)
        self.latency = Histogram("nightowl_answer_latency_seconds", "Answer latency",
                                 ["platform"], registry=r,
                                 buckets=(0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128))
        self.tokens = Counter("nightowl_generated_tokens", "Tokens generated", registry=r)
        self.queue = Gauge("nightowl_queue_depth", "Requests waiting for the model", registry=r)
        self.tok_s = Gauge("nightowl_tokens_per_second", "Recent decode throughput", registry=r)
        self.adapter = Info("nightowl_active_adapter", "Active adapter version", registry=r)
        self.training = Gauge("nightowl_last_training_promoted",
                              "1 if the last training run promoted an adapter, 0 if not",
                              registry=r)
        self._server: Any = None
        self.port = 0

    def observe_model(self, stats: dict[str, Any], adapter: str | None) -> None:
        self.queue.set(float(stats.get("queue", 0) or 0))
        self.tok_s.set(float(stats.get("tokens_per_s", stats.get("tok_s", 0)) or 0))
        self.adapter.info({"version": adapter or "base"})

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics on a daemon thread (prometheus_client's own server)."""
        server, thread = _start_http_server(port, addr=host, registry=self.registry)
        self._server = (server, thread)
        self.port = int(server.server_port)

    def close(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            if isinstance(thread, threading.Thread):
                thread.join(timeout=5)
            self._server = None
