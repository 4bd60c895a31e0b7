"""Every model family behind one interface: fitted on validation, saved and loaded as a bundle, served as SKUs,
blended, chosen as the champion and refit, the same way for each."""

import numpy as np
import pytest
from conftest import SUITE_ITEMS, cyclic_sessions

from postmodern.evaluation.metrics import evaluate_ranker, next_item_cases
from postmodern.model.bundle import ModelBundle, SessionRecommender, make_bundle
from postmodern.model.champion import (
    BLEND_MIN_SHARE,
    MAX_BLEND_MEMBERS,
    blend_members,
    blend_part_sets,
    refit_finalists,
    select_champion,
)
from postmodern.model.dataset import PADDING_ID, SessionSplits, Vocabulary
from postmodern.model.families import FAMILIES, FitContext, Fitted, family, ranker_from_state
from postmodern.model.families.base import Family
from postmodern.model.families.blend import Blend, BlendRanker, simplex_grid
from postmodern.model.ranker import Ranker, RankerState

N_ITEMS = SUITE_ITEMS
TINY_LSTM = {"embedding_dim": [8], "hidden_dim": [16], "dropout": [0.0], "max_length": [5], "learning_rate": [0.01]}


@pytest.fixture(scope="module")
def splits():
    rng = np.random.default_rng(0)
    train, validation, test = (cyclic_sessions(n, rng, longest=6) for n in (300, 40, 40))
    counts = np.bincount(np.concatenate(train), minlength=N_ITEMS + 1)
    return SessionSplits(Vocabulary([f"sku{i}" for i in range(1, N_ITEMS + 1)]), train, validation, test, counts, {})


@pytest.fixture(scope="module")
def fits(splits):
    """Every family that trains on sessions, fitted on its (small) space, and the best blend of them."""
    context = FitContext.for_splits(splits, epochs=3, progress=False)
    spaces = {"cooccurrence": {"window": [1, 2], "directed": [True], "weighting": ["last"]}, "lstm": TINY_LSTM}
    fitted = {
        name: family(name).fit(splits, spaces.get(name, family(name).search_space), context)
        for name in ("popularity", "cooccurrence", "vsknn", "lstm")
    }
    fitted["blend"] = Blend().fit_parts({"lstm": fitted["lstm"], "vsknn": fitted["vsknn"]}, splits, context)
    return fitted


def test_the_registry_names_every_family_once():
    assert list(FAMILIES) == ["popularity", "cooccurrence", "vsknn", "lstm", "blend"]
    assert all(FAMILIES[name].name == name for name in FAMILIES)
    with pytest.raises(ValueError, match="unknown model family 'gru4rec'; known: popularity"):
        family("gru4rec")


def test_every_family_is_fitted_on_validation_and_learns_the_order(fits, splits):
    cases = next_item_cases(splits.test)
    mrr = {name: evaluate_ranker(fit.ranker, cases)["mrr@20"] for name, fit in fits.items()}
    assert mrr["popularity"] < 0.3 and all(mrr[name] > 0.5 for name in ("cooccurrence", "vsknn", "lstm", "blend"))
    for name, fit in fits.items():
        assert fit.family == name == fit.ranker.name
        assert fit.validation_mrr == pytest.approx(max(trial["validation_mrr"] for trial in fit.trials))
        assert 0 <= fit.validation["hr@20"] <= 1 and fit.seconds >= 0
    assert len(fits["cooccurrence"].trials) == 2 and fits["cooccurrence"].params["window"] in (1, 2)
    assert 1 <= fits["lstm"].params["epochs"] <= 3 and len(fits["lstm"].history) >= fits["lstm"].params["epochs"]


@pytest.mark.parametrize("name", ["popularity", "cooccurrence", "vsknn", "lstm", "blend"])
def test_probabilities_are_distributions_and_rank_follows_them(fits, name):
    ranker = fits[name].ranker
    prefixes = [np.array([3, 4]), np.array([7]), np.array([1, 2, 3, 4, 5, 6, 7])]
    probabilities = ranker.probabilities(prefixes)
    assert probabilities.shape == (3, N_ITEMS + 1) and (probabilities >= 0).all()
    assert (probabilities[:, PADDING_ID] == 0).all() and (probabilities.sum(axis=1) <= 1 + 1e-5).all()
    items, scores = ranker.rank(prefixes, k=5)
    np.testing.assert_allclose(np.take_along_axis(probabilities, items, axis=1), scores, rtol=1e-4, atol=1e-7)
    assert (np.diff(scores, axis=1) <= 1e-7).all()  # best first
    unseen, _ = ranker.rank(prefixes, k=5, exclude_seen=True)
    assert not any(set(row) & set(prefix.tolist()) for row, prefix in zip(unseen.tolist(), prefixes, strict=True))


@pytest.mark.parametrize("name", ["popularity", "cooccurrence", "vsknn", "lstm", "blend"])
def test_every_family_round_trips_through_a_bundle_and_serves_skus(fits, splits, name, tmp_path):
    ranker = fits[name].ranker
    directory = make_bundle(ranker, splits.vocabulary, {"model_version": f"{name}-1"}).save(tmp_path / name)
    assert (directory / "model" / "config.json").exists()
    loaded = ModelBundle.load(directory)
    assert loaded.family == name and loaded.metadata["family"] == name and loaded.version == f"{name}-1"
    again = ranker_from_state(RankerState.load(directory / "model"))
    prefixes = [np.array([3, 4]), np.array([9]), np.array([], dtype=np.int64)]
    expected_items, expected_scores = ranker.rank(prefixes, k=6)
    items, scores = again.rank(prefixes, k=6)
    np.testing.assert_array_equal(items, expected_items)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-6)
    recommender = SessionRecommender(loaded)
    assert recommender.family == name
    first, unknown = recommender.recommend([["sku3", "nope", "sku4"], ["nope"]], k=6)
    assert [sku for sku, _ in first.items] == splits.vocabulary.decode(expected_items[0])
    assert first.unknown_skus == ["nope"] and unknown.fallback and not first.fallback
    (unseen,) = recommender.recommend([["sku3", "sku4"]], k=6, exclude_seen=True)
    assert not {"sku3", "sku4"} & {sku for sku, _ in unseen.items} and len(unseen.items) == 6


class KnowsRule(Ranker):
    """Certain of item + 1 after an item of the given parity, uniform otherwise: half the truth each."""

    name = "rule"

    def __init__(self, train_counts, parity):
        super().__init__(train_counts)
        self.parity = parity

    def probabilities(self, prefixes):
        probabilities = np.full((len(prefixes), self.n_items), 1.0 / (self.n_items - 1), dtype=np.float32)
        probabilities[:, PADDING_ID] = 0
        for row, prefix in enumerate(prefixes):
            if prefix[-1] % 2 == self.parity:
                probabilities[row] = 0
                probabilities[row, prefix[-1] % N_ITEMS + 1] = 1
        return probabilities

    def state(self):
        return RankerState(self.name, {}, {})


def test_a_blend_of_two_families_that_know_different_halves_beats_both(splits):
    context = FitContext.for_splits(splits)
    parts = {}
    for parity in (0, 1):
        ranker = KnowsRule(splits.train_counts, parity)
        parts[f"rule{parity}"] = Fitted("rule", ranker, {}, evaluate_ranker(ranker, context.validation))
    blend = Blend().fit_parts(parts, splits, context)
    assert blend.validation_mrr == 1.0 > max(part.validation_mrr for part in parts.values())
    assert blend.params["parts"] == ["rule0", "rule1"] and sum(blend.params["weights"]) == pytest.approx(1.0)
    assert len(blend.trials) == len(simplex_grid(2)) == 9
    assert simplex_grid(3).shape == (36, 3) and np.allclose(simplex_grid(3).sum(axis=1), 1)


def test_the_champion_is_the_best_on_validation_and_blends_mix_only_families_worth_mixing(fits, splits):
    best = {name: fit for name, fit in fits.items() if name != "blend"}
    members = blend_members(list(best.values()))
    sets = blend_part_sets(members)
    assert ("popularity", "lstm") not in sets  # far below the best: not worth a blend
    top = max(fit.validation_mrr for fit in best.values())
    eligible = {name for name, fit in best.items() if fit.validation_mrr >= BLEND_MIN_SHARE * top}
    assert set(members) == eligible and all(members[name] is best[name] for name in members)
    assert set(sets[-1]) == eligible if len(eligible) > 2 else len(sets) == 1
    selection = select_champion(list(best.values()), splits, FitContext.for_splits(splits))
    ranking = selection.ranking()
    assert selection.champion == ranking[0].family and "blend" in selection.finalists
    assert len(selection.blends_tried) == len(sets)
    runner_up, lead = selection.margin()
    assert runner_up == ranking[1].family and lead == pytest.approx(
        ranking[0].validation_mrr - ranking[1].validation_mrr
    )
    without = select_champion(list(best.values()), splits, FitContext.for_splits(splits), blends=False)
    assert "blend" not in without.finalists and without.blends_tried == []


def test_a_baseline_is_the_champion_where_the_lstm_cannot_win(splits):
    """One epoch of a tiny LSTM, without the pairs' counts, at a learning rate too small to learn: co-occurrence
    wins on validation."""
    context = FitContext.for_splits(splits, epochs=1, progress=False)
    weak = family("lstm").fit(splits, {**TINY_LSTM, "learning_rate": [1e-6], "item_pairs": [False]}, context)
    cooccurrence = family("cooccurrence").fit(splits, {"window": [1]}, context)
    selection = select_champion([weak, cooccurrence], splits, context, blends=False)
    assert selection.champion == "cooccurrence" and selection.margin()[0] == "lstm"


def test_refit_learns_the_validation_sessions_too(fits, splits):
    only_in_validation = np.array([N_ITEMS, N_ITEMS - 1])  # a transition no training session has
    refit_splits = SessionSplits(
        splits.vocabulary,
        [*splits.train, *splits.validation, only_in_validation],
        [],
        splits.test,
        splits.train_counts,
        {},
    )
    selection = select_champion(list(fits.values()), splits, FitContext.for_splits(splits))
    refitted = refit_finalists(selection, refit_splits, FitContext(validation=None, epochs=3, progress=False))
    assert set(refitted) == set(selection.finalists)
    cooccurrence = refitted["cooccurrence"]
    assert cooccurrence.params == fits["cooccurrence"].params
    assert (
        cooccurrence.transitions[N_ITEMS, N_ITEMS - 1]
        > 0
        == fits["cooccurrence"].ranker.transitions[N_ITEMS, N_ITEMS - 1]
    )
    blend = refitted["blend"]
    assert (
        isinstance(blend, BlendRanker)
        and [part.name for part in blend.parts] == selection.finalists["blend"].params["parts"]
    )
    assert all(part is refitted[part.name] for part in blend.parts)  # made of the refit families
    assert blend.weights == selection.finalists["blend"].params["weights"]


def test_blends_may_mix_two_configurations_of_one_family_and_refit_both(fits, splits):
    """Two LSTMs trained differently are two members (`lstm`, `lstm#2`); the members are each family's best first,
    at most MAX_BLEND_MEMBERS; a blend of both LSTMs refits each of them."""
    context = FitContext.for_splits(splits, epochs=3, progress=False)
    other = family("lstm").fit(splits, {**TINY_LSTM, "dropout": [0.1]}, FitContext.for_splits(splits, epochs=3, seed=1))
    many = [fits["cooccurrence"], fits["lstm"], other, *(fits["lstm"] for _ in range(MAX_BLEND_MEMBERS))]
    members = blend_members(many)
    assert len(members) == MAX_BLEND_MEMBERS and members["cooccurrence"] is fits["cooccurrence"]
    best_lstm = max(fits["lstm"], other, key=lambda fit: fit.validation_mrr)
    assert members["lstm"] is best_lstm and members["lstm#2"] in (fits["lstm"], other)
    selection = select_champion([fits["lstm"], other], splits, context)
    assert set(selection.blend_members) == {"lstm", "lstm#2"}
    assert selection.blends_tried[0].params["parts"] == ["lstm", "lstm#2"]
    selection.finalists["blend"] = selection.blends_tried[0]  # whatever won, the blend of both is refit whole
    refitted = refit_finalists(selection, splits, FitContext(validation=None, epochs=1, progress=False))
    assert set(refitted) == {"lstm", "blend"}
    blend = refitted["blend"]
    assert blend.params["parts"] == ["lstm", "lstm#2"] and blend.parts[0] is refitted["lstm"]
    assert (
        blend.parts[1] is not blend.parts[0]
        and blend.parts[1].model.config == selection.blend_members["lstm#2"].ranker.model.config
    )
    restored = ranker_from_state(blend.state())
    assert restored.params["parts"] == ["lstm", "lstm#2"]
    prefixes = [np.array([1, 2, 3])]
    assert np.allclose(restored.probabilities(prefixes), blend.probabilities(prefixes), atol=1e-6)


class Guesses(Ranker):
    """`sharp`: certain of item + 1 after an even item, and ranks it last otherwise (MRR@20 1/2, HR@20 1/2);
    `broad`: item + 1 third every time (MRR@20 1/3, HR@20 1)."""

    name = "guesses"

    def __init__(self, train_counts, mode):
        super().__init__(train_counts, {"mode": mode})
        self.mode = mode

    def probabilities(self, prefixes):
        probabilities = np.zeros((len(prefixes), self.n_items), dtype=np.float32)
        for row, prefix in enumerate(prefixes):
            after = [prefix[-1] % N_ITEMS + 1]
            after += [after[-1] % N_ITEMS + 1, (after[-1] + 1) % N_ITEMS + 1]
            if self.mode == "broad":
                probabilities[row, after] = [0.2, 0.5, 0.3]
            elif prefix[-1] % 2 == 0:
                probabilities[row, after[0]] = 1.0
            else:
                probabilities[row] = 1.0 / (self.n_items - 2)
                probabilities[row, [PADDING_ID, after[0]]] = 0.0
        return probabilities

    def state(self):
        return RankerState(self.name, self.params, {})


class GuessesFamily(Family):
    name = "guesses"
    search_space = {"mode": ["sharp", "broad"]}

    def build(self, splits, params, context):
        return Guesses(splits.train_counts, params["mode"]), {}

    def from_state(self, state):
        return Guesses(state.arrays["train_counts"], state.params["mode"])


def test_a_grid_offers_its_best_by_hit_rate_to_blends_beside_its_best_by_mrr(splits):
    """What recalls most is what a precise model lacks: the grid's best by HR@20 joins blends as `guesses#2`, and
    the blend of the two beats both."""
    context = FitContext.for_splits(splits)
    fit = GuessesFamily().fit(splits, GuessesFamily.search_space, context)
    (alternate,) = fit.alternates
    assert fit.params == {"mode": "sharp"} and alternate.params == {"mode": "broad"}
    assert fit.validation_mrr == pytest.approx(0.5, abs=0.1) and alternate.validation_mrr == pytest.approx(1 / 3)
    assert alternate.validation["hr@20"] == 1.0 > fit.validation["hr@20"] and alternate.alternates == []
    members = blend_members([fit])
    assert list(members) == ["guesses", "guesses#2"] and members["guesses#2"] is alternate
    selection = select_champion([fit], splits, context)
    blend = selection.champion_fit
    assert selection.champion == "blend" and blend.params["parts"] == ["guesses", "guesses#2"]
    assert blend.validation["hr@20"] == 1.0 and blend.validation_mrr > fit.validation_mrr
    single = GuessesFamily().fit(splits, {"mode": ["broad"]}, context)
    assert single.alternates == [] and list(blend_members([single])) == ["guesses"]
