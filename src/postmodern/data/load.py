"""Append a source to the warehouse's raw log: one load is one `etl_id`, all or nothing, loud about bad rows.

1. The source's reader (data/sources.py) is a DuckDB query: parsing is columnar and parallel, and lines
   that cannot be parsed land in DuckDB's rejects tables with the reason.
2. Every row is checked (session id, timestamp, event type, product action, SKU, characters in ids, field
   sizes) and written, in one pass over the source, to local Parquet: the valid rows as the log stores them,
   the failing ones with their raw line, source and reason, for the quarantine.
3. `MAX_SESSIONS` keeps the first N sessions in file order, exactly, by each session's first line (then the
   valid rows are filtered once more; without a limit their file is what the log appends).
4. The raw log, the quarantine, the catalogue and the loads ledger are appended as one load, all or nothing
   (warehouse/segment_log.py, or one Snowflake transaction), so a load killed half-way leaves nothing behind,
   and a load of a source already in the ledger (the same bytes: the fingerprint hashes all of them) is refused
   unless forced. dbt counts a re-loaded event once either way.
"""

from __future__ import annotations

import tempfile
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
from postmodern.warehouse import RawLog

EARLIEST_EPOCH_MS = 946_684_800_000  # 2000-01-01: anything earlier is a unit or parsing error
FINGERPRINT_CHUNK = 4 << 20
# Characters no identifier holds (RE2): C0 and C1 controls (NUL included), invisible format characters (zero
# widths, bidirectional overrides), line and paragraph separators, and the replacement character a broken
# decoding leaves behind. Ids are hashes or codes: one of these is corrupt data, and breaks consumers downstream.
FORBIDDEN_IN_IDS = r"[\x00-\x1f\x7f-\x9f\p{Cf}\x{2028}\x{2029}\x{fffd}]"
BAD_ID_REASON = "control character in identifier"
PLAIN_CSV_BYTES = bytes(byte for byte in range(0x20, 0x7F) if byte != ord('"')) + b"\n\r"

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
    return read_source(files, [], progress)[0]


def read_source(files: list[Path], csv_files: list[tuple[Path, bool]], progress: bool = False) -> tuple[str, bool]:
    """The source's fingerprint, and whether `csv_files` (each with whether it has a header) are plain: every byte
    after the header printable ASCII but the quote, or a line break. A field of a plain CSV file cannot hold a
    character that ids must not (FORBIDDEN_IN_IDS: controls, invisible or non-ASCII ones), so the load can skip
    that check, the costliest of them (0.3 us an event in RE2). False when there are none, or one is gzipped."""
    digest = xxhash.xxh3_128()
    buffer = bytearray(FINGERPRINT_CHUNK)
    view = memoryview(buffer)
    scanned = dict(csv_files)
    plain = bool(scanned) and all(path.suffix != ".gz" for path in scanned)
    total = sum(path.stat().st_size for path in files)
    with tqdm(total=total, desc="fingerprint", unit="B", unit_scale=True, disable=not progress or None) as bar:
        for path in files:
            digest.update(f"{path.stat().st_size}:".encode())  # where one file ends and the next begins
            header = scanned.get(path, False)
            with path.open("rb") as handle:
                while read := handle.readinto(buffer):
                    digest.update(view[:read])
                    bar.update(read)
                    if plain and path in scanned:
                        start = 0
                        if header:
                            newline = buffer.find(b"\n", 0, read)
                            start, header = (read, True) if newline < 0 else (newline + 1, False)
                        plain = not buffer[start:read].translate(None, PLAIN_CSV_BYTES)
    return f"xxh3-128:{digest.hexdigest()}", plain


def event_reason_sql(check_characters: bool = True) -> str:
    """Why an event (the standard columns of data/sources.py) cannot be loaded, or null: SQL. Without
    `check_characters`, ids are known to hold no forbidden character (`read_source`)."""
    latest = int((time.time() + 86_400) * 1000)
    # The pattern once over the ids joined (it matches single characters: the joins make no match of their own):
    # a query compiles each pattern it holds, a cost the collector's small checks pay each time.
    ids = "concat(session_id_hash, product_sku_hash, hashed_url)"
    characters = f"when {_has_forbidden(ids)} then '{BAD_ID_REASON}'" if check_characters else ""
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
        {characters}
        when {_longest_field("strlen")} > {MAX_FIELD_LENGTH} and {_longest_field("length")} > {MAX_FIELD_LENGTH}
            then 'oversized field'
    end"""


def _longest_field(length: str) -> str:
    """The longest field, in bytes (`strlen`: quick) or characters (`length`: the limit's unit, never more)."""
    # DuckDB's greatest skips nulls
    return f"""greatest({length}(session_id_hash), {length}(product_sku_hash), {length}(hashed_url),
                        {length}(product_action), {length}(query_vector) / 64)"""


def _has_forbidden(text: str) -> str:
    return f"coalesce(regexp_matches({text}, '{FORBIDDEN_IN_IDS}'), false)"


def _catalog_reason_sql() -> str:
    return f"""case
        when nullif(trim(product_sku_hash), '') is null then 'catalogue row without SKU'
        when {_has_forbidden("product_sku_hash")} or {_has_forbidden("category_hash")} then '{BAD_ID_REASON}'
    end"""


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
    log: RawLog,
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
    etl_id = str(uuid.uuid4())
    tables = settings.log_tables
    log.ensure_raw_tables(tables)
    engine = log.staging_connection()
    engine.execute(f"set memory_limit = '{settings.load_memory_limit}'")
    try:
        staged = stage_source(engine, kind, path, settings.data_dir / "cache", checksum)
    except SourceError as error:
        raise LoadError(str(error)) from None
    source_fingerprint, plain_ids = read_source(staged.files, staged.event_csv_files, progress)
    previous = log.query(
        f"select etl_id, etl_timestamp from {log.qualified(tables.loads)} "
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
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".load-", dir=settings.data_dir) as scratch:
        try:
            checked = _check(engine, log, staged, Path(scratch), tag, settings.max_sessions, plain_ids, progress)
            counts = _counts(engine, staged, tag, checked, settings.max_sessions)
            rows: dict[str, str | Path] = {}
            if counts["events"]:
                rows[tables.raw] = checked.raw_rows(settings.max_sessions, tag)
            if counts["quarantined"]:
                rows[tables.quarantine] = _quarantine_sql(staged, tag, checked, settings.max_sessions is not None)
            if staged.catalog_sql and counts["products"]:
                rows[tables.catalog] = f"""select product_sku_hash, category_hash, price_bucket, description_vector,
                                                  image_vector
                                           from catalog_{tag} where reason is null"""
            ledger = {
                "source_kind": kind,
                "source_path": str(path),
                "fingerprint": source_fingerprint,
                "events": counts["events"],
                "sessions": counts["sessions"],
                "quarantined": sum(counts["quarantined"].values()),
                "products": counts["products"],
                "seconds": round(time.perf_counter() - started, 3),
            }
            if progress:
                print(f"appending {counts['events']:,} events to {log.qualified(tables.raw)} ...", flush=True)
            log.append_load(engine, etl_id, settings.application_api_key, rows, ledger)
        finally:
            temporary = [f"kept_{tag}", f"catalog_{tag}"]
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


@dataclass(frozen=True)
class CheckedRows:
    """Where the one pass over the source wrote its rows: Parquet folders of the valid and the invalid ones
    (absent when there are none)."""

    valid: Path
    invalid: Path

    def scan(self, folder: Path) -> str:
        return f"read_parquet('{_sql_text(str(folder))}/*.parquet')"

    def raw_rows(self, max_sessions: int | None, tag: str) -> str | Path:
        """The raw log's rows: the valid rows' folder as it is, or with a session limit the kept sessions'."""
        if max_sessions is None:
            return self.valid
        return f"""select * exclude (line) from {self.scan(self.valid)}
                   where session_id_hash in (select session_id_hash from kept_{tag})"""


def _check(
    engine: duckdb.DuckDBPyConnection,
    log: RawLog,
    staged: StagedSource,
    scratch: Path,
    tag: str,
    max_sessions: int | None,
    plain_ids: bool,
    progress: bool,
) -> CheckedRows:
    """Read, check and write the source's rows in one pass: the valid ones as the log stores them (with a session
    limit, each one's line too), the invalid ones with their reason and raw line."""
    reason = event_reason_sql(check_characters=not plain_ids)
    reason = f"coalesce(source_reason, {reason})" if staged.source_reasons else reason
    # with a session limit, each valid row's line too
    line = ", line" if max_sessions is not None else ""
    _run(
        engine,
        f"""copy (
                select {log.event_columns_sql()},
                       case when reason is not null then source_file end as source_file,
                       case when reason is not null then source_line end as source_line,
                       reason{line},
                       reason is null as valid
                from (select * exclude (epoch_ms_value),
                             case when reason is null then epoch_ms_value end as epoch_ms_value
                      from (select *, {reason} as reason,
                                   try_cast(server_timestamp_epoch_ms as bigint) as epoch_ms_value
                            from ({staged.events_sql})))
            ) to '{_sql_text(str(scratch))}' (format parquet, partition_by (valid))""",
        "checking",
        progress,
    )
    checked = CheckedRows(scratch / "valid=true", scratch / "valid=false")
    if max_sessions is not None:
        sessions = (
            f"select session_id_hash, min(line) as first_line, count(*) as events from {checked.scan(checked.valid)} "
            "group by session_id_hash"
            if checked.valid.exists()
            else "select null::varchar as session_id_hash, null::bigint as first_line, 0::bigint as events limit 0"
        )
        engine.execute(f"create temp table kept_{tag} as {sessions} order by first_line limit {int(max_sessions)}")
    if staged.catalog_sql:
        checked_catalog = f"select *, {_catalog_reason_sql()} as reason from ({staged.catalog_sql})"
        engine.execute(f"create temp table catalog_{tag} as {checked_catalog}")
    for rejects, _ in staged.rejects_tables:  # a scan that restarts adds its rejects again: keep one per line
        engine.execute(f"""create temp table {rejects}_lines as select * from {rejects}
                          qualify row_number() over (partition by line order by scan_id desc) = 1""")
    return checked


def _counts(
    engine: duckdb.DuckDBPyConnection,
    staged: StagedSource,
    tag: str,
    checked: CheckedRows,
    max_sessions: int | None,
) -> dict:
    limited = max_sessions is not None
    if limited:
        events, sessions = engine.sql(f"select coalesce(sum(events), 0), count(*) from kept_{tag}").fetchall()[0]
    elif checked.valid.exists():
        events, sessions = engine.sql(
            f"select count(*), count(distinct session_id_hash) from {checked.scan(checked.valid)}"
        ).fetchall()[0]
    else:
        events = sessions = 0
    quarantined, outside = {}, 0
    if checked.invalid.exists():
        kept_invalid = _kept_invalid(tag, limited)
        quarantined = dict(
            engine.sql(
                f"select reason, count(*) from {checked.scan(checked.invalid)} where {kept_invalid} group by 1"
            ).fetchall()
        )
        outside = engine.sql(
            f"select count(*) from {checked.scan(checked.invalid)} where not ({kept_invalid})"
        ).fetchall()[0][0]
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


def _quarantine_sql(staged: StagedSource, tag: str, checked: CheckedRows, limited: bool) -> str:
    parts = []
    if checked.invalid.exists():
        parts.append(f"""select source_file as source, cast(null as bigint) as line_number, source_line as raw_line,
                                reason
                         from {checked.scan(checked.invalid)} where {_kept_invalid(tag, limited)}""")
    if staged.catalog_sql:
        catalog_file = _sql_text(str(staged.files[-1]))
        parts.append(f"""select '{catalog_file}' as source, cast(null as bigint) as line_number,
                                concat_ws(',', coalesce(product_sku_hash, ''), coalesce(category_hash, ''),
                                          coalesce(price_bucket, '')) as raw_line,
                                reason
                         from catalog_{tag} where reason is not null""")
    if not limited:  # parse rejects carry no session: with a session limit they are counted, not kept
        mapping = " ".join(f"when '{error}' then '{reason}'" for error, reason in REJECT_REASONS.items())
        for rejects, file in staged.rejects_tables:
            parts.append(f"""select '{_sql_text(file)}' as source, cast(line as bigint) as line_number,
                                    csv_line as raw_line, case error_type {mapping} else lower(error_type) end as reason
                             from {rejects}_lines""")
    return " union all ".join(parts)
