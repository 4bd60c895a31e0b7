"""Two small interfaces over the warehouse: DuckDB (embedded default) or Snowflake (at scale).

`Warehouse` reads (dbt's models, the raw log); `RawLog` appends loads to the append-only tables (raw log,
catalogue, quarantine, loads ledger). On Snowflake both are one connection to tables. On DuckDB the log is
Parquet segments beside the warehouse file (warehouse/segment_log.py), so that loads never wait for the file's
one writer, and the file shows the log as views. Code above this layer speaks Arrow and never imports a driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import duckdb
import pyarrow as pa

from postmodern.config import LogTables, Settings
from postmodern.data.sources import BROWSING_HEADER, SEARCH_HEADER

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


# What a load's rows share, set by the log as it appends them.
LOAD_COLUMNS = ("etl_id", "etl_timestamp", "api_key")
# The raw log's document: the keys of browsing_train.csv, or of search_train.csv for a search event.
BROWSING_KEYS = BROWSING_HEADER
SEARCH_KEYS = ("event_type", *SEARCH_HEADER)


class WarehouseError(RuntimeError):
    """The warehouse cannot be reached or a statement failed; the message says which and why."""


class Warehouse(Protocol):
    schema: str

    def qualified(self, table: str) -> str:
        """The table's name qualified by the schema, quoted for this warehouse."""

    def check(self) -> None:
        """Raise WarehouseError unless the warehouse answers a query."""

    def query(self, sql: str, parameters: list | None = None) -> pa.Table:
        """Run a read query and return the result as Arrow."""

    def table_exists(self, table: str) -> bool: ...

    def close(self) -> None: ...


class RawLog(Warehouse, Protocol):
    def ensure_raw_tables(self, tables: LogTables) -> None:
        """Create the append-only tables (raw log, catalogue, quarantine, loads ledger) when missing."""

    def staging_connection(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection where a load stages and checks its rows before appending them."""

    def event_columns_sql(self) -> str:
        """Staging-side select list of a valid event as the log stores it (`event_type`, `event_date` and the
        document, whose keys are BROWSING_KEYS or SEARCH_KEYS), plus `session_id_hash`, from a reader's standard
        columns (data/sources.py) and `epoch_ms_value`, the timestamp as a number."""

    def append_load(
        self,
        staging: duckdb.DuckDBPyConnection,
        etl_id: str,
        api_key: str,
        rows: dict[str, str | Path],
        ledger: dict[str, object],
    ) -> int:
        """Append one load, all or nothing: each table's rows (a query run on `staging`, or a folder of Parquet
        files holding them; without LOAD_COLUMNS, which the log sets) and the ledger's row (its columns but
        LOAD_COLUMNS). Returns the load's etl_timestamp."""


def connect(settings: Settings, read_only: bool = False) -> Warehouse:
    """The warehouse chosen by `WAREHOUSE`."""
    if settings.warehouse == "snowflake":
        from postmodern.warehouse.snowflake_warehouse import SnowflakeWarehouse

        return SnowflakeWarehouse(settings)
    from postmodern.warehouse.duckdb_warehouse import DuckDBWarehouse

    return DuckDBWarehouse(
        settings.duckdb_path, settings.sf_schema, read_only=read_only, lock_timeout=settings.warehouse_lock_timeout
    )


def connect_log(settings: Settings) -> RawLog:
    """The raw log of the warehouse chosen by `WAREHOUSE`, to append loads to."""
    if settings.warehouse == "snowflake":
        from postmodern.warehouse.snowflake_warehouse import SnowflakeWarehouse

        return SnowflakeWarehouse(settings)
    from postmodern.warehouse.segment_log import SegmentLog

    return SegmentLog.of(settings)


def show_log_in_warehouse(settings: Settings) -> None:
    """DuckDB: make the raw log's views in the warehouse file, for dbt (waiting while another process holds it)."""
    from postmodern.warehouse.duckdb_warehouse import DuckDBWarehouse
    from postmodern.warehouse.segment_log import SegmentLog

    log = SegmentLog.of(settings)
    warehouse = DuckDBWarehouse(settings.duckdb_path, settings.sf_schema, lock_timeout=settings.warehouse_lock_timeout)
    try:
        log.ensure_raw_tables(settings.log_tables)
        warehouse.create_log_views(log)
    finally:
        warehouse.close()
        log.close()


def check_raw_log(settings: Settings) -> int:
    """Rows in the raw log; a clear error when the warehouse or the table is missing."""
    warehouse = connect_log(settings)
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
