"""The interface of a model family (see the package's docstring), and what fitting one returns.

A family's search space maps each hyper-parameter to the values worth trying. A cheap family (`tunes_in_one_task`)
tries every point of its grid in one task; a costly one trains one point per task, in parallel (the flow's
foreach), as many points as the search asks for.
"""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from postmodern.evaluation.metrics import EvaluationCases, evaluate_ranker, next_item_cases
from postmodern.model.dataset import SessionSplits
from postmodern.model.ranker import Ranker, RankerState

TUNING_METRIC = "mrr@20"
HIT_RATE_METRIC = "hr@20"


@dataclass
class FitContext:
    """What every fit of one run shares: the validation cases all families are judged on, and the run's knobs."""

    validation: EvaluationCases | None  # None: no choice to make (a refit), so no early stopping either
    epochs: int = 8  # most epochs, for families that train in epochs
    seed: int = 0
    num_threads: int | None = None  # None: the cores this process may use
    on_epoch: Callable[[dict], None] | None = None  # hears each epoch's record
    progress: bool = True

    @classmethod
    def for_splits(cls, splits: SessionSplits, validation_cases: int = 20_000, **knobs) -> FitContext:
        """A seeded sample of up to `validation_cases` validation cases (whole sessions)."""
        validation = next_item_cases(splits.validation, max_cases=validation_cases, seed=knobs.get("seed", 0))
        if len(validation.targets) == 0:
            raise ValueError("the validation split has no next-item case: choosing a model needs one")
        return cls(validation, **knobs)


@dataclass
class Fitted:
    """A family's chosen configuration, fitted to the training sessions, and what choosing it showed."""

    family: str
    ranker: Ranker
    params: dict  # the configuration chosen: enough for `refit` (epochs included, where it trains in epochs)
    validation: dict[str, float]  # metrics on the validation cases (mrr@20, hr@20, last_...)
    trials: list[dict] = field(default_factory=list)  # every configuration tried, with its validation MRR@20 and HR@20
    history: list[dict] = field(default_factory=list)  # per-epoch records, where it trains in epochs
    seconds: float = 0.0
    # The best configuration by HR@20 where another than this one: what recalls most may be what a blend lacks.
    alternates: list[Fitted] = field(default_factory=list)

    @property
    def validation_mrr(self) -> float:
        return self.validation[TUNING_METRIC]


class Family(ABC):
    name: ClassVar[str]
    search_space: ClassVar[dict[str, list]]
    tunes_in_one_task: ClassVar[bool] = True  # False: one point of the space per task (a costly fit)
    trains_on_sessions: ClassVar[bool] = True  # False: made of other families' fits (a blend)

    @property
    def knobs(self) -> set[str]:
        """The hyper-parameters a search space may set."""
        return set(self.search_space)

    @abstractmethod
    def build(self, splits: SessionSplits, params: dict, context: FitContext) -> tuple[Ranker, dict]:
        """A ranker of the training sessions for one point of the space, and what its fit adds to the params
        (for a model trained in epochs: the best epoch; its per-epoch `history` too)."""

    @abstractmethod
    def from_state(self, state: RankerState) -> Ranker:
        """The ranker a bundle saved (`Ranker.state`)."""

    def fit(self, splits: SessionSplits, space: dict[str, list], context: FitContext) -> Fitted:
        """Every point of `space` (values per hyper-parameter), the best on validation MRR@20 kept (the first of
        equals), and the best on HR@20 as its alternate where that is another point."""
        started = time.perf_counter()
        best: Fitted | None = None
        best_hit_rate: Fitted | None = None
        trials = []
        for point in grid_points(space):
            ranker, learned = self.build(splits, point, context)
            history = learned.pop("history", [])
            metrics = evaluate_ranker(ranker, context.validation, k=20)
            trials.append({**point, **learned, "validation_mrr": metrics["mrr@20"], "validation_hr": metrics["hr@20"]})
            fit = Fitted(self.name, ranker, {**point, **learned}, metrics, history=history)
            if best is None or metrics[TUNING_METRIC] > best.validation_mrr:
                best = fit
            if best_hit_rate is None or metrics[HIT_RATE_METRIC] > best_hit_rate.validation[HIT_RATE_METRIC]:
                best_hit_rate = fit
        best.trials = trials
        best.alternates = [best_hit_rate] if best_hit_rate is not best else []
        best.seconds = time.perf_counter() - started
        return best

    def refit(self, splits: SessionSplits, fitted: Fitted, context: FitContext, refitted: dict[str, Ranker]) -> Ranker:
        """The chosen configuration built again on `splits` (training and validation sessions together);
        `refitted`: the other families' refit rankers, for a model made of them."""
        ranker, _ = self.build(splits, fitted.params, context)
        return ranker


def grid_points(space: dict[str, list]) -> list[dict]:
    """Every combination of the space's values, in order."""
    return [dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())]
