"""The endpoint's behaviour, in process: the contract, every bad input, auth, metrics, reloads."""

import gc
import json
import logging
import time
import weakref

import pytest
from fastapi import Depends, FastAPI, Request, Response
from fastapi.testclient import TestClient
from pydantic import SecretStr
from serving_support import publish_small_bundle, small_bundle

from postmodern.serving.app import DirectRoute, ServingConfig, create_app
from postmodern.serving.registry import ModelSource
from postmodern.serving.served_model import ServedModel

SKUS = [f"sku{i}" for i in range(1, 21)]
LIMITS = ServingConfig(
    max_k=15, max_sessions=4, max_session_length=30, max_body_bytes=2_000, max_sku_length=64, reload_seconds=0
)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return small_bundle("test-1", SKUS).save(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def client(bundle_dir):
    with TestClient(create_app(bundle_dir, LIMITS)) as client:
        yield client


def post(client, body, **kwargs):
    return client.post("/invocations", content=body if isinstance(body, bytes) else json.dumps(body), **kwargs)


def test_ping_and_readiness_answer_once_the_model_is_loaded(client):
    for route in ("/ping", "/health/ready", "/health/live"):
        response = client.get(route)
        assert response.status_code == 200
        assert response.json()["model_version"] == "test-1"


def test_invocations_rank_skus_for_each_session(client):
    response = post(client, {"sessions": [["sku3", "sku4"], ["sku9"]], "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == "test-1"
    assert [len(r) for r in body["recommendations"]] == [5, 5]
    for ranked in body["recommendations"]:
        assert {item["sku"] for item in ranked} <= set(SKUS)
        scores = [item["score"] for item in ranked]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
    assert body["fallback"] == [False, False]


def test_scores_are_the_model_probabilities(client):
    everything = post(client, {"sessions": [["sku3"]], "k": 15}).json()["recommendations"][0]
    top = post(client, {"sessions": [["sku3"]], "k": 3}).json()["recommendations"][0]
    assert top == everything[:3]  # a smaller k is a prefix of the same ranking with the same scores


def test_unknown_skus_are_ignored_and_unknown_sessions_get_popular_items(client):
    body = post(client, {"sessions": [["nope", "sku2"], ["nope"], []], "k": 3}).json()
    assert body["unknown_skus"] == [["nope"], ["nope"], []]
    assert body["fallback"] == [False, True, True]
    # popularity counts rise with the id, so the fallback is sku20, sku19, sku18
    assert [item["sku"] for item in body["recommendations"][1]] == ["sku20", "sku19", "sku18"]
    assert body["recommendations"][1] == body["recommendations"][2]


def test_exclude_seen_never_recommends_the_session_own_skus(client):
    session = ["sku1", "sku5", "sku9"]
    shown = post(client, {"sessions": [session], "k": 15}).json()["recommendations"][0]
    hidden = post(client, {"sessions": [session], "k": 15, "exclude_seen": True}).json()["recommendations"][0]
    assert not {item["sku"] for item in hidden} & set(session)
    assert len(hidden) == 15
    unseen_order = [item["sku"] for item in shown if item["sku"] not in session]
    assert [item["sku"] for item in hidden][: len(unseen_order)] == unseen_order


def test_exclude_seen_returns_fewer_items_when_the_session_covers_the_catalogue(client):
    body = post(client, {"sessions": [SKUS[:18]], "k": 15, "exclude_seen": True}).json()
    assert sorted(item["sku"] for item in body["recommendations"][0]) == ["sku19", "sku20"]


def test_long_sessions_are_read_from_their_latest_items(client):
    long_session = [SKUS[i % 20] for i in range(29)]  # the model reads the latest 20
    full = post(client, {"sessions": [long_session], "k": 5}).json()
    latest = post(client, {"sessions": [long_session[-20:]], "k": 5}).json()
    assert full["recommendations"] == latest["recommendations"]


def test_a_body_without_json_content_type_is_accepted(client):
    response = post(
        client, b'{"sessions": [["sku1"]], "k": 2}', headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 200
    assert len(response.json()["recommendations"][0]) == 2


def test_get_recommend_reads_one_session_from_the_query(client):
    response = client.get("/recommend", params={"session": "sku3,nope, sku4", "k": 4})
    assert response.status_code == 200
    body = response.json()
    batch = post(client, {"sessions": [["sku3", "nope", "sku4"]], "k": 4}).json()
    assert body["recommendations"] == batch["recommendations"][0]
    assert body["unknown_skus"] == ["nope"] and body["fallback"] is False
    empty = client.get("/recommend").json()
    assert empty["fallback"] is True and len(empty["recommendations"]) == 10


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{bad json", 422, "Invalid JSON"),
        (b"", 422, "Invalid JSON"),
        (b'{"sessions": [["sku1"]]', 422, "EOF while parsing"),
        (b'{"sessions": [["\xff\xfe"]]}', 422, "not UTF-8 text"),
        (b'{"sessions": "sku1"}', 422, "valid array"),
        (b'{"sessions": [[1, 2]]}', 422, "valid string"),
        (b'{"sessions": [["sku1"]], "k": "5"}', 422, "valid integer"),
        (b'{"sessions": [["sku1"]], "k": 2.5}', 422, "valid integer"),
        (b'{"sessions": [["sku1"]], "exclude_seen": "yes"}', 422, "valid boolean"),
        (b'{"sessions": [["sku1"]], "session": []}', 422, "Extra inputs"),
        (b'{"sessions": []}', 422, "at least 1"),
        (b'{"sessions": [["sku1"]], "k": 0}', 422, "greater than or equal to 1"),
        (b'{"sessions": [["sku1"]], "k": 16}', 422, "less than or equal to 15"),
        (b'{"sessions": [["a"], ["b"], ["c"], ["d"], ["e"]]}', 422, "at most 4 items"),
        (json.dumps({"sessions": [["sku1"] * 31]}).encode(), 422, "at most 30 items"),
        (json.dumps({"sessions": [["sku1", "x" * 65]]}).encode(), 422, "at most 64 characters"),
        (json.dumps({"sessions": [["x" * 2_000]]}).encode(), 413, "limit is 2,000"),
        (b"[" * 2_001, 413, "limit is 2,000"),
    ],
)
def test_bad_bodies_get_a_clear_4xx(client, body, status, message):
    response = post(client, body)
    assert response.status_code == status, response.text
    assert message in response.text


def test_an_overlong_sku_is_refused_without_echoing_it(client):
    sku = "x" * 65 + "END"
    response = post(client, {"sessions": [["sku1"], ["sku2", sku]]})
    assert response.status_code == 422 and "END" not in response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "sessions", 1, 1] and problem["type"] == "string_too_long"
    assert problem["msg"] == "String should have at most 64 characters"
    query = client.get("/recommend", params={"session": f"sku1,{sku}"})
    assert query.status_code == 422 and "END" not in query.text
    assert "a SKU has at most 64 characters, not 68" in query.text


def test_an_unknown_sku_is_reported_once_however_often_it_is_sent(client):
    body = post(client, {"sessions": [["nope", "sku2", "nope", "other", "nope"]], "k": 3}).json()
    assert body["unknown_skus"] == [["nope", "other"]]


def test_input_errors_say_where_the_problem_is(client):
    detail = post(client, {"sessions": [["sku1"], [3]]}).json()["detail"]
    assert detail == [
        {"loc": ["body", "sessions", 1, 0], "msg": "Input should be a valid string", "type": "string_type"}
    ]


def test_an_oversized_chunked_body_is_refused_while_it_streams(client):
    read = []

    def chunks():
        for _ in range(100):
            read.append(1)
            yield b" " * 100

    response = client.post("/invocations", content=chunks())  # no Content-Length: sent chunked
    assert response.status_code == 413 and "exceeds the limit of 2,000 bytes" in response.text


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"k": 0}, "greater than or equal to 1"),
        ({"k": "ten"}, "valid integer"),
        ({"exclude_seen": "maybe"}, "valid boolean"),
        ({"session": ",".join(["sku1"] * 31)}, "at most 30 SKUs, not 31"),
    ],
)
def test_bad_queries_get_a_clear_4xx(client, params, message):
    response = client.get("/recommend", params=params)
    assert response.status_code == 422 and message in response.text


def test_openapi_documents_the_routes_and_the_limits(client):
    spec = client.get("/openapi.json").json()
    assert {"/ping", "/invocations", "/recommend", "/reload", "/metrics", "/health/live", "/health/ready"} <= set(
        spec["paths"]
    )
    schema = spec["paths"]["/invocations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"sessions", "k", "exclude_seen"}
    assert schema["properties"]["k"]["maximum"] == 15 and schema["properties"]["sessions"]["maxItems"] == 4
    assert schema["properties"]["sessions"]["items"]["maxItems"] == 30
    assert schema["properties"]["sessions"]["items"]["items"]["maxLength"] == 64
    assert {"200", "413", "422", "503"} <= set(spec["paths"]["/invocations"]["post"]["responses"])


def test_metrics_count_requests_time_them_and_name_the_model(client):
    post(client, {"sessions": [["sku1"], ["nope"]], "k": 2})
    post(client, b"{bad")
    text = client.get("/metrics").text
    assert 'postmodern_model_info{family="lstm",version="test-1"} 1.0' in text
    assert "postmodern_ready 1.0" in text
    assert 'postmodern_requests_total{method="POST",route="/invocations",status="422"}' in text
    assert 'postmodern_request_duration_seconds_bucket{le="0.01",route="/invocations"}' in text
    assert 'postmodern_sessions_total{ranked_by="fallback"}' in text
    counts = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line.startswith("postmodern_")
    }
    assert counts['postmodern_requests_total{method="POST",route="/invocations",status="200"}'] >= 1
    assert counts["postmodern_unknown_skus_total"] >= 1
    post(client, {"sessions": [["sku2", "sku1"]], "k": 2})  # ranked now, or already cached
    cached = float(client.get("/metrics").text.split("\npostmodern_cached_rankings_total ")[1].split()[0])
    post(client, {"sessions": [["sku2", "sku1"], ["sku2", "nope", "sku1"]], "k": 2})  # both from the cache
    assert f"postmodern_cached_rankings_total {cached + 2}" in client.get("/metrics").text
    client.get("/no/such/page")
    assert 'route="unmatched",status="404"' in client.get("/metrics").text  # raw paths never become labels


def test_an_unexpected_error_in_ranking_is_a_counted_500_and_other_methods_get_405(bundle_dir):
    with TestClient(create_app(bundle_dir, LIMITS), raise_server_exceptions=False) as client:
        recommender = client.app.state.served.recommender
        recommender.recommend = lambda *args: 1 / 0
        assert post(client, {"sessions": [["sku1"]]}).status_code == 500
        assert client.get("/invocations").status_code == 405
        text = client.get("/metrics").text
    assert 'postmodern_requests_total{method="POST",route="/invocations",status="500"} 1.0' in text
    assert 'postmodern_requests_total{method="GET",route="/invocations",status="405"} 1.0' in text


def test_an_api_key_guards_ranking_and_reloads_but_not_health(bundle_dir, caplog):
    key = "s3cret-serving-key"
    config = ServingConfig(reload_seconds=0, api_key=SecretStr(key))
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(bundle_dir, config)) as client:
        body = {"sessions": [["sku1"]]}
        assert post(client, body).status_code == 401
        wrong = post(client, body, headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401 and "X-API-Key" in wrong.text and key not in wrong.text
        assert post(client, body, headers={"X-API-Key": key}).status_code == 200
        assert client.get("/recommend", params={"session": "sku1"}).status_code == 401
        assert client.get("/recommend", params={"session": "sku1"}, headers={"X-API-Key": key}).status_code == 200
        assert client.post("/reload").status_code == 401
        assert client.post("/reload", headers={"X-API-Key": key}).status_code == 200
        for route in ("/ping", "/health/live", "/metrics", "/openapi.json"):
            assert client.get(route).status_code == 200
        spec = client.get("/openapi.json").json()
        assert "APIKeyHeader" in spec["components"]["securitySchemes"]
        for path, method in (("/invocations", "post"), ("/recommend", "get"), ("/reload", "post")):
            assert spec["paths"][path][method]["security"] == [{"APIKeyHeader": []}]
        assert "security" not in spec["paths"]["/ping"]["get"]
    assert key not in caplog.text


def test_reload_serves_the_registry_newest_bundle_and_keeps_the_old_one_when_the_new_is_broken(tmp_path):
    registry = tmp_path / "registry"
    publish_small_bundle(registry, "v1", SKUS)
    with TestClient(create_app(ModelSource(registry, follows_registry=True), LIMITS)) as client:
        assert client.post("/reload").json() == {"model_version": "v1", "changed": False}
        publish_small_bundle(registry, "v2", ["other1", "other2", "other3"])
        assert client.post("/reload").json() == {"model_version": "v2", "changed": True}
        body = post(client, {"sessions": [["other1"]], "k": 2}).json()
        assert body["model_version"] == "v2" and body["fallback"] == [False]

        broken = publish_small_bundle(registry, "v3", SKUS)
        (broken / "model" / "item_embedding.weight.npy").write_bytes(b"not a NumPy file")
        response = client.post("/reload")
        assert response.status_code == 409
        assert "v3" in response.json()["detail"] and "still serving v2" in response.json()["detail"]
        assert client.get("/ping").json()["model_version"] == "v2"
        assert post(client, {"sessions": [["other1"]]}).json()["model_version"] == "v2"
        assert 'postmodern_model_reloads_total{outcome="failed"} 1.0' in client.get("/metrics").text


def test_a_loaded_model_is_out_of_the_collectors_passes_and_is_still_freed_when_swapped_out(tmp_path):
    registry = tmp_path / "registry"
    publish_small_bundle(registry, "v1", SKUS)
    served = ServedModel(ModelSource(registry, follows_registry=True))
    gc.unfreeze()
    assert served.reload() and gc.get_freeze_count() > 0
    swapped_out = weakref.ref(served.recommender)
    publish_small_bundle(registry, "v2", SKUS)
    assert served.reload() and served.version == "v2"
    assert swapped_out() is None  # by reference counts alone: the collector never sees frozen objects


def test_without_a_loadable_model_the_server_is_live_but_not_ready_until_one_is_deployed(tmp_path):
    registry = tmp_path / "registry"
    with TestClient(create_app(ModelSource(registry, follows_registry=True), LIMITS)) as client:
        assert client.get("/health/live").json() == {"status": "alive", "model_version": None, "model_family": None}
        for route in ("/ping", "/health/ready"):
            response = client.get(route)
            assert response.status_code == 503 and "no deployed model" in response.text
        assert post(client, {"sessions": [["sku1"]]}).status_code == 503
        assert "postmodern_ready 0.0" in client.get("/metrics").text
        publish_small_bundle(registry, "first", SKUS)
        assert client.post("/reload").json() == {"model_version": "first", "changed": True}
        assert client.get("/ping").json() == {"status": "ready", "model_version": "first", "model_family": "lstm"}


def test_the_registry_is_watched_for_new_bundles(tmp_path):
    registry = tmp_path / "registry"
    publish_small_bundle(registry, "v1", SKUS)
    config = ServingConfig(reload_seconds=0.05)
    with TestClient(create_app(ModelSource(registry, follows_registry=True), config)) as client:
        assert client.get("/ping").json()["model_version"] == "v1"
        publish_small_bundle(registry, "v2", SKUS)
        deadline = time.monotonic() + 20
        while client.get("/ping").json()["model_version"] != "v2":
            assert time.monotonic() < deadline, "the new bundle was not picked up in 20 s"
            time.sleep(0.05)


def test_a_direct_route_refuses_an_endpoint_that_fastapi_would_have_to_feed():
    app = FastAPI()

    async def with_a_query(request: Request, k: int = 3) -> Response:
        return Response()

    async def alone(request: Request) -> Response:
        return Response()

    with pytest.raises(TypeError, match="takes the Request alone"):
        app.router.add_api_route("/query", with_a_query, methods=["POST"], route_class_override=DirectRoute)
    with pytest.raises(TypeError, match="no dependencies"):
        app.router.add_api_route(
            "/guarded", alone, methods=["POST"], route_class_override=DirectRoute, dependencies=[Depends(lambda: None)]
        )
    app.router.add_api_route("/direct", alone, methods=["POST"], route_class_override=DirectRoute)
    assert TestClient(app).post("/direct").status_code == 200
