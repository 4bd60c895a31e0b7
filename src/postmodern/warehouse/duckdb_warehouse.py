"""The embedded warehouse: one DuckDB file under `data/`.

DuckDB lets one process write a file (or several read it) at a time. A second process, a load while another
load or the flow's `dbt build` holds the file, waits for it up to `WAREHOUSE_LOCK_TIMEOUT` seconds, saying
which process holds it, and then fails with that process named: nothing is written until the lock is its own.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

import duckdb
import pyarrow as pa

from postmodern.config import LogTables
from postmodern.warehouse import LOG_TABLE_COLUMNS, WarehouseError

TYPES = {"text": "varchar", "bigint": "bigint", "date": "date", "document": "variant", "double": "double"}
LOCK_POLL_SECONDS = 0.25
LOCK_HOLDER = re.compile(r"Conflicting lock is held in .*?\(PID (\d+)\)")


def short_word(word: str, longest: int = 40) -> str:
    """A command-line word as one short line: a path's name, whitespace folded, long words cut."""
    word = " ".join(Path(word).name.split()) if "\n" not in word else " ".join(word.split())
    return word if len(word) <= longest else word[: longest - 1] + "…"


def lock_holder(error: duckdb.Error) -> str | None:
    """The process named by DuckDB's lock conflict, as `PID 123 (postmodern load)`; None for any other error."""
    found = LOCK_HOLDER.search(str(error))
    if not found:
        return None
    pid = found.group(1)
    try:  # the program and its subcommand only: later arguments may hold anything
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3]
        command = " ".join(short_word(word.decode(errors="replace")) for word in words if word)
    except OSError:
        command = "a process that has ended or that this user cannot see"
    return f"PID {pid} ({command})"


def open_waiting_for_lock(path: Path, read_only: bool, lock_timeout: float) -> duckdb.DuckDBPyConnection:
    """Connect to the file; while another process holds it, wait (saying so once) up to `lock_timeout` s."""
    deadline = time.monotonic() + lock_timeout
    announced = False
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as error:
            holder = lock_holder(error)
            if holder is None:
                raise WarehouseError(f"cannot open DuckDB warehouse {path}: {error}") from error
            if time.monotonic() >= deadline:
                raise WarehouseError(
                    f"the DuckDB warehouse {path} is in use by {holder}, and it still was after {lock_timeout:g} s "
                    "(WAREHOUSE_LOCK_TIMEOUT). DuckDB lets one process write at a time: run this again when that "
                    "one has finished, or set WAREHOUSE_LOCK_TIMEOUT to wait longer. Nothing was written."
                ) from None
            if not announced:
                print(
                    f"the DuckDB warehouse {path} is in use by {holder}: waiting up to {lock_timeout:g} s for it "
                    "(WAREHOUSE_LOCK_TIMEOUT)",
                    file=sys.stderr,
                    flush=True,
                )
                announced = True
            time.sleep(LOCK_POLL_SECONDS)


class DuckDBWarehouse:
    def __init__(self, path: Path, schema: str, read_only: bool = False, lock_timeout: float = 0.0):
        self.path = Path(path)
        self.schema = schema
        if read_only and not self.path.exists():
            raise WarehouseError(f"no DuckDB warehouse at {self.path}: run `postmodern load` first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.connection = open_waiting_for_lock(self.path, read_only, lock_timeout)

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
