"""The model that serves now, as a ranker of this run's test cases: the champion the new model must beat.

The deployed bundle has its own vocabulary, so prefixes go through SKUs both ways: this run's item ids ->
SKUs -> the bundle's `SessionRecommender` (exactly what serving answers, fallback included) -> SKUs ->
this run's ids. A recommended SKU this run does not know becomes the padding id, which is never a target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from postmodern.model.bundle import BundleError, ModelBundle, SessionRecommender
from postmodern.model.dataset import PADDING_ID, Vocabulary
from postmodern.serving.registry import latest_bundle_dir


class DeployedModelRanker:
    name = "deployed"

    def __init__(self, recommender: SessionRecommender, vocabulary: Vocabulary):
        self.recommender = recommender
        self.vocabulary = vocabulary
        self.ids = {sku: item for item, sku in enumerate(vocabulary.skus, start=1)}

    @property
    def version(self) -> str:
        return self.recommender.version

    def rank(self, prefixes: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        recommendations = self.recommender.recommend([self.vocabulary.decode(prefix) for prefix in prefixes], k)
        items = np.full((len(prefixes), k), PADDING_ID, dtype=np.int64)
        scores = np.zeros((len(prefixes), k), dtype=np.float32)
        for row, recommendation in enumerate(recommendations):
            for column, (sku, score) in enumerate(recommendation.items[:k]):
                items[row, column] = self.ids.get(sku, PADDING_ID)
                scores[row, column] = score
        return items, scores


@dataclass(frozen=True)
class DeployedModel:
    ranker: DeployedModelRanker | None
    note: str  # what was found, for the card and the logs


def load_deployed_model(registry_dir: Path, vocabulary: Vocabulary) -> DeployedModel:
    """The local registry's latest bundle as a ranker, or None (and why) when nothing is deployed yet or
    the bundle cannot be read; either way the run goes on."""
    try:
        directory = latest_bundle_dir(registry_dir)
    except BundleError:
        return DeployedModel(None, f"no model deployed yet in {registry_dir}")
    try:
        recommender = SessionRecommender(ModelBundle.load(directory))
    except Exception as error:  # a damaged bundle: torch and json raise many kinds; serving cannot load it either
        return DeployedModel(None, f"the deployed model in {directory} cannot be loaded ({error})")
    return DeployedModel(
        DeployedModelRanker(recommender, vocabulary), f"deployed model {recommender.version} from {directory}"
    )
