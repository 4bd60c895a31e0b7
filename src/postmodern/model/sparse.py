"""What the sparse families (co-occurrence, V-SKNN) share: they score a chunk of prefixes as a sparse matrix
(scipy.sparse), normalise each row into probabilities, keep the top k of each row, and continue each list with the
most popular items they did not score, so that every ranker always returns k items."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from postmodern.model.dataset import PADDING_ID
from postmodern.model.ranker import Ranker

SCORE_STEPS = 2**40 - 1
CANDIDATES_PER_ROW = 200  # a row's most probable items that a blend ranks from (see `SparsePass`)


class SparseRanker(Ranker):
    """A ranker whose scores are sparse: only items related to the prefix have one."""

    batch_size = 2048  # prefixes scored at once (row numbers fit the sort key's top bits)

    @abstractmethod
    def score_chunk(self, prefixes: list[np.ndarray]) -> sp.csr_matrix:
        """[len(prefixes), n_items] non-negative scores; no entry where the method has no opinion."""

    def probabilities(self, prefixes: list[np.ndarray]) -> np.ndarray:
        probabilities = np.zeros((len(prefixes), self.n_items), dtype=np.float32)
        for start in range(0, len(prefixes), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            self.add_probabilities(prefixes[chunk], probabilities[chunk], 1.0)
        return probabilities

    def add_probabilities(self, prefixes: list[np.ndarray], mixed: np.ndarray, weight: float) -> None:
        """Adds `weight` times the prefixes' probabilities to `mixed` [len(prefixes), n_items], only where they are
        not zero: a blend mixes a sparse part in without a catalogue-wide array of it."""
        scored = normalised_rows(self.score_chunk(prefixes))
        rows = np.repeat(np.arange(scored.shape[0]), np.diff(scored.indptr))
        mixed[rows, scored.indices] += weight * scored.data

    def candidate_pass(self, prefixes: list[np.ndarray], k: int) -> SparsePass:
        return SparsePass.of(normalised_rows(self.score_chunk(prefixes)), k)

    def rank_known(self, prefixes: list[np.ndarray], k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """The top k of the sparse scores, as probabilities (of the items not in the prefix, with `exclude_seen`)."""
        scores = self.score_chunk(prefixes).tocsr()
        seen = prefix_matrix(prefixes, self.n_items) if exclude_seen else None
        if seen is not None:
            scores = scores - scores.multiply(seen)
        return sparse_top_k(normalised_rows(scores), k, self.popular, seen)


@dataclass
class SparsePass:
    """A sparse ranker's probabilities of a pass's prefixes, as the arrays of a CSR matrix (each row's items sorted
    and distinct, its probabilities summing to 1, or nothing), row by row on the items a blend chooses. Its
    candidates are a row's `count` most probable items (all it scores, with `whole`)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    count: int

    @classmethod
    def of(cls, scored: sp.csr_matrix, k: int) -> SparsePass:
        """From scores as `normalised_rows` leaves them, for a top k."""
        return cls(scored.indptr, scored.indices, scored.data, candidate_count(k))

    def _row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        span = slice(self.indptr[row], self.indptr[row + 1])
        return self.indices[span], self.data[span]

    def candidates(self, row: int, whole: bool = False) -> np.ndarray:
        items, probabilities = self._row(row)
        if whole or len(items) <= self.count:
            return items
        return np.sort(items[probabilities.argpartition(-self.count)[-self.count :]])

    def bound(self, row: int) -> float:
        """The highest probability of an item that is not a candidate."""
        _, probabilities = self._row(row)
        if len(probabilities) <= self.count:
            return 0.0
        return float(np.partition(probabilities, -self.count - 1)[-self.count - 1])

    def probabilities(self, row: int, items: np.ndarray) -> np.ndarray:
        scored, probabilities = self._row(row)
        if not len(scored):
            return np.zeros(len(items), dtype=np.float32)
        at = np.minimum(np.searchsorted(scored, items), len(scored) - 1)
        return np.where(scored[at] == items, probabilities[at], 0.0).astype(np.float32)

    def total(self, row: int) -> float:
        return float(self._row(row)[1].sum())


def candidate_count(k: int) -> int:
    """How many of a row's most probable items a sparse part offers a blend for a top k."""
    return max(2 * k, CANDIDATES_PER_ROW)


def normalised_rows(scores: sp.csr_matrix) -> sp.csr_matrix:
    """Each row divided by its sum (rows of zeros stay empty), duplicates summed, zeros dropped, items sorted."""
    scores = scores.tocsr()
    scores.sum_duplicates()
    scores.eliminate_zeros()
    sums = np.asarray(scores.sum(axis=1)).ravel()
    scores.data /= np.repeat(np.where(sums > 0, sums, 1.0), np.diff(scores.indptr))
    return scores


def prefix_matrix(prefixes: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    """[len(prefixes), n_items]: 1 where an item is in the prefix."""
    rows, items, _, _ = prefix_positions(prefixes)
    matrix = sp.csr_matrix((np.ones(len(items)), (rows, items)), shape=(len(prefixes), n_items))
    matrix.data[:] = 1.0
    return matrix


def sparse_top_k(
    scores: sp.csr_matrix, k: int, popular: np.ndarray, excluded: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k best items (`scores` as `normalised_rows` leaves them), then the most popular of the others
    (score 0) that `excluded` does not hold: [n, k] items and scores. Equal scores keep item-id order, which is
    popularity order in a `Vocabulary`. A row that runs out of items ends with the padding id."""
    n = scores.shape[0]
    rows = np.repeat(np.arange(n), np.diff(scores.indptr))
    order, rank_in_row = rank_within_rows(rows, scores.data, n)
    kept = rank_in_row < k
    items = np.full((n, k), PADDING_ID, dtype=np.int64)
    values = np.zeros((n, k), dtype=np.float32)
    items[rows[kept], rank_in_row[kept]] = scores.indices[order][kept]
    values[rows[kept], rank_in_row[kept]] = scores.data[order][kept]

    # the first k + (scored items) + (excluded items) popular items always hold enough that the row lacks
    most_excluded = int(np.diff(excluded.indptr).max(initial=0)) if excluded is not None else 0
    candidates = popular[: 2 * k + most_excluded]
    free = ~(items[:, :, None] == candidates[None, None, :]).any(axis=1)
    if excluded is not None:
        free &= excluded[:, candidates].toarray() == 0
    scored = np.minimum(np.diff(scores.indptr), k)
    slot = scored[:, None] + np.cumsum(free, axis=1) - 1
    fill = free & (slot < k)
    fill_rows, fill_columns = np.nonzero(fill)
    items[fill_rows, slot[fill]] = candidates[fill_columns]
    return items, values


def prefix_positions(prefixes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flattened prefixes: row, item, position (1 = first) and prefix length of every item."""
    lengths = np.array([len(prefix) for prefix in prefixes], dtype=np.int64)
    rows = np.repeat(np.arange(len(prefixes)), lengths)
    items = np.concatenate(prefixes) if len(prefixes) else np.empty(0, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    positions = np.arange(len(items)) - np.repeat(starts, lengths) + 1
    return rows, items.astype(np.int64), positions, lengths[rows]


def latest_positions(prefixes: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    """[len(prefixes), n_items]: the latest position (1 = first) of each item in each prefix."""
    rows, items, positions, _ = prefix_positions(prefixes)
    order = np.lexsort((positions, items, rows))
    rows, items, positions = rows[order], items[order], positions[order]
    last = np.ones(len(rows), dtype=bool)
    last[:-1] = (rows[1:] != rows[:-1]) | (items[1:] != items[:-1])
    return sp.csr_matrix(
        (positions[last].astype(np.float64), (rows[last], items[last])), shape=(len(prefixes), n_items)
    )


def recent_per_row(matrix: sp.csr_matrix, count: int) -> sp.csr_matrix:
    """Each row's `count` entries of highest column index (the most recent sessions)."""
    matrix = matrix.tocsr()
    matrix.sort_indices()
    sizes = np.diff(matrix.indptr)
    from_end = np.repeat(matrix.indptr[1:], sizes) - 1 - np.arange(matrix.nnz)
    keep = from_end < count
    rows = np.repeat(np.arange(matrix.shape[0]), sizes)[keep]
    return sp.csr_matrix((matrix.data[keep], (rows, matrix.indices[keep])), shape=matrix.shape)


def rank_within_rows(
    rows: np.ndarray, values: np.ndarray, n_rows: int, later_first: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Entries (grouped by ascending row, values >= 0) ordered by row then descending value, and the rank of
    each ordered entry in its row. Equal values keep their order, or the reverse with `later_first`.

    One integer key (the row, then the value to 40 bits) sorts several times faster than a lexsort."""
    quantised = (values / max(values.max(initial=0.0), 1e-300) * SCORE_STEPS).astype(np.int64)
    keys = (rows.astype(np.int64) << 41) | (SCORE_STEPS - quantised)
    # a stable sort of the reversed keys puts later equal entries first
    order = np.argsort(keys[::-1] if later_first else keys, kind="stable")
    order = len(keys) - 1 - order if later_first else order
    row_sizes = np.bincount(rows, minlength=n_rows)
    return order, np.arange(len(order)) - (np.cumsum(row_sizes) - row_sizes)[rows[order]]


def top_per_row(
    rows: np.ndarray, columns: np.ndarray, values: np.ndarray, count: int, n_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `count` entries of highest value in each row (ties: the higher column, i.e. the more recent)."""
    order, rank_in_row = rank_within_rows(rows, values, n_rows, later_first=True)
    keep = order[rank_in_row < count]
    return rows[keep], columns[keep], values[keep]


def csr_arrays(matrix: sp.csr_matrix, prefix: str) -> dict[str, np.ndarray]:
    """A CSR matrix as named arrays for a `RankerState` (and back with `csr_from_arrays`)."""
    matrix = matrix.tocsr()
    return {
        f"{prefix}_data": matrix.data,
        f"{prefix}_indices": matrix.indices,
        f"{prefix}_indptr": matrix.indptr,
        f"{prefix}_shape": np.asarray(matrix.shape, dtype=np.int64),
    }


def csr_from_arrays(arrays: dict[str, np.ndarray], prefix: str) -> sp.csr_matrix:
    shape = tuple(int(size) for size in arrays[f"{prefix}_shape"])
    return sp.csr_matrix(
        (arrays[f"{prefix}_data"], arrays[f"{prefix}_indices"], arrays[f"{prefix}_indptr"]), shape=shape
    )
