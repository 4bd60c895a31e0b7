"""The warehouse at scale: Snowflake, through its Python connector (optional extra `snowflake`).

The raw log is tables here. A load's rows are checked in a local DuckDB, bulk-loaded with `write_pandas` (stage +
COPY) into temporary tables, then moved into the log with the ledger's row inside one transaction, so a load is
all or nothing, as on DuckDB. The ledger's `etl_timestamp` is taken inside that transaction.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa

from postmodern.config import LogTables, Settings
from postmodern.warehouse import BROWSING_KEYS, LOAD_COLUMNS, LOG_TABLE_COLUMNS, SEARCH_KEYS, WarehouseError

TYPES = {"text": "varchar", "bigint": "number", "date": "date", "document": "variant", "double": "float"}
LOAD_BATCH_ROWS = 1_000_000
SEMI_STRUCTURED_TYPE_CODES = {5, 9, 10}  # VARIANT, OBJECT, ARRAY (the connector's FIELD_TYPES)


def _connector():
    try:
        import snowflake.connector
    except ImportError as error:
        raise WarehouseError(
            "WAREHOUSE=snowflake needs the Snowflake extra: pip install -c constraints.txt '.[snowflake]'"
        ) from error
    snowflake.connector.paramstyle = "qmark"
    return snowflake.connector


def _json_document(keys: tuple[str, ...]) -> str:
    values = {key: "epoch_ms_value" if key == "server_timestamp_epoch_ms" else key for key in keys}
    return f"to_json(struct_pack({', '.join(f'{key} := {value}' for key, value in values.items())}))"


class SnowflakeWarehouse:
    def __init__(self, settings: Settings, connection=None):
        self.schema = settings.sf_schema
        if connection is None:
            connector = _connector()
            try:
                connection = connector.connect(
                    user=settings.sf_user,
                    password=settings.sf_pwd.get_secret_value() if settings.sf_pwd else None,
                    account=settings.sf_account,
                    database=settings.sf_db,
                    role=settings.sf_role,
                    warehouse=settings.sf_warehouse,
                    schema=settings.sf_schema,
                    protocol=settings.sf_protocol,
                    **({"host": settings.sf_host} if settings.sf_host else {}),
                    **({"port": settings.sf_port} if settings.sf_port else {}),
                )
            except connector.errors.Error as error:
                # The connector's message names the account and the failure, never the password.
                raise WarehouseError(f"cannot connect to Snowflake account {settings.sf_account}: {error}") from None
        self.connection = connection
        self._staging: duckdb.DuckDBPyConnection | None = None

    def qualified(self, table: str) -> str:
        return f"{self.schema}.{table}"  # unquoted: Snowflake resolves names in upper case, as dbt creates them

    def _execute(self, sql: str, parameters: list | None = None):
        cursor = self.connection.cursor()
        try:
            cursor.execute(sql, parameters or None)
        except Exception as error:
            raise WarehouseError(f"Snowflake statement failed: {error}") from error
        return cursor

    def check(self) -> None:
        self._execute("select 1").fetchone()

    def ensure_raw_tables(self, tables: LogTables) -> None:
        self.tables = tables
        self._execute(f"create schema if not exists {self.schema}")
        for role, name in asdict(tables).items():
            columns = ", ".join(f"{column} {TYPES[kind]}" for column, kind in LOG_TABLE_COLUMNS[role])
            self._execute(f"create table if not exists {self.qualified(name)} ({columns})")

    def staging_connection(self) -> duckdb.DuckDBPyConnection:
        if self._staging is None:
            self._staging = duckdb.connect()  # in memory: rows are checked locally, then bulk-loaded
        return self._staging

    def event_columns_sql(self) -> str:
        # the document as JSON text, made a VARIANT by parse_json on the way in
        search, browsing = _json_document(SEARCH_KEYS), _json_document(BROWSING_KEYS)
        return (
            "event_type, cast(epoch_ms(epoch_ms_value) as date) as event_date, session_id_hash, "
            f"case when event_type = 'search' then {search} else {browsing} end as raw_data"
        )

    def append_load(
        self,
        staging: duckdb.DuckDBPyConnection,
        etl_id: str,
        api_key: str,
        rows: dict[str, str | Path],
        ledger: dict[str, object],
    ) -> int:
        from snowflake.connector.pandas_tools import write_pandas

        roles = {name: role for role, name in asdict(self.tables).items()}  # set by ensure_raw_tables
        # Stage every table first (write_pandas: PUT + COPY into temporary tables; its DDL commits), then move
        # all rows into the log inside one transaction.
        uploaded: dict[str, tuple[str, list[str]]] = {}
        for table, source in rows.items():
            stored = [column for column, _ in LOG_TABLE_COLUMNS[roles[table]] if column not in LOAD_COLUMNS]
            scan = f"read_parquet('{source}/*.parquet')" if isinstance(source, Path) else f"({source})"
            select = f"select {', '.join(stored)} from {scan}"
            temporary = f"POSTMODERN_LOAD_{uuid.uuid4().hex[:12].upper()}"
            for batch in staging.sql(select).to_arrow_reader(LOAD_BATCH_ROWS):
                frame = batch.to_pandas()
                frame.columns = [name.upper() for name in frame.columns]
                write_pandas(
                    self.connection,
                    frame,
                    temporary,
                    schema=self.schema,
                    auto_create_table=True,
                    table_type="temporary",
                    quote_identifiers=False,
                )
                uploaded[table] = (temporary, [name.upper() for name in stored])
        self._execute("begin")
        try:
            etl_timestamp = int(time.time() * 1000)
            load = "?, ?, ?"
            for table, (temporary, columns) in uploaded.items():
                select = ", ".join("parse_json(RAW_DATA)" if c == "RAW_DATA" else c for c in columns)
                self._execute(
                    f"insert into {self.qualified(table)} (ETL_ID, ETL_TIMESTAMP, API_KEY, {', '.join(columns)}) "
                    f"select {load}, {select} from {self.schema}.{temporary}",
                    [etl_id, etl_timestamp, api_key],
                )
            row = {**ledger, "etl_id": etl_id, "etl_timestamp": etl_timestamp, "api_key": api_key}
            columns = [column for column, _ in LOG_TABLE_COLUMNS["loads"]]
            self._execute(
                f"insert into {self.qualified(self.tables.loads)} ({', '.join(columns)}) "
                f"values ({', '.join('?' for _ in columns)})",
                [row[column] for column in columns],
            )
            self._execute("commit")
        except BaseException:
            self._execute("rollback")
            raise
        return etl_timestamp

    def query(self, sql: str, parameters: list | None = None) -> pa.Table:
        """The rows as Arrow, as DuckDB gives them: columns named in lower case (Snowflake upper-cases unquoted
        names), and arrays and objects as Arrow lists and structs (Snowflake sends them as JSON text)."""
        cursor = self._execute(sql, parameters)
        table = cursor.fetch_arrow_all() or pa.table({})
        table = table.rename_columns([name.lower() for name in table.column_names])
        for column in cursor.description or []:
            if column.type_code in SEMI_STRUCTURED_TYPE_CODES:
                name = column.name.lower()
                values = [None if text is None else orjson.loads(text) for text in table[name].to_pylist()]
                table = table.set_column(table.column_names.index(name), name, pa.array(values))
        return table

    def table_exists(self, table: str) -> bool:
        row = self._execute(
            "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
            [self.schema.upper(), table.upper()],
        ).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        self.connection.close()
