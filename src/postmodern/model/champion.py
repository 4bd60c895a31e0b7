"""Choosing the model that ships: each family's best configuration on validation, the blends of them worth having,
the champion by validation MRR@20, and the refit of every finalist on the training and validation sessions
together (the model chosen on validation then learns from the sessions nearest the test set too).

Nothing here looks at the test set, and nothing asks which family a fit is: families compete on the same
validation cases, and a blend mixes any families good enough to be worth mixing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from postmodern.model.dataset import SessionSplits
from postmodern.model.families import family
from postmodern.model.families.base import FitContext, Fitted
from postmodern.model.families.blend import Blend
from postmodern.model.ranker import Ranker

# A family joins blends when its validation MRR@20 is at least this share of the best family's: one far behind
# (popularity, beside models that read the session) would only add weightings to search.
BLEND_MIN_SHARE = 0.5


@dataclass
class Selection:
    """The finalists (each family's best fit, the best blend among them) and the champion's name."""

    finalists: dict[str, Fitted]
    champion: str
    blends_tried: list[Fitted]

    @property
    def champion_fit(self) -> Fitted:
        return self.finalists[self.champion]

    def ranking(self) -> list[Fitted]:
        """The finalists by validation MRR@20, best first."""
        return sorted(self.finalists.values(), key=lambda fit: -fit.validation_mrr)

    def margin(self) -> tuple[str | None, float]:
        """The runner-up's family and the champion's lead over it in validation MRR@20 (None, nan: no runner-up)."""
        ranking = self.ranking()
        if len(ranking) < 2:
            return None, float("nan")
        return ranking[1].family, ranking[0].validation_mrr - ranking[1].validation_mrr


def best_per_family(fits: list[Fitted]) -> dict[str, Fitted]:
    """Each family's fit with the best validation MRR@20 (the first of equals), in the order families first appear."""
    best: dict[str, Fitted] = {}
    for fit in fits:
        if fit.family not in best or fit.validation_mrr > best[fit.family].validation_mrr:
            best[fit.family] = fit
    return best


def blend_part_sets(best: dict[str, Fitted]) -> list[tuple[str, ...]]:
    """Every pair of the families worth mixing, and all of them together when there are more than two."""
    top = max(fit.validation_mrr for fit in best.values())
    eligible = [name for name, fit in best.items() if fit.validation_mrr >= BLEND_MIN_SHARE * top]
    sets = list(itertools.combinations(eligible, 2))
    if len(eligible) > 2:
        sets.append(tuple(eligible))
    return sets


def select_champion(fits: list[Fitted], splits: SessionSplits, context: FitContext, blends: bool = True) -> Selection:
    """The best fit of each family, the best blend of them (with `blends`), and the champion: the finalist with the
    best validation MRR@20."""
    if not fits:
        raise ValueError("no model was fitted")
    finalists = best_per_family(fits)
    tried = []
    if blends:
        tried = [
            Blend().fit_parts([finalists[name] for name in names], splits, context)
            for names in blend_part_sets(finalists)
        ]
        if tried:
            finalists[Blend.name] = max(tried, key=lambda fit: fit.validation_mrr)
    champion = max(finalists.values(), key=lambda fit: fit.validation_mrr).family
    return Selection(finalists, champion, tried)


def refit_finalists(selection: Selection, splits: SessionSplits, context: FitContext) -> dict[str, Ranker]:
    """Every finalist's configuration fitted again on `splits` (`refit_splits`: training and validation together),
    the families that train on sessions first, then those made of them."""
    refitted: dict[str, Ranker] = {}
    ordered = sorted(selection.finalists.values(), key=lambda fit: not family(fit.family).trains_on_sessions)
    for fit in ordered:
        refitted[fit.family] = family(fit.family).refit(splits, fit, context, refitted)
    return refitted
