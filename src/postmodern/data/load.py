"""Append a source to the warehouse's raw log: one load is one `etl_id`, all or nothing, loud about bad rows.

1. The source's reader (data/sources.py) is a DuckDB query: parsing is columnar and parallel, and lines
   that cannot be parsed land in DuckDB's rejects tables with the reason.
2. Every row is checked (session id, timestamp, event type, product action, SKU, characters in ids, field
   sizes); a failing row goes to the quarantine table with its raw line, the source, the etl_id and the
   reason. Only the failing rows and one row per session are kept aside: the valid rows stream from the file
   into the log.
3. `MAX_SESSIONS` keeps the first N sessions in file order, exactly, by each session's first line.
4. The raw log, the quarantine, the catalogue and the loads ledger are appended in one transaction, so a
   load killed half-way leaves nothing behind, and a load of a source already in the ledger (the same bytes:
   the fingerprint hashes all of them) is refused unless forced. dbt counts a re-loaded event once either way.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import xxhash
from tqdm import tqdm

from postmodern.config import MAX_FIELD_LENGTH, Settings
from postmodern.data.sources import SourceError, StagedSource, stage_source
from postmodern.warehouse import Warehouse

EARLIEST_EPOCH_MS = 946_684_800_000  # 2000-01-01: anything earlier is a unit or parsing error
FINGERPRINT_CHUNK = 4 << 20
# Characters no identifier holds (RE2): C0 and C1 controls (NUL included), invisible format characters (zero
# widths, bidirectional overrides), line and paragraph separators, and the replacement character a broken
# decoding leaves behind. Ids are hashes or codes: one of these is corrupt data, and breaks consumers downstream.
FORBIDDEN_IN_IDS = r"[\x00-\x1f\x7f-\x9f\p{Cf}\x{2028}\x{2029}\x{fffd}]"
BAD_ID_REASON = "control character in identifier"

# DuckDB's CSV rejects, in the words of the quarantine.
REJECT_REASONS = {
    "MISSING COLUMNS": "wrong column count",
    "TOO MANY COLUMNS": "wrong column count",
    "INVALID ENCODING": "invalid UTF-8",
    "INVALID UNICODE": "invalid UTF-8",
    "LINE SIZE OVER MAXIMUM": "oversized line",
    "UNQUOTED VALUE": "malformed quoting",
    "CAST": "unparseable value",
}


class LoadError(ValueError):
    """The input cannot be loaded; the message names the file and the problem."""


class AlreadyLoaded(LoadError):
    """The source's content is in the ledger already (and the load was not forced)."""


@dataclass(frozen=True)
class LoadSummary:
    etl_id: str
    events: int
    sessions: int
    products: int
    seconds: float
    quarantined: dict[str, int] = field(default_factory=dict)  # reason -> rows
    outside_session_limit: int = 0  # invalid rows of sessions past MAX_SESSIONS, not quarantined

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        text = (
            f"loaded {self.events:,} events in {self.sessions:,} sessions and {self.products:,} catalogue "
            f"products as etl_id {self.etl_id} in {self.seconds:.1f} s ({self.events_per_second:,.0f} events/s)"
        )
        if self.quarantined:
            reasons = ", ".join(f"{reason}: {count:,}" for reason, count in sorted(self.quarantined.items()))
            text += f"\nquarantined {sum(self.quarantined.values()):,} rows ({reasons})"
        if self.outside_session_limit:
            text += f"\n{self.outside_session_limit:,} invalid rows belong to sessions past MAX_SESSIONS"
        return text


def fingerprint(files: list[Path], progress: bool = False) -> str:
    """The hash of every byte of the source's files, in order: two sources share it only when their content is
    the same, whatever their names. XXH3-128 streams at several GB/s, a small share of the load's own time."""
    digest = xxhash.xxh3_128()
    buffer = bytearray(FINGERPRINT_CHUNK)
    view = memoryview(buffer)
    total = sum(path.stat().st_size for path in files)
    with tqdm(total=total, desc="fingerprint", unit="B", unit_scale=True, disable=not progress or None) as bar:
        for path in files:
            digest.update(f"{path.stat().st_size}:".encode())  # where one file ends and the next begins
            with path.open("rb") as handle:
                while read := handle.readinto(buffer):
                    digest.update(view[:read])
                    bar.update(read)
    return f"xxh3-128:{digest.hexdigest()}"


def event_reason_sql() -> str:
    """Why an event (the standard columns of data/sources.py) cannot be loaded, or null: SQL."""
    latest = int((time.time() + 86_400) * 1000)
    return f"""case
        when session_id_hash is null or trim(session_id_hash) = '' then 'missing session id'
        when try_cast(server_timestamp_epoch_ms as bigint) is null then 'non-numeric timestamp'
        when try_cast(server_timestamp_epoch_ms as bigint) not between {EARLIEST_EPOCH_MS} and {latest}
            then 'timestamp out of range'
        when event_type is null or event_type not in ('pageview', 'event_product', 'search')
            then 'unknown event_type'
        when event_type = 'event_product' and (product_action is null
             or product_action not in ('detail', 'add', 'remove', 'purchase')) then 'unknown product_action'
        when event_type = 'pageview' and product_action is not null then 'unknown product_action'
        when event_type = 'event_product' and (product_sku_hash is null or trim(product_sku_hash) = '')
            then 'product event without SKU'
        when {_has_forbidden("session_id_hash")} or {_has_forbidden("product_sku_hash")}
             or {_has_forbidden("hashed_url")} then '{BAD_ID_REASON}'
        when greatest(length(session_id_hash), length(coalesce(product_sku_hash, '')),
                      length(coalesce(hashed_url, '')), length(coalesce(product_action, '')),
                      length(coalesce(query_vector, '')) / 64) > {MAX_FIELD_LENGTH}
            then 'oversized field'
    end"""


def _has_forbidden(column: str) -> str:
    return f"coalesce(regexp_matches({column}, '{FORBIDDEN_IN_IDS}'), false)"


def _catalog_reason_sql() -> str:
    return f"""case
        when nullif(trim(product_sku_hash), '') is null then 'catalogue row without SKU'
        when {_has_forbidden("product_sku_hash")} or {_has_forbidden("category_hash")} then '{BAD_ID_REASON}'
    end"""


def raw_data_sql(warehouse: Warehouse) -> str:
    """The event as the document the raw log stores; search events carry their own fields."""
    search = warehouse.document_sql(
        "struct_pack(session_id_hash, event_type, query_vector, clicked_skus_hash, product_skus_hash, "
        "server_timestamp_epoch_ms := epoch_ms_value)"
    )
    browsing = warehouse.document_sql(
        "struct_pack(session_id_hash, event_type, product_action, product_sku_hash, "
        "server_timestamp_epoch_ms := epoch_ms_value, hashed_url)"
    )
    return f"case when event_type = 'search' then {search} else {browsing} end"


def _run(connection: duckdb.DuckDBPyConnection, sql: str, description: str, progress: bool) -> None:
    """Execute `sql`, drawing DuckDB's own progress of the query as a bar."""
    if not progress:
        connection.execute(sql)
        return
    failure: list[BaseException] = []

    def work() -> None:
        try:
            connection.execute(sql)
        except BaseException as error:  # re-raised in the caller's thread
            failure.append(error)

    worker = threading.Thread(target=work, daemon=True)
    with tqdm(
        total=100, desc=description, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}", disable=None
    ) as bar:
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
            done = connection.query_progress()
            if done >= 0:
                bar.update(max(0.0, done - bar.n))
        bar.update(100 - bar.n)
    if failure:
        raise failure[0]


def load_source(
    warehouse: Warehouse,
    settings: Settings,
    path: Path | str,
    kind: str = "coveo",
    *,
    force: bool = False,
    checksum: str | None = None,
    progress: bool = True,
) -> LoadSummary:
    """Append the source at `path` (in `kind`'s layout) as one load; see the module docstring."""
    started = time.perf_counter()
    etl_id, etl_timestamp = str(uuid.uuid4()), int(time.time() * 1000)
    tables = settings.log_tables
    warehouse.ensure_raw_tables(tables)
    engine = warehouse.staging_connection()
    engine.execute(f"set memory_limit = '{settings.load_memory_limit}'")
    try:
        staged = stage_source(engine, kind, path, settings.data_dir / "cache", checksum)
    except SourceError as error:
        raise LoadError(str(error)) from None
    source_fingerprint = fingerprint(staged.files, progress)
    previous = warehouse.query(
        f"select etl_id, etl_timestamp from {warehouse.qualified(tables.loads)} "
        "where fingerprint = ? and api_key = ? order by etl_timestamp",
        [source_fingerprint, settings.application_api_key],
    ).to_pylist()
    if previous and not force:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(previous[0]["etl_timestamp"] / 1000))
        raise AlreadyLoaded(
            f"{path} was already loaded as etl_id {previous[0]['etl_id']} ({when} UTC); loading it again would "
            "append the same events twice. Pass --force to load it anyway (dbt counts each event once)."
        )
    tag = etl_id.replace("-", "")[:12]
    try:
        valid_rows = _prepare(engine, staged, tag, settings.max_sessions, progress)
        counts = _counts(engine, staged, tag, settings.max_sessions is not None)
        api_key = _sql_text(settings.application_api_key)
        common = f"'{etl_id}' as etl_id, {etl_timestamp} as etl_timestamp, '{api_key}' as api_key"
        seconds_so_far = time.perf_counter() - started
        selects = {
            tables.raw: f"""select {common}, event_type, cast(epoch_ms(epoch_ms_value) as date) as event_date,
                                   {raw_data_sql(warehouse)} as raw_data
                            from ({valid_rows})""",
            tables.quarantine: _quarantine_sql(staged, tag, common, settings.max_sessions is not None),
            tables.loads: f"""select {common}, '{kind}' as source_kind, '{_sql_text(str(path))}' as source_path,
                                     '{source_fingerprint}' as fingerprint, {counts["events"]} as events,
                                     {counts["sessions"]} as sessions, {sum(counts["quarantined"].values())}
                                     as quarantined, {counts["products"]} as products,
                                     {seconds_so_far:.3f} as seconds""",
        }
        if staged.catalog_sql:
            selects[tables.catalog] = f"""select {common}, product_sku_hash, category_hash, price_bucket,
                                                 description_vector, image_vector
                                          from catalog_{tag} where reason is null"""
        if progress:
            print(f"writing {counts['events']:,} events to {warehouse.qualified(tables.raw)} ...", flush=True)
        warehouse.append_queries(engine, selects)
    finally:
        temporary = [f"invalid_{tag}", f"sessions_{tag}", f"kept_{tag}", f"catalog_{tag}"]
        for table in temporary + [f"{rejects}_lines" for rejects, _ in staged.rejects_tables]:
            engine.execute(f"drop table if exists {table}")
    return LoadSummary(
        etl_id,
        counts["events"],
        counts["sessions"],
        counts["products"],
        time.perf_counter() - started,
        counts["quarantined"],
        counts["outside"],
    )


def _sql_text(value: str) -> str:
    return value.replace("'", "''")


def _prepare(
    engine: duckdb.DuckDBPyConnection, staged: StagedSource, tag: str, max_sessions: int | None, progress: bool
) -> str:
    """Check the source without copying it: keep only the rows that fail (few) and one row per session
    (first line, event count); return the query of the rows to append, which re-reads the source.

    Materialising every row first would double the work and spill to disk at full scale."""
    reason = f"coalesce(source_reason, {event_reason_sql()})" if staged.source_reasons else event_reason_sql()
    checked = f"""select *, {reason} as reason, try_cast(server_timestamp_epoch_ms as bigint) as epoch_ms_value
                  from ({staged.events_sql})"""
    _run(
        engine,
        f"create temp table invalid_{tag} as select * from ({checked}) where reason is not null",
        "checking",
        progress,
    )
    _run(
        engine,
        f"""create temp table sessions_{tag} as
                    select session_id_hash, min(line) as first_line, count(*) as events
                    from ({checked}) where reason is null group by session_id_hash""",
        "counting sessions",
        progress,
    )
    limit = "" if max_sessions is None else f"order by first_line limit {int(max_sessions)}"
    engine.execute(f"create temp table kept_{tag} as select * from sessions_{tag} {limit}")
    if staged.catalog_sql:
        checked_catalog = f"select *, {_catalog_reason_sql()} as reason from ({staged.catalog_sql})"
        engine.execute(f"create temp table catalog_{tag} as {checked_catalog}")
    for rejects, _ in staged.rejects_tables:  # every scan of a file adds its rejects again: keep one per line
        engine.execute(f"""create temp table {rejects}_lines as select * from {rejects}
                          qualify row_number() over (partition by line order by scan_id desc) = 1""")
    kept = "" if max_sessions is None else f"and session_id_hash in (select session_id_hash from kept_{tag})"
    return f"select * from ({checked}) where reason is null {kept}"


def _counts(engine: duckdb.DuckDBPyConnection, staged: StagedSource, tag: str, limited: bool) -> dict:
    events, sessions = engine.sql(f"select coalesce(sum(events), 0), count(*) from kept_{tag}").fetchall()[0]
    kept_invalid = _kept_invalid(tag, limited)
    quarantined = dict(
        engine.sql(f"select reason, count(*) from invalid_{tag} where {kept_invalid} group by 1").fetchall()
    )
    outside = engine.sql(f"select count(*) from invalid_{tag} where not ({kept_invalid})").fetchall()[0][0]
    for rejects, _ in staged.rejects_tables:
        for error_type, count in engine.sql(f"select error_type, count(*) from {rejects}_lines group by 1").fetchall():
            if limited:
                outside += count
                continue
            reason = REJECT_REASONS.get(error_type, error_type.lower())
            quarantined[reason] = quarantined.get(reason, 0) + count
    products = 0
    if staged.catalog_sql:
        products = engine.sql(f"select count(*) from catalog_{tag} where reason is null").fetchall()[0][0]
        for reason, count in engine.sql(f"select reason, count(*) from catalog_{tag} group by 1").fetchall():
            if reason is not None:
                quarantined[reason] = quarantined.get(reason, 0) + count
    return {
        "events": events,
        "sessions": sessions,
        "quarantined": quarantined,
        "outside": outside,
        "products": products,
    }


def _kept_invalid(tag: str, limited: bool) -> str:
    """Invalid rows that belong in the quarantine: all of them, or with a session limit those of kept sessions."""
    return f"session_id_hash in (select session_id_hash from kept_{tag})" if limited else "true"


def _quarantine_sql(staged: StagedSource, tag: str, common: str, limited: bool) -> str:
    parts = [
        f"""select {common}, source_file as source, cast(null as bigint) as line_number,
                        source_line as raw_line, reason
                 from invalid_{tag} where {_kept_invalid(tag, limited)}"""
    ]
    if staged.catalog_sql:
        catalog_file = _sql_text(str(staged.files[-1]))
        parts.append(f"""select {common}, '{catalog_file}' as source, cast(null as bigint) as line_number,
                                concat_ws(',', coalesce(product_sku_hash, ''), coalesce(category_hash, ''),
                                          coalesce(price_bucket, '')) as raw_line,
                                reason
                         from catalog_{tag} where reason is not null""")
    if not limited:  # parse rejects carry no session: with a session limit they are counted, not kept
        mapping = " ".join(f"when '{error}' then '{reason}'" for error, reason in REJECT_REASONS.items())
        for rejects, file in staged.rejects_tables:
            parts.append(f"""select {common}, '{_sql_text(file)}' as source, cast(line as bigint) as line_number,
                                    csv_line as raw_line,
                                    case error_type {mapping} else lower(error_type) end as reason
                             from {rejects}_lines""")
    return " union all ".join(parts)
