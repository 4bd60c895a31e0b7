import numpy as np
import pytest
from fastapi.testclient import TestClient

from postmodern.model.bundle import make_bundle
from postmodern.model.dataset import Vocabulary
from postmodern.model.lstm import LSTMConfig, LSTMRecommender
from postmodern.serving.app import MAX_K, MAX_SESSIONS_PER_REQUEST, create_app

SKUS = [f"sku{i}" for i in range(1, 21)]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    model = LSTMRecommender(LSTMConfig(n_items=len(SKUS) + 1, embedding_dim=8, hidden_dim=8))
    counts = np.arange(len(SKUS) + 1)
    bundle = make_bundle(model, Vocabulary(SKUS), counts, {"model_version": "test-1"})
    directory = bundle.save(tmp_path_factory.mktemp("bundle"))
    with TestClient(create_app(directory)) as client:
        yield client


def test_ping_answers_once_the_model_is_loaded(client):
    response = client.get("/ping")
    assert response.status_code == 200
    assert response.json()["model_version"] == "test-1"


def test_invocations_rank_skus_for_each_session(client):
    response = client.post("/invocations", json={"sessions": [["sku3", "sku4"], ["sku9"]], "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == "test-1"
    assert [len(r) for r in body["recommendations"]] == [5, 5]
    for ranked in body["recommendations"]:
        assert {item["sku"] for item in ranked} <= set(SKUS)
        scores = [item["score"] for item in ranked]
        assert scores == sorted(scores, reverse=True)
    assert body["fallback"] == [False, False]


def test_unknown_skus_are_ignored_and_unknown_sessions_get_popular_items(client):
    body = client.post("/invocations", json={"sessions": [["nope", "sku2"], ["nope"], []], "k": 3}).json()
    assert body["unknown_skus"] == [["nope"], ["nope"], []]
    assert body["fallback"] == [False, True, True]
    # popularity counts rise with the id, so the fallback is sku20, sku19, sku18
    assert [item["sku"] for item in body["recommendations"][1]] == ["sku20", "sku19", "sku18"]


def test_a_body_without_json_content_type_is_accepted(client):
    response = client.post(
        "/invocations",
        content=b'{"sessions": [["sku1"]], "k": 2}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert len(response.json()["recommendations"][0]) == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{bad json", "Invalid JSON"),
        (b'{"sessions": "sku1"}', "valid array"),
        (b'{"sessions": [[1, 2]]}', "valid string"),
        (b'{"sessions": []}', "at least 1"),
        (b'{"sessions": [["sku1"]], "k": 0}', "greater than or equal to 1"),
        (f'{{"sessions": [["sku1"]], "k": {MAX_K + 1}}}'.encode(), f"less than or equal to {MAX_K}"),
        (('{"sessions": [' + ",".join(['["sku1"]'] * (MAX_SESSIONS_PER_REQUEST + 1)) + "]}").encode(), "at most"),
        (b"", "Invalid JSON"),
    ],
)
def test_malformed_bodies_get_a_clear_4xx(client, body, message):
    response = client.post("/invocations", content=body)
    assert response.status_code == 422
    assert message in response.text


def test_openapi_documents_the_request_body(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/invocations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"sessions", "k"}
