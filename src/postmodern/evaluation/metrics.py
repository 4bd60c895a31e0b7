"""The evaluation protocol of session-based recommendation, written once for every model.

Each test session is revealed one item at a time: at position t the model ranks all items given items
1..t and is scored against item t+1 (the next-item protocol). The seed's protocol (only the last item,
given all before it) is reported too. Every model is scored on the same cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


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


def next_item_cases(sessions: list[np.ndarray], max_cases: int | None = None, seed: int = 0) -> EvaluationCases:
    """Every (prefix, next item) of every session; a seeded sample of sessions when `max_cases` is set."""
    order = np.arange(len(sessions))
    if max_cases is not None:
        np.random.default_rng(seed).shuffle(order)
    prefixes, targets, session_index, is_last = [], [], [], []
    for index in order:
        session = sessions[index]
        for position in range(1, len(session)):
            prefixes.append(session[:position])
            targets.append(session[position])
            session_index.append(index)
            is_last.append(position == len(session) - 1)
        if max_cases is not None and len(targets) >= max_cases:
            break
    return EvaluationCases(
        prefixes, np.asarray(targets, dtype=np.int64), np.asarray(session_index), np.asarray(is_last, dtype=bool)
    )


def reciprocal_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1/rank of each target in its row of top-k items, 0 when the target is not in the top k."""
    found = ranked == targets[:, None]
    ranks = found.argmax(axis=1) + 1
    return np.where(found.any(axis=1), 1.0 / ranks, 0.0)


def accuracy_metrics(ranked: np.ndarray, targets: np.ndarray, k: int) -> dict[str, float]:
    """HR@k and MRR@k of top-k rankings (rows) against targets."""
    if len(targets) == 0:
        return {f"hr@{k}": float("nan"), f"mrr@{k}": float("nan")}
    rr = reciprocal_ranks(ranked[:, :k], targets)
    return {f"hr@{k}": float((rr > 0).mean()), f"mrr@{k}": float(rr.mean())}


def evaluate_ranker(ranker: NextItemRanker, cases: EvaluationCases, k: int = 20) -> dict[str, float]:
    """Next-item HR@k and MRR@k, and the same on the last-item cases (`last_` prefix)."""
    ranked, _ = ranker.rank(cases.prefixes, k)
    metrics = accuracy_metrics(ranked, cases.targets, k)
    last = accuracy_metrics(ranked[cases.is_last], cases.targets[cases.is_last], k)
    metrics.update({f"last_{name}": value for name, value in last.items()})
    metrics["cases"] = float(len(cases.targets))
    return metrics
