"""Co-occurrence: item-to-item counts within training sessions (pairs up to `window` positions apart, weighted
1/distance, optionally only in reading order as in sequential rules), each row normalised into P(next | item); a
prefix scores items by the rows of its items, the latest weighted most (`div`: the item k steps back weighs 1/k),
or by the latest item's row alone (`last`)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from postmodern.model.dataset import SessionSplits
from postmodern.model.families.base import Family, FitContext
from postmodern.model.ranker import Ranker, RankerState
from postmodern.model.sparse import (
    SparsePass,
    SparseRanker,
    candidate_count,
    csr_arrays,
    csr_from_arrays,
    prefix_positions,
)

WEIGHTINGS = ("last", "div")
FEW_PREFIXES = 16  # or fewer: probabilities gathered from the rows of `transitions`, without a sparse product


class CooccurrenceRanker(SparseRanker):
    """Session-aware co-occurrence: every item of the prefix votes with its row of `transitions`."""

    name = "cooccurrence"

    def __init__(self, transitions: sp.csr_matrix, train_counts: np.ndarray, params: dict):
        super().__init__(train_counts, params)
        if params["weighting"] not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, not {params['weighting']!r}")
        self.transitions = transitions.tocsr()
        self.transitions.sort_indices()  # a row's items in order, as a candidate pass gives them

    @classmethod
    def from_sessions(
        cls,
        sessions: list[np.ndarray],
        train_counts: np.ndarray,
        window: int = 3,
        directed: bool = True,
        weighting: str = "div",
    ) -> CooccurrenceRanker:
        params = {"window": window, "directed": directed, "weighting": weighting}
        return cls(cooccurrence_matrix(sessions, len(train_counts), window, directed), train_counts, params)

    def add_probabilities(self, prefixes: list[np.ndarray], mixed: np.ndarray, weight: float) -> None:
        """As `SparseRanker.add_probabilities`; a few prefixes (serving's passes, a blend's part) straight from the
        rows of `transitions`, without a sparse product's fixed cost (a fifth of it at 57,000 items)."""
        if len(prefixes) > FEW_PREFIXES:
            super().add_probabilities(prefixes, mixed, weight)
            return
        rows, items, weights = self.votes(prefixes)
        transitions = self.transitions
        if len(items) == len(prefixes):  # one voting item per prefix (the latest): its row (normalised) as it is
            indptr, indices, data = transitions.indptr, transitions.indices, transitions.data
            for row, item, vote in zip(rows.tolist(), items.tolist(), weights.tolist(), strict=True):
                begin, end = indptr[item], indptr[item + 1]
                mixed[row, indices[begin:end]] += (weight * vote) * data[begin:end]
            return
        begins = transitions.indptr[items]
        lengths = transitions.indptr[items + 1] - begins
        # every voting item's row of `transitions`, one after another
        positions = np.repeat(begins - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
        vote_rows = np.repeat(rows, lengths)
        votes = transitions.data[positions] * np.repeat(weights, lengths)
        totals = np.bincount(vote_rows, votes, minlength=len(prefixes))
        votes *= weight / np.where(totals > 0, totals, 1.0)[vote_rows]
        cells = vote_rows * self.n_items + transitions.indices[positions]
        mixed += np.bincount(cells, votes, minlength=mixed.size).reshape(mixed.shape).astype(np.float32)

    def candidate_pass(self, prefixes: list[np.ndarray], k: int) -> SparsePass:
        """With one voting item per prefix (the latest), its rows of `transitions` as they are (normalised, sorted)."""
        rows, items, _ = self.votes(prefixes)
        if len(items) != len(prefixes):
            return super().candidate_pass(prefixes, k)
        indptr = self.transitions.indptr
        spans = [slice(indptr[item], indptr[item + 1]) for item in items[np.argsort(rows)].tolist()]
        row_sizes = [span.stop - span.start for span in spans]
        return SparsePass(
            np.concatenate([[0], np.cumsum(row_sizes)]),
            np.concatenate([self.transitions.indices[span] for span in spans]),
            np.concatenate([self.transitions.data[span] for span in spans]),
            candidate_count(k),
        )

    def score_chunk(self, prefixes: list[np.ndarray]) -> sp.csr_matrix:
        rows, items, weights = self.votes(prefixes)
        query = sp.csr_matrix((weights, (rows, items)), shape=(len(prefixes), self.n_items))
        return query @ self.transitions

    def votes(self, prefixes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The items that vote, their prefix's row, and the weight of their vote: 1 / steps back from the latest
        (the latest alone, weighting "last")."""
        rows, items, positions, lengths = prefix_positions(prefixes)
        steps_back = lengths - positions + 1  # 1 for the latest item
        if self.params["weighting"] == "last":
            latest = steps_back == 1
            rows, items, steps_back = rows[latest], items[latest], steps_back[latest]
        return rows, items, 1.0 / steps_back

    def state(self) -> RankerState:
        arrays = {"train_counts": self.train_counts, **csr_arrays(self.transitions, "transitions")}
        return RankerState(self.name, self.params, arrays)


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
    return (sp.diags(1.0 / np.where(row_sums > 0, row_sums, 1.0)) @ counts).tocsr()


class Cooccurrence(Family):
    name = "cooccurrence"
    search_space = {"window": [1, 3, 5], "directed": [True, False], "weighting": ["last", "div"]}

    def build(self, splits: SessionSplits, params: dict, context: FitContext) -> tuple[Ranker, dict]:
        return CooccurrenceRanker.from_sessions(splits.train, splits.train_counts, **params), {}

    def from_state(self, state: RankerState) -> Ranker:
        return CooccurrenceRanker(
            csr_from_arrays(state.arrays, "transitions"), state.arrays["train_counts"], state.config
        )
