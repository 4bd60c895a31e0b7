"""The model families, one module each behind one interface (`base.Family`); `FAMILIES` is the one place that
names them.

A family fits a `Ranker` to the training sessions for some hyper-parameters, scores it on the validation cases
(every family on the same ones), refits the chosen configuration on training and validation sessions together,
and makes a ranker again from its saved state. Training, selection, evaluation, bundles and serving go through
this registry and never ask which family they hold: a new family is one new module and one line below.
"""

from __future__ import annotations

from postmodern.model.families import blend, cooccurrence, lstm, popularity, vsknn
from postmodern.model.families.base import Family, FitContext, Fitted
from postmodern.model.ranker import Ranker, RankerState

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (popularity.Popularity(), cooccurrence.Cooccurrence(), vsknn.VSKNN(), lstm.LSTM(), blend.Blend())
}

__all__ = ["FAMILIES", "Family", "FitContext", "Fitted", "family", "ranker_from_state"]


def family(name: str) -> Family:
    """The registered family of that name."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def ranker_from_state(state: RankerState) -> Ranker:
    return family(state.family).from_state(state)
