"""The embedded warehouse: one DuckDB file under `data/`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import duckdb
import pyarrow as pa

from postmodern.warehouse import WarehouseError

RAW_LOG_DDL = """
create table if not exists {name} (
    etl_id varchar not null,
    etl_timestamp bigint not null,
    api_key varchar not null,
    event_type varchar,
    event_date date,
    raw_data json
)
"""
CATALOG_DDL = """
create table if not exists {name} (
    etl_id varchar not null,
    etl_timestamp bigint not null,
    api_key varchar not null,
    product_sku_hash varchar,
    category_hash varchar,
    price_bucket varchar,
    description_vector varchar,
    image_vector varchar
)
"""


class DuckDBWarehouse:
    def __init__(self, path: Path, schema: str, read_only: bool = False):
        self.path = Path(path)
        self.schema = schema
        if read_only and not self.path.exists():
            raise WarehouseError(f"no DuckDB warehouse at {self.path}: run `postmodern load` first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.connection = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as error:
            raise WarehouseError(f"cannot open DuckDB warehouse {self.path}: {error}") from error

    def qualified(self, table: str) -> str:
        return f'"{self.schema}"."{table}"'

    def check(self) -> None:
        try:
            self.connection.sql("select 1").fetchall()
        except duckdb.Error as error:
            raise WarehouseError(f"DuckDB warehouse {self.path} does not answer: {error}") from error

    def ensure_raw_tables(self, raw_table: str, catalog_table: str) -> None:
        self.connection.execute(f'create schema if not exists "{self.schema}"')
        self.connection.execute(RAW_LOG_DDL.format(name=self.qualified(raw_table)))
        self.connection.execute(CATALOG_DDL.format(name=self.qualified(catalog_table)))

    def append_batches(self, table: str, batches: Iterable[pa.RecordBatch]) -> int:
        rows = 0
        self.connection.begin()
        try:
            for batch in batches:
                self.connection.register("incoming_batch", batch)
                columns = ", ".join(f'"{name}"' for name in batch.schema.names)
                self.connection.execute(
                    f"insert into {self.qualified(table)} ({columns}) select {columns} from incoming_batch"
                )
                self.connection.unregister("incoming_batch")
                rows += batch.num_rows
            self.connection.commit()
        except BaseException:
            self.connection.rollback()
            raise
        return rows

    def query(self, sql: str, parameters: list | None = None) -> pa.Table:
        try:
            return self.connection.sql(sql, params=parameters or None).to_arrow_table()
        except duckdb.Error as error:
            raise WarehouseError(f"query failed on {self.path}: {error}") from error

    def table_exists(self, table: str) -> bool:
        found = self.connection.sql(
            "select count(*) from information_schema.tables where lower(table_schema) = lower(?) "
            "and lower(table_name) = lower(?)",
            params=[self.schema, table],
        ).fetchall()
        return bool(found[0][0])

    def close(self) -> None:
        self.connection.close()
