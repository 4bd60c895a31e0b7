"""Append Coveo-format files to the warehouse's raw log: one load is one `etl_id`, all or nothing.

Files are read by Arrow's streaming CSV reader in file order, so `MAX_SESSIONS` keeps exactly the first
N sessions as they appear in the file, and memory is bounded by the block size, not the file size.
Each batch is shaped into the raw-log schema by an in-memory DuckDB query (JSON built in C, not in a
Python loop) and appended inside one transaction.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

from postmodern.config import Settings
from postmodern.warehouse import Warehouse

BROWSING_TYPES = {
    "session_id_hash": pa.string(),
    "event_type": pa.string(),
    "product_action": pa.string(),
    "product_sku_hash": pa.string(),
    "server_timestamp_epoch_ms": pa.int64(),
    "hashed_url": pa.string(),
}
CATALOG_TYPES = {
    "product_sku_hash": pa.string(),
    "description_vector": pa.string(),
    "category_hash": pa.string(),
    "image_vector": pa.string(),
    "price_bucket": pa.string(),
}
BLOCK_SIZE = 64 << 20

RAW_LOG_SELECT = """
select
    $etl_id as etl_id,
    $etl_timestamp as etl_timestamp,
    $api_key as api_key,
    event_type,
    cast(epoch_ms(server_timestamp_epoch_ms) as date) as event_date,
    json_object(
        'session_id_hash', session_id_hash,
        'event_type', event_type,
        'product_action', product_action,
        'product_sku_hash', product_sku_hash,
        'server_timestamp_epoch_ms', server_timestamp_epoch_ms,
        'hashed_url', hashed_url
    ) as raw_data
from events
"""


class LoadError(ValueError):
    """The input cannot be loaded; the message names the file and the problem."""


@dataclass(frozen=True)
class LoadSummary:
    etl_id: str
    events: int
    sessions: int
    products: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        return (
            f"loaded {self.events:,} events in {self.sessions:,} sessions and {self.products:,} catalogue "
            f"products as etl_id {self.etl_id} in {self.seconds:.1f} s ({self.events_per_second:,.0f} events/s)"
        )


def _csv_batches(path: Path, column_types: dict[str, pa.DataType]) -> Iterator[pa.RecordBatch]:
    if not path.exists():
        raise LoadError(f"{path} does not exist")
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=BLOCK_SIZE),
            convert_options=pacsv.ConvertOptions(
                column_types=column_types, include_columns=list(column_types), strings_can_be_null=True
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError) as error:
        raise LoadError(f"{path}: not a file in the expected format ({', '.join(column_types)}): {error}") from error
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as error:
            raise LoadError(f"{path}: {error}") from error


def first_sessions(batches: Iterator[pa.RecordBatch], max_sessions: int | None) -> Iterator[pa.RecordBatch]:
    """Keep the events of the first `max_sessions` sessions in file order (all of them when None)."""
    kept: pa.Array = pa.array([], pa.string())
    for batch in batches:
        if max_sessions is None:
            yield batch
            continue
        sessions = batch.column("session_id_hash")
        if len(kept) < max_sessions:
            # pc.unique keeps first-appearance order, so the earliest new sessions are taken first.
            new = pc.filter(pc.unique(sessions), pc.invert(pc.is_in(pc.unique(sessions), kept)))
            kept = pa.concat_arrays([kept, new.slice(0, max_sessions - len(kept))])
        # Later events of a kept session may come after the limit is reached: read to the end.
        selected = batch.filter(pc.is_in(sessions, kept))
        if selected.num_rows:
            yield selected


def to_raw_log(events: pa.RecordBatch, etl_id: str, etl_timestamp: int, api_key: str) -> pa.Table:
    """Shape browsing_train rows into the raw-log schema (DESIGN.md)."""
    with duckdb.connect() as connection:
        connection.register("events", events)
        return connection.sql(
            RAW_LOG_SELECT, params={"etl_id": etl_id, "etl_timestamp": etl_timestamp, "api_key": api_key}
        ).to_arrow_table()


def load_coveo_files(warehouse: Warehouse, settings: Settings, data_dir: Path, progress: bool = True) -> LoadSummary:
    """Append `browsing_train.csv` (and the catalogue `sku_to_content.csv`) as one new load."""
    browsing_path = data_dir / "browsing_train.csv"
    catalog_path = data_dir / "sku_to_content.csv"
    started = time.perf_counter()
    etl_id = str(uuid.uuid4())
    etl_timestamp = int(time.time() * 1000)
    warehouse.ensure_raw_tables(settings.sf_table, settings.sf_catalog_table)

    sessions: set[str] = set()
    bar = tqdm(unit=" events", unit_scale=True, desc="loading events", disable=None if progress else True)

    def raw_batches() -> Iterator[pa.RecordBatch]:
        for events in first_sessions(_csv_batches(browsing_path, BROWSING_TYPES), settings.max_sessions):
            sessions.update(pc.unique(events.column("session_id_hash")).to_pylist())
            bar.update(events.num_rows)
            yield from to_raw_log(events, etl_id, etl_timestamp, settings.application_api_key).to_batches()

    with bar:
        events = warehouse.append_batches(settings.sf_table, raw_batches())
    products = 0
    if catalog_path.exists():
        products = warehouse.append_batches(
            settings.sf_catalog_table, _catalog_batches(catalog_path, etl_id, etl_timestamp, settings)
        )
    return LoadSummary(etl_id, events, len(sessions), products, time.perf_counter() - started)


def _catalog_batches(path: Path, etl_id: str, etl_timestamp: int, settings: Settings) -> Iterator[pa.RecordBatch]:
    for batch in _csv_batches(path, CATALOG_TYPES):
        rows = batch.num_rows
        yield pa.RecordBatch.from_pydict(
            {
                "etl_id": pa.array([etl_id] * rows),
                "etl_timestamp": pa.array([etl_timestamp] * rows, pa.int64()),
                "api_key": pa.array([settings.application_api_key] * rows),
                **{name: batch.column(name) for name in CATALOG_TYPES},
            }
        )
