import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from datetime import UTC, datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest
from conftest import log_rows as rows
from conftest import make_settings

from postmodern.data.generator import PROFILES, generate_dataset
from postmodern.data.load import LoadError, fingerprint, load_source, read_source
from postmodern.data.reclist import sha256_of
from postmodern.data.sources import BROWSING_HEADER
from postmodern.warehouse import check_raw_log, connect_log, show_log_in_warehouse

FIXTURES = Path(__file__).parent / "fixtures"
HEADER = "session_id_hash,event_type,product_action,product_sku_hash,server_timestamp_epoch_ms,hashed_url\n"


def load(tmp_path, source, kind="coveo", **overrides):
    settings = make_settings(tmp_path, **overrides)
    warehouse = connect_log(settings)
    try:
        return settings, load_source(warehouse, settings, source, kind, progress=False)
    finally:
        warehouse.close()


def events(settings):
    return [json.loads(row["raw_data"]) for row in rows(settings)]


def test_a_load_appends_every_event_with_one_etl_id_and_the_event_as_a_document(tmp_path, tiny_data):
    settings, summary = load(tmp_path, tiny_data, application_api_key="acme")
    lines = (tiny_data / "browsing_train.csv").read_text().splitlines()
    assert summary.events == len(lines) - 1 and summary.quarantined == {}
    raw = rows(settings)
    assert len(raw) == summary.events
    assert {row["etl_id"] for row in raw} == {summary.etl_id}
    assert {row["api_key"] for row in raw} == {"acme"}
    event = json.loads(raw[0]["raw_data"])
    # one document type for browsing and search events: a browsing event's search keys are null
    assert {key for key, value in event.items() if value is not None} <= set(BROWSING_HEADER) <= set(event)
    assert event["session_id_hash"] and event["event_type"] and event["server_timestamp_epoch_ms"]
    assert raw[0]["event_date"] == datetime.fromtimestamp(event["server_timestamp_epoch_ms"] / 1000, UTC).date()
    assert summary.products == len((tiny_data / "sku_to_content.csv").read_text().splitlines()) - 1
    assert check_raw_log(settings) == summary.events
    (ledger,) = rows(settings, "loads")
    assert ledger["etl_id"] == summary.etl_id and ledger["events"] == summary.events
    assert ledger["sessions"] == summary.sessions


def test_each_kind_of_bad_row_is_quarantined_with_its_reason_and_every_good_row_loads(tmp_path):
    settings, summary = load(tmp_path, FIXTURES / "coveo_bad")
    assert summary.quarantined == {
        "missing session id": 2,
        "non-numeric timestamp": 1,
        "timestamp out of range": 2,
        "unknown event_type": 1,
        "unknown product_action": 1,
        "product event without SKU": 1,
        "wrong column count": 2,
        "invalid UTF-8": 1,
        "oversized field": 1,
        "catalogue row without SKU": 1,
    }
    loaded = events(settings)
    # 6 good browsing rows and the search event
    assert sorted((e["session_id_hash"], e["event_type"]) for e in loaded) == [
        ("s1", "event_product"),
        ("s1", "event_product"),
        ("s1", "pageview"),
        ("s1", "search"),
        ("s2", "event_product"),
        ("s2", "event_product"),
        ("s4", "event_product"),
    ]
    search = next(e for e in loaded if e["event_type"] == "search")
    assert search["product_skus_hash"] == "['sku1', 'sku2']"
    quarantine = rows(settings, "quarantine")
    by_reason = {row["reason"]: row for row in quarantine}
    assert by_reason["non-numeric timestamp"]["raw_line"] == "s3,pageview,,,abc,u5"
    assert by_reason["unknown event_type"]["raw_line"] == "s3,click,,,1550000006000,u6"
    wrong = sorted(row["line_number"] for row in quarantine if row["reason"] == "wrong column count")
    assert wrong == [15, 16]  # the file's own line numbers
    assert by_reason["invalid UTF-8"]["source"].endswith("browsing_train.csv")
    assert {row["etl_id"] for row in quarantine} == {summary.etl_id}
    assert len(rows(settings, "catalog")) == 2


@pytest.mark.parametrize(
    ("kind", "path", "expected_sessions", "reason"),
    [
        (
            "diginetica",
            "diginetica/train-item-views.csv",
            {"1": ["32118", "81766", "31331"], "2": ["33043", "9654"]},
            "non-numeric timestamp",
        ),
        (
            "yoochoose",
            "yoochoose/yoochoose-clicks.dat",
            {"1": ["214536502", "214536500"], "2": ["214662742", "214825110"]},
            "non-numeric timestamp",
        ),
        (
            "retailrocket",
            "retailrocket/events.csv",
            {"257597:1": ["355908", "248676", "355908"], "257597:2": ["111"], "992329:1": ["248676", "248676"]},
            "unknown product_action",
        ),
        ("plain", "plain/sessions.csv", {"a": ["i1", "i2"], "b": ["i1", "i3"]}, "non-numeric timestamp"),
    ],
)
def test_public_dataset_layouts_map_onto_coveo_events(tmp_path, kind, path, expected_sessions, reason):
    settings, summary = load(tmp_path, FIXTURES / path, kind)
    loaded = sorted(events(settings), key=lambda e: (e["session_id_hash"], e["server_timestamp_epoch_ms"]))
    sessions: dict[str, list[str]] = {}
    for event in loaded:
        assert event["event_type"] == "event_product"
        sessions.setdefault(event["session_id_hash"], []).append(event["product_sku_hash"])
    assert sessions == expected_sessions
    assert summary.quarantined == {reason: 1}


def test_a_gzipped_file_loads_as_the_plain_one_and_a_broken_one_is_named(tmp_path):
    gzipped = tmp_path / "sessions.csv.gz"
    gzipped.write_bytes(gzip.compress((FIXTURES / "plain/sessions.csv").read_bytes()))
    settings, summary = load(tmp_path / "gz", gzipped, "plain")
    assert summary.events == 4 and summary.quarantined == {"non-numeric timestamp": 1}
    assert sorted(e["product_sku_hash"] for e in events(settings)) == ["i1", "i1", "i2", "i3"]
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(LoadError, match="broken.csv.gz: not a readable gzip file"):
        load(tmp_path / "broken", broken, "plain")


def test_timestamps_of_each_layout_are_epoch_milliseconds(tmp_path):
    settings, _ = load(tmp_path, FIXTURES / "plain/sessions.csv", "plain")
    stamps = sorted(e["server_timestamp_epoch_ms"] for e in events(settings))
    assert stamps == [1_500_000_000_000, 1_500_000_000_000, 1_500_000_060_000, 1_500_000_100_000]
    settings, _ = load(tmp_path / "y", FIXTURES / "yoochoose/yoochoose-clicks.dat", "yoochoose")
    assert min(e["server_timestamp_epoch_ms"] for e in events(settings)) == 1_396_867_869_277


def test_max_sessions_keeps_exactly_the_first_sessions_in_file_order(tmp_path):
    # s1 and s2 come first; their later events come after s3 and s4 have appeared
    lines = [
        "s1,event_product,detail,a,1550000000000,u",
        "s2,pageview,,,1550000000001,u",
        "s1,event_product,add,a,1550000001000,u",
        "s3,pageview,,,1550000002000,u",
        "s2,event_product,detail,b,1550000003000,u",
        "s4,pageview,,,1550000004000,u",
        "s1,event_product,purchase,a,1550000005000,u",
        "s9,pageview,,,bad,u",
    ]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "browsing_train.csv").write_text(HEADER + "\n".join(lines) + "\n")
    settings, summary = load(tmp_path, tmp_path / "in", max_sessions=2)
    assert summary.sessions == 2 and summary.events == 5
    assert [e["session_id_hash"] for e in events(settings)] == ["s1", "s2", "s1", "s2", "s1"]
    assert summary.quarantined == {} and summary.outside_session_limit == 1


def test_loading_the_same_source_twice_is_refused_unless_forced(tmp_path, tiny_data):
    settings = make_settings(tmp_path)
    warehouse = connect_log(settings)
    try:
        first = load_source(warehouse, settings, tiny_data, progress=False)
        with pytest.raises(LoadError, match=f"already loaded as etl_id {first.etl_id}.*--force"):
            load_source(warehouse, settings, tiny_data, progress=False)
        again = load_source(warehouse, settings, tiny_data, force=True, progress=False)
    finally:
        warehouse.close()
    assert again.events == first.events
    assert len(rows(settings, "loads")) == 2


def test_fingerprint_is_every_byte_of_the_content_and_not_the_name(tmp_path, tiny_data):
    original = fingerprint([tiny_data / "browsing_train.csv"])
    copy = tmp_path / "copy.csv"
    copy.write_bytes((tiny_data / "browsing_train.csv").read_bytes())
    assert fingerprint([copy]) == original
    copy.write_bytes(copy.read_bytes().replace(b"pageview", b"pageviex", 1))
    assert fingerprint([copy]) != original
    # the same bytes split differently between the files are another source
    head, tail = tmp_path / "head.csv", tmp_path / "tail.csv"
    head.write_bytes(b"ab")
    tail.write_bytes(b"c")
    other_head, other_tail = tmp_path / "other_head.csv", tmp_path / "other_tail.csv"
    other_head.write_bytes(b"a")
    other_tail.write_bytes(b"bc")
    assert fingerprint([head, tail]) != fingerprint([other_head, other_tail])


@pytest.mark.parametrize(
    ("data_line", "plain"),
    [
        ("s1,pageview,,,1550000000000,u1\r\n", True),
        ('s1,pageview,,,1550000000000,"u\n1"\n', False),  # a quoted field may hold a line break
        ("s\t1,pageview,,,1550000000000,u1\n", False),
        ("s\x7f1,pageview,,,1550000000000,u1\n", False),
        ("s\u00e91,pageview,,,1550000000000,u1\n", False),
    ],
)
def test_only_plain_csv_bytes_let_a_load_skip_the_check_of_characters_in_ids(tmp_path, data_line, plain):
    path = tmp_path / "browsing_train.csv"
    path.write_bytes(('"quoted","header"\n' + data_line * 3).encode())
    assert read_source([path], [(path, True)]) == (fingerprint([path]), plain)
    assert read_source([path], [(path, False)])[1] is False  # the quoted header is data then
    assert read_source([path], [])[1] is False  # nothing scanned proves nothing
    zipped = tmp_path / "browsing_train.csv.gz"
    zipped.write_bytes(gzip.compress(path.read_bytes()))
    assert read_source([zipped], [(zipped, True)])[1] is False


def test_a_plain_file_is_loaded_as_the_character_check_would_load_it(tmp_path):
    lines = [HEADER.strip()] + [f"s{i % 7},pageview,,,{1_550_000_000_000 + i},u{i}" for i in range(50)]
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "browsing_train.csv").write_text("\n".join(lines) + "\n")
    _, summary = load(tmp_path / "fast", folder)
    assert summary.events == 50 and summary.sessions == 7 and summary.quarantined == {}


def test_a_file_of_the_same_name_and_size_that_differs_in_one_byte_is_a_new_load(tmp_path):
    """Fixed-width ids make equal sizes likely: one session id changed at 1/32 of a 4 MB file is new data."""
    lines = [HEADER.strip()] + [f"s{i:06d},pageview,,,{1_550_000_000_000 + i},u{i:06d}" for i in range(110_000)]
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
    content = "\n".join(lines) + "\n"
    (first / "browsing_train.csv").write_text(content)
    position = len(content) // 32
    position = content.index("\ns", position) + 2  # the first digit of a session id
    changed = content[:position] + ("9" if content[position] != "9" else "8") + content[position + 1 :]
    (second / "browsing_train.csv").write_text(changed)
    assert (first / "browsing_train.csv").stat().st_size == (second / "browsing_train.csv").stat().st_size > 4e6
    settings = make_settings(tmp_path)
    warehouse = connect_log(settings)
    try:
        loads = [load_source(warehouse, settings, folder, progress=False) for folder in (first, second)]
        with pytest.raises(LoadError, match="already loaded"):
            load_source(warehouse, settings, second, progress=False)
    finally:
        warehouse.close()
    assert [summary.events for summary in loads] == [110_000, 110_000]


# NUL, a C1 control, a zero-width space, a right-to-left override, a line separator
BAD_IDS = ["s\x00x", "s\x85x", "s\u200bx", "s\u202ex", "s\u2028x"]


COVEO_GOOD = "s1,event_product,detail,sku1,1550000001000,u1"
PLAIN = ("plain", "sessions.csv", "session_id,item_id,timestamp\n", "a,i1,1500000000")


@pytest.mark.parametrize(
    ("kind", "name", "header", "good", "bad"),
    [
        ("coveo", "browsing_train.csv", HEADER, COVEO_GOOD, "{},pageview,,,1550000002000,u2"),
        ("coveo", "browsing_train.csv", HEADER, COVEO_GOOD, "s2,event_product,detail,{},1550000002000,u2"),
        ("coveo", "browsing_train.csv", HEADER, COVEO_GOOD, "s2,pageview,,,1550000002000,{}"),
        (*PLAIN, "{},i2,1500000060"),
        (*PLAIN, "a,{},1500000060"),
        (
            "diginetica",
            "train-item-views.csv",
            "sessionId;userId;itemId;timeframe;eventdate\n",
            "1;NA;81766;526309;2016-05-09",
            "2;NA;{};526309;2016-05-09",
        ),
        (
            "yoochoose",
            "yoochoose-clicks.dat",
            "",
            "1,2014-04-07T10:51:09.277Z,214536502,0",
            "{},2014-04-07T10:54:09Z,1,0",
        ),
        (
            "retailrocket",
            "events.csv",
            "timestamp,visitorid,event,itemid,transactionid\n",
            "1433221332117,257597,view,355908,",
            "1433224214164,992329,view,{},",
        ),
    ],
)
def test_control_characters_in_ids_are_quarantined_by_every_reader(tmp_path, kind, name, header, good, bad):
    for index, bad_id in enumerate(BAD_IDS):
        folder = tmp_path / str(index)
        folder.mkdir()
        source = folder / name
        source.write_bytes((header + good + "\n" + bad.format(bad_id) + "\n").encode())
        settings, summary = load(folder, folder if kind == "coveo" else source, kind)
        assert summary.events == 1, repr(bad_id)
        assert summary.quarantined == {"control character in identifier": 1}, repr(bad_id)
        (quarantined,) = rows(settings, "quarantine")
        assert bad_id in quarantined["raw_line"]


def test_a_catalogue_sku_with_a_control_character_is_quarantined(tmp_path):
    shutil.copytree(FIXTURES / "coveo_bad", tmp_path / "coveo")
    catalogue = tmp_path / "coveo" / "sku_to_content.csv"
    catalogue.write_bytes(catalogue.read_bytes() + b"sku\x007,,c1,,2\n")
    settings, summary = load(tmp_path, tmp_path / "coveo")
    assert summary.quarantined["control character in identifier"] == 1
    assert summary.quarantined["catalogue row without SKU"] == 1
    assert sorted(row["product_sku_hash"] for row in rows(settings, "catalog")) == ["sku1", "sku2"]


def test_missing_or_malformed_sources_are_clear_errors(tmp_path):
    with pytest.raises(LoadError, match="not a folder"):
        load(tmp_path, tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "browsing_train.csv").write_text("a,b\n1,2\n")
    with pytest.raises(LoadError, match="header"):
        load(tmp_path, tmp_path / "bad")
    with pytest.raises(LoadError, match="unknown source"):
        load(tmp_path, tmp_path / "bad", "parquet")


def test_check_raw_log_says_to_load_first(tmp_path):
    from postmodern.warehouse import WarehouseError

    settings = make_settings(tmp_path)
    with pytest.raises(WarehouseError, match="does not exist: run `postmodern load` first"):
        check_raw_log(settings)
    show_log_in_warehouse(settings)  # a dbt build before any load: an empty log
    assert check_raw_log(settings) == 0


def reclist_zip(directory: Path) -> Path:
    """A small dataset in the RecList layout: sessions of browsing events, next events, a catalogue."""

    def event(session, sku, ms):
        return {
            "session_id_hash": session,
            "event_type": "event_product",
            "product_action": "detail",
            "product_sku_hash": sku,
            "server_timestamp_epoch_ms": ms,
            "hashed_url": f"u-{sku}",
        }

    data = {
        "x_train": [[event("t1", "a", 1550000000000), event("t1", "b", 1550000001000)]],
        "x_test": [[event("q1", "b", 1550000100000)]],
        "y_test": [[event("q1", "c", 1550000101000)]],
        "catalog": {
            "a": {"category_hash": "x/y", "price_bucket": 3, "description_vector": [0.1, 0.2]},
            "b": {"category_hash": "x/z", "price_bucket": 5},
        },
    }
    path = directory / "coveo_sigir.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("dataset.json", json.dumps(data))
    return path


@pytest.fixture
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_reclist_dataset_is_fetched_once_checked_and_loaded(tmp_path, file_server):
    served, base = file_server
    archive = reclist_zip(served)
    settings = make_settings(tmp_path / "w")
    warehouse = connect_log(settings)
    try:
        summary = load_source(
            warehouse, settings, f"{base}/coveo_sigir.zip", "reclist", checksum=sha256_of(archive), progress=False
        )
        archive.unlink()  # the second load reads the cache, not the server
        again = load_source(warehouse, settings, f"{base}/coveo_sigir.zip", "reclist", force=True, progress=False)
    finally:
        warehouse.close()
    assert summary.events == again.events == 4 and summary.sessions == 2 and summary.products == 2
    loaded = events(settings)
    assert [e["product_sku_hash"] for e in loaded if e["session_id_hash"] == "q1"][:2] == ["b", "c"]
    catalog = {row["product_sku_hash"]: row for row in rows(settings, "catalog")}
    assert catalog["a"]["description_vector"] == "[0.1, 0.2]" and catalog["b"]["price_bucket"] == "5"
    assert len(list((settings.data_dir / "cache").glob("*coveo_sigir.zip"))) == 1


def test_a_reclist_download_with_the_wrong_checksum_is_refused_and_not_cached(tmp_path, file_server):
    served, base = file_server
    reclist_zip(served)
    with pytest.raises(LoadError, match="checksum"):
        settings = make_settings(tmp_path)
        warehouse = connect_log(settings)
        try:
            load_source(warehouse, settings, f"{base}/coveo_sigir.zip", "reclist", checksum="0" * 64, progress=False)
        finally:
            warehouse.close()
    assert not list((tmp_path / "cache").glob("*"))
    with pytest.raises(LoadError, match="cannot fetch"):
        load(tmp_path / "x", f"{base}/missing.zip", "reclist")


def test_a_load_killed_half_way_leaves_nothing_and_a_rerun_succeeds(tmp_path):
    from dataclasses import replace

    data = tmp_path / "data"
    generate_dataset(data, replace(PROFILES["small"], n_sessions=150_000), progress=False)
    settings = make_settings(tmp_path)
    env = {**os.environ, "DUCKDB_PATH": str(settings.duckdb_path), "DATA_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "postmodern.cli", "load", "--path", str(data)]
    loader = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in loader.stdout:  # the final transaction has begun: kill it mid-write
        if line.startswith("appending"):
            loader.send_signal(signal.SIGKILL)
            break
    assert loader.wait(timeout=120) == -signal.SIGKILL
    assert rows(settings) == [] and rows(settings, "loads") == []
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    (ledger,) = rows(settings, "loads")
    assert check_raw_log(settings) == ledger["events"] > 1_000_000


def test_a_log_kept_in_the_warehouse_file_moves_to_segments_once_with_its_ledger(tmp_path, tiny_data):
    """Logs written before the segments were tables of the DuckDB file (raw_data as JSON text, later VARIANT)."""
    settings = make_settings(tmp_path)
    schema = settings.sf_schema
    old = duckdb.connect(str(settings.duckdb_path))
    old.execute(f'create schema "{schema}"')
    old.execute(
        f'create table "{schema}".COVEO_DATASET_RAW (etl_id varchar, etl_timestamp bigint, '
        "api_key varchar, event_type varchar, event_date date, raw_data json)"
    )
    old.execute(
        f"insert into \"{schema}\".COVEO_DATASET_RAW values ('old', 1, 'k', 'pageview', null, "
        '\'{"session_id_hash": "s0", "server_timestamp_epoch_ms": 1550000000000}\')'
    )
    old.execute(
        f'create table "{schema}".COVEO_DATASET_RAW_LOADS as select * from (values '
        "('old', 1, 'k', 'coveo', 'p', 'xxh3-128:0', 1, 1, 0, 0, 0.5)) as t(etl_id, etl_timestamp, api_key, "
        "source_kind, source_path, fingerprint, events, sessions, quarantined, products, seconds)"
    )
    old.close()
    load(tmp_path, tiny_data)
    show_log_in_warehouse(settings)
    show_log_in_warehouse(settings)  # once: the tables are gone, the views stay
    raw_log = connect_log(settings)
    (old_event,) = raw_log.query(
        "select api_key, raw_data['session_id_hash']::varchar as session, "
        f"raw_data['server_timestamp_epoch_ms']::bigint as ms from {raw_log.qualified('COVEO_DATASET_RAW')} "
        "where etl_id = 'old'"
    ).to_pylist()
    raw_log.close()
    assert old_event == {"api_key": "k", "session": "s0", "ms": 1550000000000}
    ledger = rows(settings, "loads")
    assert ledger[0]["etl_id"] == "old" and len(ledger) == 2
    warehouse = duckdb.connect(str(settings.duckdb_path), read_only=True)
    kinds = warehouse.sql("select table_name, table_type from information_schema.tables").fetchall()
    warehouse.close()
    assert {kind for _, kind in kinds} == {"VIEW"} and len(kinds) == 4


def test_commits_are_stamped_in_order_and_abandoned_folders_go_after_a_day(tmp_path, monkeypatch):
    from postmodern.warehouse.segment_log import SegmentLog

    settings = make_settings(tmp_path)
    raw_log = SegmentLog.of(settings)
    raw_log.ensure_raw_tables(settings.log_tables)
    ledger = {
        "source_kind": "events",
        "source_path": "p",
        "fingerprint": "f",
        "events": 0,
        "sessions": 0,
        "quarantined": 0,
        "products": 0,
        "seconds": 0.0,
    }
    monkeypatch.setattr("postmodern.warehouse.segment_log.time.time", lambda: 1_700_000_000.0)
    stamps = [raw_log.append_load(raw_log.connection, f"load-{n}", "k", {}, ledger) for n in range(3)]
    assert stamps == [1_700_000_000_000, 1_700_000_000_001, 1_700_000_000_002]  # a clock that stands still
    killed = raw_log.root / settings.sf_table / "etl_id=killed-before-its-commit"
    killed.mkdir()
    raw_log.ensure_raw_tables(settings.log_tables)
    assert killed.exists()  # it may be a load still writing
    os.utime(killed, (1_699_900_000, 1_699_900_000))  # more than a day before the (standing) clock
    raw_log.ensure_raw_tables(settings.log_tables)
    assert not killed.exists() and (raw_log.root / settings.sf_table / "etl_id=none").exists()
    assert [row["etl_id"] for row in rows(settings, "loads")] == ["load-0", "load-1", "load-2"]
    raw_log.close()


def test_first_loads_at_once_create_the_log_tables_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from postmodern.warehouse.segment_log import SegmentLog

    settings = make_settings(tmp_path)
    logs = [SegmentLog.of(settings) for _ in range(8)]  # each holds its own lock file handle, as processes do
    with ThreadPoolExecutor(len(logs)) as pool:
        list(pool.map(lambda log: log.ensure_raw_tables(settings.log_tables), logs))
    for table in (settings.sf_table, f"{settings.sf_table}_QUARANTINE"):
        assert [p.name for p in (logs[0].root / table).iterdir()] == ["etl_id=none"]
    assert rows(settings, "loads") == []
