"""The collector: events acknowledged only once durable, checked with the loader's rules, loaded in micro-batches
exactly once (retries, crashes), back-pressure instead of loss, and its metrics."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
from conftest import log_rows, make_settings
from fastapi.testclient import TestClient
from serving_support import ServerProcess

from postmodern.collect import flush
from postmodern.collect.app import create_collector
from postmodern.collect.stage import EventStage
from postmodern.data.load import load_source
from postmodern.warehouse import WarehouseError, connect_log

T0 = 1_600_000_000_000


def event(number: int, session: str = "s1", **fields) -> dict:
    return {
        "event_id": f"e{number}",
        "session_id_hash": session,
        "event_type": "event_product",
        "product_action": "detail",
        "product_sku_hash": f"sku{number % 7}",
        "server_timestamp_epoch_ms": T0 + number,
        "hashed_url": f"u{number}",
        **fields,
    }


def wait_until_loaded(client, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/ping").json()["staged_events"]:
        assert time.monotonic() < deadline, "the stage was not loaded in time"
        time.sleep(0.1)


def test_events_are_acknowledged_checked_deduplicated_and_loaded_once_with_bad_ones_quarantined(tmp_path):
    settings = make_settings(tmp_path, collect_dir=tmp_path / "stage", collect_flush_seconds=0.2)
    search = {
        "event_id": "q1",
        "session_id_hash": "s2",
        "event_type": "search",
        "server_timestamp_epoch_ms": str(T0 + 50),
        "query_vector": "[0.1, 0.2]",
        "clicked_skus_hash": ["sku1"],
        "product_skus_hash": ["sku1", "sku2"],
    }
    whole_float = event(6, product_sku_hash="skü6", server_timestamp_epoch_ms=float(T0 + 6))  # JSON's 1.6e15
    batch = [event(1), event(2), event(3, event_type="click"), {**event(4), "event_id": ""}, search, "oops"]
    batch += [whole_float, event(7, product_action=True)]
    with TestClient(create_collector(settings)) as client:
        first = client.post("/events", json={"events": batch})
        assert first.status_code == 200
        assert first.json()["accepted"] == 4 and first.json()["duplicates"] == 0
        assert [(r["index"], r["reason"]) for r in first.json()["rejected"]] == [
            (2, "unknown event_type"),
            (3, "missing event id"),
            (5, "event is not a JSON object"),
            (7, "product_action is not text"),
        ]
        again = client.post("/events", json={"events": batch[:2] + [search, event(5)]}).json()
        assert again == {"accepted": 1, "duplicates": 3, "rejected": []}
        wait_until_loaded(client)
        metrics = client.get("/metrics").text
        for bad in ({"events": []}, {"rows": [event(9)]}):
            assert client.post("/events", json=bad).status_code == 422
        assert client.post("/events", content=b"{not json").status_code == 400
        too_many = client.post("/events", json={"events": [event(n) for n in range(1_001)]})
        assert too_many.status_code == 413 and "at most 1,000" in too_many.json()["detail"]
    raw = sorted(
        (json.loads(row["raw_data"]) for row in log_rows(settings)), key=lambda e: e["server_timestamp_epoch_ms"]
    )
    assert [e.get("product_sku_hash") for e in raw] == ["sku1", "sku2", "sku5", "skü6", None]
    assert raw[3]["server_timestamp_epoch_ms"] == T0 + 6  # a whole number, whatever its JSON form
    assert raw[4]["event_type"] == "search" and json.loads(raw[4]["product_skus_hash"]) == ["sku1", "sku2"]
    quarantine = log_rows(settings, "quarantine")
    assert sorted(row["reason"] for row in quarantine) == [
        "event is not a JSON object",
        "missing event id",
        "product_action is not text",
        "unknown event_type",
    ]
    ledger = log_rows(settings, "loads")
    assert {row["source_kind"] for row in ledger} == {"events"} and sum(row["events"] for row in ledger) == 5
    assert len({row["etl_id"] for row in log_rows(settings)}) == len(ledger)  # one etl_id per micro-batch
    assert 'postmodern_collector_events_total{outcome="accepted"} 5.0' in metrics
    assert 'postmodern_collector_events_total{outcome="duplicate"} 3.0' in metrics
    assert 'postmodern_collector_events_total{outcome="rejected"} 4.0' in metrics
    assert "postmodern_collector_flushed_events_total 9.0" in metrics  # the refused ones reached the quarantine
    assert "postmodern_collector_staged_events 0.0" in metrics


def test_a_load_that_fails_leaves_its_events_staged_and_a_new_connection_loads_them_once(tmp_path, monkeypatch):
    settings = make_settings(tmp_path, collect_dir=tmp_path / "stage", collect_flush_seconds=0.2)
    connections, attempts = [], []

    def connect(settings):
        connections.append(connect_log(settings))
        return connections[-1]

    def load_or_fail_once(raw_log, *args, **kwargs):
        attempts.append(raw_log)
        if len(attempts) == 1:
            raise WarehouseError("the warehouse is away")
        return load_source(raw_log, *args, **kwargs)

    monkeypatch.setattr(flush, "connect_log", connect)
    monkeypatch.setattr(flush, "load_source", load_or_fail_once)
    with TestClient(create_collector(settings)) as client:
        assert client.post("/events", json={"events": [event(n) for n in range(5)]}).json()["accepted"] == 5
        wait_until_loaded(client)
        assert client.post("/events", json={"events": [event(n) for n in range(5, 8)]}).json()["accepted"] == 3
        wait_until_loaded(client)
        metrics = client.get("/metrics").text
    assert 'postmodern_collector_loads_total{outcome="failed"} 1.0' in metrics
    assert 'postmodern_collector_loads_total{outcome="loaded"} 2.0' in metrics
    # the failed load's connection was dropped; the next one made both loads
    assert len(connections) == 2 and attempts == [connections[0], connections[1], connections[1]]
    timestamps = sorted(json.loads(row["raw_data"])["server_timestamp_epoch_ms"] for row in log_rows(settings))
    assert timestamps == [T0 + n for n in range(8)]


def test_a_shop_page_may_post_events_from_an_allowed_origin_only(tmp_path):
    """Requests without an Origin skip the middleware stack; a browser's go through its CORS middleware."""
    settings = make_settings(
        tmp_path, collect_dir=tmp_path / "stage", collect_flush_seconds=3600, collect_allowed_origins="http://shop"
    )
    with TestClient(create_collector(settings)) as client:
        shop = client.post("/events", json={"events": [event(1)]}, headers={"Origin": "http://shop"})
        assert shop.json()["accepted"] == 1 and shop.headers["access-control-allow-origin"] == "http://shop"
        other = client.post("/events", json={"events": [event(2)]}, headers={"Origin": "http://elsewhere"})
        assert "access-control-allow-origin" not in other.headers  # the browser keeps the answer from the page
        preflight = client.options(
            "/events",
            headers={"Origin": "http://shop", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "Content-Type"},
        )  # fmt: skip
        assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "http://shop"
        server = client.post("/events", json={"events": [event(3), event(1)]})  # no Origin: a server, an SDK
        assert server.json() == {"accepted": 1, "duplicates": 1, "rejected": []}
        assert "access-control-allow-origin" not in server.headers
        assert client.post("/events", content=b"[1,").status_code == 400


def test_a_full_stage_answers_429_with_retry_after_and_keeps_nothing_of_the_request(tmp_path):
    settings = make_settings(
        tmp_path, collect_dir=tmp_path / "stage", collect_flush_seconds=3600, collect_stage_max_events=10
    )
    with TestClient(create_collector(settings)) as client:
        assert client.post("/events", json={"events": [event(n) for n in range(8)]}).json()["accepted"] == 8
        full = client.post("/events", json={"events": [event(n) for n in range(8, 11)]})
        assert full.status_code == 429 and full.headers["Retry-After"] == "1"
        assert "holds 8 events" in full.json()["detail"]
        assert client.get("/ping").json()["staged_events"] == 8
        assert client.post("/events", json={"events": [event(8), event(9)]}).json()["accepted"] == 2
        assert "postmodern_collector_throttled_requests_total 1.0" in client.get("/metrics").text


def test_after_a_crash_the_stage_drops_the_torn_line_and_remembers_what_it_acknowledged(tmp_path):
    stage = EventStage(tmp_path, segment_events=1_000, max_events=1_000, dedup_seconds=600)
    assert stage.submit([event(1), event(2)]).result(timeout=10).accepted == 2
    (open_segment,) = tmp_path.glob("open-*.jsonl")
    with open_segment.open("ab") as handle:  # a write the crash cut short: its fsync never returned
        handle.write(b'{"event_id": "e3", "session_id_h')
    stage.close()
    again = EventStage(tmp_path, segment_events=1_000, max_events=1_000, dedup_seconds=600)
    (sealed,) = again.to_load()
    assert [json.loads(line)["event_id"] for line in sealed.path.read_text().splitlines()] == ["e1", "e2"]
    verdict = again.submit([event(1), event(3)]).result(timeout=10)
    assert (verdict.accepted, verdict.duplicates) == (1, 1)
    again.loaded(sealed)
    again.dedup_seconds = 0
    again.expire()  # the window over: the segment and its ids are forgotten
    assert not sealed.path.exists() and not list(tmp_path.glob("flushed-*"))
    assert again.submit([event(1)]).result(timeout=10).accepted == 1
    again.close()


def test_every_acknowledged_event_lands_once_through_a_kill_9_and_the_client_retrying(tmp_path):
    """The real service on loopback: a client posts 120 batches of 50, the collector is killed (SIGKILL) half-way
    and restarted; the client retries each batch it has no answer for. Every event ends in the raw log exactly
    once, whatever the crash interrupted (a write, an fsync, a load)."""
    settings = make_settings(tmp_path, collect_dir=tmp_path / "stage")
    env = {
        **os.environ,
        "DUCKDB_PATH": str(settings.duckdb_path),
        "DATA_DIR": str(tmp_path),
        "COLLECT_DIR": str(settings.collect_dir),
        "COLLECT_FLUSH_SECONDS": "0.3",
    }
    batches = [[event(batch * 50 + n, session=f"s{batch}") for n in range(50)] for batch in range(120)]
    server = ServerProcess(tmp_path, env, command="collect")
    answered = []

    def post_all() -> None:
        with httpx.Client(timeout=5) as client:
            for batch in batches:
                while True:
                    try:
                        response = client.post(f"{server.base_url}/events", json={"events": batch})
                    except httpx.TransportError:
                        time.sleep(0.05)  # the collector is down: the same batch again
                        continue
                    if response.status_code == 200:
                        answered.append(response.json())
                        break
                    time.sleep(0.05)

    client = threading.Thread(target=post_all)
    client.start()
    deadline = time.monotonic() + 60
    while len(answered) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)
    server = ServerProcess(tmp_path, env, command="collect", port=server.port)
    client.join(timeout=120)
    assert not client.is_alive() and len(answered) >= 120
    with httpx.Client(base_url=server.base_url) as http:
        wait_until_loaded(http)
    server.stop()
    raw = [json.loads(row["raw_data"]) for row in log_rows(settings)]
    keys = [(e["session_id_hash"], e["server_timestamp_epoch_ms"]) for e in raw]
    assert len(keys) == 6_000 and len(set(keys)) == 6_000
    assert sum(answer["rejected"] != [] for answer in answered) == 0
    assert sum(answer["accepted"] + answer["duplicates"] for answer in answered) >= 6_000


def test_streamed_events_land_while_the_warehouse_file_is_held_and_reach_the_marts_incrementally(tmp_path):
    """While another process holds the DuckDB file (`dbt build`, say), events are acknowledged and loaded all the
    same: the raw log is files beside it. `dbt build` picks each stream's loads up incrementally: the sessions
    mart equals a full refresh's."""
    from test_concurrency import HOLD_LOCK
    from test_dbt import query

    from postmodern.transform.dbt_runner import run_dbt_build

    settings = make_settings(tmp_path, collect_dir=tmp_path / "stage", collect_flush_seconds=0.2)
    first = [event(n, session=f"s{n % 3}") for n in range(9)]
    later = [event(n, session=f"s{n % 4}") for n in range(9, 17)]
    with TestClient(create_collector(settings)) as client:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(settings.duckdb_path), "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout.readline().strip() == "holding"
        assert client.post("/events", json={"events": first}).json()["accepted"] == 9
        wait_until_loaded(client)
        assert 'postmodern_collector_loads_total{outcome="loaded"}' in client.get("/metrics").text
        assert len(log_rows(settings)) == 9
        holder.communicate("go\n", timeout=30)
        run_dbt_build(settings)
        assert client.post("/events", json={"events": later}).json()["accepted"] == 8
        wait_until_loaded(client)
    incremental = run_dbt_build(settings)
    assert not incremental.failed_tests
    sessions = 'select session_id, interactions from "{schema}".sessions order by session_id'
    built = query(settings, sessions)
    assert [row["session_id"] for row in built] == ["s0", "s1", "s2", "s3"]
    assert sum(len(row["interactions"]) for row in built) == 17
    run_dbt_build(settings, full_refresh=True)
    assert query(settings, sessions) == built
