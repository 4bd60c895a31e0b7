import pytest

from postmodern.model.families import family
from postmodern.model.families.lstm import candidate_configs
from postmodern.model.lstm import LSTMConfig
from postmodern.model.search import (
    SearchSpaceError,
    best_candidate,
    family_candidates,
    search_candidates,
    search_space,
)
from postmodern.model.train import TrainConfig

LSTM_SPACE = family("lstm").search_space


def test_random_search_is_a_seeded_sample_without_repeats():
    space = search_space("lstm")
    first, again, other = (search_candidates(space, 5, "random", seed) for seed in (1, 1, 2))
    assert first == again and first != other
    assert len({tuple(candidate.values()) for candidate in first}) == 5
    assert all(candidate[knob] in LSTM_SPACE[knob] for candidate in first for knob in candidate)
    everything = search_candidates(space, 0, "random", 0)
    assert len(everything) == len(search_candidates(space, 10**6, "grid"))  # capped at the grid's size


def test_grid_search_goes_through_the_space_in_order():
    space = search_space("lstm", {"embedding_dim": [8, 16], "hidden_dim": 32, "dropout": [0.0, 0.5]})
    candidates = search_candidates(space, 0, "grid")
    others = len(candidates) // (2 * 1 * 2)
    assert others == len(
        search_candidates({k: v for k, v in space.items() if k not in ("embedding_dim", "dropout")}, 0, "grid")
    )
    assert [(c["embedding_dim"], c["hidden_dim"]) for c in candidates[:1]] == [(8, 32)]
    assert search_candidates(space, 3, "grid") == candidates[:3]


def test_a_candidate_sets_model_and_training_knobs_over_the_base():
    base = TrainConfig(epochs=2, seed=7)
    model, train = candidate_configs({"embedding_dim": 8, "learning_rate": 0.5, "loss": "sampled"}, 40, base)
    assert (model.n_items, model.embedding_dim, model.hidden_dim) == (40, 8, LSTMConfig(1).hidden_dim)
    assert (train.learning_rate, train.loss, train.epochs, train.seed) == (0.5, "sampled", 2, 7)
    assert best_candidate([0.1, 0.3, 0.3, 0.2]) == 1


def test_costly_families_get_a_task_per_point_and_cheap_ones_one_task_for_their_grid():
    overrides = {knob: values[:1] for knob, values in LSTM_SPACE.items()}
    overrides.update({"hidden_dim": [8, 16], "vsknn": {"k": [5, 10]}})
    candidates = family_candidates(["popularity", "vsknn", "lstm"], overrides, size=0, strategy="grid")
    assert [candidate["family"] for candidate in candidates] == ["popularity", "vsknn", "lstm", "lstm"]
    assert candidates[0]["space"] == {}
    assert candidates[1]["space"]["k"] == [5, 10] and len(candidates[1]["space"]["sample_size"]) > 1
    lstm_points = [candidate["space"] for candidate in candidates[2:]]
    assert all(len(values) == 1 for point in lstm_points for values in point.values())  # one point each
    assert [point["hidden_dim"] for point in lstm_points] == [[8], [16]]
    assert len(family_candidates(["lstm"], {}, size=3, seed=1)) == 3


def test_bad_search_spaces_are_refused_with_the_reason():
    with pytest.raises(SearchSpaceError, match="unknown hyper-parameter 'embeding_dim' of lstm"):
        search_space("lstm", {"embeding_dim": [8]})
    with pytest.raises(SearchSpaceError, match="searchable: .*embedding_dim"):
        search_space("lstm", {"device": ["cuda"]})
    with pytest.raises(SearchSpaceError, match="no value"):
        search_space("lstm", {"dropout": []})
    with pytest.raises(SearchSpaceError, match="unknown hyper-parameter 'hidden_dim' of vsknn"):
        family_candidates(["vsknn"], {"vsknn": {"hidden_dim": [8]}}, 1)
    with pytest.raises(SearchSpaceError, match="names vsknn, not among the families trained"):
        family_candidates(["lstm"], {"vsknn": {"k": [8]}}, 1)
    with pytest.raises(SearchSpaceError, match="blend is made of other families"):
        family_candidates(["blend"], {}, 1)
    with pytest.raises(ValueError, match="unknown model family 'gru4rec'"):
        family_candidates(["gru4rec"], {}, 1)
    with pytest.raises(SearchSpaceError, match="strategy"):
        search_candidates(search_space("lstm"), 2, "bayesian")
    with pytest.raises(SearchSpaceError, match="0 or more"):
        search_candidates(search_space("lstm"), -1)
    with pytest.raises(ValueError, match="no candidate"):
        best_candidate([])
