"""The model bundle: everything serving needs, in one directory, loadable with this package alone, whatever the
model's family.

    model/         the ranker's state (`RankerState`): config.json (its family and configuration), one .npy per
                   array (an LSTM's weights, a kNN's session index, ...), part-<i>/ for each part of a blend
    vocab.json     SKUs in item-id order (id = index + 1)
    popular.json   fallback [SKU, share of training interactions], most popular first, for sessions
                   with no known SKU
    metadata.json  format version, family, model version, run id, data window, metrics
    catalog.json   (optional) the vocabulary's products: SKU, top category, price bucket, for the demo shop
    companions/    (optional) <family>/ per baseline of the same run, as model/: what the demo compares

Bundles of formats 1 to 3 hold an LSTM as `weights.pt` and `config.json`, and still load.
`SessionRecommender.recommend` is the one function that turns SKU sessions into ranked SKUs; the
evaluation scores the same `rank` underneath it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from cachetools import LRUCache

from postmodern.model import BundleError
from postmodern.model.dataset import PADDING_ID, Vocabulary
from postmodern.model.families import ranker_from_state
from postmodern.model.ranker import Ranker, RankerState

if TYPE_CHECKING:
    import pyarrow as pa

# 4: any family, its state under model/ (1-3: an LSTM's weights.pt and config.json; in 1 and 2 its item pairs were
# learned scores, in 3 the training transitions' counts)
BUNDLE_FORMAT_VERSION = 4
READABLE_FORMAT_VERSIONS = (1, 2, 3, 4)
MODEL_DIR = "model"
# what an LSTM bundle written before a config field existed meant by leaving it out
CONFIG_BEFORE_FIELDS = {
    "item_skip": False,
    "tied_output": True,
    "item_transitions": False,
    "item_pairs": False,
    "attention": False,
    "normalized_scale": 0.0,
}
FALLBACK_SIZE = 200
COMPANIONS_DIR = "companions"


@dataclass
class ModelBundle:
    model: RankerState
    vocabulary: list[str]
    popular: list[tuple[str, float]]  # (SKU, share of training interactions), most popular first
    metadata: dict = field(default_factory=dict)
    # the vocabulary's products as the shop shows them ({"sku", "category", "price_bucket"}), for the demo page
    catalog: list[dict] = field(default_factory=list)
    # baselines of the same run over the same vocabulary, which the demo page compares with the model
    companions: dict[str, RankerState] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return str(self.metadata.get("model_version", "unversioned"))

    @property
    def family(self) -> str:
        return self.model.family

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(directory / MODEL_DIR)
        (directory / "vocab.json").write_text(json.dumps(self.vocabulary))
        (directory / "popular.json").write_text(json.dumps(self.popular))
        if self.catalog:
            (directory / "catalog.json").write_text(json.dumps(self.catalog))
        for name, state in self.companions.items():
            state.save(directory / COMPANIONS_DIR / name)
        metadata = {**self.metadata, "family": self.family, "format_version": BUNDLE_FORMAT_VERSION}
        (directory / "metadata.json").write_text(json.dumps(metadata, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, directory: Path) -> ModelBundle:
        directory = Path(directory)
        if not (directory / "metadata.json").exists():
            raise BundleError(f"{directory} is not a model bundle: missing metadata.json")
        metadata = json.loads((directory / "metadata.json").read_text())
        format_version = metadata.get("format_version")
        if format_version not in READABLE_FORMAT_VERSIONS:
            raise BundleError(f"{directory}: bundle format {format_version} is not one of {READABLE_FORMAT_VERSIONS}")
        model_files = [f"{MODEL_DIR}/config.json"] if format_version >= 4 else ["weights.pt", "config.json"]
        missing = [name for name in [*model_files, "vocab.json", "popular.json"] if not (directory / name).exists()]
        if missing:
            raise BundleError(f"{directory} is not a model bundle: missing {', '.join(missing)}")
        vocabulary = json.loads((directory / "vocab.json").read_text())
        popular = [(sku, float(share)) for sku, share in json.loads((directory / "popular.json").read_text())]
        if format_version >= 4:
            model = RankerState.load(directory / MODEL_DIR)
        else:
            model = _lstm_state_of_format(directory, format_version, vocabulary, popular)
        catalog = json.loads((directory / "catalog.json").read_text()) if (directory / "catalog.json").exists() else []
        companions = {
            path.name: RankerState.load(path)
            for path in sorted((directory / COMPANIONS_DIR).glob("*"))
            if path.is_dir()
        }
        return cls(model, vocabulary, popular, metadata, catalog, companions)


def _lstm_state_of_format(
    directory: Path, format_version: int, vocabulary: list[str], popular: list[tuple[str, float]]
) -> RankerState:
    """The LSTM of a format 1-3 bundle as a ranker state. Those bundles hold no training counts: the fallback
    list's shares stand for them, enough to order the popular items of an empty prefix."""
    config = {**CONFIG_BEFORE_FIELDS, **json.loads((directory / "config.json").read_text())}
    if format_version < 3 and config["item_pairs"]:
        raise BundleError(
            f"{directory}: its item pairs are learned scores, as in bundle format {format_version}; this version "
            "mixes in the training transitions' frequencies: retrain the model"
        )
    weights = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
    ids = Vocabulary(vocabulary)
    train_counts = np.zeros(len(vocabulary) + 1, dtype=np.int64)
    for sku, share in popular:
        train_counts[ids.encode([sku])[0]] = max(1, round(share * 1e9))
    arrays = {name: tensor.numpy() for name, tensor in weights.items()}
    return RankerState("lstm", config, {"train_counts": train_counts, **arrays})


def make_bundle(
    ranker: Ranker,
    vocabulary: Vocabulary,
    metadata: dict,
    products: pa.Table | None = None,
    companions: dict[str, Ranker] | None = None,
) -> ModelBundle:
    """The bundle of a ranker of any family, with the fallback of its training counts, the catalogue of its
    vocabulary's products (`products`: the product mart's product_sku, top_category, price_bucket), and the
    `companions` the demo compares it with (rankers over the same vocabulary)."""
    train_counts = ranker.train_counts
    popular_ids = ranker.popular[:FALLBACK_SIZE]
    shares = train_counts[popular_ids] / max(int(train_counts.sum()), 1)
    known = set(vocabulary.skus)
    catalog = [
        {"sku": row["product_sku"], "category": row["top_category"], "price_bucket": row["price_bucket"]}
        for row in (products.to_pylist() if products is not None else [])
        if row["product_sku"] in known
    ]
    return ModelBundle(
        model=ranker.state(),
        vocabulary=list(vocabulary.skus),
        popular=list(zip(vocabulary.decode(popular_ids), shares.tolist(), strict=True)),
        metadata=metadata,
        catalog=catalog,
        companions={name: companion.state() for name, companion in (companions or {}).items()},
    )


@dataclass(frozen=True)
class Recommendation:
    items: list[tuple[str, float]]
    unknown_skus: list[str]
    fallback: bool  # no known SKU in the session: popular items were returned
    cached: bool = False  # the ranking of a recent request with the same known items was reused


class RankingCache:
    """The rankings of recent prefixes, by their known item ids and `exclude_seen`, for one loaded model (so a new
    model never answers from the old one's). A shop's requests repeat, the first click on a popular product above
    all: a quarter of YOOCHOOSE's requests repeat one of the 10,000 before them, a third one of the 100,000 (its
    1/64 sample of the traffic; the full traffic repeats more). Least recently used out first; each entry is two
    arrays of k numbers (about 0.4 kB at k = 20)."""

    def __init__(self, size: int):
        self._entries: LRUCache | None = LRUCache(maxsize=size) if size > 0 else None
        self._lock = threading.Lock()  # serving ranks on its ranking thread and, for large requests, others

    @property
    def enabled(self) -> bool:
        return self._entries is not None

    def get(self, key: tuple, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached items and scores when at least k were ranked for `key`, cut to k."""
        if self._entries is None:
            return None
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or len(entry[0]) < k:
            return None
        return entry[0][:k], entry[1][:k]

    def put(self, key: tuple, items: np.ndarray, scores: np.ndarray) -> None:
        if self._entries is not None:
            with self._lock:
                self._entries[key] = (items.copy(), scores.copy())


class SessionRecommender:
    """A loaded bundle, ready to rank: SKUs in, SKUs out. With `cache_size`, the rankings of that many recent
    prefixes are kept and reused (`RankingCache`)."""

    def __init__(self, bundle: ModelBundle, cache_size: int = 0):
        self.bundle = bundle
        self.vocabulary = Vocabulary(bundle.vocabulary)
        self.ranker = ranker_from_state(bundle.model)
        self.cache = RankingCache(cache_size)

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def family(self) -> str:
        return self.bundle.family

    def rankers(self) -> dict[str, Ranker]:
        """What the demo compares: the served model, a blend's parts and the bundle's companions (each a family's
        best), and popularity."""
        from postmodern.model.families.popularity import PopularityRanker

        rankers = {f"served: {self.family}": self.ranker}
        for label, part in zip(self.ranker.params.get("parts", []), getattr(self.ranker, "parts", []), strict=False):
            rankers[label] = part
        for name, state in self.bundle.companions.items():  # made when compared, not when a server starts
            rankers.setdefault(name, ranker_from_state(state))
        rankers.setdefault("popularity", PopularityRanker(self.ranker.train_counts))
        return rankers

    def recommend(
        self, sessions: list[list[str]], k: int, exclude_seen: bool = False, ranker: Ranker | None = None
    ) -> list[Recommendation]:
        """Top-k next SKUs for each session, ranked in one batch (by the bundle's ranker, or `ranker` over the
        same vocabulary); unknown SKUs are ignored and reported. With `exclude_seen`, SKUs already in the session
        are not recommended again. The bundle's ranker answers a prefix it ranked recently from its cache."""
        cache = self.cache if ranker is None else RankingCache(0)
        encoded, keys, ranked = self._from_cache(sessions, k, exclude_seen, cache)
        cached = set(ranked)
        to_rank = [index for index, (items, _) in enumerate(encoded) if items and index not in cached]
        if to_rank:
            items, scores = (ranker or self.ranker).rank([encoded[i][0] for i in to_rank], k, exclude_seen)
            for row, index in enumerate(to_rank):
                ranked[index] = items[row], scores[row]
                cache.put(keys[index], items[row], scores[row])
        return self._recommendations(encoded, ranked, cached, k)

    def recommend_from_cache(
        self, sessions: list[list[str]], k: int, exclude_seen: bool
    ) -> list[Recommendation] | None:
        """`recommend`, when no session needs ranking (each ranked recently, or without a known SKU); else None. A
        server answers these at once, without waiting for a ranking pass. None without a cache."""
        if not self.cache.enabled:
            return None
        encoded, _, ranked = self._from_cache(sessions, k, exclude_seen, self.cache)
        if any(items and index not in ranked for index, (items, _) in enumerate(encoded)):
            return None
        return self._recommendations(encoded, ranked, set(ranked), k)

    def _from_cache(
        self, sessions: list[list[str]], k: int, exclude_seen: bool, cache: RankingCache
    ) -> tuple[list[tuple[list[int], list[str]]], list[tuple], dict[int, tuple[np.ndarray, np.ndarray]]]:
        """Each session's known item ids and unknown SKUs, its cache key, and the cached rankings by session."""
        encoded = [self.vocabulary.encode(session) for session in sessions]
        keys = [(tuple(items), exclude_seen) for items, _ in encoded]
        ranked = {}
        for index, (items, _) in enumerate(encoded):
            hit = cache.get(keys[index], k) if items else None
            if hit is not None:
                ranked[index] = hit
        return encoded, keys, ranked

    def _recommendations(self, encoded: list, ranked: dict, cached: set[int], k: int) -> list[Recommendation]:
        results = []
        for index, (_, unknown) in enumerate(encoded):
            if index not in ranked:
                results.append(Recommendation(self.bundle.popular[:k], unknown, fallback=True))
                continue
            items, scores = ranked[index]
            rankable = items != PADDING_ID
            pairs = list(zip(self.vocabulary.decode(items[rankable]), scores[rankable].tolist(), strict=True))
            results.append(Recommendation(pairs, unknown, fallback=False, cached=index in cached))
        return results
