"""Popularity: the most interacted-with items in training, the same list for every session."""

from __future__ import annotations

import numpy as np

from postmodern.model.dataset import PADDING_ID, SessionSplits
from postmodern.model.families.base import Family, FitContext
from postmodern.model.ranker import Ranker, RankerState


class PopularityRanker(Ranker):
    name = "popularity"

    def probabilities(self, prefixes: list[np.ndarray]) -> np.ndarray:
        shares = self.train_counts / max(int(self.train_counts.sum()), 1)
        shares[PADDING_ID] = 0.0
        return np.tile(shares.astype(np.float32), (len(prefixes), 1))

    def rank_known(self, prefixes: list[np.ndarray], k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        if exclude_seen:
            return super().rank_known(prefixes, k, exclude_seen)
        n = len(prefixes)
        return np.tile(self.popular[:k], (n, 1)), np.tile(self.popular_shares[:k], (n, 1))

    def state(self) -> RankerState:
        return RankerState(self.name, {}, {"train_counts": self.train_counts})


class Popularity(Family):
    name = "popularity"
    search_space: dict[str, list] = {}

    def build(self, splits: SessionSplits, params: dict, context: FitContext) -> tuple[Ranker, dict]:
        return PopularityRanker(splits.train_counts), {}

    def from_state(self, state: RankerState) -> Ranker:
        return PopularityRanker(state.arrays["train_counts"])
