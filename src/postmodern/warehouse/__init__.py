"""One small interface over the warehouse: DuckDB (embedded default) or Snowflake (at scale).

The raw log and the catalogue are append-only tables; everything else is built by dbt. Code above
this layer speaks Arrow and never imports a driver.
"""

from __future__ import annotations

from typing import Protocol

import duckdb
import pyarrow as pa

from postmodern.config import LogTables, Settings

# Column names and types of the append-only tables; each warehouse spells the types its own way.
# raw_data holds the event as in browsing_train.csv, as a semi-structured document (VARIANT in both
# warehouses, as in the seed's Snowflake table: a field is read like a column, without parsing JSON text);
# the ledger has one row per load.
LOG_TABLE_COLUMNS = {
    "raw": [
        ("etl_id", "text"),
        ("etl_timestamp", "bigint"),
        ("api_key", "text"),
        ("event_type", "text"),
        ("event_date", "date"),
        ("raw_data", "document"),
    ],
    "catalog": [
        ("etl_id", "text"),
        ("etl_timestamp", "bigint"),
        ("api_key", "text"),
        ("product_sku_hash", "text"),
        ("category_hash", "text"),
        ("price_bucket", "text"),
        ("description_vector", "text"),
        ("image_vector", "text"),
    ],
    "quarantine": [
        ("etl_id", "text"),
        ("etl_timestamp", "bigint"),
        ("api_key", "text"),
        ("source", "text"),
        ("line_number", "bigint"),
        ("raw_line", "text"),
        ("reason", "text"),
    ],
    "loads": [
        ("etl_id", "text"),
        ("etl_timestamp", "bigint"),
        ("api_key", "text"),
        ("source_kind", "text"),
        ("source_path", "text"),
        ("fingerprint", "text"),
        ("events", "bigint"),
        ("sessions", "bigint"),
        ("quarantined", "bigint"),
        ("products", "bigint"),
        ("seconds", "double"),
    ],
}


class WarehouseError(RuntimeError):
    """The warehouse cannot be reached or a statement failed; the message says which and why."""


class Warehouse(Protocol):
    schema: str

    def qualified(self, table: str) -> str:
        """The table's name qualified by the schema, quoted for this warehouse."""

    def check(self) -> None:
        """Raise WarehouseError unless the warehouse answers a query."""

    def ensure_raw_tables(self, tables: LogTables) -> None:
        """Create the append-only tables (raw log, catalogue, quarantine, loads ledger) when missing."""

    def staging_connection(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection where a load stages and checks its rows before appending them."""

    def document_sql(self, struct_sql: str) -> str:
        """Staging-side SQL that turns a DuckDB struct into what `append_queries` stores as a document."""

    def append_queries(self, staging: duckdb.DuckDBPyConnection, selects: dict[str, str]) -> dict[str, int]:
        """Append each query's rows (run on `staging`) to its table, all in one transaction."""

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

    return DuckDBWarehouse(
        settings.duckdb_path, settings.sf_schema, read_only=read_only, lock_timeout=settings.warehouse_lock_timeout
    )


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
