"""The search the flow fans out over: each family's space of values per hyper-parameter, the candidates drawn from
it (one task each), and the pick of the best by validation MRR@20.

A cheap family tunes its whole space in one task; a costly one (`Family.tunes_in_one_task` false: the LSTM) trains
one point per task, `size` points drawn at random (seeded) or taken in grid order.
"""

from __future__ import annotations

import itertools

import numpy as np

from postmodern.model.families import FAMILIES, family

STRATEGIES = ("random", "grid")


class SearchSpaceError(ValueError):
    """A search space names an unknown family or knob, or offers no value for one."""


def search_space(family_name: str, overrides: dict | None = None) -> dict[str, list]:
    """The family's space with `overrides` (knob -> list of values, or one value) replacing its knobs."""
    chosen = family(family_name)
    space = dict(chosen.search_space)
    for knob, values in (overrides or {}).items():
        if knob not in chosen.knobs:
            raise SearchSpaceError(
                f"unknown hyper-parameter {knob!r} of {family_name}; searchable: {', '.join(sorted(chosen.knobs))}"
            )
        values = list(values) if isinstance(values, list | tuple) else [values]
        if not values:
            raise SearchSpaceError(f"hyper-parameter {knob!r} of {family_name} has no value to try")
        space[knob] = values
    return space


def overrides_by_family(overrides: dict | None) -> dict[str, dict]:
    """`--search_space` as {family: {knob: values}}: a key that names a family holds that family's knobs; any other
    key is a knob of the LSTM (the flow's searched family since the seed)."""
    nested: dict[str, dict] = {}
    for key, value in (overrides or {}).items():
        if key in FAMILIES:
            if not isinstance(value, dict):
                raise SearchSpaceError(f"the search space of {key} must be an object of knob -> values")
            nested.setdefault(key, {}).update(value)
        else:
            nested.setdefault("lstm", {})[key] = value
    return nested


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


def family_candidates(
    families: list[str], overrides: dict | None, size: int, strategy: str = "random", seed: int = 0
) -> list[dict]:
    """The run's candidates, one task each: {"family": name, "space": {knob: [values]}}. A family that tunes in one
    task has one candidate holding its whole space; a costly one a candidate per point drawn from its space."""
    nested = overrides_by_family(overrides)
    unknown = sorted(set(nested) - set(families))
    if unknown:
        raise SearchSpaceError(f"the search space names {', '.join(unknown)}, not among the families trained")
    candidates = []
    for name in families:
        if family(name).trains_on_sessions is False:
            raise SearchSpaceError(f"{name} is made of other families and is not trained on its own")
        space = search_space(name, nested.get(name))
        if family(name).tunes_in_one_task:
            candidates.append({"family": name, "space": space})
        else:
            points = search_candidates(space, size, strategy, seed)
            candidates += [
                {"family": name, "space": {knob: [value] for knob, value in point.items()}} for point in points
            ]
    return candidates


def best_candidate(validation_mrrs: list[float]) -> int:
    """Index of the candidate with the best validation MRR@20 (the first of equals)."""
    if not validation_mrrs:
        raise ValueError("no candidate was trained")
    return int(np.argmax(validation_mrrs))
