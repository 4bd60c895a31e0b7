"""The embedded warehouse: one DuckDB file under `data/`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import duckdb
import pyarrow as pa

from postmodern.config import LogTables
from postmodern.warehouse import LOG_TABLE_COLUMNS, WarehouseError

TYPES = {"text": "varchar", "bigint": "bigint", "date": "date", "document": "variant", "double": "double"}


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

    def ensure_raw_tables(self, tables: LogTables) -> None:
        self.connection.execute(f'create schema if not exists "{self.schema}"')
        for role, name in asdict(tables).items():
            columns = ", ".join(f"{column} {TYPES[kind]}" for column, kind in LOG_TABLE_COLUMNS[role])
            self.connection.execute(f"create table if not exists {self.qualified(name)} ({columns})")
        self._migrate_json_raw_data(tables.raw)

    def _migrate_json_raw_data(self, raw_table: str) -> None:
        """Logs written before raw_data became a VARIANT held JSON text: convert them once, in place."""
        (kind,) = self.connection.sql(
            "select data_type from information_schema.columns where lower(table_schema) = lower(?) "
            "and lower(table_name) = lower(?) and column_name = 'raw_data'",
            params=[self.schema, raw_table],
        ).fetchall()[0]
        if kind != "VARIANT":
            self.connection.execute(
                f"alter table {self.qualified(raw_table)} alter raw_data type variant using cast(raw_data as json)"
            )

    def staging_connection(self) -> duckdb.DuckDBPyConnection:
        return self.connection  # stage next to the log: appending is then a local INSERT ... SELECT

    def document_sql(self, struct_sql: str) -> str:
        return f"cast({struct_sql} as variant)"

    def append_queries(self, staging: duckdb.DuckDBPyConnection, selects: dict[str, str]) -> dict[str, int]:
        rows = {}
        self.connection.begin()
        try:
            for table, select in selects.items():
                rows[table] = self.connection.execute(
                    f"insert into {self.qualified(table)} by name {select}"
                ).fetchall()[0][0]
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
