"""One small interface over the warehouse: DuckDB (embedded default) or Snowflake (at scale).

The raw log and the catalogue are append-only tables; everything else is built by dbt. Code above
this layer speaks Arrow and never imports a driver.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import pyarrow as pa

from postmodern.config import Settings

# Columns of the raw log, as in DESIGN.md; `raw_data` holds the event exactly as in browsing_train.csv.
RAW_LOG_COLUMNS = ("etl_id", "etl_timestamp", "api_key", "event_type", "event_date", "raw_data")
CATALOG_COLUMNS = (
    "etl_id",
    "etl_timestamp",
    "api_key",
    "product_sku_hash",
    "category_hash",
    "price_bucket",
    "description_vector",
    "image_vector",
)


class WarehouseError(RuntimeError):
    """The warehouse cannot be reached or a statement failed; the message says which and why."""


class Warehouse(Protocol):
    schema: str

    def qualified(self, table: str) -> str:
        """The table's name qualified by the schema, quoted for this warehouse."""

    def check(self) -> None:
        """Raise WarehouseError unless the warehouse answers a query."""

    def ensure_raw_tables(self, raw_table: str, catalog_table: str) -> None:
        """Create the append-only tables when missing."""

    def append_batches(self, table: str, batches: Iterable[pa.RecordBatch]) -> int:
        """Append all batches in one transaction (all or nothing); return the rows written."""

    def query(self, sql: str, parameters: list | None = None) -> pa.Table:
        """Run a read query and return the result as Arrow."""

    def table_exists(self, table: str) -> bool: ...

    def close(self) -> None: ...


def connect(settings: Settings, read_only: bool = False) -> Warehouse:
    """The warehouse chosen by `WAREHOUSE`."""
    if settings.warehouse == "snowflake":
        from postmodern.warehouse.snowflake_warehouse import SnowflakeWarehouse

        return SnowflakeWarehouse(settings)
    from postmodern.warehouse.duckdb_warehouse import DuckDBWarehouse

    return DuckDBWarehouse(settings.duckdb_path, settings.sf_schema, read_only=read_only)


def check_raw_log(settings: Settings) -> int:
    """Rows in the raw log; a clear error when the warehouse or the table is missing."""
    warehouse = connect(settings, read_only=True)
    try:
        warehouse.check()
        if not warehouse.table_exists(settings.sf_table):
            raise WarehouseError(
                f"the raw log {settings.sf_schema}.{settings.sf_table} does not exist: run `postmodern load` first"
            )
        return int(
            warehouse.query(f"select count(*) as n from {warehouse.qualified(settings.sf_table)}")
            .column("n")[0]
            .as_py()
        )
    finally:
        warehouse.close()
