"""The default behavioural suite of this flow: what a next-item recommender must show before it serves.

Every test runs for every ranker (the model, the baselines, the deployed model) on the same test cases
(every prefix of every test session, DESIGN.md's protocol), at the cut-off k (20 by default):

- accuracy: HR, MRR and NDCG at k = 1, 5, 10, 20, next-item and last-item (the seed's protocol);
  precision, recall and F1@k against all subsequent items of the session (the Coveo challenge's task 2);
- beyond accuracy: catalogue coverage, popularity bias, share of recommendations the session has seen;
- slices: HR@k by the target's popularity bin, the prefix's length, the target's top-level category
  and price bucket; which popularity bins the recommendations come from;
- robustness: the change of MRR@k when one item of the prefix is dropped, or two are swapped;
- less wrong: for misses, whether the top recommendation shares the target's category, and how far
  apart their price buckets are;
- cost: milliseconds to rank one session (median and p99), one call per session as serving makes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from postmodern.evaluation.metrics import (
    NextItemRanker,
    accuracy_at,
    catalogue_coverage,
    next_item_cases,
    popularity_bias,
    price_distance_shares,
    repeat_share,
    same_category_share,
    share_by_label,
    subsequent_items,
    subsequent_precision_recall_f1,
    target_ranks,
)
from postmodern.evaluation.suite import RecSuite, Sliced, rec_test
from postmodern.model.dataset import PADDING_ID, UNKNOWN_ID, Vocabulary

# Items by their rank in training popularity (the vocabulary's order), as a share of the catalogue.
POPULARITY_BINS = (("top 1%", 0.01), ("1-5%", 0.05), ("5-20%", 0.2), ("20-50%", 0.5), ("bottom 50%", 1.0))
# Items seen before the prediction (the prefix's length).
LENGTH_BINS = (("1", 1), ("2", 2), ("3-4", 4), ("5-9", 9), ("10+", np.inf))
PRICE_BUCKETS = 10
UNKNOWN = "unknown"
UNSEEN = "unseen in training"  # a target no ranker can hit: every miss here is the data's, not the model's
OTHER = "other"


@dataclass(frozen=True)
class ItemAttributes:
    """Catalogue attributes by item id (index 0 is padding)."""

    category: np.ndarray  # top-level category code, -1 when unknown
    category_names: list[str]
    price_bucket: np.ndarray  # 1..10, 0 when unknown


def item_attributes(products: pa.Table, vocabulary: Vocabulary) -> ItemAttributes:
    """Top-level category and price bucket of every vocabulary item from the `products` mart (columns
    product_sku, top_category, price_bucket); items missing from the catalogue are unknown."""
    skus = products.column("product_sku").to_pylist()
    categories = products.column("top_category").to_pylist()
    prices = products.column("price_bucket").to_pylist()
    by_sku = dict(zip(skus, zip(categories, prices, strict=True), strict=True))
    names = sorted({category for category in categories if category})
    code_of = {name: code for code, name in enumerate(names)}
    category = np.full(vocabulary.size_with_padding, -1, dtype=np.int64)
    price_bucket = np.zeros(vocabulary.size_with_padding, dtype=np.int64)
    for item, sku in enumerate(vocabulary.skus, start=1):
        top, price = by_sku.get(sku, (None, None))
        if top:
            category[item] = code_of[top]
        if price is not None and 1 <= price <= PRICE_BUCKETS:
            price_bucket[item] = int(price)
    return ItemAttributes(category, names, price_bucket)


@dataclass(frozen=True)
class SuiteConfig:
    k: int = 20  # the cut-off of everything that is not a k curve
    ks: tuple[int, ...] = (1, 5, 10, 20)
    max_cases: int | None = None  # a seeded sample of test sessions up to this many cases (None: all)
    robustness_cases: int = 5_000  # perturbed cases per perturbation (a seeded sample)
    latency_sessions: int = 200  # sessions timed one by one
    max_categories: int = 12  # the most frequent target categories get a slice each, the rest are "other"
    seed: int = 0


@dataclass(frozen=True)
class RankedCases:
    ranker: NextItemRanker
    ranked: np.ndarray  # [cases, depth] item ids, best first
    ranks: np.ndarray  # 1-based rank of each target, 0 when not in the top `depth`


@dataclass(frozen=True)
class Perturbation:
    cases: np.ndarray  # indices of the perturbed cases
    prefixes: list[np.ndarray]


def drop_one_item(prefixes: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Each prefix (of two items or more) without one item chosen at random."""
    return [np.delete(prefix, rng.integers(len(prefix))) for prefix in prefixes]


def swap_two_items(prefixes: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Each prefix (of two items or more) with two positions chosen at random exchanged."""
    swapped = []
    for prefix in prefixes:
        first, second = rng.choice(len(prefix), size=2, replace=False)
        copy = prefix.copy()
        copy[[first, second]] = copy[[second, first]]
        swapped.append(copy)
    return swapped


def binned(values: np.ndarray, bins: tuple[tuple[str, float], ...]) -> np.ndarray:
    """The label of the first bin whose upper bound (inclusive) holds each value."""
    bounds = np.array([bound for _, bound in bins], dtype=float)
    labels = np.array([label for label, _ in bins], dtype=object)
    return labels[np.searchsorted(bounds, values, side="left")]


class SessionRecSuite(RecSuite):
    """The next-item suite of the module docstring, on one split's test sessions."""

    def __init__(
        self,
        test_sessions: list[np.ndarray],
        train_counts: np.ndarray,
        attributes: ItemAttributes,
        config: SuiteConfig = SuiteConfig(),
    ):
        self.config = config
        self.train_counts = np.asarray(train_counts)
        self.n_items = len(self.train_counts) - 1
        self.attributes = attributes
        self.popularity_rank = np.zeros(len(self.train_counts), dtype=np.int64)  # 1 = most popular item
        self.popularity_rank[np.argsort(-self.train_counts[1:], kind="stable") + 1] = np.arange(1, self.n_items + 1)
        self.cases = next_item_cases(test_sessions, max_cases=config.max_cases, seed=config.seed)
        if len(self.cases.targets) == 0:
            raise ValueError("the test split has no session of two items or more: nothing to evaluate")
        self.ks = tuple(sorted({*config.ks, config.k}))
        self.depth = self.ks[-1]
        self.futures = subsequent_items(test_sessions, self.cases)
        self.slice_labels = self._slice_labels()
        rng = np.random.default_rng(config.seed)
        self.perturbations = self._perturbations(rng)
        n_cases = len(self.cases.targets)
        self.latency_cases = rng.choice(n_cases, size=min(config.latency_sessions, n_cases), replace=False)

    def _slice_labels(self) -> dict[str, np.ndarray]:
        unseen = self.cases.targets == UNKNOWN_ID
        targets = np.where(unseen, PADDING_ID, self.cases.targets)  # padding's attributes are unknown
        popularity_share = self.popularity_rank[targets] / self.n_items
        lengths = np.array([len(prefix) for prefix in self.cases.prefixes])
        codes = self.attributes.category[targets]
        known = codes[codes >= 0]
        frequent = np.argsort(-np.bincount(known, minlength=len(self.attributes.category_names)), kind="stable")
        shown = {int(code) for code in frequent[: self.config.max_categories] if np.any(known == code)}
        names = self.attributes.category_names
        category = np.array(
            [UNKNOWN if code < 0 else names[code] if code in shown else OTHER for code in codes], dtype=object
        )
        prices = self.attributes.price_bucket[targets]
        return {
            "popularity": np.where(unseen, UNSEEN, binned(popularity_share, POPULARITY_BINS)),
            "length": binned(lengths, LENGTH_BINS),
            "category": category,
            "price": np.where(prices > 0, prices.astype(str), UNKNOWN).astype(object),
        }

    def _perturbations(self, rng: np.random.Generator) -> dict[str, Perturbation]:
        eligible = np.flatnonzero([len(prefix) >= 2 for prefix in self.cases.prefixes])
        perturbations = {}
        for label, perturb in (("drop one item", drop_one_item), ("swap two items", swap_two_items)):
            chosen = np.sort(rng.choice(eligible, size=min(self.config.robustness_cases, len(eligible)), replace=False))
            perturbations[label] = Perturbation(chosen, perturb([self.cases.prefixes[i] for i in chosen], rng))
        return perturbations

    def dataset_summary(self) -> dict[str, int]:
        return {
            "cases": len(self.cases.targets),
            "last_item_cases": int(self.cases.is_last.sum()),
            "sessions": len(np.unique(self.cases.session_index)),
            "items": self.n_items,
            "k": self.config.k,
        }

    def prepare(self, ranker: NextItemRanker) -> RankedCases:
        ranked, _ = ranker.rank(self.cases.prefixes, self.depth)
        return RankedCases(ranker, ranked, target_ranks(ranked, self.cases.targets))

    def _curve(self, ranks: np.ndarray, metric: str) -> dict[str, float]:
        return {str(k): accuracy_at(ranks, k)[f"{metric}@{k}"] for k in self.ks}

    def _hits(self, run: RankedCases) -> np.ndarray:
        return (run.ranks > 0) & (run.ranks <= self.config.k)

    def _sliced(self, run: RankedCases, slice_name: str, order: list[str]) -> Sliced:
        labels = self.slice_labels[slice_name]
        values = share_by_label(self._hits(run), labels, order)
        return Sliced(values, {label: int(np.sum(labels == label)) for label in values})

    @rec_test("hr", display="curve")
    def hit_rate(self, run: RankedCases) -> dict[str, float]:
        """Hit rate at k: share of next-item cases whose target is in the top k."""
        return self._curve(run.ranks, "hr")

    @rec_test("mrr", display="curve")
    def mean_reciprocal_rank(self, run: RankedCases) -> dict[str, float]:
        """MRR at k: mean 1/rank of the next item (0 beyond k)."""
        return self._curve(run.ranks, "mrr")

    @rec_test("ndcg", display="curve")
    def ndcg(self, run: RankedCases) -> dict[str, float]:
        """NDCG at k: mean 1/log2(rank + 1) of the next item (0 beyond k)."""
        return self._curve(run.ranks, "ndcg")

    @rec_test("last_hr", display="curve")
    def last_item_hit_rate(self, run: RankedCases) -> dict[str, float]:
        """Hit rate at k on last-item cases only (the seed's protocol)."""
        return self._curve(run.ranks[self.cases.is_last], "hr")

    @rec_test("last_mrr", display="curve")
    def last_item_mrr(self, run: RankedCases) -> dict[str, float]:
        """MRR at k on last-item cases only (the seed's protocol)."""
        return self._curve(run.ranks[self.cases.is_last], "mrr")

    @rec_test("last_ndcg", display="curve")
    def last_item_ndcg(self, run: RankedCases) -> dict[str, float]:
        """NDCG at k on last-item cases only (the seed's protocol)."""
        return self._curve(run.ranks[self.cases.is_last], "ndcg")

    @rec_test("subsequent", display="bars")
    def subsequent_precision_recall(self, run: RankedCases) -> dict[str, float]:
        """Precision, recall and F1 of the top k against every later item of the session."""
        return subsequent_precision_recall_f1(run.ranked, self.futures, self.config.k)

    @rec_test("coverage", display="scalar")
    def coverage_at_k(self, run: RankedCases) -> float:
        """Share of the catalogue recommended (top k) at least once."""
        return catalogue_coverage(run.ranked, self.n_items, self.config.k)

    @rec_test("popularity_bias", display="scalar")
    def popularity_bias_at_k(self, run: RankedCases) -> float:
        """Mean popularity of recommended items (1 = the top seller's interactions)."""
        return popularity_bias(run.ranked, self.train_counts, self.config.k)

    @rec_test("repeat_share", display="scalar")
    def repeat_share_at_k(self, run: RankedCases) -> float:
        """Share of recommendations the session has already shown."""
        return repeat_share(run.ranked, self.cases.prefixes, self.config.k)

    @rec_test("hr_by_popularity", display="bars")
    def hit_rate_by_popularity(self, run: RankedCases) -> Sliced:
        """Hit rate at k by the target's training popularity (share of the catalogue by rank, or unseen)."""
        return self._sliced(run, "popularity", [*(label for label, _ in POPULARITY_BINS), UNSEEN])

    @rec_test("hr_by_session_length", display="bars")
    def hit_rate_by_session_length(self, run: RankedCases) -> Sliced:
        """Hit rate at k by the number of items seen before the prediction."""
        return self._sliced(run, "length", [label for label, _ in LENGTH_BINS])

    @rec_test("hr_by_category", display="bars")
    def hit_rate_by_category(self, run: RankedCases) -> Sliced:
        """Hit rate at k by the target's top-level category (the most frequent ones; the rest: other)."""
        labels = self.slice_labels["category"]
        named = sorted({label for label in labels if label not in (OTHER, UNKNOWN)})
        return self._sliced(run, "category", [*named, OTHER, UNKNOWN])

    @rec_test("hr_by_price_bucket", display="bars")
    def hit_rate_by_price_bucket(self, run: RankedCases) -> Sliced:
        """Hit rate at k by the target's price bucket."""
        return self._sliced(run, "price", [str(bucket) for bucket in range(1, PRICE_BUCKETS + 1)] + [UNKNOWN])

    @rec_test("recommended_popularity", display="histogram")
    def recommended_popularity(self, run: RankedCases) -> dict[str, float]:
        """Share of recommendations (top k) from each training-popularity bin."""
        top = run.ranked[:, : self.config.k]
        recommended = top[top > 0]
        bins = binned(self.popularity_rank[recommended] / self.n_items, POPULARITY_BINS)
        return {label: float(np.mean(bins == label)) if len(bins) else 0.0 for label, _ in POPULARITY_BINS}

    @rec_test("robustness", display="bars")
    def robustness(self, run: RankedCases) -> dict[str, float]:
        """Change of MRR at k when one random item of the prefix is dropped, or two are swapped."""
        k = self.config.k
        changes = {}
        for label, perturbation in self.perturbations.items():
            ranked, _ = run.ranker.rank(perturbation.prefixes, k)
            targets = self.cases.targets[perturbation.cases]
            perturbed = accuracy_at(target_ranks(ranked, targets), k)[f"mrr@{k}"]
            original = accuracy_at(run.ranks[perturbation.cases], k)[f"mrr@{k}"]
            changes[label] = perturbed - original
        return changes

    def _misses(self, run: RankedCases) -> tuple[np.ndarray, np.ndarray]:
        """Top recommendation and target of every case whose target (one seen in training) is not in the top k."""
        missed = ~self._hits(run) & (self.cases.targets != UNKNOWN_ID)
        return run.ranked[missed, 0], self.cases.targets[missed]

    @rec_test("less_wrong_same_category", display="scalar")
    def less_wrong_same_category(self, run: RankedCases) -> float:
        """For misses: share whose top recommendation is in the target's top-level category."""
        return same_category_share(*self._misses(run), self.attributes.category)

    @rec_test("less_wrong_price_distance", display="histogram")
    def less_wrong_price_distance(self, run: RankedCases) -> dict[str, float]:
        """For misses: share at each distance between the price buckets of top recommendation and target."""
        return price_distance_shares(*self._misses(run), self.attributes.price_bucket, PRICE_BUCKETS)

    @rec_test("latency_ms", display="bars")
    def latency(self, run: RankedCases) -> dict[str, float]:
        """Milliseconds to rank one session, one call per session (median and 99th percentile)."""
        prefixes = [self.cases.prefixes[i] for i in self.latency_cases]
        run.ranker.rank(prefixes[:1], self.config.k)  # warm-up: first-call allocations are not the model's cost
        seconds = []
        for prefix in prefixes:
            started = time.perf_counter()
            run.ranker.rank([prefix], self.config.k)
            seconds.append(time.perf_counter() - started)
        return {"median": float(np.median(seconds) * 1000), "p99": float(np.percentile(seconds, 99) * 1000)}
