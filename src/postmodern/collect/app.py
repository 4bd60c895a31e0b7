"""The collector's HTTP service (see the package's docstring)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from starlette.types import Receive, Scope, Send

from postmodern.collect.flush import Flusher
from postmodern.collect.stage import EventStage, StageFull
from postmodern.config import Settings

MAX_BODY_BYTES_PER_EVENT = 16_384


class CollectorMetrics:
    def __init__(self, stage: EventStage) -> None:
        self.registry = CollectorRegistry()
        self.events = Counter(
            "postmodern_collector_events",
            "Events received, by outcome: accepted, rejected (quarantined), duplicate (dropped).",
            ["outcome"],
            registry=self.registry,
        )
        self.throttled = Counter(
            "postmodern_collector_throttled_requests",
            "Requests answered 429: the stage was full.",
            registry=self.registry,
        )
        self.loads = Counter(
            "postmodern_collector_loads",
            "Attempts to load a sealed segment, by outcome: loaded, repeat (in the ledger already), failed.",
            ["outcome"],
            registry=self.registry,
        )
        self.flushed = Counter(
            "postmodern_collector_flushed_events", "Staged events that reached the raw log.", registry=self.registry
        )
        staged = Gauge(
            "postmodern_collector_staged_events", "Events acknowledged and not yet loaded.", registry=self.registry
        )
        staged.set_function(lambda: stage.staged)
        lag = Gauge(
            "postmodern_collector_lag_seconds", "Age of the oldest event not yet loaded.", registry=self.registry
        )
        lag.set_function(lambda: stage.lag_seconds)

    def on_load(self, outcome: str, events: int) -> None:
        self.loads.labels(outcome).inc()
        if outcome in ("loaded", "repeat"):
            self.flushed.inc(events)


class CollectorApp(FastAPI):
    """FastAPI, with `POST /events` from a client that sends no Origin header (a server, an SDK, a load generator)
    answered ahead of the middleware stack, which costs a third of such a request's time on the event loop. A
    browser's request carries an Origin and takes the stack, whose CORS middleware answers it."""

    post_events: Callable[[Request], Awaitable[Response]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        direct = (
            self.post_events is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == "/events"
            and all(name != b"origin" for name, _ in scope["headers"])
        )
        if not direct:
            await super().__call__(scope, receive, send)
            return
        response = await self.post_events(Request(scope, receive))
        await response(scope, receive, send)


def create_collector(settings: Settings) -> CollectorApp:
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stage = EventStage(
            settings.collect_dir,
            settings.collect_segment_events,
            settings.collect_stage_max_events,
            settings.collect_dedup_seconds,
        )
        metrics = CollectorMetrics(stage)
        flusher = Flusher(stage, settings, metrics.on_load)
        flusher.start()
        state.update(stage=stage, metrics=metrics)
        # The objects of start-up live as long as the process: out of the collector's way, a full collection
        # then scans only what requests made (10 ms, not 100+ ms of pause in the middle of a group).
        gc.freeze()
        yield
        flusher.stop()
        stage.close()

    app = CollectorApp(title="postmodern collector", lifespan=lifespan)
    # Shop pages post from their own origin (the demo page at /demo of the model server, say)
    origins = [origin.strip() for origin in settings.collect_allowed_origins.split(",") if origin.strip()]
    app.add_middleware(
        CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["Content-Type"]
    )
    max_body = settings.collect_max_events * MAX_BODY_BYTES_PER_EVENT

    @app.post("/events")
    async def events(request: Request) -> Response:
        body = await request.body()
        if len(body) > max_body:
            return problem(413, f"the body exceeds {max_body:,} bytes")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            return problem(400, f"the body is not JSON: {error}")
        batch = document.get("events") if isinstance(document, dict) else None
        if not isinstance(batch, list) or not batch:
            return problem(422, 'the body must be {"events": [...]} with at least one event')
        if len(batch) > settings.collect_max_events:
            return problem(413, f"{len(batch):,} events in one request; at most {settings.collect_max_events:,}")
        stage, metrics = state["stage"], state["metrics"]
        try:
            future = stage.submit(batch)
        except StageFull as full:
            metrics.throttled.inc()
            response = problem(429, f"{full}: retry later")
            response.headers["Retry-After"] = str(max(int(full.retry_after), 1))
            return response
        verdict = await asyncio.wrap_future(future)
        metrics.events.labels("accepted").inc(verdict.accepted)
        metrics.events.labels("duplicate").inc(verdict.duplicates)
        metrics.events.labels("rejected").inc(len(verdict.rejected))
        answer = {"accepted": verdict.accepted, "duplicates": verdict.duplicates, "rejected": verdict.rejected}
        return Response(orjson.dumps(answer), media_type="application/json")

    app.post_events = events

    @app.get("/ping")
    def ping() -> dict:
        stage = state["stage"]
        return {"status": "ok", "staged_events": stage.staged, "lag_seconds": round(stage.lag_seconds, 3)}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(state["metrics"].registry), media_type=CONTENT_TYPE_LATEST)

    return app


def problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)
