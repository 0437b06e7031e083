"""The Prometheus endpoint serves our own registry over HTTP."""

from __future__ import annotations

import urllib.request

from bot.core.metrics import Metrics


def test_metrics_endpoint_serves_counters() -> None:
    m = Metrics()
    m.requests.labels("telegram", "ok").inc(3)
    m.observe_model({"queue": 4, "tokens_per_s": 12.5}, "v0007")
    m.serve("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=5) as r:
            body = r.read().decode()
    finally:
        m.close()
    assert 'nightowl_requests_total{outcome="ok",platform="telegram"} 3.0' in body
    assert "nightowl_queue_depth 4.0" in body
    assert 'nightowl_active_adapter_info{version="v0007"} 1.0' in body
