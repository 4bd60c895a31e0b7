"""Simple baselines that every model is shown beside, ranked on exactly the same cases."""

from __future__ import annotations

import numpy as np


class PopularityRanker:
    """The most interacted-with items in training, the same list for every session."""

    name = "popularity"

    def __init__(self, train_counts: np.ndarray):
        counts = np.asarray(train_counts, dtype=np.float64).copy()
        counts[0] = -1  # the padding id is never recommended
        self.order = np.argsort(-counts, kind="stable")
        self.scores = counts[self.order] / max(counts[1:].sum(), 1.0)

    def rank(self, prefixes: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self.order) - 1)
        n = len(prefixes)
        return np.tile(self.order[:k], (n, 1)), np.tile(self.scores[:k], (n, 1))
