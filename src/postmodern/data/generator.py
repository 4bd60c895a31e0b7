"""Generated browsing data in the exact file formats of the Coveo SIGIR eCom 2021 Data Challenge.

The generative story, so that a model reading the session can learn what a popularity count cannot:

1. A catalogue of products in a three-level category tree (`top/sub/leaf`, each level a hash). Product
   popularity is long-tailed (Zipf). Description and image vectors are category centroids plus noise,
   and some products have them empty, as in the real file.
2. Every product has a short ranked list of *successors* (mostly in its own sub-category, popular ones
   more likely): the item-to-item transitions shoppers follow from one product page to the next.
3. A session has a latent shopping *intent* (a top-level category). Its first product comes from the
   intent; each next one repeats the current product (a repeated view), follows one of its successors,
   jumps elsewhere in the intent, or (rarely) to any popular product.
4. Product views are `detail` events; some are followed by an `add` of the same product, a few adds are
   later `remove`d, and some sessions with a cart end with `purchase` events for the products added.
5. Page views (home, search and content pages) are interleaved; about two thirds of sessions have page
   views only. Events are at most 30 minutes apart; session starts cover the configured days with a
   daily cycle.

Generation is vectorised over a chunk of sessions and streamed to CSV chunk by chunk, so memory stays
bounded at any scale, and the output depends only on the seed and the configuration.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from tqdm import tqdm

VECTOR_DIM = 50
MAX_GAP_MS = 30 * 60 * 1000
# Hashes, actions and numbers never hold a comma: the browsing file is unquoted, like the real one.
BROWSING_WRITE_OPTIONS = pacsv.WriteOptions(quoting_style="none")
CATALOG_WRITE_OPTIONS = pacsv.WriteOptions(quoting_style="needed")


@dataclass(frozen=True)
class GeneratorConfig:
    """Every knob of the generative story (see the module docstring)."""

    n_sessions: int = 60_000
    first_session: int = 0  # index of the first session: a later batch of the same shop starts past the last
    n_products: int = 6_000
    seed: int = 42
    start_epoch_ms: int = 1_546_300_800_000  # 2019-01-01, as in the Coveo release
    n_days: int = 60
    # catalogue
    n_top_categories: int = 12
    n_sub_per_top: int = 6
    n_leaf_per_sub: int = 4
    popularity_exponent: float = 1.05
    share_missing_vectors: float = 0.1
    share_missing_category: float = 0.03
    share_catalogue_only: float = 0.0  # products in the catalogue that no session ever shows
    # sessions
    share_product_sessions: float = 0.34
    mean_product_views: float = 5.5
    max_product_views: int = 60
    mean_pageviews: float = 4.7
    n_successors: int = 4
    successor_in_sub_category: float = 0.85
    p_repeat: float = 0.12
    p_follow: float = 0.62
    p_intent: float = 0.2  # the remainder jumps to a globally popular product
    p_add: float = 0.1
    p_remove: float = 0.15
    p_purchase: float = 0.45
    mean_gap_s: float = 45.0
    share_long_gaps: float = 0.04  # pauses of 2 to 30 minutes (reading, comparing) between two events
    chunk_sessions: int = 200_000


PROFILES: dict[str, GeneratorConfig] = {
    "tiny": GeneratorConfig(n_sessions=3_000, n_products=600, n_top_categories=6),
    "small": GeneratorConfig(),
    # Calibrated to the published figures of the Coveo SIGIR eCom 2021 browsing data (see COVEO_TARGETS).
    "coveo-full": GeneratorConfig(
        n_sessions=4_800_000, n_products=66_000, n_top_categories=20, share_catalogue_only=0.13
    ),
}


@dataclass(frozen=True)
class Catalogue:
    skus: np.ndarray  # product index -> 64-hex SKU hash
    top_category: np.ndarray  # product index -> top-level category index
    sub_category: np.ndarray  # product index -> global sub-category index
    category_path: np.ndarray  # product index -> "top/sub/leaf" hashes
    price_bucket: np.ndarray
    popularity: np.ndarray  # sampling weight, sums to 1
    successors: np.ndarray  # [n_products, n_successors] product indices
    product_urls: np.ndarray
    page_urls: np.ndarray  # home, search and content pages, hashed once for every chunk
    description_vectors: np.ndarray
    image_vectors: np.ndarray
    has_vectors: np.ndarray
    has_category: np.ndarray


def _hashes(prefix: str, count: int, seed: int, start: int = 0) -> np.ndarray:
    return np.array([hashlib.sha256(f"{seed}:{prefix}:{i}".encode()).hexdigest() for i in range(start, start + count)])


def _weighted_sampler(weights: np.ndarray, groups: np.ndarray, n_groups: int):
    """Sample an index by `weights` within a given group, vectorised over many rows at once.

    Items are sorted by group and each group's CDF is shifted by the group id, so one searchsorted
    over `group + u` draws from the right group for every row. Items of weight 0 are never drawn; a group
    whose weights are all 0 must not be asked for.
    """
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    sorted_weights = weights[order]
    counts = np.bincount(sorted_groups, minlength=n_groups)
    totals = np.bincount(sorted_groups, weights=sorted_weights, minlength=n_groups)
    within_group = np.cumsum(sorted_weights) - np.repeat(np.cumsum(totals) - totals, counts)
    shifted_cdf = sorted_groups + within_group / np.where(totals > 0, totals, 1)[sorted_groups]

    def sample(group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        u = rng.random(group.shape[0]) * (1 - 1e-9)
        position = np.searchsorted(shifted_cdf, group + u, side="right")
        return order[np.minimum(position, len(order) - 1)]

    return sample


def build_catalogue(config: GeneratorConfig) -> Catalogue:
    rng = np.random.default_rng([config.seed, 0])
    n = config.n_products
    n_sub = config.n_top_categories * config.n_sub_per_top
    n_leaf = n_sub * config.n_leaf_per_sub

    # Category popularity is uneven too, so that a few intents dominate.
    leaf = rng.choice(n_leaf, size=n, p=_zipf(n_leaf, 0.6, rng))
    sub = leaf // config.n_leaf_per_sub
    top = sub // config.n_sub_per_top
    top_hashes = _hashes("top", config.n_top_categories, config.seed)
    sub_hashes = _hashes("sub", n_sub, config.seed)
    leaf_hashes = _hashes("leaf", n_leaf, config.seed)
    category_path = np.char.add(
        np.char.add(np.char.add(top_hashes[top], "/"), np.char.add(sub_hashes[sub], "/")), leaf_hashes[leaf]
    )
    # Some catalogue products are never browsed (discontinued, out of stock): popularity 0.
    popularity = _zipf(n, config.popularity_exponent, rng) * (rng.random(n) >= config.share_catalogue_only)
    popularity /= popularity.sum()

    # Successors: mostly popular products of the same sub-category, the rest from anywhere.
    in_sub = _weighted_sampler(popularity, sub, n_sub)
    sub_is_browsed = np.bincount(sub, weights=popularity, minlength=n_sub) > 0
    successors = np.empty((n, config.n_successors), dtype=np.int64)
    for column in range(config.n_successors):
        anywhere = rng.choice(n, size=n, p=popularity)
        local = np.where(sub_is_browsed[sub], in_sub(np.where(sub_is_browsed[sub], sub, sub[anywhere]), rng), anywhere)
        successors[:, column] = np.where(rng.random(n) < config.successor_in_sub_category, local, anywhere)
    # A product is not its own successor: repeated views are their own move.
    self_loops = successors == np.arange(n)[:, None]
    successors[self_loops] = rng.choice(n, size=int(self_loops.sum()), p=popularity)

    # Price buckets 1-10, correlated with the sub-category's price level.
    sub_level = rng.integers(1, 11, size=n_sub)
    price_bucket = np.clip(sub_level[sub] + rng.integers(-2, 3, size=n), 1, 10)

    centroids = rng.normal(size=(n_leaf, VECTOR_DIM))
    description = centroids[leaf] + 0.5 * rng.normal(size=(n, VECTOR_DIM))
    image = centroids[leaf][:, ::-1] + 0.7 * rng.normal(size=(n, VECTOR_DIM))
    return Catalogue(
        skus=_hashes("sku", n, config.seed),
        top_category=top,
        sub_category=sub,
        category_path=category_path,
        price_bucket=price_bucket,
        popularity=popularity,
        successors=successors,
        product_urls=_hashes("product-url", n, config.seed),
        page_urls=_hashes("page-url", max(100, n // 10), config.seed),
        description_vectors=description.astype(np.float32),
        image_vectors=image.astype(np.float32),
        has_vectors=rng.random(n) >= config.share_missing_vectors,
        has_category=rng.random(n) >= config.share_missing_category,
    )


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    weights = weights[rng.permutation(n)]
    return weights / weights.sum()


def generate_product_sequences(
    catalogue: Catalogue, config: GeneratorConfig, n_sessions: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Product sequences of `n_sessions` sessions: a padded [n, max_len] index matrix and the lengths."""
    lengths = np.minimum(
        1 + rng.geometric(1 / config.mean_product_views, size=n_sessions) - 1, config.max_product_views
    )
    max_len = int(lengths.max()) if n_sessions else 0
    n_top = int(catalogue.top_category.max()) + 1
    in_intent = _weighted_sampler(catalogue.popularity, catalogue.top_category, n_top)
    intent = rng.choice(
        n_top, size=n_sessions, p=np.bincount(catalogue.top_category, weights=catalogue.popularity, minlength=n_top)
    )

    sequences = np.full((n_sessions, max_len), -1, dtype=np.int64)
    if max_len == 0:
        return sequences, lengths
    sequences[:, 0] = in_intent(intent, rng)
    thresholds = np.cumsum([config.p_repeat, config.p_follow, config.p_intent])
    n_successors = catalogue.successors.shape[1]
    for position in range(1, max_len):
        current = sequences[:, position - 1]
        move = rng.random(n_sessions)
        successor_rank = np.minimum(rng.geometric(0.55, size=n_sessions) - 1, n_successors - 1)
        followed = catalogue.successors[current, successor_rank]
        jumped = in_intent(intent, rng)
        popular = rng.choice(len(catalogue.popularity), size=n_sessions, p=catalogue.popularity)
        next_item = np.select(
            [move < thresholds[0], move < thresholds[1], move < thresholds[2]],
            [current, followed, jumped],
            default=popular,
        )
        sequences[:, position] = np.where(position < lengths, next_item, -1)
    return sequences, lengths


def generate_chunk(catalogue: Catalogue, config: GeneratorConfig, first_session: int, n_sessions: int) -> pa.Table:
    """All events of sessions [first_session, first_session + n_sessions) as a browsing_train table."""
    rng = np.random.default_rng([config.seed, 1, first_session])
    has_products = rng.random(n_sessions) < config.share_product_sessions
    product_session_ids = np.flatnonzero(has_products)
    sequences, lengths = generate_product_sequences(catalogue, config, len(product_session_ids), rng)

    # Product views (detail), one row per valid cell of the sequence matrix.
    row, position = np.nonzero(sequences >= 0)
    view_session = product_session_ids[row]
    view_product = sequences[row, position]
    view_order = position * 3.0

    # Adds right after some views; a few are removed a little later; purchases close some carts.
    is_add = rng.random(len(view_product)) < config.p_add
    add_session, add_product, add_order = view_session[is_add], view_product[is_add], view_order[is_add] + 1
    is_removed = rng.random(len(add_product)) < config.p_remove
    remove_order = add_order[is_removed] + 1 + rng.random(int(is_removed.sum())) * 3
    session_buys = rng.random(n_sessions) < config.p_purchase
    bought = session_buys[add_session] & ~is_removed
    purchase_order = np.full(int(bought.sum()), 3.0 * config.max_product_views + 10)

    n_pageviews = rng.poisson(config.mean_pageviews, size=n_sessions) + np.where(has_products, 0, 1)
    pageview_session = np.repeat(np.arange(n_sessions), n_pageviews)
    session_span = np.zeros(n_sessions)
    session_span[product_session_ids] = 3.0 * lengths
    pageview_order = rng.random(len(pageview_session)) * (session_span[pageview_session] + 1) - 0.5

    session = np.concatenate(
        [view_session, add_session, add_session[is_removed], add_session[bought], pageview_session]
    )
    product = np.concatenate(
        [view_product, add_product, add_product[is_removed], add_product[bought], np.full(len(pageview_session), -1)]
    )
    action = np.concatenate(
        [
            np.full(len(view_session), 0),
            np.full(len(add_session), 1),
            np.full(int(is_removed.sum()), 2),
            np.full(int(bought.sum()), 3),
            np.full(len(pageview_session), -1),
        ]
    )
    order_key = np.concatenate([view_order, add_order, remove_order, purchase_order, pageview_order])
    by_time = np.lexsort((order_key, session))
    session, product, action = session[by_time], product[by_time], action[by_time]

    # Timestamps: a session start on the daily cycle, then gaps capped at 30 minutes.
    day = rng.integers(0, config.n_days, size=n_sessions)
    hour = rng.normal(15, 4.5, size=n_sessions) % 24
    session_start = config.start_epoch_ms + day * 86_400_000 + (hour * 3_600_000).astype(np.int64)
    gaps = np.where(
        rng.random(len(session)) < config.share_long_gaps,
        rng.integers(120_000, MAX_GAP_MS + 1, size=len(session)),
        np.minimum(rng.exponential(config.mean_gap_s * 1000, size=len(session)).astype(np.int64) + 1, MAX_GAP_MS),
    )
    is_first = np.concatenate(([True], session[1:] != session[:-1]))
    gaps[is_first] = 0
    elapsed = np.cumsum(gaps)
    elapsed -= np.maximum.accumulate(np.where(is_first, elapsed, 0))
    timestamp = session_start[session] + elapsed

    session_hashes = pa.array(_hashes("session", n_sessions, config.seed, start=first_session))
    is_product = product >= 0
    page_urls = pa.array(catalogue.page_urls)
    page_url_choice = rng.choice(len(page_urls), size=len(session), p=_page_url_weights(len(page_urls)))
    product_indices = pa.array(product, mask=~is_product)
    # Strings are built by Arrow `take` over small dictionaries: no per-event Python or numpy strings.
    return pa.table(
        {
            "session_id_hash": session_hashes.take(pa.array(session)),
            "event_type": pa.array(["pageview", "event_product"]).take(pa.array(is_product.astype(np.int8))),
            "product_action": pa.array(["detail", "add", "remove", "purchase"]).take(
                pa.array(action, mask=~is_product)
            ),
            "product_sku_hash": pa.array(catalogue.skus).take(product_indices),
            "server_timestamp_epoch_ms": pa.array(timestamp, pa.int64()),
            "hashed_url": pc.coalesce(
                pa.array(catalogue.product_urls).take(product_indices), page_urls.take(pa.array(page_url_choice))
            ),
        }
    )


def _page_url_weights(n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1)
    return weights / weights.sum()


def _vector_strings(vectors: np.ndarray, present: np.ndarray) -> pa.Array:
    """'[0.1234, -0.5, ...]' per row (null where absent), formatted by Arrow, not a Python loop."""
    rows, dim = vectors.shape
    text = pc.cast(pa.array(np.round(vectors.astype(np.float64), 4).ravel()), pa.string())
    lists = pa.ListArray.from_arrays(pa.array(np.arange(0, rows * dim + 1, dim, dtype=np.int32)), text)
    wrapped = pc.binary_join_element_wise("[", pc.binary_join(lists, ", "), "]", "")
    return pc.if_else(pa.array(present), wrapped, pa.scalar(None, pa.string()))


def catalogue_table(catalogue: Catalogue) -> pa.Table:
    return pa.table(
        {
            "product_sku_hash": pa.array(catalogue.skus),
            "description_vector": _vector_strings(catalogue.description_vectors, catalogue.has_vectors),
            "category_hash": pa.array(np.where(catalogue.has_category, catalogue.category_path, None)),
            "image_vector": _vector_strings(catalogue.image_vectors, catalogue.has_vectors),
            "price_bucket": pa.array(catalogue.price_bucket, pa.int64()),
        }
    )


@dataclass(frozen=True)
class GenerationSummary:
    browsing_path: Path
    catalog_path: Path
    sessions: int
    events: int
    products: int


def generate_dataset(
    output_dir: Path, config: GeneratorConfig = PROFILES["small"], progress: bool = True
) -> GenerationSummary:
    """Write `browsing_train.csv` and `sku_to_content.csv` into `output_dir`, chunk by chunk."""
    output_dir.mkdir(parents=True, exist_ok=True)
    catalogue = build_catalogue(config)
    catalog_path = output_dir / "sku_to_content.csv"
    pacsv.write_csv(catalogue_table(catalogue), catalog_path, CATALOG_WRITE_OPTIONS)

    browsing_path = output_dir / "browsing_train.csv"
    tmp_path = browsing_path.with_suffix(".csv.partial")
    schema = generate_chunk(catalogue, replace(config, n_sessions=1), 0, 1).schema
    events = 0
    with (
        pacsv.CSVWriter(tmp_path, schema, write_options=BROWSING_WRITE_OPTIONS) as writer,
        tqdm(total=config.n_sessions, unit="session", desc="generating", disable=None if progress else True) as bar,
    ):
        for first in range(0, config.n_sessions, config.chunk_sessions):
            count = min(config.chunk_sessions, config.n_sessions - first)
            chunk = generate_chunk(catalogue, config, config.first_session + first, count)
            writer.write_table(chunk)
            events += chunk.num_rows
            bar.update(count)
    tmp_path.replace(browsing_path)
    return GenerationSummary(browsing_path, catalog_path, config.n_sessions, events, config.n_products)
