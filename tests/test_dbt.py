from datetime import UTC, datetime

import pyarrow.csv as pacsv
import pytest
from conftest import make_settings

from postmodern.data.load import load_source
from postmodern.transform.dbt_runner import DbtBuildError, run_dbt_build
from postmodern.warehouse import connect

HEADER = "session_id_hash,event_type,product_action,product_sku_hash,server_timestamp_epoch_ms,hashed_url\n"


def query(settings, sql):
    warehouse = connect(settings)
    try:
        return warehouse.query(sql.format(schema=settings.sf_schema)).to_pylist()
    finally:
        warehouse.close()


def test_build_runs_models_and_tests_and_all_pass(built_warehouse):
    _, build = built_warehouse
    statuses = {result.status for result in build.results}
    assert statuses <= {"success", "pass"}
    kinds = {result.unique_id.split(".")[0] for result in build.results}
    assert kinds == {"model", "test"}
    assert "model.postmodern.sessions" in build.manifest["nodes"]


def test_session_mart_matches_the_raw_file(built_warehouse, tiny_data):
    settings, _ = built_warehouse
    events = pacsv.read_csv(tiny_data / "browsing_train.csv").to_pandas()
    products = events[events.product_action.isin(["detail", "add", "purchase"])]
    expected = {
        session: group.sort_values("server_timestamp_epoch_ms").product_sku_hash.tolist()
        for session, group in products.groupby("session_id_hash")
    }
    first_event = events.groupby("session_id_hash").server_timestamp_epoch_ms.min()
    rows = query(settings, 'select * from "{schema}".sessions')
    assert len(rows) == len(expected)
    for row in rows[:200]:
        assert row["interactions"] == expected[row["session_id"]]
        assert row["timestamps"] == sorted(row["timestamps"])
        first = datetime.fromtimestamp(first_event[row["session_id"]] / 1000, UTC).date()
        assert row["session_date"] == first


def test_the_same_events_loaded_twice_count_once(tmp_path, tiny_data, built_warehouse):
    reference_settings, _ = built_warehouse
    settings = make_settings(tmp_path)
    for _ in range(2):
        warehouse = connect(settings)
        load_source(warehouse, settings, tiny_data, force=True, progress=False)  # a forced reload
        warehouse.close()
    run_dbt_build(settings)
    count = 'select count(*) as n, sum(n_interactions) as items from "{schema}".sessions'
    assert query(settings, count) == query(reference_settings, count)
    raw = query(settings, 'select count(distinct etl_id) as loads from "{schema}".COVEO_DATASET_RAW')
    assert raw == [{"loads": 2}]  # both loads are kept in the log


def test_implausible_timestamps_stop_the_build_naming_the_test(tmp_path):
    # The loader quarantines such rows; dbt is the second gate, for rows another writer put in the log.
    data = tmp_path / "good"
    data.mkdir()
    (data / "browsing_train.csv").write_text(HEADER + "s1,event_product,detail,a,1550000000000,u\n")
    settings = make_settings(tmp_path)
    warehouse = connect(settings)
    load_source(warehouse, settings, data, progress=False)
    seconds_not_ms = (
        '{"session_id_hash": "s1", "event_type": "event_product", "product_action": "detail", '
        '"product_sku_hash": "b", "server_timestamp_epoch_ms": 1550000001, "hashed_url": "u"}'
    )
    warehouse.connection.execute(
        f"insert into {warehouse.qualified(settings.sf_table)} values ('other', 1, ?, 'event_product', null, ?)",
        [settings.application_api_key, seconds_not_ms],
    )
    warehouse.close()
    with pytest.raises(DbtBuildError, match="assert_event_timestamps_plausible") as error:
        run_dbt_build(settings)
    failing = [r for r in error.value.results if r.status == "fail"]
    assert [r.unique_id.split(".")[-1] for r in failing] == ["assert_event_timestamps_plausible"]
    assert failing[0].failures == 1


def test_vars_select_the_raw_table(tmp_path, tiny_data):
    settings = make_settings(tmp_path, sf_table="OTHER_RAW")
    warehouse = connect(settings)
    load_source(warehouse, settings, tiny_data, progress=False)
    warehouse.close()
    build = run_dbt_build(settings)
    assert build.manifest["sources"]["source.postmodern.coveo.events_raw"]["identifier"] == "OTHER_RAW"
    assert query(settings, 'select count(*) as n from "{schema}".sessions')[0]["n"] > 0
