"""The dispatch macros render SQL for DuckDB and for Snowflake: DuckDB's runs here, Snowflake's parses."""

from __future__ import annotations

from pathlib import Path

import duckdb
import jinja2
import pytest
import sqlglot

MACROS = Path(__file__).resolve().parents[1] / "dbt" / "macros"


class Returned(Exception):
    def __init__(self, value):
        self.value = value


def render(dialect: str, call: str) -> str:
    """Render `call` with the project's macros, dispatching as dbt does for `dialect`."""

    def do_return(value):
        raise Returned(value)

    class Adapter:
        def dispatch(self, name, package=None):
            return getattr(module, f"{dialect}__{name}", None) or getattr(module, f"default__{name}")

    source = "\n".join(path.read_text() for path in sorted(MACROS.glob("*.sql")))
    environment = jinja2.Environment(extensions=["jinja2.ext.do"])  # dbt's `{% do %}`
    module = environment.from_string(source).make_module({"adapter": Adapter(), "return": do_return})
    try:
        return str(eval(call, {"m": module}))  # noqa: S307 - the calls are the literals below
    except Returned as returned:
        return str(returned.value).strip()


CASES = [
    ("m.document_field('raw_data', 'a')", "cast(raw_data['a'] as varchar)", "raw_data:a::varchar"),
    ("m.document_field('raw_data', 'ts', 'bigint')", "cast(raw_data['ts'] as bigint)", "raw_data:ts::bigint"),
    (
        "m.sorted_records([('ts', 'ts'), ('sku', 'lower(sku)')])",
        "list_sort(list(struct_pack(ts := ts, sku := lower(sku))))",
        "array_agg(object_construct_keep_null('ts', ts, 'sku', lower(sku))) within group (order by ts, lower(sku))",
    ),
    (
        "m.record_field('records', 'sku', 'varchar')",
        "list_transform(records, lambda record: cast(record.sku as varchar))",
        "transform(records, record object -> record:sku::varchar)",
    ),
    ("m.epoch_ms_to_timestamp('ts')", "epoch_ms(ts)", "to_timestamp_ntz(ts, 3)"),
    ("m.array_size('items')", "len(items)", "array_size(items)"),
    ("m.sorted_array('stamps')", "list_sort(stamps)", "array_sort(stamps)"),
    ("m.distinct_array('items')", "list_distinct(items)", "array_distinct(items)"),
]


@pytest.mark.parametrize(("call", "duckdb_sql", "snowflake_sql"), CASES)
def test_each_dialect_gets_its_own_sql(call, duckdb_sql, snowflake_sql):
    assert render("duckdb", call) == duckdb_sql
    assert render("snowflake", call) == snowflake_sql


@pytest.mark.parametrize(("call", "duckdb_sql", "snowflake_sql"), CASES)
def test_snowflake_renderings_are_valid_snowflake_sql(call, duckdb_sql, snowflake_sql):
    sqlglot.parse_one(f"select {snowflake_sql} from t group by 1", read="snowflake")


def test_duckdb_renderings_compute_the_right_values():
    events = """(values ('s', 'b', 2000, 1, '{"session_id_hash": "s"}'::json::variant), ('s', 'a', 1000, 1, '{}'))
                as events(session, sku, ts, rank, raw_data)"""
    records = render("duckdb", "m.sorted_records([('ts', 'ts'), ('rank', 'rank'), ('sku', 'sku')])")
    items = render("duckdb", f"m.record_field({records!r}, 'sku', 'varchar')")
    distinct_sessions = render("duckdb", "m.distinct_array('list(session)')")
    row = duckdb.sql(f"""
        select {items} as items,
               {render("duckdb", f"m.array_size({items!r})")} as size,
               max({render("duckdb", "m.document_field('raw_data', 'session_id_hash')")}) as session,
               max({render("duckdb", "m.epoch_ms_to_timestamp('ts')")})::varchar as latest,
               {render("duckdb", "m.sorted_array('list(ts)')")} as stamps,
               {render("duckdb", f"m.array_size({distinct_sessions!r})")} as sessions
        from {events}""").fetchall()[0]
    assert row == (["a", "b"], 2, "s", "1970-01-01 00:00:02", [1000, 2000], 1)


UNNEST = "m.unnest_arrays('built', ['session'], [('skus', 'sku', 'varchar'), ('stamps', 'ts', 'bigint')])"


def test_parallel_arrays_unnest_to_one_row_per_position_in_duckdb():
    rows = duckdb.sql(f"""
        with built as (select * from (values ('s', ['a', 'b'], [1000, 2000]), ('t', ['c'], [3000]))
                                  as built(session, skus, stamps))
        select session, sku, ts, {render("duckdb", "m.action_rank('action')")} as rank
        from ({render("duckdb", UNNEST)}), (values ('add')) as actions(action)
        order by ts""").fetchall()
    assert rows == [("s", "a", 1000, 2), ("s", "b", 2000, 2), ("t", "c", 3000, 2)]


def test_parallel_arrays_unnest_with_a_lateral_flatten_in_snowflake():
    sql = render("snowflake", UNNEST)
    assert "lateral flatten(input => unnested.skus) as position" in sql
    assert "unnested.stamps[position.index]::bigint as ts" in sql
    sqlglot.parse_one(sql, read="snowflake")


def test_repeated_values_are_found_by_sorting_in_duckdb_and_by_grouping_elsewhere():
    relation = "(select * from (values (1), (2), (2), (3), (3), (3)) as t(v))"
    sorting = render("duckdb", f"m.repeated_values({relation!r}, 'v')")
    grouping = render("snowflake", f"m.repeated_values({relation!r}, 'v')")
    assert "lag(v) over (order by v)" in sorting and "group by v having count(*) > 1" in grouping
    for sql in (sorting, grouping):  # the grouping is portable SQL, so it runs here too
        assert sorted(set(duckdb.sql(sql).fetchall())) == [(2,), (3,)]
    sqlglot.parse_one(grouping, read="snowflake")


def test_session_keys_fit_the_column_type_each_warehouse_adds_them_as():
    key = render("duckdb", "m.session_key()")
    assert key == render("snowflake", "m.session_key()") == "hash(api_key, session_id)"
    connection = duckdb.connect()
    key_type = render("duckdb", "m.duckdb__session_key_type()")
    connection.execute(
        "create table sessions as select 'org' as api_key, 's' || i as session_id from range(10000) r(i)"
    )
    connection.execute(f"alter table sessions add column session_key {key_type}")  # as the pre-hook does
    connection.execute(f"update sessions set session_key = {key}")
    keys = (
        "select count(distinct session_key), count(session_key), max(session_key) > 9223372036854775807 from sessions"
    )
    assert connection.execute(keys).fetchall() == [(10000, 10000, True)]  # unsigned: half are over BIGINT's range
    snowflake_type = render("snowflake", "m.default__session_key_type()")
    assert snowflake_type == "number(19, 0)"  # Snowflake's hash is a signed 64-bit number
    sqlglot.parse_one(f"alter table sessions add column session_key {snowflake_type}", read="snowflake")
