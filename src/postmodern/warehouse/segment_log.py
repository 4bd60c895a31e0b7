"""The embedded raw log: immutable Parquet segments, one folder per load, and a ledger file as the commit point.

DuckDB lets one process write a database file at a time: a log inside the warehouse's file made the collector,
bulk loads and `dbt build` wait for each other. Here the log lives beside the file, as files no one rewrites:

    <log dir>/<schema>/<TABLE>/etl_id=<id>/*.parquet   one folder per load and table (raw log, quarantine, catalogue)
    <log dir>/<schema>/<LOADS>.parquet                 the ledger: every committed load, one row each

A load writes its folders under `.incoming/`, moves them into place, then commits: under a file lock, it replaces
the ledger with a copy that has its row (written aside, fsynced, renamed). Readers see a load only through the
ledger, so a load is all or nothing, and a reader's ledger is a prefix of the commit order: `etl_timestamp` is
the commit time, strictly increasing, which is what dbt's incremental models need to miss no load. A load killed
before its commit leaves folders no ledger row names: invisible, and removed by a load a day later.

The tables are views over the files, with the load's columns (`etl_timestamp`, `api_key`) from the ledger: here in
an in-memory DuckDB, and in the warehouse file for dbt (`DuckDBWarehouse.create_log_views`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from postmodern.config import LogTables, Settings
from postmodern.files import sync_directory
from postmodern.warehouse import BROWSING_KEYS, LOAD_COLUMNS, LOG_TABLE_COLUMNS, SEARCH_KEYS, WarehouseError

ARROW_TYPES = {"text": pa.string(), "bigint": pa.int64(), "double": pa.float64()}
LEDGER_SCHEMA = pa.schema([(column, ARROW_TYPES[kind]) for column, kind in LOG_TABLE_COLUMNS["loads"]])
ABANDONED_AFTER_SECONDS = 86_400
INCOMING = ".incoming"
# The segment that gives each table its columns when no load has any rows yet; no ledger row names it.
EMPTY_SEGMENT = "etl_id=none"
# The raw log's document: every key of browsing and search events (BROWSING_KEYS, SEARCH_KEYS), a struct whose
# keys a segment stores as columns of their own (a browsing event's search keys null, and the other way round).
DOCUMENT_FIELDS = {
    "session_id_hash": "varchar",
    "event_type": "varchar",
    "product_action": "varchar",
    "product_sku_hash": "varchar",
    "server_timestamp_epoch_ms": "bigint",
    "hashed_url": "varchar",
    "query_vector": "varchar",
    "clicked_skus_hash": "varchar",
    "product_skus_hash": "varchar",
}
DOCUMENT_TYPE = f"struct({', '.join(f'{name} {kind}' for name, kind in DOCUMENT_FIELDS.items())})"
# What a segment of the raw log stores: the event's type and date, and its document's keys.
RAW_STORED = [("event_type", "varchar"), ("event_date", "date")] + [
    (name, kind) for name, kind in DOCUMENT_FIELDS.items() if name != "event_type"
]


def document_from_json_sql(json_sql: str) -> str:
    """A JSON document as the log's struct: keys it lacks are null."""
    structure = "{" + ", ".join(f'"{name}": "{kind.upper()}"' for name, kind in DOCUMENT_FIELDS.items()) + "}"
    return f"json_transform({json_sql}, '{structure}')"


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


class SegmentLog:
    """The append-only tables of one schema, as Parquet segments under `directory` (see the module docstring)."""

    def __init__(self, directory: Path, schema: str, tables: LogTables):
        self.schema, self.tables = schema, tables
        self.root = Path(directory).resolve() / schema
        self.ledger_path = self.root / f"{tables.loads}.parquet"
        self.connection = duckdb.connect()  # in memory: the views read the files, nothing is stored here
        self.connection.execute(f'create schema "{schema}"')
        if self.ledger_path.exists():
            self._create_views(self.connection)

    @classmethod
    def of(cls, settings: Settings) -> SegmentLog:
        """The raw log of the embedded warehouse that `settings` describe."""
        return cls(settings.log_directory, settings.sf_schema, settings.log_tables)

    # -- the Warehouse protocol ---------------------------------------------------------------------------------
    def qualified(self, table: str) -> str:
        return f'"{self.schema}"."{table}"'

    def check(self) -> None:
        self.connection.sql("select 1").fetchall()

    def ensure_raw_tables(self, tables: LogTables) -> None:
        assert tables == self.tables, "a segment log holds the tables it was opened with"
        if not self.ledger_path.exists():
            with self._commit_lock():  # two first loads at once: one creates the tables, the other finds them
                if not self.ledger_path.exists():
                    self._create_raw_tables()
        self._create_views(self.connection)
        self._remove_abandoned()

    def _create_raw_tables(self) -> None:
        """Each table's empty segment (so that its view has its columns before any load), then the empty ledger,
        which comes last: a crash in between leaves no ledger, and the next load starts over."""
        for role, name in asdict(self.tables).items():
            if role == "loads":
                continue
            empty = self.root / name / EMPTY_SEGMENT
            shutil.rmtree(empty, ignore_errors=True)
            columns = ", ".join(f"cast(null as {kind}) as {column}" for column, kind in self._stored(role))
            self._write_segment(self.connection, f"select {columns} limit 0", empty)
        self._replace_ledger(LEDGER_SCHEMA.empty_table())

    def staging_connection(self) -> duckdb.DuckDBPyConnection:
        return self.connection

    def event_columns_sql(self) -> str:
        columns = ["event_type", "cast(epoch_ms(epoch_ms_value) as date) as event_date"]
        for name, _ in RAW_STORED[2:]:
            value = "epoch_ms_value" if name == "server_timestamp_epoch_ms" else name
            if name not in BROWSING_KEYS:
                value = f"case when event_type = 'search' then {value} end"
            elif name not in SEARCH_KEYS:
                value = f"case when event_type = 'search' then null else {value} end"
            columns.append(f"{value} as {name}")
        return ", ".join(columns)

    def append_load(
        self,
        staging: duckdb.DuckDBPyConnection,
        etl_id: str,
        api_key: str,
        rows: dict[str, str | Path],
        ledger: dict[str, object],
    ) -> int:
        """Write each table's rows (a query on `staging`, or a folder of Parquet files already written with
        them) as the load's segments, then commit its ledger row; the load's etl_timestamp."""
        incoming = self.root / INCOMING / etl_id
        incoming.mkdir(parents=True)
        try:
            for table, source in rows.items():
                target = incoming / table
                if isinstance(source, Path):
                    shutil.move(source, target)  # a rename on the same file system
                else:
                    self._write_segment(staging, source, target)
            for table in rows:
                destination = self.root / table / f"etl_id={etl_id}"
                (incoming / table).rename(destination)
                sync_directory(destination.parent)
            return self._commit(etl_id, api_key, ledger)
        except BaseException:
            for table in rows:
                shutil.rmtree(self.root / table / f"etl_id={etl_id}", ignore_errors=True)
            raise
        finally:
            shutil.rmtree(incoming, ignore_errors=True)

    def adopt_rows(self, connection: duckdb.DuckDBPyConnection, table: str, select: str) -> None:
        """Write rows of several loads (with their etl_id) as their segments: a log moved here from elsewhere."""
        connection.execute(
            f"copy ({select}) to '{_quoted(self.root / table)}' "
            "(format parquet, partition_by (etl_id), overwrite_or_ignore)"
        )

    def adopt_ledger(self, loads: pa.Table) -> None:
        """Commit ledger rows of loads moved here, in their own order, but those the ledger already has."""
        with self._commit_lock():
            ledger = pq.read_table(self.ledger_path) if self.ledger_path.exists() else None
            known = set() if ledger is None else set(ledger["etl_id"].to_pylist())
            adopted = loads.filter(pc.invert(pc.is_in(loads["etl_id"], pa.array(list(known), pa.string()))))
            adopted = adopted.select(LEDGER_SCHEMA.names).cast(LEDGER_SCHEMA)
            merged = adopted if ledger is None else pa.concat_tables([ledger, adopted])
            self._replace_ledger(merged.sort_by("etl_timestamp"))

    def query(self, sql: str, parameters: list | None = None) -> pa.Table:
        try:
            return self.connection.sql(sql, params=parameters or None).to_arrow_table()
        except duckdb.Error as error:
            raise WarehouseError(f"query failed on the log at {self.root}: {error}") from error

    def table_exists(self, table: str) -> bool:
        return table in asdict(self.tables).values() and self.ledger_path.exists()

    def close(self) -> None:
        self.connection.close()

    # -- the files ------------------------------------------------------------------------------------------------
    def view_sql(self) -> dict[str, str]:
        """Each table's view: its segments of committed loads, with the load's columns from the ledger."""
        ledger = f"read_parquet('{_quoted(self.ledger_path)}')"
        views = {self.tables.loads: f"select * from {ledger}"}
        for role, name in asdict(self.tables).items():
            if role == "loads":
                continue
            stored = ", ".join(f"segment.{column}" for column, _ in self._stored(role))
            if role == "raw":
                document = ", ".join(f"{key} := segment.{key}" for key in DOCUMENT_FIELDS)
                stored = f"segment.event_type, segment.event_date, struct_pack({document}) as raw_data"
            views[name] = f"""
                select segment.etl_id, loads.etl_timestamp, loads.api_key, {stored}
                from read_parquet('{_quoted(self.root / name)}/*/*.parquet', hive_partitioning = true,
                                  hive_types = {{'etl_id': varchar}}) as segment
                inner join {ledger} as loads on segment.etl_id = loads.etl_id"""
        return views

    def _create_views(self, connection: duckdb.DuckDBPyConnection) -> None:
        for name, sql in self.view_sql().items():
            connection.execute(f"create or replace view {self.qualified(name)} as {sql}")

    @staticmethod
    def _stored(role: str) -> list[tuple[str, str]]:
        """A segment's columns and their DuckDB types."""
        if role == "raw":
            return RAW_STORED
        types = {"text": "varchar"}
        return [
            (column, types.get(kind, kind)) for column, kind in LOG_TABLE_COLUMNS[role] if column not in LOAD_COLUMNS
        ]

    @staticmethod
    def _write_segment(connection: duckdb.DuckDBPyConnection, select: str, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        connection.execute(f"copy ({select}) to '{_quoted(folder / 'data_0.parquet')}' (format parquet)")

    @contextlib.contextmanager
    def _commit_lock(self):
        """One commit at a time, across processes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".commit.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _commit(self, etl_id: str, api_key: str, ledger: dict[str, object]) -> int:
        with self._commit_lock():
            loads = pq.read_table(self.ledger_path)
            newest = pc.max(loads["etl_timestamp"]).as_py() or 0
            etl_timestamp = max(int(time.time() * 1000), newest + 1)  # strictly increasing, in commit order
            row = {**ledger, "etl_id": etl_id, "etl_timestamp": etl_timestamp, "api_key": api_key}
            added = pa.Table.from_pylist([{column: row[column] for column in loads.schema.names}], loads.schema)
            self._replace_ledger(pa.concat_tables([loads, added]))
        return etl_timestamp

    def _replace_ledger(self, table: pa.Table) -> None:
        written = self.ledger_path.with_suffix(".parquet.new")
        pq.write_table(table, written)
        with written.open("rb") as handle:
            os.fsync(handle.fileno())
        written.rename(self.ledger_path)
        sync_directory(self.root)

    def _remove_abandoned(self) -> None:
        """Folders of loads killed before their commit, once they are a day old (a live load is never that old)."""
        committed = set(pq.read_table(self.ledger_path, columns=["etl_id"])["etl_id"].to_pylist())
        cutoff = time.time() - ABANDONED_AFTER_SECONDS
        for folder in [*(self.root / INCOMING).glob("*"), *self.root.glob("*/etl_id=*")]:
            load = folder.name.removeprefix("etl_id=")
            if folder.name != EMPTY_SEGMENT and load not in committed and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
