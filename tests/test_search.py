import pytest

from postmodern.model.lstm import LSTMConfig
from postmodern.model.search import (
    DEFAULT_SEARCH_SPACE,
    SearchSpaceError,
    best_candidate,
    candidate_configs,
    search_candidates,
    search_space,
)
from postmodern.model.train import TrainConfig


def test_random_search_is_a_seeded_sample_without_repeats():
    space = search_space()
    first, again, other = (search_candidates(space, 5, "random", seed) for seed in (1, 1, 2))
    assert first == again and first != other
    assert len({tuple(candidate.values()) for candidate in first}) == 5
    assert all(candidate[knob] in DEFAULT_SEARCH_SPACE[knob] for candidate in first for knob in candidate)
    everything = search_candidates(space, 0, "random", 0)
    assert len(everything) == len(search_candidates(space, 10**6, "grid"))  # capped at the grid's size


def test_grid_search_goes_through_the_space_in_order():
    space = search_space({"embedding_dim": [8, 16], "hidden_dim": 32, "dropout": [0.0, 0.5]})
    candidates = search_candidates(space, 0, "grid")
    assert len(candidates) == 2 * 1 * 2 * 2 * 2
    assert [(c["embedding_dim"], c["hidden_dim"]) for c in candidates[:1]] == [(8, 32)]
    assert search_candidates(space, 3, "grid") == candidates[:3]


def test_a_candidate_sets_model_and_training_knobs_over_the_base():
    base = TrainConfig(epochs=2, seed=7)
    model, train = candidate_configs({"embedding_dim": 8, "learning_rate": 0.5, "loss": "sampled"}, 40, base)
    assert (model.n_items, model.embedding_dim, model.hidden_dim) == (40, 8, LSTMConfig(1).hidden_dim)
    assert (train.learning_rate, train.loss, train.epochs, train.seed) == (0.5, "sampled", 2, 7)
    assert best_candidate([0.1, 0.3, 0.3, 0.2]) == 1


def test_bad_search_spaces_are_refused_with_the_reason():
    with pytest.raises(SearchSpaceError, match="unknown hyper-parameter 'embeding_dim'"):
        search_space({"embeding_dim": [8]})
    with pytest.raises(SearchSpaceError, match="searchable: .*embedding_dim"):
        search_space({"device": ["cuda"]})
    with pytest.raises(SearchSpaceError, match="no value"):
        search_space({"dropout": []})
    with pytest.raises(SearchSpaceError, match="strategy"):
        search_candidates(search_space(), 2, "bayesian")
    with pytest.raises(SearchSpaceError, match="0 or more"):
        search_candidates(search_space(), -1)
    with pytest.raises(ValueError, match="no candidate"):
        best_candidate([])
