"""Prometheus metrics of the endpoint: requests, latency, the model served, reloads, fallbacks, cached rankings.

Each app has its own collector registry, so two apps in one process (tests) never mix their counts. Under
`postmodern serve --workers N` (see `workers.py`) each worker writes its values to files that any worker sums when
it is scraped (prometheus_client's multiprocess mode): one server's figures, whichever worker answers.
"""

from __future__ import annotations

import os
from time import perf_counter

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from postmodern.serving.workers import METRICS_DIR

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Fine below 10 ms, where a healthy endpoint answers, coarse above.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "postmodern_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "postmodern_request_duration_seconds",
            "Time to answer a request, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # A gauge, not an Info (which has no multiprocess mode): 1 for what a worker serves, 0 for what it served
        self.model = Gauge(
            "postmodern_model_info",
            "1 for the model version being served (and its family); 0 for one served before.",
            ["family", "version"],
            multiprocess_mode="livemax",
            registry=self.registry,
        )
        self.ready = Gauge(
            "postmodern_ready",
            "1 while a model is loaded and served (by every worker).",
            multiprocess_mode="livemin",
            registry=self.registry,
        )
        self.reloads = Counter(
            "postmodern_model_reloads", "Attempts to load a model, by outcome.", ["outcome"], registry=self.registry
        )
        self.sessions = Counter(
            "postmodern_sessions",
            "Sessions ranked, by the model or by the popularity fallback.",
            ["ranked_by"],
            registry=self.registry,
        )
        self.unknown_skus = Counter("postmodern_unknown_skus", "SKUs the model did not know.", registry=self.registry)
        self.cached = Counter(
            "postmodern_cached_rankings",
            "Sessions answered with the cached ranking of a recent request with the same known items.",
            registry=self.registry,
        )
        # labelled once: `labels()` takes a lock and builds a key on every call, and this runs per request
        self._ranked_by_model = self.sessions.labels("model")
        self._ranked_by_fallback = self.sessions.labels("fallback")
        self._served: tuple[str, str] | None = None

    def record_reload(self, outcome: str, version: str | None, family: str | None = None) -> None:
        self.reloads.labels(outcome).inc()
        if version is not None:
            if self._served is not None:
                self.model.labels(*self._served).set(0)
            self._served = (family or "unknown", version)
            self.model.labels(*self._served).set(1)
            self.ready.set(1)

    def record_sessions(self, ranked_by_model: int, fallbacks: int, unknown_skus: int, cached: int = 0) -> None:
        if ranked_by_model:
            self._ranked_by_model.inc(ranked_by_model)
        if fallbacks:
            self._ranked_by_fallback.inc(fallbacks)
        if unknown_skus:
            self.unknown_skus.inc(unknown_skus)
        if cached:
            self.cached.inc(cached)

    def exposition(self) -> bytes:
        workers = os.environ.get(METRICS_DIR)
        if not workers:
            return generate_latest(self.registry)
        every_worker = CollectorRegistry()
        MultiProcessCollector(every_worker, workers)
        return generate_latest(every_worker)


class RequestMetricsMiddleware:
    """Counts and times every HTTP request by its route template (never the raw path: bounded labels)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._series: dict[tuple[str, str, str], tuple] = {}  # labelled children, looked up once each

    def _record(self, route: str, method: str, status: str, seconds: float) -> None:
        series = self._series.get((route, method, status))
        if series is None:
            series = self.metrics.requests.labels(route, method, status), self.metrics.latency.labels(route)
            self._series[(route, method, status)] = series
        series[0].inc()
        series[1].observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            self._record(template, method, str(status), perf_counter() - started)
