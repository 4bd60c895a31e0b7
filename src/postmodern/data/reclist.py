"""The RecList-packaged Coveo dataset the original project trained on: a zip holding `dataset.json` with
`x_train` and `x_test` (sessions as lists of browsing events), `y_test` (each test session's next event)
and `catalog` (SKU -> category, price bucket, vectors).

It is fetched once from a URL into a local cache and checked against a SHA-256 when one is given; a file
that fails the check is never kept.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import duckdb
import pyarrow as pa
import requests

from postmodern.data.sources import BROWSING_HEADER, SourceError, StagedSource

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, cache_dir: Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """The file at `url`, downloaded into `cache_dir` once; verified against `sha256` when given."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = Path(urlparse(url).path).name or "download"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    cached = cache_dir / f"{key}-{name}"
    if cached.exists() and (sha256 is None or sha256_of(cached) == sha256):
        return cached
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            response.raise_for_status()
            with tempfile.NamedTemporaryFile(dir=cache_dir, delete=False, suffix=".partial") as partial:
                for block in response.iter_content(CHUNK):
                    partial.write(block)
    except requests.RequestException as error:
        raise SourceError(f"cannot fetch {url}: {error}") from None
    partial_path = Path(partial.name)
    if sha256 is not None and (found := sha256_of(partial_path)) != sha256:
        partial_path.unlink()
        raise SourceError(f"{url}: checksum {found} does not match the expected {sha256}")
    partial_path.replace(cached)
    return cached


def read_dataset(zip_path: Path) -> dict:
    try:
        with zipfile.ZipFile(zip_path) as archive, archive.open("dataset.json") as handle:
            data = json.load(handle)
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
        raise SourceError(f"{zip_path} is not a RecList dataset (a zip with dataset.json): {error}") from None
    missing = [key for key in ("x_train", "x_test", "y_test", "catalog") if key not in data]
    if missing:
        raise SourceError(f"{zip_path}: dataset.json has no {', '.join(missing)}")
    return data


def events_table(data: dict) -> pa.Table:
    """All events in file order: training sessions, then each test session followed by its next event."""
    rows: list[dict] = []
    for session in data["x_train"]:
        rows.extend(session)
    for session, following in zip(data["x_test"], data["y_test"], strict=True):
        rows.extend(session)
        rows.extend(following if isinstance(following, list) else [following])
    columns = {
        name: pa.array([None if row.get(name) is None else str(row.get(name)) for row in rows], pa.string())
        for name in BROWSING_HEADER
    }
    return pa.table({"line": pa.array(range(1, len(rows) + 1), pa.int64()), **columns})


def catalog_table(data: dict) -> pa.Table:
    def text(value):
        return None if value is None else json.dumps(value) if isinstance(value, list) else str(value)

    items = list(data["catalog"].items())
    return pa.table(
        {
            "product_sku_hash": pa.array([sku for sku, _ in items], pa.string()),
            "category_hash": pa.array([text(attrs.get("category_hash")) for _, attrs in items], pa.string()),
            "price_bucket": pa.array([text(attrs.get("price_bucket")) for _, attrs in items], pa.string()),
            "description_vector": pa.array([text(attrs.get("description_vector")) for _, attrs in items], pa.string()),
            "image_vector": pa.array([text(attrs.get("image_vector")) for _, attrs in items], pa.string()),
        }
    )


def stage_reclist(
    connection: duckdb.DuckDBPyConnection, location: str, cache_dir: Path, sha256: str | None = None
) -> StagedSource:
    """Register the dataset's events and catalogue as tables of the staging connection."""
    is_url = location.startswith(("http://", "https://"))
    zip_path = fetch(location, cache_dir, sha256) if is_url else Path(location)
    if not zip_path.exists():
        raise SourceError(f"{zip_path} does not exist")
    data = read_dataset(zip_path)
    connection.register("reclist_events", events_table(data))
    connection.register("reclist_catalog", catalog_table(data))
    columns = ", ".join(BROWSING_HEADER)
    file = str(zip_path).replace("'", "''")
    events_sql = f"""
        select '{file}' as source_file, line, {columns},
               null as query_vector, null as clicked_skus_hash, null as product_skus_hash,
               concat_ws(',', {", ".join(f"coalesce({c}, '')" for c in BROWSING_HEADER)}) as source_line
        from reclist_events"""
    catalog_sql = (
        "select product_sku_hash, category_hash, price_bucket, description_vector, image_vector from reclist_catalog"
    )
    return StagedSource(events_sql, catalog_sql, [zip_path])
