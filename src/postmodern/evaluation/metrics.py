"""The evaluation protocol of session-based recommendation, written once for every model, and the metric
functions the behavioural suite is made of.

Each test session is revealed one item at a time: at position t the model ranks all items given items
1..t and is scored against item t+1 (the next-item protocol). The seed's protocol (only the last item,
given all before it) is reported too. Every model is scored on the same cases.

Every metric here is a plain function of top-k id arrays ([n_cases, k], best first), so it is checked
by hand and against trec_eval (tests/test_metrics.py). Ids are item ids; 0 is padding and never a target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from postmodern.model.dataset import PADDING_ID, UNKNOWN_ID


class NextItemRanker(Protocol):
    name: str

    def rank(self, prefixes: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item ids and scores for each prefix: two [n_prefixes, k] arrays."""


@dataclass(frozen=True)
class EvaluationCases:
    prefixes: list[np.ndarray]
    targets: np.ndarray
    session_index: np.ndarray  # which session each case comes from
    is_last: np.ndarray  # the case predicts the session's last item (the seed's protocol)
    positions: np.ndarray  # index of the target in its session


def next_item_cases(sessions: list[np.ndarray], max_cases: int | None = None, seed: int = 0) -> EvaluationCases:
    """Every (prefix, next item) of every session; a seeded sample of sessions when `max_cases` is set.

    Every case counts: a target training never saw (`UNKNOWN_ID`) is a miss for every ranker, and a prefix holds
    the items a ranker knows (as serving ignores unknown SKUs): one with none left is empty, and ranked as serving
    ranks it, by popularity."""
    order = np.arange(len(sessions))
    if max_cases is not None:
        np.random.default_rng(seed).shuffle(order)
    prefixes, targets, session_index, is_last, positions = [], [], [], [], []
    for index in order:
        session = sessions[index]
        known = session[session != UNKNOWN_ID] if (session == UNKNOWN_ID).any() else session
        known_before = np.cumsum(session != UNKNOWN_ID)  # known items up to and including each position
        for position in range(1, len(session)):
            prefixes.append(known[: known_before[position - 1]])
            targets.append(session[position])
            session_index.append(index)
            is_last.append(position == len(session) - 1)
            positions.append(position)
        if max_cases is not None and len(targets) >= max_cases:
            break
    return EvaluationCases(
        prefixes,
        np.asarray(targets, dtype=np.int64),
        np.asarray(session_index, dtype=np.int64),
        np.asarray(is_last, dtype=bool),
        np.asarray(positions, dtype=np.int64),
    )


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target in its row of top-k items, 0 when the target is not in the row."""
    found = ranked == targets[:, None]
    return np.where(found.any(axis=1), found.argmax(axis=1) + 1, 0)


def reciprocal_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1/rank of each target in its row of top-k items, 0 when the target is not in the top k."""
    ranks = target_ranks(ranked, targets)
    return np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0)


def accuracy_at(ranks: np.ndarray, k: int) -> dict[str, float]:
    """HR@k, MRR@k and NDCG@k from 1-based target ranks (0: not ranked). One relevant item per case, so
    the ideal DCG is 1 and NDCG is 1/log2(rank + 1)."""
    if len(ranks) == 0:
        return {f"hr@{k}": float("nan"), f"mrr@{k}": float("nan"), f"ndcg@{k}": float("nan")}
    hit = (ranks > 0) & (ranks <= k)
    safe = np.maximum(ranks, 1)
    return {
        f"hr@{k}": float(hit.mean()),
        f"mrr@{k}": float(np.where(hit, 1.0 / safe, 0.0).mean()),
        f"ndcg@{k}": float(np.where(hit, 1.0 / np.log2(safe + 1), 0.0).mean()),
    }


def accuracy_metrics(ranked: np.ndarray, targets: np.ndarray, k: int) -> dict[str, float]:
    """HR@k and MRR@k of top-k rankings (rows) against targets."""
    metrics = accuracy_at(target_ranks(ranked[:, :k], targets), k)
    return {f"hr@{k}": metrics[f"hr@{k}"], f"mrr@{k}": metrics[f"mrr@{k}"]}


def evaluate_ranker(ranker: NextItemRanker, cases: EvaluationCases, k: int = 20) -> dict[str, float]:
    """Next-item HR@k and MRR@k, and the same on the last-item cases (`last_` prefix)."""
    ranked, _ = ranker.rank(cases.prefixes, k)
    metrics = accuracy_metrics(ranked, cases.targets, k)
    last = accuracy_metrics(ranked[cases.is_last], cases.targets[cases.is_last], k)
    metrics.update({f"last_{name}": value for name, value in last.items()})
    metrics["cases"] = float(len(cases.targets))
    return metrics


def subsequent_items(sessions: list[np.ndarray], cases: EvaluationCases) -> list[np.ndarray]:
    """For each case, the distinct items of its session from the target on (the Coveo challenge's second task)."""
    return [
        np.unique(sessions[session][position:])
        for session, position in zip(cases.session_index, cases.positions, strict=True)
    ]


def subsequent_precision_recall_f1(ranked: np.ndarray, futures: list[np.ndarray], k: int) -> dict[str, float]:
    """Precision@k (found / k), recall@k (found / subsequent items) and F1@k per case, averaged over cases."""
    top = ranked[:, :k]
    found = np.array([np.isin(row, future).sum() for row, future in zip(top, futures, strict=True)], dtype=float)
    precision = found / k
    recall = found / np.array([len(future) for future in futures], dtype=float)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return {f"precision@{k}": float(precision.mean()), f"recall@{k}": float(recall.mean()), f"f1@{k}": float(f1.mean())}


def catalogue_coverage(ranked: np.ndarray, n_items: int, k: int) -> float:
    """Share of the catalogue (items 1..n_items) that appears in at least one top-k list."""
    recommended = np.unique(ranked[:, :k])
    return float(np.count_nonzero(recommended != PADDING_ID) / n_items)


def popularity_bias(ranked: np.ndarray, train_counts: np.ndarray, k: int) -> float:
    """Mean training popularity of the recommended items, popularity being an item's interactions over
    those of the most popular item (1: always the top seller; near 0: the long tail)."""
    top = ranked[:, :k]
    recommended = top[top != PADDING_ID]
    return float(train_counts[recommended].mean() / train_counts.max()) if len(recommended) else float("nan")


def repeat_share(ranked: np.ndarray, prefixes: list[np.ndarray], k: int) -> float:
    """Share of recommended items that the session has already shown."""
    top = ranked[:, :k]
    repeats = sum(int(np.isin(row, prefix).sum()) for row, prefix in zip(top, prefixes, strict=True))
    return repeats / max(int(np.count_nonzero(top != PADDING_ID)), 1)


def share_by_label(hits: np.ndarray, labels: np.ndarray, order: list[str]) -> dict[str, float]:
    """Mean of `hits` within each label, in the given order; labels with no case are left out."""
    return {label: float(hits[labels == label].mean()) for label in order if np.any(labels == label)}


def same_category_share(recommended: np.ndarray, targets: np.ndarray, category: np.ndarray) -> float:
    """Share of (recommended, target) pairs in the same category, over pairs whose categories are both
    known; `category` maps an item id to a category code, -1 when unknown."""
    known = (category[recommended] >= 0) & (category[targets] >= 0)
    if not known.any():
        return float("nan")
    return float((category[recommended][known] == category[targets][known]).mean())


def price_distance_shares(
    recommended: np.ndarray, targets: np.ndarray, price_bucket: np.ndarray, buckets: int = 10
) -> dict[str, float]:
    """Share of (recommended, target) pairs at each price-bucket distance 0..buckets-1, over pairs whose
    buckets are both known; `price_bucket` maps an item id to its bucket 1..buckets, 0 when unknown."""
    known = (price_bucket[recommended] > 0) & (price_bucket[targets] > 0)
    distances = np.abs(price_bucket[recommended][known] - price_bucket[targets][known])
    counts = np.bincount(distances, minlength=buckets)[:buckets]
    return {str(distance): float(count / max(known.sum(), 1)) for distance, count in enumerate(counts)}
