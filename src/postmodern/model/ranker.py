"""The one interface every model family implements: evaluation, the gate, bundles and serving hold a `Ranker` and
never ask which family it is.

A ranker gives, for each session prefix (item ids, oldest first), the probability of every item being next
(`probabilities`), and from it the top k (`rank`). A prefix with no item (all its SKUs unknown) gets the most
popular items, as serving answers it. Its `state` is what a bundle stores: a JSON config, NumPy arrays and, for
a model made of others, their states; the family's `from_state` makes the same ranker again.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from postmodern.model.dataset import PADDING_ID

STATE_CONFIG = "config.json"
SAMPLE_STRIDE = 16  # `largest`: every 16th score of a long row sets its threshold


@dataclass
class RankerState:
    """A ranker as data: its family, a JSON-able config, named arrays, and the states of its parts."""

    family: str
    config: dict
    arrays: dict[str, np.ndarray]
    parts: list[RankerState] = field(default_factory=list)

    def save(self, directory: Path) -> Path:
        """`config.json`, one `.npy` file per array (memory-mappable), and `part-<i>/` per part."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"family": self.family, "config": self.config, "arrays": sorted(self.arrays), "parts": len(self.parts)}
        (directory / STATE_CONFIG).write_text(json.dumps(meta, indent=2))
        for name, array in self.arrays.items():
            np.save(directory / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        for index, part in enumerate(self.parts):
            part.save(directory / f"part-{index}")
        return directory

    @classmethod
    def load(cls, directory: Path) -> RankerState:
        directory = Path(directory)
        meta = json.loads((directory / STATE_CONFIG).read_text())
        return cls(
            family=meta["family"],
            config=meta["config"],
            arrays={name: np.load(directory / f"{name}.npy", allow_pickle=False) for name in meta["arrays"]},
            parts=[cls.load(directory / f"part-{index}") for index in range(meta["parts"])],
        )

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.arrays.values()) + sum(part.nbytes for part in self.parts)


class CandidateScores(Protocol):
    """A ranker's scores of a pass's prefixes, row by row, on items a blend chooses."""

    def candidates(self, row: int, whole: bool = False) -> np.ndarray:
        """The row's items worth scoring, sorted and distinct, no padding (with `whole`, every item it scores above
        zero, where it can tell)."""

    def bound(self, row: int) -> float:
        """The highest probability that an item which is not among the row's candidates can have."""

    def probabilities(self, row: int, items: np.ndarray) -> np.ndarray:
        """The row's probabilities of `items` (sorted, distinct, no padding)."""

    def total(self, row: int) -> float:
        """The row's probabilities summed over the whole catalogue."""


class Ranker(ABC):
    """Ranks the next item for session prefixes. Subclasses set `name` (their family's) and give `probabilities`
    and `state`; `rank` is shared (a family may rank faster without the dense probabilities, as the sparse ones do).
    """

    name: ClassVar[str]
    batch_size: ClassVar[int] = 1024  # prefixes scored at once: a [batch, n_items] array of float32

    def __init__(self, train_counts: np.ndarray, params: dict | None = None):
        self.train_counts = np.asarray(train_counts, dtype=np.int64)
        self.n_items = len(self.train_counts)  # with the padding id
        by_popularity = np.argsort(-self.train_counts[1:], kind="stable") + 1
        self.popular = by_popularity  # item ids, most popular first
        self.popular_shares = (self.train_counts[by_popularity] / max(int(self.train_counts.sum()), 1)).astype(
            np.float32
        )
        self.params = dict(params or {})

    @abstractmethod
    def probabilities(self, prefixes: list[np.ndarray]) -> np.ndarray:
        """[len(prefixes), n_items] float32: each item's probability of being next after each (non-empty)
        prefix; padding 0. A row may sum to less than 1 where the family has no opinion on some items."""

    @abstractmethod
    def state(self) -> RankerState:
        """What a bundle stores to make this ranker again."""

    def rank(
        self, prefixes: list[np.ndarray] | list[list[int]], k: int, exclude_seen: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item ids and their scores for each prefix: two [n, k] arrays, best first. With `exclude_seen`,
        the prefix's own items are not ranked; a row with fewer than k rankable items ends with the padding id 0
        (callers drop it). An empty prefix gets the most popular items, their training shares as scores."""
        k = min(k, self.n_items - 1)
        prefixes = [np.asarray(prefix, dtype=np.int64) for prefix in prefixes]
        items = np.empty((len(prefixes), k), dtype=np.int64)
        scores = np.empty((len(prefixes), k), dtype=np.float32)
        known = [row for row, prefix in enumerate(prefixes) if len(prefix)]
        if len(known) < len(prefixes):
            empty = np.setdiff1d(np.arange(len(prefixes)), known)
            items[empty], scores[empty] = self.popular[:k], self.popular_shares[:k]
        for start in range(0, len(known), self.batch_size):
            rows = known[start : start + self.batch_size]
            items[rows], scores[rows] = self.rank_known([prefixes[row] for row in rows], k, exclude_seen)
        return items, scores

    def candidate_pass(self, prefixes: list[np.ndarray], k: int) -> CandidateScores | None:
        """Scores of a few items per prefix, for a blend that ranks a serving pass from candidates; None where this
        ranker has no such scores (it ranks from the whole catalogue's probabilities)."""
        return None

    def rank_known(self, prefixes: list[np.ndarray], k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """`rank` for at most `batch_size` non-empty prefixes, from the dense probabilities."""
        return top_k(self.probabilities(prefixes), prefixes, k, exclude_seen)


def top_k(
    probabilities: np.ndarray, prefixes: list[np.ndarray], k: int, exclude_seen: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k most probable items (a partial selection, then a sort of the k), in place on `probabilities`.
    With `exclude_seen` the prefix's items are left out and the scores are the probabilities of what is left."""
    mark_unrankable(probabilities, prefixes, exclude_seen)
    rows = np.arange(len(probabilities))[:, None]
    top_items = largest(probabilities, k)
    top_items = top_items[rows, best_first(probabilities[rows, top_items], top_items)]
    top_probabilities = probabilities[rows, top_items]
    if exclude_seen:
        top_items[top_probabilities < 0] = PADDING_ID
        left = np.maximum(probabilities, 0.0).sum(axis=1, keepdims=True)
        top_probabilities = np.where(top_probabilities < 0, 0.0, top_probabilities / np.maximum(left, 1e-30))
    return top_items, top_probabilities.astype(np.float32)


def top_of_candidates(
    items: np.ndarray, scores: np.ndarray, prefix: np.ndarray, k: int, exclude_seen: bool, total: float
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of a row's candidates (sorted distinct items, the prefix's among them): [k] items and scores,
    padding after the last. With `exclude_seen` the prefix's items are left out and the scores are shares of what
    is left of `total` (the row's scores over the whole catalogue)."""
    if exclude_seen:
        seen = np.isin(items, prefix)
        total -= float(scores[seen].sum())
        items, scores = items[~seen], scores[~seen] / max(total, 1e-30)
    order = best_first(scores[None, :], items[None, :])[0, :k]
    top_items = np.full(k, PADDING_ID, dtype=np.int64)
    top_scores = np.zeros(k, dtype=np.float32)
    top_items[: len(order)], top_scores[: len(order)] = items[order], scores[order]
    return top_items, top_scores


def best_first(scores: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[rows, c] each row's positions by score, highest first; equal scores by item id, the more popular first (ids
    follow training popularity), so that a ranking never depends on how its candidates were gathered."""
    return np.lexsort((items, -scores), axis=-1)


def largest(scores: np.ndarray, count: int) -> np.ndarray:
    """[rows, count] the columns of each row's `count` largest scores, in no order (as a partial selection gives
    them). A long row is cut first to the scores at or above a threshold that a sample of it (every 16th) puts near
    its 4 * count-th largest: one comparison with the row, then the selection among the few that pass (a third of
    the time of a selection over 57,000 scores). A row where fewer than `count` pass (an unlucky sample) is
    selected from in full; either way, the columns are those of the largest scores."""
    sampled = -(-4 * count // SAMPLE_STRIDE)
    if scores.shape[1] < 8 * SAMPLE_STRIDE * count:
        return scores.argpartition(-count, axis=1)[:, -count:]
    thresholds = np.partition(scores[:, ::SAMPLE_STRIDE], -sampled, axis=1)[:, -sampled]
    chosen = np.empty((len(scores), count), dtype=np.intp)
    for row, (values, threshold) in enumerate(zip(scores, thresholds.tolist(), strict=True)):
        passing = np.flatnonzero(values >= threshold)
        if len(passing) < count:
            chosen[row] = values.argpartition(-count)[-count:]
        else:
            chosen[row] = passing[values[passing].argpartition(-count)[-count:]]
    return chosen


def mark_unrankable(probabilities: np.ndarray, prefixes: list[np.ndarray], exclude_seen: bool) -> None:
    """Padding, and with `exclude_seen` each prefix's own items, set below every item (-1), in place."""
    probabilities[:, PADDING_ID] = -1.0
    if exclude_seen:
        for row, prefix in enumerate(prefixes):
            probabilities[row, prefix] = -1.0
