"""From the session mart to model-ready splits, by the protocol in DESIGN.md.

Split by time on each session's start: the test set is the sessions from `test_from` on (as published
protocols split) or else the latest `test_share` of them; the validation set is the latest `validation_share`
of the sessions before the test set, and the rest is training. Every choice (hyper-parameters, epochs, the
model family) is made on validation; `refit_splits` then gives training and validation together, to train the
chosen model on every session before the test set.

Validation and test sessions keep every item: one that training never saw is `UNKNOWN_ID`, a target no ranker
can hit (a miss, counted) and a prefix item a ranker never reads (serving ignores unknown SKUs alike).
Consecutive repeats of the same SKU (a detail view followed by an add of that product) collapse into one item
by default: predicting the product the shopper is already looking at is not a recommendation. Published
benchmarks keep them (`collapse_repeats=False`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

PADDING_ID = 0  # item ids start at 1
UNKNOWN_ID = -1  # an item of a validation or test session that training never saw


@dataclass(frozen=True)
class SplitConfig:
    validation_share: float = 0.1  # of the sessions before the test set
    test_share: float = 0.1  # of all sessions, when `test_from` is not set
    test_from: datetime | None = None  # sessions starting at or after this instant (UTC) are the test set
    min_session_length: int = 2
    collapse_repeats: bool = True


def parse_instant(text: str) -> datetime:
    """An instant from epoch milliseconds (as the Coveo files and published splits give them) or ISO 8601 text
    (UTC unless it says otherwise)."""
    text = text.strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither epoch milliseconds nor an ISO 8601 date or time") from None
    return instant if instant.tzinfo else instant.replace(tzinfo=UTC)


def split_config(test_from: str = "", keep_repeats: bool = False) -> SplitConfig:
    """The split of the flow's parameters: a test set from `test_from` (empty: the latest sessions), repeats kept or
    collapsed."""
    return SplitConfig(test_from=parse_instant(test_from) if test_from else None, collapse_repeats=not keep_repeats)


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
        """Known item ids in order, and the SKUs that are not in the vocabulary (each once: a client sending one
        unknown SKU many times needs to hear of it once)."""
        known, unknown = [], []
        for sku in skus:
            item = self._ids.get(sku)
            if item is None:
                unknown.append(sku)
            else:
                known.append(item)
        return known, list(dict.fromkeys(unknown))

    def encode_keeping_unknown(self, skus: list[str]) -> np.ndarray:
        """Item ids in order, `UNKNOWN_ID` where a SKU is not in the vocabulary."""
        ids = self._ids
        return np.fromiter((ids.get(sku, UNKNOWN_ID) for sku in skus), dtype=np.int64, count=len(skus))

    def decode(self, items: np.ndarray | list[int]) -> list[str]:
        skus = self.skus
        return [skus[item - 1] for item in np.asarray(items).tolist()]  # Python ints index faster


@dataclass
class SessionSplits:
    vocabulary: Vocabulary
    train: list[np.ndarray]
    validation: list[np.ndarray]  # may hold UNKNOWN_ID
    test: list[np.ndarray]  # may hold UNKNOWN_ID
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
            "test_cases": int(sum(len(s) - 1 for s in self.test)),
            "test_cases_unknown_target": int(sum(np.count_nonzero(s[1:] == UNKNOWN_ID) for s in self.test)),
        }


def collapse_consecutive_repeats(skus: list[str]) -> list[str]:
    return [sku for index, sku in enumerate(skus) if index == 0 or sku != skus[index - 1]]


@dataclass(frozen=True)
class _SplitRows:
    order: np.ndarray  # session rows by start
    starts: np.ndarray
    n_train: int
    n_validation: int


def _split_rows(sessions: pa.Table, config: SplitConfig) -> _SplitRows:
    if sessions.num_rows == 0:
        raise ValueError("the session mart is empty: nothing to train on (did the load and dbt run?)")
    starts = sessions.column("session_start_at").to_numpy()
    order = np.argsort(starts, kind="stable")
    n = len(order)
    if config.test_from is not None:
        test_from = np.datetime64(config.test_from.astimezone(UTC).replace(tzinfo=None), "us")
        n_before = int(np.searchsorted(starts[order], test_from.astype(starts.dtype), side="left"))
        n_test = n - n_before
    else:
        n_test = int(round(n * config.test_share))
        n_before = n - n_test
    n_validation = int(round(n_before * config.validation_share))
    n_train = n_before - n_validation
    if n_train <= 0 or n_test <= 0 or n_validation <= 0:
        where = f"before {config.test_from.isoformat()}" if config.test_from else "in all"
        raise ValueError(
            f"{n} sessions ({n_before} {where}) are too few for a train ({n_train}), validation ({n_validation}) "
            f"and test ({n_test}) split"
        )
    return _SplitRows(order, starts, n_train, n_validation)


def _splits(
    sequences: list[list[str]],
    rows: _SplitRows,
    train_rows: np.ndarray,
    validation_rows: np.ndarray,
    test_rows: np.ndarray,
    config: SplitConfig,
) -> SessionSplits:
    by_popularity = Counter(sku for row in train_rows for sku in sequences[row]).most_common()
    vocabulary = Vocabulary([sku for sku, _ in by_popularity])

    def encoded(rows: np.ndarray) -> list[np.ndarray]:
        kept = (vocabulary.encode_keeping_unknown(sequences[row]) for row in rows)
        return [items for items in kept if len(items) >= config.min_session_length]

    train_counts = np.zeros(vocabulary.size_with_padding, dtype=np.int64)
    train_counts[1:] = [count for _, count in by_popularity]
    starts = rows.starts
    first = {"validation_from": validation_rows, "test_from": test_rows}
    return SessionSplits(
        vocabulary=vocabulary,
        train=encoded(train_rows),
        validation=encoded(validation_rows),
        test=encoded(test_rows),
        train_counts=train_counts,
        boundaries={
            **{name: str(starts[chosen[0]]) for name, chosen in first.items() if len(chosen)},
            "test_to": str(starts[test_rows[-1]]),
        },
    )


def _sequences(sessions: pa.Table, config: SplitConfig) -> list[list[str]]:
    sequences = sessions.column("interactions").to_pylist()
    return [collapse_consecutive_repeats(s) for s in sequences] if config.collapse_repeats else sequences


def prepare_splits(sessions: pa.Table, config: SplitConfig = SplitConfig()) -> SessionSplits:
    """Time-based train/validation/test split of a session mart table (columns: interactions,
    session_start_at), with the vocabulary of the training sessions."""
    rows = _split_rows(sessions, config)
    order, n_train, n_validation = rows.order, rows.n_train, rows.n_validation
    return _splits(
        _sequences(sessions, config),
        rows,
        order[:n_train],
        order[n_train : n_train + n_validation],
        order[n_train + n_validation :],
        config,
    )


def refit_splits(sessions: pa.Table, config: SplitConfig = SplitConfig()) -> SessionSplits:
    """The same split with training and validation together as training (and the vocabulary of both), for the
    model chosen on validation: its test set is `prepare_splits`'s, and it has no validation set."""
    rows = _split_rows(sessions, config)
    before = rows.n_train + rows.n_validation
    return _splits(_sequences(sessions, config), rows, rows.order[:before], rows.order[:0], rows.order[before:], config)


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
