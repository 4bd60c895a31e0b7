"""The real-time endpoint, on SageMaker's container contract: `GET /ping`, `POST /invocations`, port 8080.

    GET  /ping, /health/ready   readiness: 200 once a model is loaded (with its version), else 503
    GET  /health/live           liveness: 200 while the process answers, model or not
    POST /invocations           a batch of sessions in, SKUs out (the SageMaker route)
    GET  /recommend             one session from the query string, for a quick look
    POST /reload                serve the newest bundle now (also: SIGHUP, and a poll every few seconds)
                                (with several workers, all of them: see serving/workers.py)
    GET  /demo                  a shop page that shows the recommender at work (serving/demo.py)
    GET  /metrics               Prometheus metrics
    GET  /openapi.json, /docs   the spec and its pages

Bad input is always a 4xx that says what is wrong: 401 (API key), 413 (body over the limit, refused
before it is parsed) or 422 (not UTF-8, not JSON, wrong types, too many or too long sessions, k out of
range). Each response names the model version that ranked it, so a hot swap is visible to clients.
"""

import asyncio
import hmac
import inspect
import signal
import threading
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_core import to_json  # a few times faster than json.dumps for these lists of floats
from starlette.types import ASGIApp, Receive, Scope, Send

from postmodern.config import MAX_FIELD_LENGTH, Settings
from postmodern.model.bundle import BundleError, Recommendation, SessionRecommender
from postmodern.serving.batching import BatchedRanking
from postmodern.serving.demo import add_demo
from postmodern.serving.metrics import RequestMetricsMiddleware, ServingMetrics
from postmodern.serving.registry import ModelSource
from postmodern.serving.served_model import ServedModel
from postmodern.serving.workers import tell_the_other_workers_to_reload

API_KEY_HEADER = "X-API-Key"
API_KEY_SCHEME = "APIKeyHeader"  # its name in the OpenAPI spec
# A request this large is ranked alone, in its own thread, and holds up no small one.
RANKED_ALONE_MIN_SESSIONS = 64


@dataclass(frozen=True)
class ServingConfig:
    """What one request may ask for, how often to look for a new model, and the optional API key."""

    max_k: int = 100
    max_sessions: int = 256
    max_session_length: int = 500
    max_body_bytes: int = 1_048_576
    max_sku_length: int = MAX_FIELD_LENGTH
    reload_seconds: float = 2.0
    cache_prefixes: int = 50_000  # recent prefixes whose rankings are reused (see RankingCache)
    workers: int = 1  # the server's processes: with several, each ranks on its event loop (see BatchedRanking)
    api_key: SecretStr | None = None
    collector_url: str = ""  # where the demo page posts its events

    @classmethod
    def from_settings(cls, settings: Settings) -> "ServingConfig":
        return cls(
            max_k=settings.serving_max_k,
            max_sessions=settings.serving_max_sessions,
            max_session_length=settings.serving_max_session_length,
            max_body_bytes=settings.serving_max_body_bytes,
            max_sku_length=settings.serving_max_sku_length,
            reload_seconds=settings.serving_reload_seconds,
            cache_prefixes=settings.serving_cache_prefixes,
            workers=settings.serving_workers,
            api_key=settings.serving_api_key,
            collector_url=settings.demo_collector_url,
        )

    @property
    def default_k(self) -> int:
        return min(10, self.max_k)


class ScoredSku(BaseModel):
    sku: str
    score: float = Field(description="Probability that this SKU comes next (its popularity share for the fallback).")


class InvocationResponse(BaseModel):
    model_version: str = Field(description="The model that ranked this response.")
    model_family: str = Field(description="Its family: lstm, cooccurrence, vsknn, blend, popularity...")
    recommendations: list[list[ScoredSku]] = Field(description="For each session, the top-k SKUs, best first.")
    unknown_skus: list[list[str]] = Field(description="SKUs of each session that the model does not know.")
    fallback: list[bool] = Field(description="True where no SKU was known and popular items were returned.")


class RecommendResponse(BaseModel):
    model_version: str
    model_family: str
    recommendations: list[ScoredSku]
    unknown_skus: list[str]
    fallback: bool


class Health(BaseModel):
    status: str
    model_version: str | None = None
    model_family: str | None = None


class Reloaded(BaseModel):
    model_version: str
    changed: bool = Field(description="False when the newest bundle was already being served.")


class Problem(BaseModel):
    detail: str


class InputError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class InputProblem(BaseModel):
    detail: list[InputError]


def invocation_model(config: ServingConfig) -> type[BaseModel]:
    """The request body, with this server's limits in its schema (and so in the OpenAPI spec)."""

    Sku = Annotated[str, Field(max_length=config.max_sku_length)]

    class InvocationRequest(BaseModel):
        model_config = ConfigDict(strict=True, extra="forbid")

        sessions: list[Annotated[list[Sku], Field(max_length=config.max_session_length)]] = Field(
            min_length=1,
            max_length=config.max_sessions,
            description="Sessions as lists of product SKUs, oldest first. Only the latest items the model "
            "reads count; unknown SKUs are ignored and reported (each once).",
        )
        k: int = Field(default=config.default_k, ge=1, le=config.max_k, description="Recommendations per session.")
        exclude_seen: bool = Field(default=False, description="Do not recommend SKUs already in the session.")

        @field_validator("k", mode="before")
        @classmethod
        def whole_numbers_are_integers(cls, k: object) -> object:
            """JSON Schema counts 16.0 as an integer, and so do we; 16.5 and "16" stay errors."""
            return int(k) if isinstance(k, float) and k.is_integer() else k

    return InvocationRequest


def input_problem(errors: list[dict], status_code: int = 422) -> HTTPException:
    """The 422 of FastAPI's own validation, so every input error has one shape: loc, msg, type."""
    return HTTPException(status_code, detail=[{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in errors])


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit`: from Content-Length before
    anything is read, else while it streams in (chunked uploads). Starlette's `max_body_size` does the same
    but answers in plain text or JSON depending on the case, and without the limit; this is one JSON shape."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the body is {int(declared):,} bytes; the limit is {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the body exceeds the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_invocation(request_model: type[BaseModel], body: bytes) -> BaseModel:
    try:
        return request_model.model_validate_json(body)
    except ValidationError as error:
        errors = error.errors(include_url=False, include_input=False, include_context=False)
        if errors[0]["type"] == "json_invalid":
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as bad_text:  # a clearer message than the JSON parser's
                raise input_problem(
                    [{"loc": ["body"], "msg": f"the body is not UTF-8 text: {bad_text}", "type": "utf8_invalid"}]
                ) from None
        raise input_problem([{**e, "loc": ["body", *e["loc"]]} for e in errors]) from None


def scored(items: list[tuple[str, float]]) -> list[dict[str, object]]:
    return [{"sku": sku, "score": score} for sku, score in items]


class DirectRoute(APIRoute):
    """A route whose endpoint takes the Request alone and makes its own Response, and is called as it is.
    FastAPI's per-request work for parameters and dependencies (a third of its time on a small request)
    is skipped; the declaration still makes the spec. So the endpoint declares neither: it reads and checks
    the request itself, as `/invocations` does to enforce its body limit before parsing."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        parameters = [parameter.annotation for parameter in inspect.signature(self.endpoint).parameters.values()]
        if parameters != [Request] or self.dependant.dependencies:
            raise TypeError(f"{self.path}: a DirectRoute endpoint takes the Request alone and has no dependencies")
        return self.endpoint


class ServingApp(FastAPI):
    """FastAPI, with a shortcut for DirectRoutes: their requests skip the middleware stack and the router
    too (a tenth of the time of a request to /invocations) and are answered as the stack would answer
    them: counted in the metrics, an HTTPException as FastAPI's JSON, any other error as the server's 500.
    So middleware added to the app applies to the other routes only; the metrics middleware is its own."""

    def __init__(self, metrics: ServingMetrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.metrics = metrics
        self.add_middleware(RequestMetricsMiddleware, metrics=metrics)
        self._direct: dict[tuple[str, str], ASGIApp] = {}

    def add_direct_route(
        self, path: str, endpoint: Callable[[Request], Awaitable[Response]], method: str, **kwargs: Any
    ) -> None:
        """Declare a DirectRoute (`kwargs` as for `add_api_route`) and answer it ahead of the stack."""
        self.router.add_api_route(path, endpoint, methods=[method], route_class_override=DirectRoute, **kwargs)
        route = self.router.routes[-1]

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            scope["route"] = route  # what the router would note, for the metrics' label
            request = Request(scope, receive, send)
            try:
                response = await endpoint(request)
            except HTTPException as error:
                response = await http_exception_handler(request, error)
            await response(scope, receive, send)

        self._direct[(method, path)] = RequestMetricsMiddleware(answer, self.metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        direct = self._direct.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        if direct is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await direct(scope, receive, send)


def create_app(source: ModelSource | Path, config: ServingConfig = ServingConfig()) -> ServingApp:
    """The app for one model source. The model loads at start-up; if it cannot, the app still starts
    (live, not ready) and serves the first bundle that loads."""
    metrics = ServingMetrics()
    served = ServedModel(
        source if isinstance(source, ModelSource) else ModelSource(Path(source)),
        on_reload=metrics.record_reload,
        cache_prefixes=config.cache_prefixes,
    )
    request_model = invocation_model(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(served.try_reload)
        stop = threading.Event()
        if config.reload_seconds > 0:
            threading.Thread(
                target=served.watch, args=(config.reload_seconds, stop), name="model-watch", daemon=True
            ).start()
        loop = asyncio.get_running_loop()
        on_main_thread = threading.current_thread() is threading.main_thread()
        if on_main_thread:  # signals reach the main thread only (not so under a test client)
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.run_in_executor(None, served.try_reload))
        yield
        stop.set()
        batched.close()
        if on_main_thread:
            loop.remove_signal_handler(signal.SIGHUP)

    app = ServingApp(
        metrics,
        title="Post-Modern Stack recommender",
        version="1",
        description=__doc__,
        lifespan=lifespan,
        # The metrics are our own Prometheus ones (metrics.py); FastAPI's OpenTelemetry hooks would only
        # cost a look-up of the global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.served = served
    check_api_key = api_key_check(config.api_key) if config.api_key else None
    auth = [Depends(check_api_key)] if check_api_key else []
    auth_problem = {401: {"model": Problem, "description": f"Missing or wrong {API_KEY_HEADER}"}} if auth else {}
    not_ready = {503: {"model": Problem, "description": "No model loaded yet"}}
    malformed_http = {  # e.g. raw control characters in the query: refused by the HTTP server itself
        400: {"description": "Not valid HTTP", "content": {"text/plain": {"schema": {"type": "string"}}}}
    }

    def ready_recommender() -> SessionRecommender:
        recommender = served.recommender  # read once: a swap during this request does not affect it
        if recommender is None:
            raise HTTPException(503, served.last_error or "the model is still loading")
        return recommender

    batched = BatchedRanking(RANKED_ALONE_MIN_SESSIONS, on_event_loop=config.workers > 1)

    async def rank(
        recommender: SessionRecommender, sessions: list[list[str]], k: int, exclude_seen: bool
    ) -> list[Recommendation]:
        results = await batched.rank(recommender, sessions, k, exclude_seen)
        fallbacks = sum(r.fallback for r in results)
        unknown, cached = sum(len(r.unknown_skus) for r in results), sum(r.cached for r in results)
        metrics.record_sessions(len(results) - fallbacks, fallbacks, unknown, cached)
        return results

    # The route that takes the load.
    async def invocations(request: Request) -> Response:
        if check_api_key:
            check_api_key(request.headers.get(API_KEY_HEADER))
        body = parse_invocation(request_model, await read_body(request, config.max_body_bytes))
        recommender = ready_recommender()
        results = await rank(recommender, body.sessions, body.k, body.exclude_seen)
        payload = {
            "model_version": recommender.version,
            "model_family": recommender.family,
            "recommendations": [scored(r.items) for r in results],
            "unknown_skus": [r.unknown_skus for r in results],
            "fallback": [r.fallback for r in results],
        }
        return Response(to_json(payload), media_type="application/json")

    app.add_direct_route(
        "/invocations",
        invocations,
        "POST",
        response_model=InvocationResponse,
        summary="Next-item recommendations for a batch of sessions",
        responses={
            **auth_problem,
            413: {"model": Problem, "description": "Body over the size limit"},
            422: {"model": InputProblem, "description": "Not UTF-8, not JSON, or not a valid request"},
            **not_ready,
        },
        # The body is read by hand (size limit first, any content type: SageMaker clients and a bare
        # `curl -d` may not send application/json), so its schema is declared here for the spec; so is the
        # API key, which the endpoint checks itself with the scheme that the other guarded routes declare.
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_model.model_json_schema()}},
            },
            **({"security": [{API_KEY_SCHEME: []}]} if check_api_key else {}),
        },
    )

    def health() -> Health:
        recommender = ready_recommender()
        return Health(status="ready", model_version=recommender.version, model_family=recommender.family)

    app.get("/ping", summary="SageMaker's health check: ready to rank", responses=not_ready)(health)
    app.get("/health/ready", summary="Readiness: a model is loaded", responses=not_ready)(health)

    @app.get("/health/live", summary="Liveness: the process answers, with or without a model")
    def live() -> Health:
        recommender = served.recommender
        return Health(status="alive", model_version=served.version, model_family=recommender and recommender.family)

    @app.get(
        "/recommend",
        response_model=RecommendResponse,
        summary="Next-item recommendations for one session",
        dependencies=auth,
        responses={**auth_problem, **not_ready, **malformed_http},
    )
    async def recommend(
        session: Annotated[
            str, Query(description="Comma-separated SKUs, oldest first", max_length=config.max_body_bytes)
        ] = "",
        k: Annotated[int, Query(ge=1, le=config.max_k)] = config.default_k,
        exclude_seen: bool = False,
    ) -> Response:
        skus = [sku for sku in (part.strip() for part in session.split(",")) if sku]
        longest = max(map(len, skus), default=0)
        if len(skus) > config.max_session_length or longest > config.max_sku_length:
            message = (
                f"at most {config.max_session_length} SKUs, not {len(skus)}"
                if len(skus) > config.max_session_length
                else f"a SKU has at most {config.max_sku_length:,} characters, not {longest:,}"
            )
            raise input_problem([{"loc": ["query", "session"], "msg": message, "type": "too_long"}])
        recommender = ready_recommender()
        (result,) = await rank(recommender, [skus], k, exclude_seen)
        payload = {
            "model_version": recommender.version,
            "model_family": recommender.family,
            "recommendations": scored(result.items),
            "unknown_skus": result.unknown_skus,
            "fallback": result.fallback,
        }
        return Response(to_json(payload), media_type="application/json")

    @app.post(
        "/reload",
        summary="Serve the newest bundle of the model source now",
        dependencies=auth,
        responses={**auth_problem, 409: {"model": Problem, "description": "The bundle could not be loaded"}},
    )
    async def reload() -> Reloaded:
        try:
            changed = await run_in_threadpool(served.reload)
        except BundleError as error:
            still = f"; still serving {served.version}" if served.version else ""
            raise HTTPException(409, f"{error}{still}") from None
        tell_the_other_workers_to_reload()  # with --workers: the others swap too, in a moment
        return Reloaded(model_version=served.version, changed=changed)

    add_demo(app, ready_recommender, config, auth)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    return app


def api_key_check(expected: SecretStr) -> Callable[[str | None], None]:
    """A dependency that lets through only requests carrying the key (also called directly with the
    header's value by DirectRoute endpoints). The key is compared in constant time and never echoed or logged."""
    header = APIKeyHeader(
        name=API_KEY_HEADER, scheme_name=API_KEY_SCHEME, auto_error=False, description="The key in SERVING_API_KEY"
    )
    secret = expected.get_secret_value().encode()

    def check(key: Annotated[str | None, Depends(header)]) -> None:
        if key is None or not hmac.compare_digest(key.encode(), secret):
            raise HTTPException(401, f"missing or wrong API key (send it in the {API_KEY_HEADER} header)")

    return check
