"""Choosing the model that ships: each family's best configuration on validation, the blends worth having, the
champion by validation MRR@20, and the refit of every finalist on the training and validation sessions together
(the model chosen on validation then learns from the sessions nearest the test set too).

Nothing here looks at the test set, and nothing asks which family a fit is: families compete on the same
validation cases, and a blend mixes any fits good enough to be worth mixing: each family's best, the
runners-up of a family searched one configuration per task (two LSTMs trained differently err differently,
as a neural model and a nearest-neighbour one do), and the configuration of a grid that recalls most
(`cooccurrence#2`: the best by HR@20, where another than the best by MRR@20).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from postmodern.model.dataset import SessionSplits
from postmodern.model.families import family
from postmodern.model.families.base import FitContext, Fitted
from postmodern.model.families.blend import Blend
from postmodern.model.ranker import Ranker

# A fit joins blends when its validation MRR@20 is at least this share of the best fit's: one far behind
# (popularity, beside models that read the session) would only add weightings to search.
BLEND_MIN_SHARE = 0.5
# The most fits one blend mixes: every family's best first, then the best runners-up (the weighting grid of all
# of them grows with each).
MAX_BLEND_MEMBERS = 5


@dataclass
class Selection:
    """The finalists (each family's best fit, the best blend), the champion's name, and the fits blends mix, by
    the label a blend names them with (a family's best under the family's name, a runner-up as `lstm#2`)."""

    finalists: dict[str, Fitted]
    champion: str
    blends_tried: list[Fitted]
    blend_members: dict[str, Fitted] = field(default_factory=dict)

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


def blend_members(fits: list[Fitted]) -> dict[str, Fitted]:
    """The fits worth mixing, by label: each family's best whose validation MRR@20 is within `BLEND_MIN_SHARE` of
    the best fit's, then the best of the other fits (and of their alternates) that are, up to `MAX_BLEND_MEMBERS`
    in all."""
    top = max(fit.validation_mrr for fit in fits)
    offered = [*fits, *(alternate for fit in fits for alternate in fit.alternates)]
    worth = sorted(
        (fit for fit in offered if fit.validation_mrr >= BLEND_MIN_SHARE * top), key=lambda f: -f.validation_mrr
    )
    best = best_per_family(worth)
    chosen = [fit for fit in worth if fit is best[fit.family]]
    chosen += [fit for fit in worth if fit is not best[fit.family]]
    members: dict[str, Fitted] = {}
    for fit in chosen[:MAX_BLEND_MEMBERS]:
        seen = sum(member.family == fit.family for member in members.values())
        members[fit.family if not seen else f"{fit.family}#{seen + 1}"] = fit
    return members


def blend_part_sets(members: dict[str, Fitted]) -> list[tuple[str, ...]]:
    """Every pair of the members, and all of them together when there are more than two."""
    sets = list(itertools.combinations(members, 2))
    if len(members) > 2:
        sets.append(tuple(members))
    return sets


def select_champion(fits: list[Fitted], splits: SessionSplits, context: FitContext, blends: bool = True) -> Selection:
    """The best fit of each family, the best blend of them (with `blends`), and the champion: the finalist with the
    best validation MRR@20."""
    if not fits:
        raise ValueError("no model was fitted")
    finalists = best_per_family(fits)
    tried, members = [], {}
    if blends:
        members = blend_members(fits)
        tried = [
            Blend().fit_parts({label: members[label] for label in labels}, splits, context)
            for labels in blend_part_sets(members)
        ]
        if tried:
            finalists[Blend.name] = max(tried, key=lambda fit: fit.validation_mrr)
    champion = max(finalists.values(), key=lambda fit: fit.validation_mrr).family
    return Selection(finalists, champion, tried, members)


def refit_finalists(selection: Selection, splits: SessionSplits, context: FitContext) -> dict[str, Ranker]:
    """Every finalist's configuration fitted again on `splits` (`refit_splits`: training and validation together),
    by family: the fits that train on sessions first (a blend's parts among them), then those made of them."""
    blend = selection.finalists.get(Blend.name)
    labelled = {name: fit for name, fit in selection.finalists.items() if name != Blend.name}
    if blend is not None:
        labelled |= {label: selection.blend_members[label] for label in blend.params["parts"]}
    refitted: dict[str, Ranker] = {}
    for label, fit in labelled.items():
        refitted[label] = family(fit.family).refit(splits, fit, context, refitted)
    if blend is not None:
        refitted[Blend.name] = Blend().refit(splits, blend, context, refitted)
    return {name: refitted[name] for name in selection.finalists}
