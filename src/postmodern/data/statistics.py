"""Statistics of a Coveo-format dataset, and the published figures of the real one to compare them with.

The targets are the figures of the Coveo SIGIR eCom 2021 Data Challenge's browsing data at full scale;
per-session ratios hold at any scale, totals only at full scale.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

COVEO_TARGETS = {
    "events": 36_000_000,
    "sessions": 5_000_000,
    "pageviews": 26_700_000,
    "product_events": 10_500_000,
    "products_in_events": 57_000,
    "catalogue_products": 66_000,
    "pageview_only_session_share": 2 / 3,
    "max_gap_minutes": 30,
    "span_days": 60,
}


def dataset_statistics(folder: Path) -> dict[str, float]:
    """Counts, ratios, action mix, gaps, time span and popularity concentration of browsing_train.csv
    (and sku_to_content.csv when present), computed by DuckDB."""
    browsing = str(Path(folder) / "browsing_train.csv").replace("'", "''")
    connection = duckdb.connect()
    connection.execute(f"create temp view events as select * from read_csv('{browsing}', header = true)")
    (events, sessions, pageviews, product_events, products, first_ms, last_ms) = connection.sql(
        """select count(*), count(distinct session_id_hash), count(*) filter (event_type = 'pageview'),
                  count(*) filter (event_type = 'event_product'), count(distinct product_sku_hash),
                  min(server_timestamp_epoch_ms), max(server_timestamp_epoch_ms)
           from events"""
    ).fetchall()[0]
    with_products = connection.sql(
        "select count(distinct session_id_hash) from events where event_type = 'event_product'"
    ).fetchall()[0][0]
    max_gap_ms = connection.sql(
        """select max(gap) from (
               select server_timestamp_epoch_ms - lag(server_timestamp_epoch_ms) over (
                   partition by session_id_hash order by server_timestamp_epoch_ms) as gap
               from events)"""
    ).fetchall()[0][0]
    actions = dict(
        connection.sql(
            "select product_action, count(*) from events where event_type = 'event_product' group by 1"
        ).fetchall()
    )
    repeated_views = connection.sql(
        """select avg(case when seen > 1 then 1.0 else 0.0 end) from (
               select count(*) over (partition by session_id_hash, product_sku_hash
                                     order by server_timestamp_epoch_ms rows unbounded preceding) as seen
               from events where product_action = 'detail')"""
    ).fetchall()[0][0]
    top_share = connection.sql(
        """with counts as (select product_sku_hash, count(*) as n from events
                           where event_type = 'event_product' group by 1),
                ranked as (select n, row_number() over (order by n desc) as position, count(*) over () as total
                           from counts)
           select sum(n) filter (position <= greatest(1, total // 100)) / sum(n) from ranked"""
    ).fetchall()[0][0]
    statistics = {
        "events": events,
        "sessions": sessions,
        "pageviews": pageviews,
        "product_events": product_events,
        "products_in_events": products,
        "events_per_session": events / sessions,
        "pageviews_per_session": pageviews / sessions,
        "product_events_per_session": product_events / sessions,
        "pageview_only_session_share": 1 - with_products / sessions,
        "max_gap_minutes": (max_gap_ms or 0) / 60_000,
        "span_days": (last_ms - first_ms) / 86_400_000,
        "repeated_view_share": float(repeated_views or 0.0),
        "top_1pct_product_share": float(top_share or 0.0),
        **{f"{action}_share": count / product_events for action, count in actions.items()},
    }
    catalog = Path(folder) / "sku_to_content.csv"
    if catalog.exists():
        path = str(catalog).replace("'", "''")
        total, no_vector, buckets_low, buckets_high, depth = connection.sql(
            f"""select count(*), count(*) filter (description_vector is null), min(price_bucket),
                       max(price_bucket), max(len(string_split(category_hash, '/')))
                from read_csv('{path}', header = true)"""
        ).fetchall()[0]
        statistics.update(
            {
                "catalogue_products": total,
                "missing_vector_share": no_vector / total,
                "price_bucket_min": buckets_low,
                "price_bucket_max": buckets_high,
                "category_depth": depth,
            }
        )
    connection.close()
    return statistics
