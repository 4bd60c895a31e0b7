from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow.csv as pacsv

from postmodern.data.generator import (
    MAX_GAP_MS,
    PROFILES,
    build_catalogue,
    generate_chunk,
    generate_dataset,
)
from postmodern.data.sources import BROWSING_HEADER, CATALOG_HEADER


def read(path):
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True)).to_pandas()


def test_files_have_the_coveo_columns_and_values(tiny_data):
    events = read(tiny_data / "browsing_train.csv")
    catalog = read(tiny_data / "sku_to_content.csv")
    assert tuple(events.columns) == BROWSING_HEADER
    assert tuple(catalog.columns) == CATALOG_HEADER
    assert set(events.event_type) == {"pageview", "event_product"}
    products = events[events.event_type == "event_product"]
    assert set(products.product_action) == {"detail", "add", "remove", "purchase"}
    assert products.product_sku_hash.notna().all()
    pageviews = events[events.event_type == "pageview"]
    assert pageviews.product_action.isna().all() and pageviews.product_sku_hash.isna().all()
    assert events.hashed_url.str.len().eq(64).all()
    assert catalog.price_bucket.between(1, 10).all()
    with_vectors = catalog.description_vector.dropna()
    assert 0 < len(with_vectors) < len(catalog)  # some products have no vectors, as in the real file
    assert len(with_vectors.iloc[0].strip("[]").split(",")) == 50
    assert catalog.category_hash.dropna().str.count("/").eq(2).all()


def test_sessions_are_contiguous_time_ordered_and_gaps_at_most_30_minutes(tiny_data):
    events = read(tiny_data / "browsing_train.csv")
    sessions = events.session_id_hash
    starts = sessions.ne(sessions.shift())
    assert starts.sum() == sessions.nunique()  # each session's events are together in the file
    gaps = events.server_timestamp_epoch_ms.diff()[~starts]
    assert (gaps >= 0).all() and (gaps <= MAX_GAP_MS).all()


def test_about_two_thirds_of_sessions_are_page_views_only(tiny_data, tiny_config):
    events = read(tiny_data / "browsing_train.csv")
    with_products = events[events.event_type == "event_product"].session_id_hash.nunique()
    share = 1 - with_products / events.session_id_hash.nunique()
    assert abs(share - (1 - tiny_config.share_product_sessions)) < 0.05


def test_generation_is_deterministic_for_a_seed(tmp_path):
    config = replace(PROFILES["tiny"], n_sessions=300)
    first = generate_dataset(tmp_path / "a", config, progress=False)
    second = generate_dataset(tmp_path / "b", config, progress=False)
    other = generate_dataset(tmp_path / "c", replace(config, seed=7), progress=False)
    assert first.browsing_path.read_bytes() == second.browsing_path.read_bytes()
    assert first.catalog_path.read_bytes() == second.catalog_path.read_bytes()
    assert first.browsing_path.read_bytes() != other.browsing_path.read_bytes()


def test_next_products_follow_successors_far_more_than_popularity_predicts():
    config = replace(PROFILES["tiny"], n_sessions=4000)
    catalogue = build_catalogue(config)
    events = generate_chunk(catalogue, config, 0, config.n_sessions).to_pandas()
    details = events[events.product_action == "detail"]
    index = {sku: i for i, sku in enumerate(catalogue.skus)}
    followed, by_chance, transitions = 0, 0.0, 0
    for _, session in details.groupby("session_id_hash", sort=False):
        items = [index[sku] for sku in session.product_sku_hash]
        for current, following in zip(items, items[1:], strict=False):
            if current == following:
                continue
            transitions += 1
            followed += following in catalogue.successors[current]
            # how often a popularity-weighted pick would land on a successor
            by_chance += catalogue.popularity[np.unique(catalogue.successors[current])].sum()
    assert transitions > 1000
    assert followed / transitions > 0.5
    assert followed > 5 * by_chance


def test_popularity_is_long_tailed(tiny_data):
    events = read(tiny_data / "browsing_train.csv")
    counts = np.array(sorted(Counter(events.product_sku_hash.dropna()).values(), reverse=True))
    top_share = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_share > 0.35  # the top 10% of products take a large share of interactions


def test_the_coveo_profile_matches_the_published_figures_per_session(tmp_path):
    """Per-session ratios hold at any scale; totals are checked at full scale by bench/bench_data.py."""
    from postmodern.data.statistics import COVEO_TARGETS, dataset_statistics

    config = PROFILES["coveo-full"]
    generate_dataset(tmp_path, replace(config, n_sessions=60_000), progress=False)
    stats = dataset_statistics(tmp_path)
    sessions = COVEO_TARGETS["sessions"]
    # within 6% of the real dataset's ratios (4.93M sessions, 36.1M events)
    assert abs(stats["events_per_session"] / (COVEO_TARGETS["events"] / sessions * 1.015) - 1) < 0.06
    assert abs(stats["pageviews_per_session"] / (COVEO_TARGETS["pageviews"] / sessions) - 1) < 0.06
    assert abs(stats["product_events_per_session"] / (COVEO_TARGETS["product_events"] / sessions) - 1) < 0.08
    assert abs(stats["pageview_only_session_share"] - COVEO_TARGETS["pageview_only_session_share"]) < 0.02
    assert 0.8 < stats["detail_share"] < 0.92
    assert 0.04 < stats["add_share"] < 0.12 and 0.005 < stats["remove_share"] < 0.05
    assert 0.005 < stats["purchase_share"] < 0.05
    assert 20 < stats["max_gap_minutes"] <= COVEO_TARGETS["max_gap_minutes"]
    assert 58 < stats["span_days"] <= COVEO_TARGETS["span_days"] + 1
    assert stats["repeated_view_share"] > 0.05  # shoppers look at a product again
    assert stats["top_1pct_product_share"] > 0.2  # long tail: 1% of products take a fifth of the events
    assert stats["catalogue_products"] == COVEO_TARGETS["catalogue_products"] == config.n_products
    assert abs(stats["missing_vector_share"] - config.share_missing_vectors) < 0.02
    assert (stats["price_bucket_min"], stats["price_bucket_max"], stats["category_depth"]) == (1, 10, 3)
    assert stats["products_in_events"] < 0.9 * config.n_products  # some products are never browsed
