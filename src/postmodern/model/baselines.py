"""The baselines every model is shown beside, ranked on exactly the same cases (the `NextItemRanker` protocol).

- `PopularityRanker`: the most interacted-with items in training, the same list for everyone.
- `CooccurrenceRanker`: item-to-item co-occurrence within training sessions (pairs up to `window` positions
  apart, weighted 1/distance, optionally only in reading order as in sequential rules), each row normalised
  into P(next | item); a prefix scores items by the rows of its items, the latest weighted most.
- `VSKNNRanker`: V-SKNN, the vector-based session kNN of Ludewig and Jannach ("Evaluation of session-based
  recommendation algorithms", 2018): the prefix is a vector with linearly decaying weights (position i of n
  weighs i/n), the candidate neighbours are the `sample_size` most recent training sessions sharing an item
  with it, their cosine similarity with the prefix picks the `k` nearest, and an item scores the summed
  similarity of the neighbours that hold it (each divided by how far back in the prefix the latest item it
  shares with the prefix is, when `score_decay`, as in session-rec's implementation). Every neighbour holds
  the prefix's latest item, so it would always rank first; with `skip_latest` (tuned) it is not scored, as
  on data where a session never shows the same item twice in a row (the session mart's sequences).

All three work on sparse matrices (scipy.sparse) a chunk of prefixes at a time: a session-item matrix, its
transpose as the inverted index item -> sessions, an item-item matrix. Where a method scores fewer than k
items, the list goes on with the most popular ones, so every ranker always returns k items.
`baseline_rankers(splits)` tunes the co-occurrence and kNN knobs on the validation split, the split the
LSTM's early stopping reads.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from postmodern.evaluation.metrics import EvaluationCases, NextItemRanker, evaluate_ranker, next_item_cases
from postmodern.model.dataset import PADDING_ID, SessionSplits

CHUNK_ROWS = 2048  # prefixes scored at once (row numbers fit the sort key's top bits)
SCORE_STEPS = 2**40 - 1
COOCCURRENCE_GRID = {"window": [1, 3], "directed": [True, False], "weighting": ["last", "div"]}
VSKNN_GRID = {"k": [100, 200], "sample_size": [500, 1000], "score_decay": [True], "skip_latest": [False, True]}
TUNING_METRIC = "mrr@20"


class PopularityRanker:
    """The most interacted-with items in training, the same list for every session."""

    name = "popularity"

    def __init__(self, train_counts: np.ndarray):
        counts = np.asarray(train_counts, dtype=np.float64).copy()
        counts[0] = -1  # the padding id is never recommended
        self.order = np.argsort(-counts, kind="stable")
        self.scores = counts[self.order] / max(counts[1:].sum(), 1.0)
        self.params: dict[str, object] = {}

    def rank(self, prefixes: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self.order) - 1)
        n = len(prefixes)
        return np.tile(self.order[:k], (n, 1)), np.tile(self.scores[:k], (n, 1))


class SparseScorer:
    """Shared by the sparse baselines: score prefixes a chunk at a time, keep the top k of each row, and
    continue each list with the most popular items the method did not score."""

    name = "sparse"

    def __init__(self, train_counts: np.ndarray):
        self.n_items = len(train_counts)
        by_popularity = np.argsort(-np.asarray(train_counts), kind="stable")
        self.popular = by_popularity[by_popularity != PADDING_ID]

    def score_chunk(self, prefixes: list[np.ndarray]) -> sp.csr_matrix:
        """[len(prefixes), n_items] scores; no entry where the method has no opinion."""
        raise NotImplementedError

    def rank(self, prefixes: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self.popular))
        items_out, scores_out = [np.empty((0, k), dtype=np.int64)], [np.empty((0, k))]
        for start in range(0, len(prefixes), CHUNK_ROWS):
            items, scores = self.top_k(self.score_chunk(prefixes[start : start + CHUNK_ROWS]), k)
            items_out.append(items)
            scores_out.append(scores)
        return np.concatenate(items_out), np.concatenate(scores_out)

    def top_k(self, scores: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each row's k best items, then the most popular of the others: [n, k] items and scores (0 for those).
        Equal scores keep item-id order, which is popularity order in a `Vocabulary`."""
        scores = scores.tocsr()
        scores.sum_duplicates()  # also sorts each row's items by id
        scores.eliminate_zeros()
        n = scores.shape[0]
        rows = np.repeat(np.arange(n), np.diff(scores.indptr))
        order, rank_in_row = rank_within_rows(rows, scores.data, n)
        kept = rank_in_row < k
        items = np.full((n, k), -1, dtype=np.int64)
        values = np.zeros((n, k))
        items[rows[kept], rank_in_row[kept]] = scores.indices[order][kept]
        values[rows[kept], rank_in_row[kept]] = scores.data[order][kept]

        # the first k + (scored items) popular items always hold enough that the row does not have yet
        scored = np.minimum(np.diff(scores.indptr), k)
        candidates = self.popular[: 2 * k]
        free = ~(items[:, :, None] == candidates[None, None, :]).any(axis=1)
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


class CooccurrenceRanker(SparseScorer):
    """Item-to-item co-occurrence within sessions, session-aware: every item of the prefix votes."""

    name = "cooccurrence"

    def __init__(
        self,
        sessions: list[np.ndarray],
        train_counts: np.ndarray,
        window: int = 3,
        directed: bool = True,
        weighting: str = "div",
    ):
        super().__init__(train_counts)
        if weighting not in ("last", "div"):
            raise ValueError(f"weighting must be 'last' or 'div', not {weighting!r}")
        self.params = {"window": window, "directed": directed, "weighting": weighting}
        self.weighting = weighting
        self.transitions = cooccurrence_matrix(sessions, self.n_items, window, directed)

    def score_chunk(self, prefixes: list[np.ndarray]) -> sp.csr_matrix:
        rows, items, positions, lengths = prefix_positions(prefixes)
        steps_back = lengths - positions + 1  # 1 for the latest item
        if self.weighting == "last":
            rows, items, steps_back = rows[steps_back == 1], items[steps_back == 1], steps_back[steps_back == 1]
        query = sp.csr_matrix((1.0 / steps_back, (rows, items)), shape=(len(prefixes), self.n_items))
        return query @ self.transitions


def cooccurrence_matrix(sessions: list[np.ndarray], n_items: int, window: int, directed: bool) -> sp.csr_matrix:
    """Row-normalised [n_items, n_items] counts of b following a (or, undirected, near a) within `window`
    positions in a training session, each pair weighted 1/distance."""
    flat = np.concatenate(sessions).astype(np.int64) if sessions else np.empty(0, dtype=np.int64)
    session_of = np.repeat(np.arange(len(sessions)), [len(session) for session in sessions])
    sources, targets, weights = [], [], []
    for distance in range(1, window + 1):
        same_session = session_of[:-distance] == session_of[distance:]
        before, after = flat[:-distance][same_session], flat[distance:][same_session]
        pairs = [(before, after), (after, before)] if not directed else [(before, after)]
        for source, target in pairs:
            sources.append(source)
            targets.append(target)
            weights.append(np.full(len(source), 1.0 / distance))
    counts = sp.csr_matrix(
        (np.concatenate(weights), (np.concatenate(sources), np.concatenate(targets))), shape=(n_items, n_items)
    )
    row_sums = np.asarray(counts.sum(axis=1)).ravel()
    return sp.diags(1.0 / np.where(row_sums > 0, row_sums, 1.0)) @ counts


class VSKNNRanker(SparseScorer):
    """V-SKNN (see the module docstring). `sessions` must be in time order, oldest first, as
    `prepare_splits` returns them: a session's index is its recency."""

    name = "vsknn"

    def __init__(
        self,
        sessions: list[np.ndarray],
        train_counts: np.ndarray,
        k: int = 100,
        sample_size: int = 1000,
        score_decay: bool = True,
        skip_latest: bool = False,
    ):
        super().__init__(train_counts)
        self.params = {"k": k, "sample_size": sample_size, "score_decay": score_decay, "skip_latest": skip_latest}
        self.k, self.sample_size, self.score_decay, self.skip_latest = k, sample_size, score_decay, skip_latest
        rows, items, _, _ = prefix_positions(sessions)
        # binary session-item matrix: a neighbour is the set of its items
        self.session_items = sp.csr_matrix((np.ones(len(items)), (rows, items)), shape=(len(sessions), self.n_items))
        self.session_items.data[:] = 1.0
        self.session_norms = np.sqrt(np.diff(self.session_items.indptr)).astype(np.float64)
        self.recent_sessions = most_recent_postings(self.session_items, sample_size)

    def score_chunk(self, prefixes: list[np.ndarray]) -> sp.csr_matrix:
        n = len(prefixes)
        prefix_lengths = np.array([len(prefix) for prefix in prefixes], dtype=np.float64)
        latest = latest_positions(prefixes, self.n_items)
        weights = latest.copy()  # position i of n weighs i/n: the latest item 1
        weights.data /= np.repeat(prefix_lengths, np.diff(latest.indptr))
        query_norms = np.sqrt(np.asarray(weights.multiply(weights).sum(axis=1)).ravel())

        # dot products with the candidate neighbours, then only the sample_size most recent of them
        dots = recent_per_row(weights @ self.recent_sessions, self.sample_size)
        neighbour_rows = np.repeat(np.arange(n), np.diff(dots.indptr))
        similarity = dots.data / (query_norms[neighbour_rows] * self.session_norms[dots.indices])
        row, session, similarity = top_per_row(neighbour_rows, dots.indices, similarity, self.k, n)

        if self.score_decay and len(row):
            similarity = similarity / self._steps_back_to_shared_item(row, session, latest, prefix_lengths)
        neighbours = sp.csr_matrix((similarity, (row, session)), shape=(n, self.session_items.shape[0]))
        scores = neighbours @ self.session_items
        if self.skip_latest:
            latest_items = sp.csr_matrix(
                (np.ones(n), (np.arange(n), [prefix[-1] for prefix in prefixes])), shape=scores.shape
            )
            scores = scores - scores.multiply(latest_items)  # top_k drops the zeros
        return scores

    def _steps_back_to_shared_item(
        self, row: np.ndarray, session: np.ndarray, latest: sp.csr_matrix, prefix_lengths: np.ndarray
    ) -> np.ndarray:
        """For each (prefix, neighbour): 1 + how many items back the latest prefix item the neighbour holds is."""
        indptr = self.session_items.indptr
        sizes = indptr[session + 1] - indptr[session]
        starts = np.cumsum(sizes) - sizes
        pair = np.repeat(np.arange(len(row)), sizes)
        neighbour_items = self.session_items.indices[indptr[session][pair] + np.arange(sizes.sum()) - starts[pair]]
        position = np.asarray(latest[row[pair], neighbour_items]).ravel()
        return prefix_lengths[row] - np.maximum.reduceat(position, starts) + 1


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


def most_recent_postings(session_items: sp.csr_matrix, sample_size: int) -> sp.csr_matrix:
    """The inverted index item -> sessions, each item keeping only its `sample_size` most recent sessions.

    The `sample_size` most recent sessions sharing any item with a prefix are the same whether the lists
    are cut or not (each of them is among the most recent sessions of every item it shares), and their
    dot products with the prefix are complete, so cutting changes no result and bounds the work."""
    postings = session_items.T.tocsr()
    postings.sort_indices()
    return recent_per_row(postings, sample_size)


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


def tuned(make: Callable[..., NextItemRanker], grid: dict[str, list], validation: EvaluationCases) -> NextItemRanker:
    """The ranker of the grid point with the best validation MRR@20 (the first point when there is no case)."""
    best, best_mrr = None, -np.inf
    for values in itertools.product(*grid.values()):
        ranker = make(**dict(zip(grid, values, strict=True)))
        if len(validation.targets) == 0:
            return ranker
        mrr = evaluate_ranker(ranker, validation, k=20)[TUNING_METRIC]
        if mrr > best_mrr:
            best, best_mrr = ranker, mrr
    return best


def baseline_rankers(splits: SessionSplits, validation_cases: int = 20_000, seed: int = 0) -> list[NextItemRanker]:
    """Popularity, co-occurrence and V-SKNN, the last two tuned on (a seeded sample of) the validation cases."""
    validation = next_item_cases(splits.validation, max_cases=validation_cases, seed=seed)
    cooccurrence = tuned(
        lambda **params: CooccurrenceRanker(splits.train, splits.train_counts, **params), COOCCURRENCE_GRID, validation
    )
    vsknn = tuned(lambda **params: VSKNNRanker(splits.train, splits.train_counts, **params), VSKNN_GRID, validation)
    return [PopularityRanker(splits.train_counts), cooccurrence, vsknn]
