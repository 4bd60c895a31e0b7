"""The model bundle: everything serving needs, in one directory, loadable with this package alone.

    weights.pt     the LSTM's state dict
    config.json    LSTMConfig
    vocab.json     SKUs in item-id order (id = index + 1)
    popular.json   fallback [SKU, share of training interactions], most popular first, for sessions
                   with no known SKU
    metadata.json  format version, model version, run id, data window, metrics

`SessionRecommender.recommend` is the one function that turns SKU sessions into ranked SKUs; the
evaluation scores the same `rank` underneath it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from postmodern.model.dataset import PADDING_ID, Vocabulary
from postmodern.model.lstm import LSTMConfig, LSTMRanker, LSTMRecommender

# 3: a model's item pairs are the training transitions' counts, mixed in as frequencies (in 1 and 2, they were
# learned scores, added to the LSTM's in 1, a softmax of their own in 2)
BUNDLE_FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (1, 2, 3)
# what a bundle written before a config field existed meant by leaving it out
CONFIG_BEFORE_FIELDS = {"item_skip": False, "tied_output": True, "item_transitions": False, "item_pairs": False}
FALLBACK_SIZE = 200


class BundleError(ValueError):
    """A bundle directory is missing, incomplete or of an unknown format."""


@dataclass
class ModelBundle:
    model_config: LSTMConfig
    state_dict: dict[str, torch.Tensor]
    vocabulary: list[str]
    popular: list[tuple[str, float]]  # (SKU, share of training interactions), most popular first
    metadata: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return str(self.metadata.get("model_version", "unversioned"))

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict, directory / "weights.pt")
        (directory / "config.json").write_text(json.dumps(asdict(self.model_config), indent=2))
        (directory / "vocab.json").write_text(json.dumps(self.vocabulary))
        (directory / "popular.json").write_text(json.dumps(self.popular))
        metadata = {**self.metadata, "format_version": BUNDLE_FORMAT_VERSION}
        (directory / "metadata.json").write_text(json.dumps(metadata, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, directory: Path) -> ModelBundle:
        directory = Path(directory)
        missing = [
            name
            for name in ("weights.pt", "config.json", "vocab.json", "popular.json", "metadata.json")
            if not (directory / name).exists()
        ]
        if missing:
            raise BundleError(f"{directory} is not a model bundle: missing {', '.join(missing)}")
        metadata = json.loads((directory / "metadata.json").read_text())
        format_version = metadata.get("format_version")
        if format_version not in READABLE_FORMAT_VERSIONS:
            raise BundleError(f"{directory}: bundle format {format_version} is not one of {READABLE_FORMAT_VERSIONS}")
        model_config = LSTMConfig(**{**CONFIG_BEFORE_FIELDS, **json.loads((directory / "config.json").read_text())})
        if format_version < BUNDLE_FORMAT_VERSION and model_config.item_pairs:
            raise BundleError(
                f"{directory}: its item pairs are learned scores, as in bundle format {format_version}; this version "
                "mixes in the training transitions' frequencies: retrain the model"
            )
        return cls(
            model_config=model_config,
            state_dict=torch.load(directory / "weights.pt", map_location="cpu", weights_only=True),
            vocabulary=json.loads((directory / "vocab.json").read_text()),
            popular=[(sku, float(share)) for sku, share in json.loads((directory / "popular.json").read_text())],
            metadata=metadata,
        )


def make_bundle(
    model: LSTMRecommender, vocabulary: Vocabulary, train_counts: np.ndarray, metadata: dict
) -> ModelBundle:
    popular_ids = np.argsort(-train_counts[1:], kind="stable")[:FALLBACK_SIZE] + 1
    shares = train_counts[popular_ids] / max(int(train_counts.sum()), 1)
    return ModelBundle(
        model_config=model.config,
        state_dict={name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
        vocabulary=list(vocabulary.skus),
        popular=list(zip(vocabulary.decode(popular_ids), shares.tolist(), strict=True)),
        metadata=metadata,
    )


@dataclass(frozen=True)
class Recommendation:
    items: list[tuple[str, float]]
    unknown_skus: list[str]
    fallback: bool  # no known SKU in the session: popular items were returned


class SessionRecommender:
    """A loaded bundle, ready to rank: SKUs in, SKUs out."""

    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        self.vocabulary = Vocabulary(bundle.vocabulary)
        self.ranker = LSTMRanker(LSTMRecommender.from_state_dict(bundle.model_config, bundle.state_dict))

    @property
    def version(self) -> str:
        return self.bundle.version

    @property
    def max_length(self) -> int:
        """The most items a prediction reads: longer sessions keep their latest ones."""
        return self.bundle.model_config.max_length

    def recommend(self, sessions: list[list[str]], k: int, exclude_seen: bool = False) -> list[Recommendation]:
        """Top-k next SKUs for each session, ranked in one batch; unknown SKUs are ignored and reported.
        With `exclude_seen`, SKUs already in the session are not recommended again."""
        encoded = [self.vocabulary.encode(session) for session in sessions]
        known = [index for index, (items, _) in enumerate(encoded) if items]
        ranked_items, ranked_scores = self.ranker.rank([encoded[i][0] for i in known], k, exclude_seen)
        by_session = {index: row for row, index in enumerate(known)}
        results = []
        for index, (_, unknown) in enumerate(encoded):
            row = by_session.get(index)
            if row is None:
                results.append(Recommendation(self.bundle.popular[:k], unknown, fallback=True))
                continue
            rankable = ranked_items[row] != PADDING_ID
            skus = self.vocabulary.decode(ranked_items[row][rankable])
            scores = ranked_scores[row][rankable].tolist()
            results.append(Recommendation(list(zip(skus, scores, strict=True)), unknown, fallback=False))
        return results
