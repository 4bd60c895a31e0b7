"""V-SKNN, the vector-based session kNN of Ludewig and Jannach ("Evaluation of session-based recommendation
algorithms", 2018): the prefix is a vector with linearly decaying weights (position i of n weighs i/n), the
candidate neighbours are the `sample_size` most recent training sessions sharing an item with it, their cosine
similarity with the prefix picks the `k` nearest, and an item scores the summed similarity of the neighbours that
hold it (each divided by how far back in the prefix the latest item it shares with the prefix is, when
`score_decay`, as in session-rec's implementation). Every neighbour holds the prefix's latest item, so it would
always rank first; with `skip_latest` (tuned) it is not scored, as on data where a session never shows the same
item twice in a row.

As Serenade serves VMIS-kNN, what every request needs is built when the ranker is made (from training or from a
bundle): the session-item matrix, its norms, and the inverted index item -> its most recent sessions; a request
only merges these sparse rows.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from postmodern.model.dataset import SessionSplits
from postmodern.model.families.base import Family, FitContext
from postmodern.model.ranker import Ranker, RankerState
from postmodern.model.sparse import (
    SparseRanker,
    csr_arrays,
    csr_from_arrays,
    latest_positions,
    prefix_positions,
    recent_per_row,
    top_per_row,
)


class VSKNNRanker(SparseRanker):
    """V-SKNN (see the module docstring). `session_items` rows are the training sessions in time order, oldest
    first, as `prepare_splits` returns them: a session's index is its recency."""

    name = "vsknn"

    def __init__(self, session_items: sp.csr_matrix, train_counts: np.ndarray, params: dict):
        super().__init__(train_counts, params)
        self.k, self.sample_size = params["k"], params["sample_size"]
        self.score_decay, self.skip_latest = params["score_decay"], params["skip_latest"]
        self.session_items = session_items.tocsr()  # binary: a neighbour is the set of its items
        self.session_items.data[:] = 1.0
        self.session_norms = np.sqrt(np.diff(self.session_items.indptr)).astype(np.float64)
        self.recent_sessions = most_recent_postings(self.session_items, self.sample_size)

    @classmethod
    def from_sessions(
        cls,
        sessions: list[np.ndarray],
        train_counts: np.ndarray,
        k: int = 100,
        sample_size: int = 1000,
        score_decay: bool = True,
        skip_latest: bool = False,
    ) -> VSKNNRanker:
        rows, items, _, _ = prefix_positions(sessions)
        session_items = sp.csr_matrix((np.ones(len(items)), (rows, items)), shape=(len(sessions), len(train_counts)))
        params = {"k": k, "sample_size": sample_size, "score_decay": score_decay, "skip_latest": skip_latest}
        return cls(session_items, train_counts, params)

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
            scores = scores - scores.multiply(latest_items)  # the zeros are dropped when ranked
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

    def state(self) -> RankerState:
        # the binary matrix's structure only: its values are ones, and the index is rebuilt when loaded
        structure = csr_arrays(self.session_items, "session_items")
        del structure["session_items_data"]
        return RankerState(self.name, self.params, {"train_counts": self.train_counts, **structure})


def most_recent_postings(session_items: sp.csr_matrix, sample_size: int) -> sp.csr_matrix:
    """The inverted index item -> sessions, each item keeping only its `sample_size` most recent sessions.

    The `sample_size` most recent sessions sharing any item with a prefix are the same whether the lists
    are cut or not (each of them is among the most recent sessions of every item it shares), and their
    dot products with the prefix are complete, so cutting changes no result and bounds the work."""
    postings = session_items.T.tocsr()
    postings.sort_indices()
    return recent_per_row(postings, sample_size)


class VSKNN(Family):
    name = "vsknn"
    search_space = {"k": [100, 200], "sample_size": [500, 1000], "score_decay": [True], "skip_latest": [False, True]}

    def build(self, splits: SessionSplits, params: dict, context: FitContext) -> tuple[Ranker, dict]:
        return VSKNNRanker.from_sessions(splits.train, splits.train_counts, **params), {}

    def from_state(self, state: RankerState) -> Ranker:
        arrays = dict(state.arrays)
        arrays["session_items_data"] = np.ones(len(arrays["session_items_indices"]), dtype=np.float64)
        return VSKNNRanker(csr_from_arrays(arrays, "session_items"), arrays["train_counts"], state.config)
