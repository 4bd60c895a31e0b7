"""Readers of session data in its published layouts, each mapped onto the Coveo event schema.

A reader is a DuckDB query over the files (DuckDB's CSV reader does the parsing, in parallel, and keeps
the lines it cannot parse in a rejects table with the reason). Every reader yields the same columns:

    line                  position in the source, for "first N sessions in file order"
    session_id_hash, event_type, product_action, product_sku_hash, hashed_url   (text, as in the file)
    server_timestamp_epoch_ms                                                  (text: validated later)
    query_vector, clicked_skus_hash, product_skus_hash                         (search events only)
    source_file, source_line   where the row came from and the row as it was, for the quarantine

Supported layouts (`postmodern load --source NAME --path PATH`):

    coveo         a folder with browsing_train.csv, and optionally search_train.csv and sku_to_content.csv
    reclist       the RecList-packaged Coveo dataset: a zip holding dataset.json (x_train, x_test, y_test,
                  catalog); PATH may be a URL, fetched once into a local cache and checked
    diginetica    train-item-views.csv  (sessionId;userId;itemId;timeframe;eventdate)
    yoochoose     yoochoose-clicks.dat  (session,timestamp,item,category; no header)
    retailrocket  events.csv            (timestamp,visitorid,event,itemid,transactionid), sessions cut at
                  30-minute gaps per visitor
    plain         a CSV with session_id,item_id,timestamp (epoch seconds or milliseconds, or ISO 8601)
    events        a segment of the collector's stage (`postmodern collect`): JSON lines in the Coveo fields, with
                  the collector's reason where it refused an event

Any file may be gzipped (`.csv.gz`, `.dat.gz`): DuckDB decompresses it as it reads.
"""

from __future__ import annotations

import gzip
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

SESSION_GAP_MS = 30 * 60 * 1000
BROWSING_HEADER = (
    "session_id_hash",
    "event_type",
    "product_action",
    "product_sku_hash",
    "server_timestamp_epoch_ms",
    "hashed_url",
)
SEARCH_HEADER = (
    "session_id_hash",
    "query_vector",
    "clicked_skus_hash",
    "product_skus_hash",
    "server_timestamp_epoch_ms",
)
CATALOG_HEADER = ("product_sku_hash", "description_vector", "category_hash", "image_vector", "price_bucket")
EVENT_FIELDS = BROWSING_HEADER + ("query_vector", "clicked_skus_hash", "product_skus_hash")
# A browsing event's columns where they have their Coveo names.
COVEO_COLUMNS = {
    "session": "session_id_hash",
    "event_type": "event_type",
    "action": "product_action",
    "sku": "product_sku_hash",
    "timestamp": "server_timestamp_epoch_ms",
    "url": "hashed_url",
}
SOURCE_KINDS = ("coveo", "reclist", "diginetica", "yoochoose", "retailrocket", "plain", "events")


class SourceError(ValueError):
    """The source is missing or not in the layout it claims; the message says what was expected."""


@dataclass
class StagedSource:
    """What a reader leaves in the staging connection: query texts over registered CSV scans."""

    events_sql: str  # the standard columns (see the module docstring)
    catalog_sql: str | None  # product_sku_hash, category_hash, price_bucket, description_vector, image_vector
    files: list[Path]  # what the load fingerprint covers; the catalogue's file, when there is one, is last
    rejects_tables: list[tuple[str, str]] = field(default_factory=list)  # (rejects table, source file)
    source_reasons: bool = False  # events_sql has a `source_reason`: why the source itself refused a row
    # The CSV files every event comes from, each with whether it has a header line: when their bytes
    # are plain (data/load.py), no field can hold a character that ids must not, and that check is skipped.
    event_csv_files: list[tuple[Path, bool]] = field(default_factory=list)


def _csv(path: Path, columns: tuple[str, ...], rejects: str, *, delimiter: str = ",", header: bool = True) -> str:
    """A DuckDB CSV scan with every column as text and unparseable lines kept in `rejects`."""
    spec = ", ".join(f"'{name}': 'VARCHAR'" for name in columns)
    return (
        f"read_csv('{_quoted(path)}', columns = {{{spec}}}, header = {str(header).lower()}, delim = '{delimiter}', "
        f"quote = '\"', escape = '\"', strict_mode = true, store_rejects = true, "
        f"rejects_table = '{rejects}', rejects_scan = '{rejects}_scan', max_line_size = 1048576)"
    )


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


def _check_header(path: Path, expected: tuple[str, ...], delimiter: str = ",") -> None:
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    # DuckDB reads gzipped CSV as it is (by the .gz suffix); the header is read the same way
    with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as handle:
        try:
            first = handle.readline().decode("utf-8", errors="replace").strip().lstrip("\ufeff")
        except (OSError, EOFError) as error:
            raise SourceError(f"{path}: not a readable gzip file ({error})") from None
    found = tuple(name.strip().strip('"') for name in first.split(delimiter))
    if found != expected:
        raise SourceError(f"{path}: header {found} is not the expected {expected}")


def _source_line(*columns: str, delimiter: str = ",") -> str:
    return "concat_ws('" + delimiter + "', " + ", ".join(f"coalesce({c}, '')" for c in columns) + ")"


def _events_select(
    *,
    line: str,
    session: str,
    event_type: str,
    action: str,
    sku: str,
    timestamp: str,
    url: str,
    source_line: str,
    query_vector: str = "null",
    clicked: str = "null",
    products: str = "null",
    source: str,
    file: Path,
    source_reason: str | None = None,
) -> str:
    reason = f", {source_reason} as source_reason" if source_reason else ""
    return f"""
        select '{_quoted(file)}' as source_file, {line} as line,
               {session} as session_id_hash, {event_type} as event_type,
               {action} as product_action, {sku} as product_sku_hash,
               cast({timestamp} as varchar) as server_timestamp_epoch_ms, {url} as hashed_url,
               {query_vector} as query_vector, {clicked} as clicked_skus_hash, {products} as product_skus_hash,
               {source_line} as source_line{reason}
        from {source}"""


def stage_source(
    connection: duckdb.DuckDBPyConnection, kind: str, path: Path | str, cache_dir: Path, checksum: str | None = None
) -> StagedSource:
    """Queries that read the source in `kind`'s layout at `path` (a URL for reclist), in the standard columns."""
    if kind not in SOURCE_KINDS:
        raise SourceError(f"unknown source {kind!r}: one of {', '.join(SOURCE_KINDS)}")
    tag = uuid.uuid4().hex[:8]
    if kind == "reclist":
        from postmodern.data.reclist import stage_reclist

        return stage_reclist(connection, str(path), cache_dir, checksum)
    reader = {
        "coveo": _coveo,
        "diginetica": _diginetica,
        "yoochoose": _yoochoose,
        "retailrocket": _retailrocket,
        "plain": _plain,
        "events": _events,
    }[kind]
    return reader(Path(path), tag)


def _coveo(folder: Path, tag: str) -> StagedSource:
    if not folder.is_dir():
        raise SourceError(f"{folder} is not a folder with browsing_train.csv")
    browsing = folder / "browsing_train.csv"
    _check_header(browsing, BROWSING_HEADER)
    rejects = [(f"rejects_browsing_{tag}", str(browsing))]
    parts = [
        _events_select(
            line="row_number() over ()",
            **COVEO_COLUMNS,
            source_line=_source_line(*BROWSING_HEADER),
            source=_csv(browsing, BROWSING_HEADER, rejects[0][0]),
            file=browsing,
        )
    ]
    files = [browsing]
    search = folder / "search_train.csv"
    if search.exists():
        _check_header(search, SEARCH_HEADER)
        rejects.append((f"rejects_search_{tag}", str(search)))
        files.append(search)
        # Search events come after all browsing lines in "file order": they are a second file.
        parts.append(
            _events_select(
                line="1000000000000 + row_number() over ()",
                session="session_id_hash",
                event_type="'search'",
                action="null",
                sku="null",
                timestamp="server_timestamp_epoch_ms",
                url="null",
                query_vector="query_vector",
                clicked="clicked_skus_hash",
                products="product_skus_hash",
                source_line=_source_line(*SEARCH_HEADER),
                source=_csv(search, SEARCH_HEADER, rejects[1][0]),
                file=search,
            )
        )
    catalog_sql = None
    catalog = folder / "sku_to_content.csv"
    if catalog.exists():
        _check_header(catalog, CATALOG_HEADER)
        rejects.append((f"rejects_catalog_{tag}", str(catalog)))
        files.append(catalog)
        catalog_sql = (
            "select product_sku_hash, category_hash, price_bucket, description_vector, image_vector "
            f"from {_csv(catalog, CATALOG_HEADER, rejects[-1][0])}"
        )
    events_csv = [(path, True) for path in files if path != catalog]
    return StagedSource(" union all ".join(parts), catalog_sql, files, rejects, event_csv_files=events_csv)


def _diginetica(path: Path, tag: str) -> StagedSource:
    columns = ("sessionId", "userId", "itemId", "timeframe", "eventdate")
    _check_header(path, columns, delimiter=";")
    rejects = f"rejects_diginetica_{tag}"
    # timeframe: milliseconds since the session's first event on eventdate
    timestamp = "epoch_ms(try_cast(eventdate as date)::timestamp) + try_cast(timeframe as bigint)"
    return StagedSource(
        _events_select(
            line="row_number() over ()",
            session="sessionId",
            event_type="'event_product'",
            action="'detail'",
            sku="itemId",
            timestamp=timestamp,
            url="null",
            source_line=_source_line(*columns, delimiter=";"),
            source=_csv(path, columns, rejects, delimiter=";"),
            file=path,
        ),
        None,
        [path],
        [(rejects, str(path))],
        event_csv_files=[(path, True)],
    )


def _yoochoose(path: Path, tag: str) -> StagedSource:
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    columns = ("session", "timestamp", "item", "category")
    rejects = f"rejects_yoochoose_{tag}"
    timestamp = "epoch_ms(try_cast(replace(\"timestamp\", 'Z', '') as timestamp))"
    return StagedSource(
        _events_select(
            line="row_number() over ()",
            session="session",
            event_type="'event_product'",
            action="'detail'",
            sku="item",
            timestamp=timestamp,
            url="null",
            source_line=_source_line(*columns),
            source=_csv(path, columns, rejects, header=False),
            file=path,
        ),
        None,
        [path],
        [(rejects, str(path))],
        event_csv_files=[(path, False)],
    )


def _retailrocket(path: Path, tag: str) -> StagedSource:
    columns = ("timestamp", "visitorid", "event", "itemid", "transactionid")
    _check_header(path, columns)
    rejects = f"rejects_retailrocket_{tag}"
    action = "case event when 'view' then 'detail' when 'addtocart' then 'add' when 'transaction' then 'purchase' end"
    # A visitor's events more than 30 minutes apart start a new session (the dataset has no session ids).
    sessionised = f"""(
        select *, visitorid || ':' || sum(new_session) over (
                   partition by visitorid order by ts, line rows unbounded preceding) as session_key
        from (
            select *, case when ts - lag(ts) over (partition by visitorid order by ts, line) <= {SESSION_GAP_MS}
                           then 0 else 1 end as new_session
            from (select *, row_number() over () as line, try_cast("timestamp" as bigint) as ts
                  from {_csv(path, columns, rejects)})
        )
    )"""
    return StagedSource(
        _events_select(
            line="line",
            session="session_key",
            event_type="'event_product'",
            action=action,
            sku="itemid",
            timestamp='"timestamp"',
            url="null",
            source_line=_source_line(*columns),
            source=sessionised,
            file=path,
        ),
        None,
        [path],
        [(rejects, str(path))],
        event_csv_files=[(path, True)],
    )


def _plain(path: Path, tag: str) -> StagedSource:
    columns = ("session_id", "item_id", "timestamp")
    _check_header(path, columns)
    rejects = f"rejects_plain_{tag}"
    # Epoch seconds (before the year 5138) are told from milliseconds by size; ISO 8601 text is parsed.
    timestamp = """coalesce(
        case when try_cast("timestamp" as bigint) < 100000000000 then try_cast("timestamp" as bigint) * 1000
             else try_cast("timestamp" as bigint) end,
        epoch_ms(try_cast(replace("timestamp", 'Z', '') as timestamp)))"""
    return StagedSource(
        _events_select(
            line="row_number() over ()",
            session="session_id",
            event_type="'event_product'",
            action="'detail'",
            sku="item_id",
            timestamp=timestamp,
            url="null",
            source_line=_source_line(*columns),
            source=_csv(path, columns, rejects),
            file=path,
        ),
        None,
        [path],
        [(rejects, str(path))],
        event_csv_files=[(path, True)],
    )


def _events(path: Path, tag: str) -> StagedSource:
    if not path.is_file():
        raise SourceError(f"{path} is not a segment of the collector's stage (JSON lines)")
    columns = ", ".join(f"'{name}': 'VARCHAR'" for name in EVENT_FIELDS + ("event_id", "collector_reason"))
    scan = f"read_json('{_quoted(path)}', format = 'newline_delimited', columns = {{{columns}}})"
    select = _events_select(
        line="row_number() over ()",
        **COVEO_COLUMNS,
        query_vector="query_vector",
        clicked="clicked_skus_hash",
        products="product_skus_hash",
        source_line=_source_line("event_id", *EVENT_FIELDS),
        source=scan,
        file=path,
        source_reason="collector_reason",
    )
    return StagedSource(select, None, [path], source_reasons=True)
