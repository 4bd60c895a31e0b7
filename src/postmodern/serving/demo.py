"""`/demo`: a small shop over the served model, for people to click through.

Products by category and price bucket (the bundle's catalogue) with a search box; a session that grows with each
click (view, add to cart, buy: the Coveo actions); after each click the next-product recommendations of
`/invocations` with their scores, the version and family of the model that answered and the latency; the same
session ranked by the served model, a blend's parts and popularity side by side. Each click is posted to the
collector (`postmodern collect`, `DEMO_COLLECTOR_URL`), so a demo session is data for the next run; without one
the page says its events are not recorded.

The page is static (serving/static/: HTML, CSS and plain JavaScript, no library, no build step) and calls the
endpoints any client would.
"""

# No `from __future__ import annotations`: FastAPI reads the request model of a route defined in a function.
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, StringConstraints

from postmodern.model.bundle import SessionRecommender

if TYPE_CHECKING:
    from postmodern.serving.app import ServingConfig

STATIC = Path(__file__).with_name("static")


def add_demo(
    app: FastAPI, ready_recommender: Callable[[], SessionRecommender], config: "ServingConfig", auth: list
) -> None:
    app.mount("/demo/static", StaticFiles(directory=STATIC), name="demo-static")
    sku = Annotated[str, StringConstraints(min_length=1, max_length=config.max_sku_length)]

    class CompareRequest(BaseModel):
        session: list[sku] = Field(max_length=config.max_session_length, description="SKUs, oldest first")
        k: int = Field(default=config.default_k, ge=1, le=config.max_k)
        exclude_seen: bool = False

    @app.get("/demo", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/demo/catalog", summary="The demo shop's products, the served model, and where clicks are sent")
    def catalog() -> dict:
        recommender = ready_recommender()
        products = recommender.bundle.catalog or [
            {"sku": sku, "category": None, "price_bucket": None} for sku, _ in recommender.bundle.popular
        ]
        return {
            "model_version": recommender.version,
            "model_family": recommender.family,
            "products": products,
            "collector_url": config.collector_url,
            "api_key_required": config.api_key is not None,
        }

    @app.post(
        "/demo/compare",
        summary="One session ranked by the served model, a blend's parts and popularity",
        dependencies=auth,
    )
    async def compare(request: CompareRequest) -> dict:
        recommender = ready_recommender()
        rankings = []
        for name, ranker in recommender.rankers().items():
            (result,) = await run_in_threadpool(
                recommender.recommend, [request.session], request.k, request.exclude_seen, ranker
            )
            items = [{"sku": sku, "score": score} for sku, score in result.items]
            rankings.append({"name": name, "recommendations": items, "fallback": result.fallback})
        return {"model_version": recommender.version, "model_family": recommender.family, "rankings": rankings}
