"""Blends: a weighted mixture of other families' next-item probabilities, the weights chosen on validation.

Families err differently: a neural model reads the whole session and generalises over similar items, the
nearest-neighbour and co-occurrence families recall exactly what followed these very items. A mixture of their
probabilities (each family's rows sum to 1) keeps what each does best, as ensembles of the two kinds did in
the session-rec comparisons. The weights are searched on a grid of the simplex (steps of `WEIGHT_STEP`, every
part above zero) against the validation cases every family was judged on; each part's probabilities are computed
once per chunk of cases and reused for every weighting.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from postmodern.model.dataset import PADDING_ID, UNKNOWN_ID, SessionSplits
from postmodern.model.families.base import Family, FitContext, Fitted
from postmodern.model.ranker import CandidateScores, Ranker, RankerState, top_k, top_of_candidates
from postmodern.model.sparse import SparseRanker

WEIGHT_STEP = 0.1
SEARCH_CHUNK = 512  # validation cases whose dense probabilities are held at once, per part
# Items that no part scores (only a sparse family's rows have such zeros) follow popularity, as each family's own
# ranking does; far below any score a part gives.
POPULARITY_TIE_BREAK = 1e-9


class BlendRanker(Ranker):
    name = "blend"

    def __init__(
        self, parts: list[Ranker], weights: list[float], train_counts: np.ndarray, labels: list[str] | None = None
    ):
        labels = labels or [part.name for part in parts]  # `lstm#2`: a family's runner-up
        super().__init__(train_counts, {"parts": list(labels), "weights": list(weights)})
        self.parts, self.weights = parts, [float(weight) for weight in weights]
        shares = self.train_counts / max(int(self.train_counts.sum()), 1)
        self.tie_break = (shares * POPULARITY_TIE_BREAK).astype(np.float32)
        self.tie_break[PADDING_ID] = 0.0
        self.tie_break_total, self.tie_break_max = float(self.tie_break.sum()), float(self.tie_break.max())

    def probabilities(self, prefixes: list[np.ndarray]) -> np.ndarray:
        return self.mixed_probabilities(prefixes)

    def rank_known(self, prefixes: list[np.ndarray], k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """The dense mixture's top k (a sparse part added only where it scores). A serving pass at a large catalogue
        is ranked from candidates instead, when its parts have them (see `_candidate_passes`): a row's candidates are
        every part's, and every part scores all of them."""
        passes = self._candidate_passes(prefixes, k)
        if passes is None:
            return top_k(self.mixed_probabilities(prefixes), prefixes, k, exclude_seen)
        top_items = np.empty((len(prefixes), k), dtype=np.int64)
        top_scores = np.empty((len(prefixes), k), dtype=np.float32)
        for row, prefix in enumerate(prefixes):
            items, scores, total = self._scored_candidates(passes, row, prefix)
            rankable = scores if not exclude_seen else scores[~np.isin(items, prefix)]
            kth = np.partition(rankable, -k)[-k] if len(rankable) >= k else 0.0
            # an item that is no part's candidate scores at most every part's bound: if the k-th best candidate may
            # score less, the sparse parts give all the items they score (a rare, long row)
            bounds = [weight * ranked.bound(row) for weight, ranked in zip(self.weights, passes, strict=True)]
            if kth < self.tie_break_max + sum(bounds):
                items, scores, total = self._scored_candidates(passes, row, prefix, whole=True)
            top_items[row], top_scores[row] = top_of_candidates(items, scores, prefix, k, exclude_seen, total)
        return top_items, top_scores

    def _candidate_passes(self, prefixes: list[np.ndarray], k: int) -> list[CandidateScores] | None:
        """Every part's candidate pass, when the parts that are not sparse all have one (they retrieve each row's
        best: a sparse part offers only what it scores); else None. The sparse parts' are made only then."""
        dense = {
            i: part.candidate_pass(prefixes, k)
            for i, part in enumerate(self.parts)
            if not isinstance(part, SparseRanker)
        }
        if not dense or any(ranked is None for ranked in dense.values()):
            return None
        return [dense[i] if i in dense else part.candidate_pass(prefixes, k) for i, part in enumerate(self.parts)]

    def _scored_candidates(
        self, passes: list[CandidateScores], row: int, prefix: np.ndarray, whole: bool = False
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """A row's candidates (every part's, and the prefix's items), their mixed scores and the row's total."""
        items = np.unique(np.concatenate([prefix, *(ranked.candidates(row, whole) for ranked in passes)]))
        items = items[items > PADDING_ID]
        scores = self.tie_break[items].copy()
        total = self.tie_break_total
        for weight, ranked in zip(self.weights, passes, strict=True):
            scores += weight * ranked.probabilities(row, items)
            total += weight * ranked.total(row)
        return items, scores, total

    def mixed_probabilities(self, prefixes: list[np.ndarray]) -> np.ndarray:
        """`probabilities`, with each sparse part added only where it scores."""
        mixed = np.tile(self.tie_break, (len(prefixes), 1))
        for part, weight in zip(self.parts, self.weights, strict=True):
            if isinstance(part, SparseRanker):  # a few thousand items a row, not the catalogue
                part.add_probabilities(prefixes, mixed, weight)
            else:
                mixed += weight * part.probabilities(prefixes)
        return mixed

    def state(self) -> RankerState:
        return RankerState(
            self.name, self.params, {"train_counts": self.train_counts}, [part.state() for part in self.parts]
        )


def simplex_grid(n_parts: int, step: float = WEIGHT_STEP) -> np.ndarray:
    """[points, n_parts]: every weighting in steps of `step` with every part above zero, summing to 1."""
    units = round(1 / step)
    points = [p for p in itertools.product(range(1, units), repeat=n_parts) if sum(p) == units]
    return np.array(points, dtype=np.float64) / units


def weighting_reciprocal_ranks(parts: list[Ranker], context: FitContext, weightings: np.ndarray) -> np.ndarray:
    """[weightings, cases] reciprocal rank (0 beyond 20) of each validation target under each weighting. A
    target's rank is 1 + the items scored above it; an unknown target, and an empty prefix (ranked by popularity
    whatever the weights), count as misses here, alike for every weighting."""
    validation = context.validation
    reciprocal = np.zeros((len(weightings), len(validation.targets)))
    known = np.flatnonzero([len(prefix) > 0 for prefix in validation.prefixes] & (validation.targets != UNKNOWN_ID))
    for start in range(0, len(known), SEARCH_CHUNK):
        cases = known[start : start + SEARCH_CHUNK]
        prefixes = [validation.prefixes[case] for case in cases]
        targets = validation.targets[cases]
        probabilities = [part.probabilities(prefixes) for part in parts]
        for index, weighting in enumerate(weightings):
            mixed = sum(weight * p for weight, p in zip(weighting, probabilities, strict=True))
            target_scores = mixed[np.arange(len(cases)), targets]
            ranks = (mixed > target_scores[:, None]).sum(axis=1) + 1
            reciprocal[index, cases] = np.where(ranks <= 20, 1.0 / ranks, 0.0)
    return reciprocal


class Blend(Family):
    """Not trained on sessions: `fit_parts` mixes families already fitted, and `refit` mixes their refits."""

    name = "blend"
    search_space: dict[str, list] = {}
    trains_on_sessions = False

    def build(self, splits: SessionSplits, params: dict, context: FitContext) -> tuple[Ranker, dict]:
        raise TypeError("a blend is made of fitted families: use fit_parts")

    def fit_parts(self, parts: dict[str, Fitted], splits: SessionSplits, context: FitContext) -> Fitted:
        """The weighting of the parts' probabilities (fits by label) with the best validation MRR@20."""
        from postmodern.evaluation.metrics import evaluate_ranker

        started = time.perf_counter()
        rankers = [part.ranker for part in parts.values()]
        weightings = simplex_grid(len(parts))
        mrr = weighting_reciprocal_ranks(rankers, context, weightings).mean(axis=1)
        best = weightings[int(np.argmax(mrr))]
        names = list(parts)
        ranker = BlendRanker(rankers, best.round(6).tolist(), splits.train_counts, names)
        trials = [
            {"parts": names, "weights": weighting.round(6).tolist(), "validation_mrr": float(value)}
            for weighting, value in zip(weightings, mrr, strict=True)
        ]
        metrics = evaluate_ranker(ranker, context.validation, k=20)
        return Fitted(self.name, ranker, dict(ranker.params), metrics, trials, seconds=time.perf_counter() - started)

    def refit(self, splits: SessionSplits, fitted: Fitted, context: FitContext, refitted: dict[str, Ranker]) -> Ranker:
        labels = fitted.params["parts"]
        return BlendRanker([refitted[label] for label in labels], fitted.params["weights"], splits.train_counts, labels)

    def from_state(self, state: RankerState) -> Ranker:
        from postmodern.model.families import ranker_from_state

        parts = [ranker_from_state(part) for part in state.parts]
        return BlendRanker(parts, state.config["weights"], state.arrays["train_counts"], state.config["parts"])
