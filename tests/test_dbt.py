from datetime import UTC, datetime

import pyarrow.csv as pacsv
import pytest
from conftest import make_settings

from postmodern.data.load import load_source
from postmodern.transform.dbt_runner import run_dbt_build
from postmodern.transform.quality import quality_report
from postmodern.warehouse import connect, connect_log
from postmodern.warehouse.segment_log import RAW_STORED, SegmentLog, document_from_json_sql

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
    assert kinds == {"model", "test", "source"}  # sources: their freshness
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
        warehouse = connect_log(settings)
        load_source(warehouse, settings, tiny_data, force=True, progress=False)  # a forced reload
        warehouse.close()
    run_dbt_build(settings)
    count = 'select count(*) as n, sum(n_interactions) as items from "{schema}".sessions'
    assert query(settings, count) == query(reference_settings, count)
    raw = query(settings, 'select count(distinct etl_id) as loads from "{schema}".COVEO_DATASET_RAW')
    assert raw == [{"loads": 2}]  # both loads are kept in the log


def write_coveo(folder, browsing_rows, catalogue_skus=("a", "b", "c")):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "browsing_train.csv").write_text(HEADER + "".join(row + "\n" for row in browsing_rows))
    if catalogue_skus:
        (folder / "sku_to_content.csv").write_text(
            "product_sku_hash,description_vector,category_hash,image_vector,price_bucket\n"
            + "".join(f"{sku},,c1/c2,,3\n" for sku in catalogue_skus)
        )
    return folder


GOOD_ROWS = [
    "s1,event_product,detail,a,1550000000000,u",
    "s1,event_product,detail,b,1550000001000,u",
    "s2,event_product,detail,b,1550000002000,u",
    "s2,pageview,,,1550000003000,u",
    "s2,event_product,add,c,1550000004000,u",
    "s3,pageview,,,1550000005000,u",
]


def load_rows(settings, folder, rows, **options):
    warehouse = connect_log(settings)
    try:
        return load_source(warehouse, settings, write_coveo(folder, rows, **options), progress=False)
    finally:
        warehouse.close()


def write_into_load(settings, etl_id, document, name="other_writer", event_type="event_product"):
    """Another writer's event in a load's raw-log folder: its document as JSON text."""
    log = SegmentLog.of(settings)
    folder = log.root / settings.sf_table / f"etl_id={etl_id}"
    folder.mkdir(exist_ok=True)
    keys = ", ".join(f"document.{column}" for column, _ in RAW_STORED[2:])
    json_text = "'" + document.replace("'", "''") + "'"
    event_type = "null" if event_type is None else f"'{event_type}'"
    log.connection.execute(
        f"copy (select {event_type} as event_type, null::date as event_date, {keys} "
        f"from (select {document_from_json_sql(json_text)} as document)) to '{folder / name}.parquet'"
    )
    log.close()


def shift_ledger(settings, milliseconds):
    """Date every load `milliseconds` later (earlier when negative), as if the ledger said so."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = SegmentLog.of(settings).ledger_path
    ledger = pq.read_table(path)
    column = ledger.schema.get_field_index("etl_timestamp")
    pq.write_table(ledger.set_column(column, "etl_timestamp", pc.add(ledger["etl_timestamp"], milliseconds)), path)


def execute(settings, sql, parameters=None):
    warehouse = connect(settings)
    try:
        warehouse.connection.execute(sql.format(schema=settings.sf_schema), parameters or [])
    finally:
        warehouse.close()


@pytest.mark.parametrize("built_before_session_keys", [False, True])
def test_an_incremental_build_equals_a_full_refresh(tmp_path, tiny_data, built_before_session_keys):
    lines = (tiny_data / "browsing_train.csv").read_text().splitlines()[1:]
    half = len(lines) // 2
    first, second = lines[:half], lines[half - 50 :]  # a session cut across loads, and 50 events loaded twice
    incremental, full = make_settings(tmp_path / "incremental"), make_settings(tmp_path / "full")
    load_rows(incremental, tmp_path / "a", first, catalogue_skus=None)
    run_dbt_build(incremental)
    if built_before_session_keys:  # a warehouse built by an earlier version: the next build adds the key
        for model in ("sessions", "int_session_starts"):
            execute(incremental, f'alter table "{{schema}}".{model} drop column session_key')
    load_rows(incremental, tmp_path / "b", second, catalogue_skus=None)
    build = run_dbt_build(incremental)
    assert (
        "where etl_timestamp >"
        in (
            incremental.data_dir
            / "dbt_target"
            / "compiled"
            / "postmodern"
            / "models"
            / "staging"
            / "stg_browsing_events.sql"
        ).read_text()
    )
    load_rows(full, tmp_path / "a", first, catalogue_skus=None)
    load_rows(full, tmp_path / "b", second, catalogue_skus=None)
    run_dbt_build(full)
    assert not build.failed_tests
    # load times, and the invocations that built rows, differ; everything else must be equal
    built = "dbt_build_id"
    for model, key, differing in (
        (
            "stg_browsing_events",
            "session_id, event_epoch_ms, event_type, product_sku",
            f"etl_timestamp, {built}",
        ),
        ("int_session_starts", "session_id", f"last_etl_timestamp, {built}"),
        ("sessions", "session_id", f"last_etl_timestamp, {built}"),
        ("data_health_daily", "event_date", "last_etl_timestamp"),
    ):
        sql = f'select * exclude ({differing}) from "{{schema}}".{model} order by {key}'
        assert query(incremental, sql) == query(full, sql), model
    assert len(query(full, 'select * from "{schema}".stg_browsing_events')) == len(lines)


def build_and_report(settings):
    build = run_dbt_build(settings)
    return build, quality_report(settings, build)


def failing_names(report):
    return sorted(
        outcome.name.split("_coveo_")[0] if "relationships" in outcome.name else outcome.name
        for outcome in report.failures
    )


def test_a_raw_event_with_an_implausible_timestamp_stops_training(tmp_path):
    # The loader quarantines such rows; dbt is the second gate, for rows another writer put in the log.
    settings = make_settings(tmp_path)
    summary = load_rows(settings, tmp_path / "in", GOOD_ROWS)
    seconds_not_ms = (
        '{"session_id_hash": "s1", "event_type": "event_product", "product_action": "detail", '
        '"product_sku_hash": "b", "server_timestamp_epoch_ms": 1550000001, "hashed_url": "u"}'
    )
    write_into_load(settings, summary.etl_id, seconds_not_ms)
    _, report = build_and_report(settings)
    assert failing_names(report) == ["assert_event_timestamps_plausible"]
    (failure,) = report.failures
    assert failure.failures == 1 and failure.sample[0]["event_epoch_ms"] == 1550000001
    from postmodern.transform import DataQualityError, stop_unless_passed

    with pytest.raises(DataQualityError, match="assert_event_timestamps_plausible FAILED"):
        stop_unless_passed(report)


def test_an_incremental_build_tests_the_rows_it_built(tmp_path):
    settings = make_settings(tmp_path)
    load_rows(settings, tmp_path / "first", GOOD_ROWS)
    run_dbt_build(settings)
    load_rows(settings, tmp_path / "second", [row.replace("s", "t", 1) for row in GOOD_ROWS[:3]])
    build, report = build_and_report(settings)
    assert report.passed
    built_by = 'select session_id from "{schema}".%s where dbt_build_id = %d order by session_id'
    build_id = int(build.manifest["metadata"]["invocation_id"].replace("-", "")[:15], 16)
    assert [row["session_id"] for row in query(settings, built_by % ("sessions", build_id))] == ["t1", "t2"]
    assert len(query(settings, built_by % ("stg_browsing_events", build_id))) == 3

    third = load_rows(settings, tmp_path / "third", [GOOD_ROWS[0].replace("s1", "u1")])
    seconds_not_ms = (
        '{"session_id_hash": "u9", "event_type": "event_product", "product_action": "detail", '
        '"product_sku_hash": "b", "server_timestamp_epoch_ms": 1550000001, "hashed_url": "u"}'
    )
    write_into_load(settings, third.etl_id, seconds_not_ms)
    _, report = build_and_report(settings)
    assert failing_names(report) == ["assert_event_timestamps_plausible"]
    assert [(row["session_id"], row["etl_id"]) for row in report.failures[0].sample] == [("u9", third.etl_id)]


def test_the_rows_of_a_load_the_ledger_does_not_name_are_not_in_the_log(tmp_path):
    """A load killed before its commit (or a writer that skips the ledger) leaves files no reader sees."""
    settings = make_settings(tmp_path)
    summary = load_rows(settings, tmp_path / "in", GOOD_ROWS)
    write_into_load(settings, "ghost-load", '{"session_id_hash": "g1", "event_type": "pageview"}')
    _, report = build_and_report(settings)
    assert report.passed
    raw = query(settings, 'select distinct etl_id from "{schema}".COVEO_DATASET_RAW')
    assert raw == [{"etl_id": summary.etl_id}]
    assert query(settings, "select count(*) as n from \"{schema}\".sessions where session_id = 'g1'") == [{"n": 0}]


def test_after_the_first_build_source_tests_check_the_loads_staging_has_not_read(tmp_path):
    settings = make_settings(tmp_path)
    staged = load_rows(settings, tmp_path / "in", GOOD_ROWS)
    run_dbt_build(settings)
    untyped = '{"session_id_hash": "x1", "server_timestamp_epoch_ms": 1550000000000}'
    write_into_load(settings, staged.etl_id, untyped, event_type=None)  # in the staged load: not read again
    assert build_and_report(settings)[1].passed
    for audit in (run_dbt_build(settings, test_every_row=True), run_dbt_build(settings, full_refresh=True)):
        assert failing_names(quality_report(settings, audit)) == ["source_not_null_coveo_events_raw_event_type"]
    later = load_rows(settings, tmp_path / "later", [GOOD_ROWS[0].replace("s1", "v1")])
    write_into_load(settings, later.etl_id, untyped, event_type=None)  # a later load: staging reads it
    assert failing_names(build_and_report(settings)[1]) == ["source_not_null_coveo_events_raw_event_type"]


def test_too_many_skus_missing_from_the_catalogue_stop_training(tmp_path):
    settings = make_settings(tmp_path)
    load_rows(settings, tmp_path / "in", GOOD_ROWS, catalogue_skus=("a",))  # b and c are unknown
    _, report = build_and_report(settings)
    (failure,) = report.failures
    assert failure.name.startswith("share_missing_below_int_product_interactions_product_sku")
    assert sorted(row["missing_value"] for row in report.failures[0].sample) == ["b", "c"]


@pytest.mark.parametrize(
    ("corruption", "test_name"),
    [
        (
            'update "{schema}".sessions set timestamps = list_reverse(timestamps) where n_interactions > 1',
            "assert_session_interactions_in_time_order",
        ),
        (
            "update \"{schema}\".sessions set interactions = []::varchar[] where session_id = 's1'",
            "array_not_empty_sessions_interactions",
        ),
    ],
)
def test_a_corrupted_session_mart_stops_training(tmp_path, corruption, test_name):
    # The mart is incremental: rows no new event touches are kept as they are, so corruption persists. An
    # incremental build tests the rows it built; auditing every row finds the corruption.
    settings = make_settings(tmp_path)
    load_rows(settings, tmp_path / "in", GOOD_ROWS)
    run_dbt_build(settings)
    execute(settings, corruption)
    assert quality_report(settings, run_dbt_build(settings)).passed
    report = quality_report(settings, run_dbt_build(settings, test_every_row=True))
    assert failing_names(report) == [test_name]
    assert report.failures[0].sample


def test_a_load_far_smaller_than_usual_is_a_warning_not_a_stop(tmp_path):
    settings = make_settings(tmp_path)
    for index in range(3):
        load_rows(settings, tmp_path / f"in{index}", [row.replace("s", f"x{index}s", 1) for row in GOOD_ROWS])
    load_rows(settings, tmp_path / "small", [GOOD_ROWS[0].replace("s1", "tiny")])
    _, report = build_and_report(settings)
    assert report.passed
    assert [outcome.name for outcome in report.warnings] == ["assert_load_volume_within_band"]
    assert report.warnings[0].sample[0]["events"] == 1 and report.warnings[0].sample[0]["typical_events"] == 6


def test_vars_select_the_raw_table(tmp_path, tiny_data):
    settings = make_settings(tmp_path, sf_table="OTHER_RAW")
    warehouse = connect_log(settings)
    load_source(warehouse, settings, tiny_data, progress=False)
    warehouse.close()
    build = run_dbt_build(settings)
    assert build.manifest["sources"]["source.postmodern.coveo.events_raw"]["identifier"] == "OTHER_RAW"
    assert query(settings, 'select count(*) as n from "{schema}".sessions')[0]["n"] > 0


def test_a_stale_source_is_a_freshness_warning(tmp_path):
    settings = make_settings(tmp_path)
    load_rows(settings, tmp_path / "in", GOOD_ROWS)
    ten_days_ms = 10 * 86_400_000
    shift_ledger(settings, -ten_days_ms)
    _, report = build_and_report(settings)
    assert report.passed
    stale = [outcome for outcome in report.warnings if outcome.name == "freshness of events_raw"]
    assert len(stale) == 1 and stale[0].message.startswith("last loaded 240.")
