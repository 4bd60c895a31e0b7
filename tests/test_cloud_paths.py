"""The cloud paths, tested without an account: dbt Cloud against a local server that answers like its v2 API
(nothing maintained emulates dbt Cloud: the run life cycle and the error bodies follow its documentation),
Snowflake's and Comet's missing extras."""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest
from conftest import SNOWFLAKE_CREDENTIALS, make_settings
from fakesnow_support import extend_fakesnow, fakesnow_server
from test_dbt import query, write_coveo
from test_end_to_end import run_quick_flow

from postmodern.transform.dbt_cloud import DbtCloudClient, DbtCloudError
from postmodern.transform.dbt_runner import DbtBuildError

FIXTURES = Path(__file__).parent / "fixtures"
MANIFEST = {"metadata": {"project_name": "postmodern"}, "nodes": {}, "sources": {}}
SUCCESSFUL_RUN = {"results": [{"unique_id": "model.postmodern.sessions", "status": "success", "execution_time": 1.5}]}


HUMANIZED = {1: "Queued", 2: "Starting", 3: "Running", 10: "Success", 20: "Error", 30: "Cancelled"}


def v2(data, code=200, message="Success!"):
    """A body of dbt Cloud's v2 API: its status envelope around the data (null on errors)."""
    status = {"code": code, "is_success": code < 400, "user_message": message, "developer_message": ""}
    return {"status": status, "data": data}


class FakeDbtCloud(BaseHTTPRequestHandler):
    """dbt Cloud's v2 API for one job: a triggered run goes through `life` (a status per poll, the last one
    kept), as dbt Cloud's runs go from queued to starting, running, and success, error or cancelled."""

    life: list[int] = [1, 2, 3, 10]
    status_message: str | None = None  # why an errored run failed, as dbt Cloud says it
    run_results: dict | None = SUCCESSFUL_RUN
    requests: list[tuple[str, str, dict, str]] = []
    polls = 0

    def _answer(self, code, payload):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _run(self, status: int) -> dict:
        return {
            "id": 99,
            "job_definition_id": 2,
            "status": status,
            "status_humanized": HUMANIZED[status],
            "status_message": type(self).status_message if status == 20 else None,
            "in_progress": status in (1, 2, 3),
            "is_complete": status in (10, 20, 30),
            "is_success": status == 10,
            "is_error": status == 20,
            "is_cancelled": status == 30,
        }

    def _authorised(self) -> bool:
        if self.headers.get("authorization") == "Token secret-token":
            return True
        self._answer(401, v2(None, 401, "Invalid token."))
        return False

    def do_POST(self):
        length = int(self.headers.get("content-length", 0))
        payload = json.loads(self.rfile.read(length) or b"{}")
        type(self).requests.append(("POST", self.path, payload, self.headers.get("authorization")))
        if not self._authorised():
            return
        if not self.path.endswith("/jobs/2/run/"):
            return self._answer(404, v2(None, 404, "The requested resource was not found."))
        type(self).polls = 0
        self._answer(200, v2(self._run(1)))

    def do_GET(self):
        type(self).requests.append(("GET", self.path, {}, self.headers.get("authorization")))
        if not self._authorised():
            return
        if self.path.endswith("/runs/99/"):
            life = type(self).life
            status = life[min(type(self).polls, len(life) - 1)]
            type(self).polls += 1
            return self._answer(200, v2(self._run(status)))
        if self.path.endswith("/artifacts/manifest.json"):
            return self._answer(200, MANIFEST)
        if self.path.endswith("/artifacts/run_results.json") and type(self).run_results is not None:
            return self._answer(200, type(self).run_results)
        self._answer(404, v2(None, 404, "The requested resource was not found."))

    def log_message(self, *args):
        pass


def dbt_cloud_settings(tmp_path, url):
    return make_settings(
        tmp_path,
        dbt_cloud=True,
        dbt_account_id="1",
        dbt_project_id="5",
        dbt_job_id="2",
        dbt_api_key="secret-token",
        dbt_cloud_url=url,
    )


@pytest.fixture
def dbt_cloud(tmp_path):
    FakeDbtCloud.requests = []
    FakeDbtCloud.run_results = SUCCESSFUL_RUN
    FakeDbtCloud.status_message = None
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeDbtCloud)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield dbt_cloud_settings(tmp_path, f"http://127.0.0.1:{server.server_port}")
    server.shutdown()
    server.server_close()


def test_dbt_cloud_job_is_triggered_polled_through_its_life_cycle_and_its_artifacts_read(dbt_cloud, capsys):
    FakeDbtCloud.life = [1, 1, 2, 3, 3, 10]
    result = DbtCloudClient(dbt_cloud).run_job("Metaflow RecommenderFlow/7 by ada", poll_seconds=0.01)
    assert [r.unique_id for r in result.results] == ["model.postmodern.sessions"]
    assert result.manifest == MANIFEST
    method, path, payload, auth = FakeDbtCloud.requests[0]
    assert (method, path) == ("POST", "/api/v2/accounts/1/jobs/2/run/")
    assert payload == {"cause": "Metaflow RecommenderFlow/7 by ada"} and auth == "Token secret-token"
    assert sum(1 for r in FakeDbtCloud.requests if r[1].endswith("/runs/99/")) == 6
    said = [line.split(": ")[1] for line in capsys.readouterr().out.splitlines() if line.startswith("dbt Cloud run")]
    assert said == ["Queued", "Starting", "Running", "Success"]  # each change once


def test_a_dbt_cloud_run_whose_tests_fail_returns_them_for_the_gate(dbt_cloud):
    FakeDbtCloud.life = [1, 3, 20]
    FakeDbtCloud.run_results = {
        "results": [
            {
                "unique_id": "test.postmodern.not_null_sessions_session_id",
                "status": "fail",
                "message": "Got 2 results",
                "failures": 2,
            },
        ]
    }
    result = DbtCloudClient(dbt_cloud).run_job("cause", poll_seconds=0.01)
    assert [r.unique_id for r in result.failed_tests] == ["test.postmodern.not_null_sessions_session_id"]


def test_a_dbt_cloud_run_that_errors_names_the_broken_node(dbt_cloud):
    FakeDbtCloud.life = [3, 20]
    FakeDbtCloud.run_results = {
        "results": [
            {"unique_id": "model.postmodern.sessions", "status": "error", "message": "Database Error: no such column"},
        ]
    }
    with pytest.raises(DbtBuildError, match="model.postmodern.sessions: error"):
        DbtCloudClient(dbt_cloud).run_job("cause", poll_seconds=0.01)


def test_a_failed_run_without_artifacts_still_fails_clearly(dbt_cloud):
    FakeDbtCloud.life = [2, 20]
    FakeDbtCloud.run_results = None
    FakeDbtCloud.status_message = "Could not connect to the warehouse"
    with pytest.raises(DbtBuildError, match="dbt Cloud run 99: dbt build failed: Could not connect to the warehouse"):
        DbtCloudClient(dbt_cloud).run_job("cause", poll_seconds=0.01)


def test_cancelled_and_timed_out_runs_are_errors(dbt_cloud):
    FakeDbtCloud.life = [1, 30]
    with pytest.raises(DbtCloudError, match="cancelled"):
        DbtCloudClient(dbt_cloud).run_job("cause", poll_seconds=0.01)
    FakeDbtCloud.life = [1, 2, 3]
    with pytest.raises(DbtCloudError, match="after 0 s"):
        DbtCloudClient(dbt_cloud).run_job("cause", poll_seconds=0.01, timeout_seconds=0.05)


def test_a_refused_token_is_reported_without_the_token(dbt_cloud):
    settings = dbt_cloud.model_copy(update={"dbt_api_key": type(dbt_cloud.dbt_api_key)("wrong-token")})
    with pytest.raises(DbtCloudError, match="answered 401 to POST /jobs/2/run/: Invalid token.$") as error:
        DbtCloudClient(settings).run_job("cause", poll_seconds=0.01)
    assert "wrong-token" not in str(error.value)
    missing = dbt_cloud.model_copy(update={"dbt_job_id": "3"})
    with pytest.raises(DbtCloudError, match="404 to POST /jobs/3/run/: The requested resource was not found."):
        DbtCloudClient(missing).run_job("cause", poll_seconds=0.01)


def test_an_unreachable_dbt_cloud_is_a_clear_error(tmp_path):
    settings = dbt_cloud_settings(tmp_path, "http://127.0.0.1:9")
    with pytest.raises(DbtCloudError, match="unreachable"):
        DbtCloudClient(settings, timeout=2).run_job("cause")


def test_snowflake_without_its_extra_says_how_to_install_it(tmp_path, monkeypatch):

    from postmodern.warehouse import WarehouseError, connect

    monkeypatch.setitem(sys.modules, "snowflake", None)
    settings = make_settings(tmp_path, **SNOWFLAKE_CREDENTIALS)
    with pytest.raises(WarehouseError, match=r"\.\[snowflake\]"):
        connect(settings)


@pytest.fixture
def snowflake(tmp_path, monkeypatch):
    """Settings for WAREHOUSE=snowflake, whose connector talks to fakesnow (a Snowflake emulated on DuckDB, the
    connector's own module patched in process), with what `fakesnow_support` adds to the emulator."""
    import fakesnow

    extend_fakesnow(monkeypatch)
    with fakesnow.patch():
        yield make_settings(tmp_path, **SNOWFLAKE_CREDENTIALS)


def test_a_snowflake_load_lands_in_the_log_quarantine_catalogue_and_ledger_once(snowflake):
    """The connector's path end to end on fakesnow: rows checked in a local DuckDB, staged with write_pandas into
    temporary tables, moved into the log in one transaction, each event a VARIANT read with Snowflake's paths."""
    from postmodern.data.load import AlreadyLoaded, load_source
    from postmodern.warehouse import check_raw_log, connect

    warehouse = connect(snowflake)
    try:
        summary = load_source(warehouse, snowflake, FIXTURES / "coveo_bad", progress=False)
        with pytest.raises(AlreadyLoaded, match="already loaded"):
            load_source(warehouse, snowflake, FIXTURES / "coveo_bad", progress=False)
    finally:
        warehouse.close()
    assert summary.events == 7 and sum(summary.quarantined.values()) == 13
    assert check_raw_log(snowflake) == 7
    events = query(
        snowflake,
        "select etl_id, raw_data:session_id_hash::varchar as session, raw_data:event_type::varchar as kind "
        "from {schema}.COVEO_DATASET_RAW",
    )
    assert {row["etl_id"] for row in events} == {summary.etl_id} and events[0]["session"] == "s1"
    quarantined = query(snowflake, "select reason, count(*) as n from {schema}.COVEO_DATASET_RAW_QUARANTINE group by 1")
    assert {row["reason"]: row["n"] for row in quarantined} == summary.quarantined
    (ledger,) = query(snowflake, "select * from {schema}.COVEO_DATASET_RAW_LOADS")
    assert ledger["etl_id"] == summary.etl_id and ledger["events"] == 7 and ledger["fingerprint"].startswith("xxh3")
    assert len(query(snowflake, "select * from {schema}.COVEO_CATALOG_RAW")) == summary.products == 2


def test_a_failed_snowflake_insert_rolls_the_whole_load_back(snowflake, tiny_data):
    from postmodern.data.load import load_source
    from postmodern.warehouse import WarehouseError, connect

    warehouse = connect(snowflake)
    try:
        load_source(warehouse, snowflake, FIXTURES / "coveo_bad", progress=False)
        # the ledger, written last in the load's transaction, now refuses its row
        warehouse.query(f"alter table {warehouse.qualified('COVEO_DATASET_RAW_LOADS')} drop column seconds")
        with pytest.raises(WarehouseError, match="Snowflake statement failed"):
            load_source(warehouse, snowflake, tiny_data, progress=False)
    finally:
        warehouse.close()
    for table in ("COVEO_DATASET_RAW", "COVEO_DATASET_RAW_QUARANTINE", "COVEO_CATALOG_RAW"):
        (count,) = query(snowflake, f"select count(*) as n from {{schema}}.{table}")
        assert count["n"] in (7, 13, 2), table  # the first load's rows only


@pytest.fixture
def snowflake_server(tmp_path, monkeypatch):
    """fakesnow's server on loopback (what dbt-snowflake and a flow's processes connect to over HTTP); the settings
    that point at it, a connection to it in process, and a loader into it (into the server's instance with
    fakesnow's write_pandas: the connector's own cannot PUT to the emulator)."""
    import fakesnow
    import snowflake.connector

    from postmodern.data.load import load_source
    from postmodern.warehouse.snowflake_warehouse import SnowflakeWarehouse

    extend_fakesnow(monkeypatch)
    monkeypatch.setattr(snowflake.connector, "paramstyle", "qmark")  # as SnowflakeWarehouse sets it when it connects
    with fakesnow_server() as server:
        settings = make_settings(
            tmp_path,
            **{**SNOWFLAKE_CREDENTIALS, "sf_account": server["account"], "sf_db": "POSTMODERN", "sf_warehouse": "W"},
            sf_host=server["host"],
            sf_port=server["port"],
            sf_protocol="http",
        )

        def connect_in_process() -> SnowflakeWarehouse:
            # the server's shared instance (its module, imported by `fakesnow.server()`, shadows the function)
            instance = sys.modules["fakesnow.server"].shared_fs
            return SnowflakeWarehouse(settings, instance.connect("POSTMODERN", settings.sf_schema))

        def load(directory: Path):
            with fakesnow.patch():  # write_pandas, fakesnow's
                return load_source(connect_in_process(), settings, directory, progress=False)

        yield settings, connect_in_process, load


def test_the_dbt_project_builds_on_snowflake_with_dbt_snowflake_against_fakesnow(snowflake_server, tiny_data, tmp_path):
    """`dbt build --target snowflake` (dbt-snowflake, the snowflake dispatch macros, VARIANT paths, the sessions mart's
    TRANSFORM over sorted records, the incremental models) against fakesnow's server: every model builds and every
    test passes, and after a second load the incremental build equals a full refresh. Where fakesnow falls short of
    Snowflake, `fakesnow_support` teaches the emulator; the project's SQL stays Snowflake's. The flow's read of the
    mart gives arrays as lists, as on DuckDB."""
    import pyarrow as pa

    from postmodern.model.dataset import read_session_mart
    from postmodern.transform.dbt_runner import run_dbt_build

    settings, connect_in_process, load = snowflake_server
    lines = (tiny_data / "browsing_train.csv").read_text().splitlines()[1:]
    half = len(lines) // 2  # a session cut across loads, and 50 events loaded twice
    load(write_coveo(tmp_path / "a", lines[:half], catalogue_skus=None))
    first_build = run_dbt_build(settings)
    load(write_coveo(tmp_path / "b", lines[half - 50 :], catalogue_skus=None))
    build = run_dbt_build(settings)  # incremental: the second load's events only
    sessions = read_session_mart(connect_in_process(), settings.application_api_key)
    full_refresh = run_dbt_build(settings, full_refresh=True)
    rebuilt = read_session_mart(connect_in_process(), settings.application_api_key)
    assert sessions.to_pylist() == rebuilt.to_pylist()  # the incremental build equals a full refresh
    assert not (first_build.failed_tests or full_refresh.failed_tests)
    assert not {"SF_PWD", "SF_HOST", "DUCKDB_PATH"} & set(os.environ)  # the build's variables left with it
    statuses = {result.unique_id: result.status for result in build.results}
    built = {node for node, status in statuses.items() if status == "success"}
    assert {
        "model.postmodern.stg_browsing_events",
        "model.postmodern.sessions",
        "model.postmodern.products",
        "model.postmodern.data_health_daily",
    } <= built
    assert set(statuses.values()) <= {"success", "pass"}  # every model built, every test passed
    # the flow's read of the mart: arrays as lists, as DuckDB gives them
    assert sessions.num_rows > 1_000 and sessions.schema.field("interactions").type == pa.list_(pa.string())
    first = sessions.slice(0, 1).to_pylist()[0]
    assert len(first["interactions"]) == len(first["timestamps"]) and first["timestamps"] == sorted(first["timestamps"])
    assert sum(status == "pass" for status in statuses.values()) >= 20
    assert not {node for node, status in statuses.items() if status in ("fail", "warn")}


def test_the_flow_runs_on_snowflake_on_fakesnow_from_dbt_to_a_deployed_model(snowflake_server, tmp_path, tiny_data):
    """WAREHOUSE=snowflake for the whole flow, its processes talking to fakesnow's server with the real connector
    and dbt-snowflake: the raw log checked, dbt built and tested, the marts read, models trained, tested, deployed."""
    settings, _, load = snowflake_server
    assert load(tiny_data).events > 20_000
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith(("SF_", "DUCKDB_", "WAREHOUSE"))},
        "USERNAME": "e2e",
        "PYTHONUNBUFFERED": "1",
        "WAREHOUSE": "snowflake",
        "SF_USER": settings.sf_user,
        "SF_PWD": "sf-pwd-canary-3f1a",  # the emulator takes any: a recognisable one, never to be printed
        "SF_ACCOUNT": settings.sf_account,
        "SF_DB": settings.sf_db,
        "SF_ROLE": settings.sf_role,
        "SF_WAREHOUSE": settings.sf_warehouse,
        "SF_HOST": settings.sf_host,
        "SF_PORT": str(settings.sf_port),
        "SF_PROTOCOL": "http",
    }
    for name in ("DATA_DIR", "REGISTRY_DIR", "MLFLOW_TRACKING_URI", "MAX_SESSIONS"):
        env.pop(name, None)
    flow = run_quick_flow(tmp_path, env)
    output = flow.stdout + flow.stderr
    assert flow.returncode == 0, output[-4000:]
    assert "'warehouse': 'snowflake'" in output and "raw events in the log" in output
    assert "PASS=37 WARN=0 ERROR=0" in output and "data quality: every test passed" in output
    # every session with a product event, as the DuckDB path reads them
    ((expected,),) = duckdb.sql(
        f"select count(distinct session_id_hash) from read_csv('{tiny_data / 'browsing_train.csv'}') "
        "where event_type = 'event_product'"
    ).fetchall()
    assert f"{expected:,} sessions and " in output
    assert "gate passed" in output and "deployed" in output
    assert (tmp_path / "data" / "registry" / "LATEST").exists()
    assert "sf-pwd-canary-3f1a" not in output
