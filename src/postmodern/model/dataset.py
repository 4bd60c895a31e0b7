"""From the session mart to model-ready splits, by the protocol in DESIGN.md.

Split by time on each session's start: the latest sessions are the test set, the ones before them the
validation set, the rest training. Items never seen in training are removed from validation and test
sessions, and sessions left with fewer than two items are dropped. Consecutive repeats of the same
SKU (a detail view followed by an add of that product) collapse into one item: predicting the product
the shopper is already looking at is not a recommendation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

PADDING_ID = 0  # item ids start at 1


@dataclass(frozen=True)
class SplitConfig:
    validation_share: float = 0.1
    test_share: float = 0.1
    min_session_length: int = 2
    collapse_repeats: bool = True


@dataclass
class Vocabulary:
    """SKU <-> item id (1..n; 0 is padding), in order of training popularity."""

    skus: list[str]
    _ids: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._ids = {sku: index + 1 for index, sku in enumerate(self.skus)}

    def __len__(self) -> int:
        return len(self.skus)

    @property
    def size_with_padding(self) -> int:
        return len(self.skus) + 1

    def encode(self, skus: list[str]) -> tuple[list[int], list[str]]:
        """Known item ids in order, and the SKUs that are not in the vocabulary."""
        known, unknown = [], []
        for sku in skus:
            item = self._ids.get(sku)
            if item is None:
                unknown.append(sku)
            else:
                known.append(item)
        return known, unknown

    def decode(self, items: np.ndarray | list[int]) -> list[str]:
        skus = self.skus
        return [skus[item - 1] for item in np.asarray(items).tolist()]  # Python ints index faster


@dataclass
class SessionSplits:
    vocabulary: Vocabulary
    train: list[np.ndarray]
    validation: list[np.ndarray]
    test: list[np.ndarray]
    train_counts: np.ndarray  # interactions per item id in training (index 0 unused)
    boundaries: dict[str, str]  # first session start of validation and test, for the card

    def stats(self) -> dict[str, int]:
        return {
            "items": len(self.vocabulary),
            "train_sessions": len(self.train),
            "validation_sessions": len(self.validation),
            "test_sessions": len(self.test),
            "train_interactions": int(sum(len(s) for s in self.train)),
            "test_interactions": int(sum(len(s) for s in self.test)),
        }


def collapse_consecutive_repeats(skus: list[str]) -> list[str]:
    return [sku for index, sku in enumerate(skus) if index == 0 or sku != skus[index - 1]]


def prepare_splits(sessions: pa.Table, config: SplitConfig = SplitConfig()) -> SessionSplits:
    """Time-based train/validation/test split of a session mart table (columns: interactions,
    session_start_at)."""
    if sessions.num_rows == 0:
        raise ValueError("the session mart is empty: nothing to train on (did the load and dbt run?)")
    starts = sessions.column("session_start_at").to_numpy()
    order = np.argsort(starts, kind="stable")
    sequences = sessions.column("interactions").to_pylist()
    if config.collapse_repeats:
        sequences = [collapse_consecutive_repeats(s) for s in sequences]
    n = len(order)
    n_test = int(round(n * config.test_share))
    n_validation = int(round(n * config.validation_share))
    n_train = n - n_test - n_validation
    if n_train <= 0 or n_test <= 0 or n_validation <= 0:
        raise ValueError(f"{n} sessions are too few for a train/validation/test split")
    train_rows = order[:n_train]
    validation_rows = order[n_train : n_train + n_validation]
    test_rows = order[n_train + n_validation :]

    counts = Counter(sku for row in train_rows for sku in sequences[row])
    vocabulary = Vocabulary([sku for sku, _ in counts.most_common()])

    def encoded(rows: np.ndarray, collapse_again: bool) -> list[np.ndarray]:
        result = []
        for row in rows:
            items, _ = vocabulary.encode(sequences[row])
            if collapse_again and config.collapse_repeats:
                # removing an unknown item can bring two equal items together
                items = [item for index, item in enumerate(items) if index == 0 or item != items[index - 1]]
            if len(items) >= config.min_session_length:
                result.append(np.asarray(items, dtype=np.int64))
        return result

    train_counts = np.zeros(vocabulary.size_with_padding, dtype=np.int64)
    for sku, count in counts.items():
        train_counts[vocabulary.encode([sku])[0][0]] = count
    return SessionSplits(
        vocabulary=vocabulary,
        train=encoded(train_rows, collapse_again=False),
        validation=encoded(validation_rows, collapse_again=True),
        test=encoded(test_rows, collapse_again=True),
        train_counts=train_counts,
        boundaries={
            "validation_from": str(starts[validation_rows[0]]),
            "test_from": str(starts[test_rows[0]]),
            "test_to": str(starts[test_rows[-1]]),
        },
    )


def read_session_mart(warehouse, api_key: str, start_date: str | None = None, end_date: str | None = None) -> pa.Table:
    """Sessions of one organisation whose date is in [start_date, end_date] (either bound optional)."""
    return warehouse.query(
        f"""
        select session_id, session_date, session_start_at, interactions, actions, timestamps
        from {warehouse.qualified("sessions")}
        where api_key = ?
          and session_date >= coalesce(cast(? as date), session_date)
          and session_date <= coalesce(cast(? as date), session_date)
        order by session_start_at, session_id
        """,
        [api_key, start_date or None, end_date or None],
    )


def read_product_mart(warehouse, api_key: str) -> pa.Table:
    """The organisation's products with their top-level category and price bucket (for the suite's slices)."""
    return warehouse.query(
        f"""
        select product_sku, top_category, price_bucket
        from {warehouse.qualified("products")}
        where api_key = ?
        order by product_sku
        """,
        [api_key],
    )
