"""The real server (`postmodern serve`) on 127.0.0.1: SageMaker's contract, fuzzing of its OpenAPI spec
(no 5xx, responses as documented), bodies refused before they are read, API keys kept out of the logs,
and hot swaps under concurrent requests with zero failed requests."""

import contextlib
import json
import os
import random
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import schemathesis
from conftest import make_settings
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from serving_support import ServerProcess, family_bundle, publish_small_bundle, small_bundle

from postmodern.serving.deploy import deploy_bundle
from postmodern.serving.registry import publish

SKUS = [f"sku{i}" for i in range(1, 21)]
BODY_LIMIT = 65_536
API_KEY = "loopback-only-key-7f3a"


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """A server that watches its registry every 0.2 s, with no API key."""
    workdir = tmp_path_factory.mktemp("watched")
    registry = workdir / "registry"
    publish_small_bundle(registry, "v1", SKUS)
    env = {
        **os.environ,
        "REGISTRY_DIR": str(registry),
        "SERVING_RELOAD_SECONDS": "0.2",
        "SERVING_MAX_BODY_BYTES": str(BODY_LIMIT),
        "SERVING_API_KEY": "",
    }
    server = ServerProcess(workdir, env)
    server.registry = registry
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A server that loads a new bundle only when told (SIGHUP or POST /reload), behind an API key."""
    workdir = tmp_path_factory.mktemp("keyed")
    registry = workdir / "registry"
    publish_small_bundle(registry, "k1", SKUS)
    env = {**os.environ, "REGISTRY_DIR": str(registry), "SERVING_RELOAD_SECONDS": "0", "SERVING_API_KEY": API_KEY}
    server = ServerProcess(workdir, env)
    server.registry = registry
    yield server
    server.stop()


def raw_exchange(port: int, request: bytes, send_after_headers: bytes = b"") -> bytes:
    """Send bytes over a plain socket and return the status line and headers of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        if send_after_headers:
            # the server may answer and close before the rest arrives: what we want
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                connection.sendall(send_after_headers)
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = connection.recv(65536)
            if not data:
                break
            answer += data
    return answer


def test_the_sagemaker_contract_on_loopback(watched):
    ping = httpx.get(f"{watched.base_url}/ping")
    assert ping.status_code == 200 and ping.json()["status"] == "ready"
    body = {"sessions": [["sku2", "sku3"], ["unknown"]], "k": 4}
    for headers in ({"content-type": "application/json"}, {}):
        response = httpx.post(f"{watched.base_url}/invocations", content=json.dumps(body), headers=headers)
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        answer = response.json()
        assert answer["model_version"] == ping.json()["model_version"]
        assert [len(r) for r in answer["recommendations"]] == [4, 4]
        assert answer["unknown_skus"] == [[], ["unknown"]] and answer["fallback"] == [False, True]
    quick = httpx.get(f"{watched.base_url}/recommend", params={"session": "sku2,sku3", "k": 4}).json()
    assert quick["recommendations"] == answer["recommendations"][0]
    assert "postmodern_model_info" in httpx.get(f"{watched.base_url}/metrics").text
    assert httpx.get(f"{watched.base_url}/health/live").status_code == 200


def test_an_announced_oversized_body_is_refused_before_it_is_sent(watched):
    headers = f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: {50 * BODY_LIMIT}\r\n\r\n".encode()
    answer = raw_exchange(watched.port, headers)  # the body never comes: the answer must not wait for it
    assert answer.startswith(b"HTTP/1.1 413")


def test_an_oversized_chunked_body_is_refused_while_it_streams(watched):
    headers = b"POST /invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"x" * 8192
    chunks = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 10 + b"0\r\n\r\n"
    assert raw_exchange(watched.port, headers, chunks).startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"sessions": [["\xc3\x28"]]}', "not UTF-8"),
        (b'{"sessions": [[', "Invalid JSON"),
        (b"null", "should be an object"),
    ],
)
def test_bad_bytes_over_the_wire_get_a_clear_422(watched, body, message):
    response = httpx.post(f"{watched.base_url}/invocations", content=body)
    assert response.status_code == 422 and message in response.text


@pytest.fixture(scope="module")
def watched_schema(watched):
    # A body over the size limit is refused with 413 (documented), before it is parsed: a rejection too.
    rejected = ["400", "401", "404", "405", "413", "422"]
    config = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": rejected}}})
    return schemathesis.openapi.from_url(f"{watched.base_url}/openapi.json", config=config)


ROUTES = ["/ping", "/health/live", "/health/ready", "/metrics", "/invocations", "/recommend", "/reload"]
WITH_INPUT = ["/invocations", "/recommend"]


@pytest.mark.parametrize(
    ("path", "mode"),
    [(path, GenerationMode.POSITIVE) for path in ROUTES] + [(path, GenerationMode.NEGATIVE) for path in WITH_INPUT],
)
def test_fuzzing_the_openapi_spec_never_gets_a_server_error(watched, watched_schema, path, mode):
    """Requests generated from the spec, valid or not (bounded: 40 per route and mode, the same every run).
    Every answer must be documented in the spec, match its schema, and never be a 5xx."""
    (method,) = watched_schema[path]

    @given(case=watched_schema[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    def exchange(case):
        case.call_and_validate(base_url=watched.base_url)

    exchange()


def test_api_keys_are_required_and_never_logged(keyed):
    body = json.dumps({"sessions": [["sku1"]]})
    url = f"{keyed.base_url}/invocations"
    assert httpx.post(url, content=body).status_code == 401
    assert httpx.post(url, content=body, headers={"X-API-Key": API_KEY[:-1]}).status_code == 401
    assert httpx.post(url, content=body, headers={"X-API-Key": API_KEY}).status_code == 200
    assert httpx.get(f"{keyed.base_url}/ping").status_code == 200
    output = keyed.output()
    assert "serving model k1" in output and "API key: required" in output
    assert API_KEY not in output and API_KEY[:-1] not in output


class Traffic:
    """Client threads posting sessions that mix the SKUs of every model version, until stopped
    (bounded: at most `max_seconds`). Every answer is kept to check which model served it."""

    def __init__(self, base_url: str, headers: dict[str, str], threads: int = 6, max_seconds: float = 60):
        self.base_url, self.headers, self.max_seconds = base_url, headers, max_seconds
        self.answers: list[list[tuple[int, dict | str]]] = [[] for _ in range(threads)]
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(answers,)) for answers in self.answers]

    def run(self, answers: list) -> None:
        rng = random.Random(len(answers))
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=10) as client:
            while not self.stop_event.is_set() and time.monotonic() < deadline:
                session = [f"{prefix}{rng.randint(1, 3)}" for prefix in ("sku", "new", "newer")]
                try:
                    response = client.post("/invocations", json={"sessions": [session], "k": 3})
                    answers.append((response.status_code, response.json()))
                except (httpx.HTTPError, ValueError) as error:
                    answers.append((0, repr(error)))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for thread in self.threads:
            thread.join()

    def count(self) -> int:
        return sum(len(answers) for answers in self.answers)


VOCABULARIES = {"sku": SKUS, "new": ["new1", "new2", "new3", "new4"], "newer": ["newer1", "newer2", "newer3"]}


def wait_for(condition, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout_s} s"
        time.sleep(0.05)


def assert_every_answer_came_whole_from_the_model_it_names(traffic: Traffic, versions: dict[str, str]) -> None:
    """Zero failures; each answer's SKUs and unknown SKUs fit the vocabulary of the version it names; and
    each client saw the versions in deployment order, never going back."""
    order = list(versions)
    for answers in traffic.answers:
        failures = [answer for answer in answers if answer[0] != 200]
        assert not failures, failures[:3]
        seen = [order.index(body["model_version"]) for _, body in answers]
        assert seen == sorted(seen)
        for _, body in answers:
            vocabulary = set(VOCABULARIES[versions[body["model_version"]]])
            assert {item["sku"] for item in body["recommendations"][0]} <= vocabulary
            assert not set(body["unknown_skus"][0]) & vocabulary and len(body["unknown_skus"][0]) == 2


def test_hot_swaps_on_sighup_and_on_reload_fail_no_request(keyed):
    headers = {"X-API-Key": API_KEY}
    served = lambda: httpx.get(f"{keyed.base_url}/ping").json()["model_version"]  # noqa: E731
    with Traffic(keyed.base_url, headers) as traffic:
        wait_for(lambda: traffic.count() > 50, "traffic on the first model")
        publish_small_bundle(keyed.registry, "k2", VOCABULARIES["new"])
        time.sleep(0.5)
        assert served() == "k1"  # this server does not watch: it swaps when told
        keyed.signal()
        wait_for(lambda: served() == "k2", "the swap on SIGHUP")
        published_at = traffic.count()
        wait_for(lambda: traffic.count() > published_at + 50, "traffic on the second model")
        publish_small_bundle(keyed.registry, "k3", VOCABULARIES["newer"])
        reloaded = httpx.post(f"{keyed.base_url}/reload", headers=headers).json()
        assert reloaded == {"model_version": "k3", "changed": True}
        reloaded_at = traffic.count()
        wait_for(lambda: traffic.count() > reloaded_at + 50, "traffic on the third model")
    assert_every_answer_came_whole_from_the_model_it_names(traffic, {"k1": "sku", "k2": "new", "k3": "newer"})


def test_a_deploy_is_picked_up_by_the_registry_watch_and_fails_no_request(watched):
    served = lambda: httpx.get(f"{watched.base_url}/ping").json()["model_version"]  # noqa: E731
    with Traffic(watched.base_url, {}) as traffic:
        wait_for(lambda: traffic.count() > 50, "traffic on the first model")
        # what the flow's deploy step does
        deploy_bundle(small_bundle("v2", VOCABULARIES["new"]), make_settings(watched.registry.parent))
        wait_for(lambda: served() == "v2", "the swap by the registry watch")
        swapped_at = traffic.count()
        wait_for(lambda: traffic.count() > swapped_at + 50, "traffic on the new model")
    assert_every_answer_came_whole_from_the_model_it_names(traffic, {"v1": "sku", "v2": "new"})


SERVED_FAMILIES = ["cooccurrence", "vsknn", "blend", "popularity", "lstm"]


def test_every_family_answers_the_same_contract_and_hot_swaps_fail_no_request(tmp_path):
    """A server whose registry receives a bundle of each family in turn, swapped in on POST /reload while clients
    post: every family ranks, excludes what was seen, falls back for unknown sessions and names itself."""
    registry = tmp_path / "registry"
    publish(family_bundle("lstm", "f0", SKUS), registry)
    env = {**os.environ, "REGISTRY_DIR": str(registry), "SERVING_RELOAD_SECONDS": "0", "SERVING_API_KEY": ""}
    server = ServerProcess(tmp_path, env)
    try:
        with Traffic(server.base_url, {}) as traffic:
            wait_for(lambda: traffic.count() > 30, "traffic on the first model")
            for index, name in enumerate(SERVED_FAMILIES, start=1):
                publish(family_bundle(name, f"f{index}", SKUS), registry)
                reloaded = httpx.post(f"{server.base_url}/reload", timeout=30).json()
                assert reloaded == {"model_version": f"f{index}", "changed": True}
                swapped_at = traffic.count()
                wait_for(lambda at=swapped_at: traffic.count() > at + 30, f"traffic on the {name} model")
                body = httpx.post(
                    f"{server.base_url}/invocations",
                    json={"sessions": [["sku3", "sku4"], ["nope"]], "k": 5, "exclude_seen": True},
                    timeout=10,
                ).json()
                assert body["model_version"] == f"f{index}" and body["model_family"] == name
                ranked = [item["sku"] for item in body["recommendations"][0]]
                assert len(ranked) == 5 and not {"sku3", "sku4"} & set(ranked) and set(ranked) <= set(SKUS)
                scores = [item["score"] for item in body["recommendations"][0]]
                assert scores == sorted(scores, reverse=True) and all(0 <= score <= 1 for score in scores)
                assert body["fallback"] == [False, True] and body["unknown_skus"] == [[], ["nope"]]
                assert httpx.get(f"{server.base_url}/ping").json()["model_family"] == name
                metrics = httpx.get(f"{server.base_url}/metrics").text
                assert f'postmodern_model_info{{family="{name}",version="f{index}"}} 1.0' in metrics
        versions = {f"f{index}": "sku" for index in range(len(SERVED_FAMILIES) + 1)}
        assert_every_answer_came_whole_from_the_model_it_names(traffic, versions)
    finally:
        server.stop()


def worker_processes(pid: int) -> list[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def fresh_ping(base_url: str) -> str | None:
    """The version that one new connection's /ping names (a new connection may reach any worker)."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        answer = client.get("/ping")
    return answer.json().get("model_version") if answer.status_code == 200 else None


def test_workers_share_the_port_the_metrics_and_every_hot_swap(tmp_path):
    """`serve --workers 2`: two processes answer on one port; POST /reload (which one worker answers) and SIGHUP (to
    the supervisor) swap every worker with no failed request; every scrape of /metrics counts the whole group."""
    registry = tmp_path / "registry"
    publish_small_bundle(registry, "k1", SKUS)
    env = {**os.environ, "REGISTRY_DIR": str(registry), "SERVING_RELOAD_SECONDS": "0", "SERVING_API_KEY": ""}
    server = ServerProcess(tmp_path, env, "--workers", "2")
    try:
        workers = worker_processes(server.process.pid)
        assert len(workers) == 2
        metrics_dir = dict(
            entry.split("=", 1) for entry in Path(f"/proc/{workers[0]}/environ").read_text().split("\0") if "=" in entry
        )["PROMETHEUS_MULTIPROC_DIR"]
        wait_for(lambda: all(fresh_ping(server.base_url) == "k1" for _ in range(10)), "both workers ready")
        with Traffic(server.base_url, {}) as traffic:
            wait_for(lambda: traffic.count() > 50, "traffic on the first model")
            publish_small_bundle(registry, "k2", VOCABULARIES["new"])
            assert httpx.post(f"{server.base_url}/reload").json() == {"model_version": "k2", "changed": True}
            wait_for(lambda: all(fresh_ping(server.base_url) == "k2" for _ in range(20)), "every worker on k2")
            swapped_at = traffic.count()
            wait_for(lambda: traffic.count() > swapped_at + 50, "traffic on the second model")
            publish_small_bundle(registry, "k3", VOCABULARIES["newer"])
            server.signal()
            wait_for(lambda: all(fresh_ping(server.base_url) == "k3" for _ in range(20)), "every worker on k3")
            swapped_at = traffic.count()
            wait_for(lambda: traffic.count() > swapped_at + 50, "traffic on the third model")
        assert_every_answer_came_whole_from_the_model_it_names(traffic, {"k1": "sku", "k2": "new", "k3": "newer"})
        assert worker_processes(server.process.pid) == workers  # swapped in place, not restarted

        def invocations_counted() -> float:
            text = httpx.get(f"{server.base_url}/metrics").text  # a new connection: any worker
            assert 'version="k3"} 1.0' in text and "postmodern_ready 1.0" in text
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("postmodern_requests_total{") and 'route="/invocations"' in line
            )

        assert {invocations_counted() for _ in range(10)} == {float(traffic.count())}
        for _ in range(10):  # new connections: whichever worker answers, `exclude_seen` and the fallback hold
            body = httpx.post(
                f"{server.base_url}/invocations",
                json={"sessions": [["newer1", "newer2"], ["nope"]], "k": 3, "exclude_seen": True},
            ).json()
            assert [item["sku"] for item in body["recommendations"][0]] == ["newer3"]
            assert body["fallback"] == [False, True] and body["unknown_skus"] == [[], ["nope"]]
    finally:
        server.stop()
    assert all(not os.path.exists(f"/proc/{pid}") for pid in workers)
    assert not os.path.exists(metrics_dir)
