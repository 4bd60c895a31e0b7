import json
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from conftest import make_settings

from postmodern.data import load as load_module
from postmodern.data.load import LoadError, load_coveo_files
from postmodern.warehouse import check_raw_log, connect
from postmodern.warehouse.duckdb_warehouse import DuckDBWarehouse

HEADER = "session_id_hash,event_type,product_action,product_sku_hash,server_timestamp_epoch_ms,hashed_url\n"


def write_browsing(directory, rows):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "browsing_train.csv").write_text(HEADER + "".join(row + "\n" for row in rows))
    return directory


def raw_rows(settings):
    warehouse = connect(settings)
    try:
        return warehouse.query(f"select * from {warehouse.qualified(settings.sf_table)}").to_pylist()
    finally:
        warehouse.close()


def test_a_load_appends_every_event_with_one_etl_id_and_the_event_as_json(tmp_path, tiny_data):
    settings = make_settings(tmp_path, application_api_key="acme")
    warehouse = connect(settings)
    summary = load_coveo_files(warehouse, settings, tiny_data, progress=False)
    warehouse.close()
    lines = (tiny_data / "browsing_train.csv").read_text().splitlines()
    assert summary.events == len(lines) - 1
    rows = raw_rows(settings)
    assert len(rows) == summary.events
    assert {row["etl_id"] for row in rows} == {summary.etl_id}
    assert {row["api_key"] for row in rows} == {"acme"}
    event = json.loads(rows[0]["raw_data"])
    assert set(event) == {
        "session_id_hash",
        "event_type",
        "product_action",
        "product_sku_hash",
        "server_timestamp_epoch_ms",
        "hashed_url",
    }
    assert rows[0]["event_date"] == datetime.fromtimestamp(event["server_timestamp_epoch_ms"] / 1000, UTC).date()
    assert summary.products == len((tiny_data / "sku_to_content.csv").read_text().splitlines()) - 1
    assert check_raw_log(settings) == summary.events


def test_max_sessions_keeps_the_first_sessions_in_file_order_with_all_their_events(tmp_path, monkeypatch):
    # s1 and s2 come first; their later events come after s3 and s4 appear, across several read batches
    rows = [
        "s1,event_product,detail,a,1550000000000,u",
        "s2,pageview,,,1550000000001,u",
        "s1,event_product,add,a,1550000001000,u",
        "s3,pageview,,,1550000002000,u",
        "s2,event_product,detail,b,1550000003000,u",
        "s4,pageview,,,1550000004000,u",
        "s1,event_product,purchase,a,1550000005000,u",
    ]
    monkeypatch.setattr(load_module, "BLOCK_SIZE", 128)
    data = write_browsing(tmp_path / "in", rows)
    settings = make_settings(tmp_path, max_sessions=2)
    warehouse = connect(settings)
    summary = load_coveo_files(warehouse, settings, data, progress=False)
    warehouse.close()
    loaded = [json.loads(row["raw_data"]) for row in raw_rows(settings)]
    assert summary.sessions == 2 and summary.events == 5
    assert [event["session_id_hash"] for event in loaded] == ["s1", "s2", "s1", "s2", "s1"]
    assert loaded[1]["product_action"] is None and loaded[1]["product_sku_hash"] is None


def test_a_failed_load_leaves_none_of_its_rows(tmp_path):
    warehouse = DuckDBWarehouse(tmp_path / "w.duckdb", "S")
    warehouse.ensure_raw_tables("RAW", "CATALOG")
    good = pa.RecordBatch.from_pydict({"etl_id": ["e"], "etl_timestamp": [1], "api_key": ["k"]})

    def batches():
        yield good
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        warehouse.append_batches("RAW", batches())
    assert warehouse.query('select count(*) as n from "S"."RAW"').column("n")[0].as_py() == 0
    assert warehouse.append_batches("RAW", iter([good])) == 1  # and a rerun succeeds


def test_missing_or_malformed_files_are_clear_errors(tmp_path):
    settings = make_settings(tmp_path)
    warehouse = connect(settings)
    try:
        with pytest.raises(LoadError, match="does not exist"):
            load_coveo_files(warehouse, settings, tmp_path / "nowhere", progress=False)
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "browsing_train.csv").write_text("a,b\n1,2\n")
        with pytest.raises(LoadError, match="browsing_train.csv"):
            load_coveo_files(warehouse, settings, tmp_path / "bad", progress=False)
    finally:
        warehouse.close()


def test_check_raw_log_says_to_load_first(tmp_path):
    from postmodern.warehouse import WarehouseError

    settings = make_settings(tmp_path)
    with pytest.raises(WarehouseError, match="postmodern load"):
        check_raw_log(settings)
    connect(settings).close()
    with pytest.raises(WarehouseError, match="does not exist"):
        check_raw_log(settings)
