"""The warehouse at scale: Snowflake, through its Python connector (optional extra `snowflake`).

A load's rows are checked in a local DuckDB, bulk-loaded with `write_pandas` (stage + COPY) into temporary
tables, then moved into the log inside one transaction, so a load is all or nothing, as on DuckDB.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict

import duckdb
import orjson
import pyarrow as pa

from postmodern.config import LogTables, Settings
from postmodern.warehouse import LOG_TABLE_COLUMNS, WarehouseError

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
        self._execute(f"create schema if not exists {self.schema}")
        for role, name in asdict(tables).items():
            columns = ", ".join(f"{column} {TYPES[kind]}" for column, kind in LOG_TABLE_COLUMNS[role])
            self._execute(f"create table if not exists {self.qualified(name)} ({columns})")

    def staging_connection(self) -> duckdb.DuckDBPyConnection:
        if self._staging is None:
            self._staging = duckdb.connect()  # in memory: rows are checked locally, then bulk-loaded
        return self._staging

    def document_sql(self, struct_sql: str) -> str:
        return f"to_json({struct_sql})"  # uploaded as text, made a VARIANT by parse_json on the way in

    def append_queries(self, staging: duckdb.DuckDBPyConnection, selects: dict[str, str]) -> dict[str, int]:
        from snowflake.connector.pandas_tools import write_pandas

        # Stage every table first (write_pandas: PUT + COPY into temporary tables; its DDL commits), then move
        # all rows into the log inside one transaction.
        uploaded: dict[str, tuple[str, list[str], int]] = {}
        for table, select in selects.items():
            temporary = f"POSTMODERN_LOAD_{uuid.uuid4().hex[:12].upper()}"
            columns, rows = [], 0
            for batch in staging.sql(select).to_arrow_reader(LOAD_BATCH_ROWS):
                frame = batch.to_pandas()
                frame.columns = columns = [name.upper() for name in frame.columns]
                write_pandas(
                    self.connection,
                    frame,
                    temporary,
                    schema=self.schema,
                    auto_create_table=True,
                    table_type="temporary",
                    quote_identifiers=False,
                )
                rows += batch.num_rows
            uploaded[table] = (temporary, columns, rows)
        self._execute("begin")
        try:
            for table, (temporary, columns, rows) in uploaded.items():
                if rows:
                    select = ", ".join("parse_json(RAW_DATA)" if c == "RAW_DATA" else c for c in columns)
                    self._execute(
                        f"insert into {self.qualified(table)} ({', '.join(columns)}) "
                        f"select {select} from {self.schema}.{temporary}"
                    )
            self._execute("commit")
        except BaseException:
            self._execute("rollback")
            raise
        return {table: rows for table, (_, _, rows) in uploaded.items()}

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
