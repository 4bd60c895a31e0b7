"""The real-time endpoint, on SageMaker's container contract: `GET /ping`, `POST /invocations`, port 8080."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, ValidationError

from postmodern.model.bundle import ModelBundle, SessionRecommender

MAX_K = 100
MAX_SESSIONS_PER_REQUEST = 256


class InvocationRequest(BaseModel):
    sessions: list[list[str]] = Field(
        min_length=1,
        max_length=MAX_SESSIONS_PER_REQUEST,
        description="Sessions as lists of product SKUs, oldest first.",
    )
    k: int = Field(default=10, ge=1, le=MAX_K, description="How many recommendations per session.")


class ScoredSku(BaseModel):
    sku: str
    score: float


class InvocationResponse(BaseModel):
    model_version: str
    recommendations: list[list[ScoredSku]]
    unknown_skus: list[list[str]] = Field(description="SKUs of each session that the model does not know.")
    fallback: list[bool] = Field(description="True where no SKU was known and popular items were returned.")


def create_app(model_dir: Path) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.recommender = SessionRecommender(ModelBundle.load(model_dir))
        yield

    app = FastAPI(title="Post-Modern Stack recommender", version="1", lifespan=lifespan)
    app.state.recommender = None

    @app.get("/ping", summary="Health check: 200 once a model is loaded")
    def ping(request: Request) -> dict[str, str]:
        recommender = request.app.state.recommender
        if recommender is None:
            raise HTTPException(status_code=503, detail="model not loaded")
        return {"status": "ok", "model_version": recommender.version}

    # The body is parsed as JSON whatever its content type: SageMaker clients and a bare `curl -d` may not
    # send `application/json`. The schema is declared by hand so that OpenAPI stays true.
    @app.post(
        "/invocations",
        response_model=InvocationResponse,
        summary="Next-item recommendations",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": InvocationRequest.model_json_schema()}},
            }
        },
    )
    async def invocations(request: Request) -> InvocationResponse:
        try:
            body = InvocationRequest.model_validate_json(await request.body())
        except ValidationError as error:
            raise HTTPException(
                status_code=422, detail=error.errors(include_url=False, include_input=False, include_context=False)
            ) from None
        recommender: SessionRecommender = request.app.state.recommender
        results = await run_in_threadpool(recommender.recommend, body.sessions, body.k)
        return InvocationResponse(
            model_version=recommender.version,
            recommendations=[[ScoredSku(sku=sku, score=score) for sku, score in r.items] for r in results],
            unknown_skus=[r.unknown_skus for r in results],
            fallback=[r.fallback for r in results],
        )

    return app
