"""The warehouse at scale: Snowflake, through its Python connector (optional extra `snowflake`).

Batches are bulk-loaded with `write_pandas` (stage + COPY) into a temporary table, then moved into the
log with one INSERT ... SELECT, so a load is all or nothing, as on DuckDB.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import pyarrow as pa

from postmodern.config import Settings
from postmodern.warehouse import WarehouseError

RAW_LOG_DDL = """
create table if not exists {name} (
    etl_id varchar not null, etl_timestamp number not null, api_key varchar not null,
    event_type varchar, event_date date, raw_data variant
)
"""
CATALOG_DDL = """
create table if not exists {name} (
    etl_id varchar not null, etl_timestamp number not null, api_key varchar not null,
    product_sku_hash varchar, category_hash varchar, price_bucket varchar,
    description_vector varchar, image_vector varchar
)
"""


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
                )
            except connector.errors.Error as error:
                # The connector's message names the account and the failure, never the password.
                raise WarehouseError(f"cannot connect to Snowflake account {settings.sf_account}: {error}") from None
        self.connection = connection

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

    def ensure_raw_tables(self, raw_table: str, catalog_table: str) -> None:
        self._execute(f'create schema if not exists "{self.schema}"')
        self._execute(RAW_LOG_DDL.format(name=self.qualified(raw_table)))
        self._execute(CATALOG_DDL.format(name=self.qualified(catalog_table)))

    def append_batches(self, table: str, batches: Iterable[pa.RecordBatch]) -> int:
        from snowflake.connector.pandas_tools import write_pandas

        staging = f"POSTMODERN_LOAD_{uuid.uuid4().hex[:12].upper()}"
        rows = 0
        columns: list[str] = []
        for batch in batches:
            frame = batch.to_pandas()
            frame.columns = [name.upper() for name in frame.columns]
            columns = list(frame.columns)
            write_pandas(
                self.connection,
                frame,
                staging,
                schema=self.schema,
                auto_create_table=True,
                table_type="temporary",
                quote_identifiers=False,
            )
            rows += batch.num_rows
        if rows:
            select = ", ".join("parse_json(RAW_DATA)" if name == "RAW_DATA" else name for name in columns)
            self._execute(
                f"insert into {self.qualified(table)} ({', '.join(columns)}) "
                f'select {select} from "{self.schema}".{staging}'
            )
        return rows

    def query(self, sql: str, parameters: list | None = None) -> pa.Table:
        return self._execute(sql, parameters).fetch_arrow_all() or pa.table({})

    def table_exists(self, table: str) -> bool:
        row = self._execute(
            "select count(*) from information_schema.tables where table_schema = ? and table_name = ?",
            [self.schema.upper(), table.upper()],
        ).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        self.connection.close()
