"""The hyper-parameter search the flow fans out over: a space of values per knob, candidates drawn from it,
and the pick of the best by validation MRR@20.

A knob is any field of `LSTMConfig` (but `n_items`) or `TrainConfig` (but `device`, `seed`, `num_threads`,
which belong to the run, not to the candidate).
"""

from __future__ import annotations

import itertools
from dataclasses import fields, replace

import numpy as np

from postmodern.model.lstm import LSTMConfig
from postmodern.model.train import TrainConfig

# Each candidate trains in its own task. These values were the ones worth trying on the generated data
# (thousands to tens of thousands of items; see bench/bench_model.py): a learning rate decaying by half every
# epoch beat a constant one, and larger sizes than these only overfitted sooner. A vector per latest item
# (`item_transitions`, on by default) added 0.007 to validation and test MRR@20 at 200k sessions.
DEFAULT_SEARCH_SPACE: dict[str, list] = {
    "embedding_dim": [64, 128],
    "hidden_dim": [128, 256],
    "dropout": [0.1, 0.25],
    "learning_rate": [3e-3, 1e-2],
    "tied_output": [True, False],
}
STRATEGIES = ("random", "grid")
MODEL_KNOBS = {field.name for field in fields(LSTMConfig)} - {"n_items"}
TRAIN_KNOBS = {field.name for field in fields(TrainConfig)} - {"device", "seed", "num_threads"}


class SearchSpaceError(ValueError):
    """A search space names an unknown knob or offers no value for one."""


def search_space(overrides: dict | None = None) -> dict[str, list]:
    """The default space with `overrides` (knob -> list of values, or one value) replacing its knobs."""
    space = dict(DEFAULT_SEARCH_SPACE)
    for knob, values in (overrides or {}).items():
        if knob not in MODEL_KNOBS | TRAIN_KNOBS:
            raise SearchSpaceError(
                f"unknown hyper-parameter {knob!r}; searchable: {', '.join(sorted(MODEL_KNOBS | TRAIN_KNOBS))}"
            )
        values = list(values) if isinstance(values, list | tuple) else [values]
        if not values:
            raise SearchSpaceError(f"hyper-parameter {knob!r} has no value to try")
        space[knob] = values
    return space


def search_candidates(space: dict[str, list], size: int, strategy: str = "random", seed: int = 0) -> list[dict]:
    """`size` points of the space: a seeded random sample without repeats, or the grid's first points in order
    (`size` 0: every point)."""
    if strategy not in STRATEGIES:
        raise SearchSpaceError(f"search strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if size < 0:
        raise SearchSpaceError(f"search size must be 0 or more, not {size}")
    grid = list(itertools.product(*space.values()))
    count = len(grid) if size == 0 else min(size, len(grid))
    if strategy == "grid":
        points = grid[:count]
    else:
        points = [grid[index] for index in np.random.default_rng(seed).choice(len(grid), count, replace=False)]
    return [dict(zip(space, point, strict=True)) for point in points]


def candidate_configs(candidate: dict, n_items: int, base: TrainConfig) -> tuple[LSTMConfig, TrainConfig]:
    """The model and training configuration of one candidate: its knobs over the defaults and `base`."""
    model_knobs = {knob: value for knob, value in candidate.items() if knob in MODEL_KNOBS}
    train_knobs = {knob: value for knob, value in candidate.items() if knob in TRAIN_KNOBS}
    return LSTMConfig(n_items, **model_knobs), replace(base, **train_knobs)


def best_candidate(validation_mrrs: list[float]) -> int:
    """Index of the candidate with the best validation MRR@20 (the first of equals)."""
    if not validation_mrrs:
        raise ValueError("no candidate was trained")
    return int(np.argmax(validation_mrrs))
