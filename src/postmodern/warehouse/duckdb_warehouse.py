"""The embedded warehouse: one DuckDB file under `data/`, where dbt builds its models.

The raw log is not in the file but beside it (warehouse/segment_log.py); the file shows it as views, made before
each dbt build. DuckDB lets one process write a file (or several read it) at a time: a reader while `dbt build`
holds the file waits for it up to `WAREHOUSE_LOCK_TIMEOUT` seconds, saying which process holds it, and then fails
with that process named. Loads never wait: they write the log's files only.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from postmodern.warehouse import WarehouseError
from postmodern.warehouse.segment_log import RAW_STORED, SegmentLog, document_from_json_sql

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

    def create_log_views(self, log: SegmentLog) -> None:
        """Show the raw log's tables as views over its segments (moving a log kept in this file there first)."""
        self.connection.execute(f'create schema if not exists "{self.schema}"')
        self._move_log_tables_to_segments(log)
        for name, sql in log.view_sql().items():
            self.connection.execute(f"create or replace view {self.qualified(name)} as {sql}")

    def _move_log_tables_to_segments(self, log: SegmentLog) -> None:
        """Logs written before the segments were tables of this file: move their loads out, once, in place."""
        tables = log.tables
        stored = {
            row[0]
            for row in self.connection.sql(
                "select table_name from information_schema.tables where lower(table_schema) = lower(?) "
                "and table_type = 'BASE TABLE'",
                params=[self.schema],
            ).fetchall()
        }
        if tables.loads not in stored:
            return
        roles = {tables.raw: "raw", tables.catalog: "catalog", tables.quarantine: "quarantine"}
        for name in stored & set(roles):
            select = f"select * exclude (etl_timestamp, api_key) from {self.qualified(name)}"
            if roles[name] == "raw":  # the document (a VARIANT, or JSON text in older logs) as the segments keep it
                keys = ", ".join(f"document.{column}" for column, _ in RAW_STORED[2:])
                document = document_from_json_sql("cast(raw_data as json)")
                select = f"""select etl_id, event_type, event_date, {keys}
                             from (select *, {document} as document from {self.qualified(name)})"""
            log.adopt_rows(self.connection, name, select)
        log.adopt_ledger(self.connection.sql(f"select * from {self.qualified(tables.loads)}").to_arrow_table())
        self.connection.begin()
        for name in stored & {*roles, tables.loads}:
            self.connection.execute(f"drop table {self.qualified(name)}")
        self.connection.commit()

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
