"""Prometheus metrics (``GET /metrics``), with ``prometheus-client`` in a registry of our own.

Request counts and latency come from the server (``observe_request``: by route template, method
and status). Everything inside a request comes from its spans, as they end: the seconds of each
stage (``ragtune_stage_seconds{stage}``: the span's name), tokens in and out of generation,
answers by outcome and how many were grounded — so the metrics and the traces can never disagree.
The span exporter's own counts (exported, failed, dropped, queued per destination) are read from
``Tracing.stats()`` at each scrape. With ``[observability] tracing = false`` only the request
metrics remain.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from ragtune.extras import require
from ragtune.observe.tracing import TracedSpan, Tracing

# Seconds: a search is milliseconds, a CPU generation seconds to a minute.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """One engine's metrics; ``exposition()`` is what ``/metrics`` serves."""

    def __init__(self, tracing: Tracing | None) -> None:
        prometheus = require("prometheus_client", "server", "Prometheus metrics (/metrics)")
        self._prometheus = prometheus
        self.registry = prometheus.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = prometheus.Counter("ragtune_http_requests", "HTTP requests by route template, method and "
                                           "status", ["route", "method", "status"], registry=r)
        self.request_seconds = prometheus.Histogram("ragtune_http_request_seconds", "Seconds per HTTP request by "
                                                    "route template and method", ["route", "method"],
                                                    buckets=_BUCKETS, registry=r)
        self.stage_seconds = prometheus.Histogram("ragtune_stage_seconds", "Seconds per step of a request (each "
                                                  "span's name: retrieval, embed, dense, bm25, generate, ...)",
                                                  ["stage"], buckets=_BUCKETS, registry=r)
        self.tokens = prometheus.Counter("ragtune_generation_tokens", "Tokens into and out of generation",
                                         ["direction"], registry=r)
        self.answers = prometheus.Counter("ragtune_answers", "Answers by outcome: answered, abstained, error",
                                          ["outcome"], registry=r)
        self.grounded = prometheus.Counter("ragtune_answers_grounded", "Answers whose every sentence is supported "
                                           "by the sources it cites", registry=r)
        self.tracing = tracing
        if tracing is not None and tracing.enabled:
            r.register(_ExporterCollector(tracing))
            tracing.add_processor(_FromSpans(self))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text format Prometheus scrapes, and its content type."""
        return self._prometheus.generate_latest(self.registry), self._prometheus.CONTENT_TYPE_LATEST


class _FromSpans:
    """A ``SpanProcessor`` that turns each ended span into metrics (synchronously: a histogram
    observation costs about a microsecond)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._lock = threading.Lock()

    def on_end(self, span: TracedSpan) -> None:
        m = self.metrics
        kept = span.kept  # what a request stashes as it ends: its kind and outcome (observe.traces.record)
        a = {**span.attributes, **kept}
        if span.end_time and span.start_time:
            m.stage_seconds.labels(span.name).observe((span.end_time - span.start_time) / 1e9)
        for step in kept.get("ragtune.steps") or []:  # the stages it timed (child spans once exported)
            m.stage_seconds.labels(step.name).observe(max(step.end_ns - step.start_ns, 0) / 1e9)
            if step.name == "generate":
                m.tokens.labels("input").inc(int(step.attributes.get("gen_ai.usage.input_tokens") or 0))
                m.tokens.labels("output").inc(int(step.attributes.get("gen_ai.usage.output_tokens") or 0))
        if a.get("ragtune.kind") == "ask" and span.parent_id is None:
            outcome = "error" if not span.status_ok else "abstained" if a.get("ragtune.abstained") else "answered"
            m.answers.labels(outcome).inc()
            if a.get("ragtune.grounded"):
                m.grounded.inc()

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class _ExporterCollector:
    """The span exporter's counts per destination, read at each scrape."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing
        self.core = require("prometheus_client.core", "server", "Prometheus metrics (/metrics)")

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        stats = self.tracing.stats()
        for field, help_text in (("exported", "Spans written by the destination"),
                                 ("failed", "Spans in batches the destination failed"),
                                 ("dropped", "Spans dropped because the destination's queue was full")):
            family = self.core.CounterMetricFamily(f"ragtune_spans_{field}", help_text, labels=["destination"])
            for destination, counts in stats.items():
                family.add_metric([destination], counts[field])
            yield family
        queued = self.core.GaugeMetricFamily("ragtune_spans_queued", "Spans waiting for the destination",
                                             labels=["destination"])
        for destination, counts in stats.items():
            queued.add_metric([destination], counts["queued"])
        yield queued
