import itertools
import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from conftest import SUITE_ITEMS, cyclic_sessions

from postmodern.evaluation.metrics import evaluate_ranker, next_item_cases
from postmodern.model.bundle import BundleError, ModelBundle, SessionRecommender, make_bundle
from postmodern.model.dataset import PADDING_ID, SessionSplits, Vocabulary
from postmodern.model.families.blend import BlendRanker
from postmodern.model.families.cooccurrence import CooccurrenceRanker
from postmodern.model.families.popularity import PopularityRanker
from postmodern.model.lstm import (
    LSTMConfig,
    LSTMRanker,
    LSTMRecommender,
    item_pair_counts,
    pad_batch,
    real_positions,
)
from postmodern.model.ranker import best_first, largest, top_k
from postmodern.model.train import (
    NegativeSampler,
    TrainConfig,
    TrainingWindows,
    full_softmax_loss,
    sampled_softmax_loss,
    train_lstm,
    training_windows,
)
from postmodern.serving.registry import bundle_version, latest_bundle_dir, publish, resolve_model_source

N_ITEMS = SUITE_ITEMS


def ranker_of(model: LSTMRecommender) -> LSTMRanker:
    """The model's ranker, with training counts that make item 1 the most popular."""
    counts = np.arange(model.config.n_items, 0, -1)
    counts[PADDING_ID] = 0
    return LSTMRanker(model, counts)


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    train, validation, test = (cyclic_sessions(n, rng, longest=6) for n in (400, 60, 60))
    counts = np.bincount(np.concatenate(train), minlength=N_ITEMS + 1)
    splits = SessionSplits(Vocabulary([f"sku{i}" for i in range(1, N_ITEMS + 1)]), train, validation, test, counts, {})
    config = LSTMConfig(n_items=N_ITEMS + 1, embedding_dim=16, hidden_dim=32, dropout=0.0, max_length=5)
    train_config = TrainConfig(epochs=8, learning_rate=1e-2, lr_decay=1.0, batch_size=32)
    result = train_lstm(splits, config, train_config, progress=False)
    return splits, result


def test_lstm_learns_order_that_popularity_cannot_see(trained):
    splits, result = trained
    cases = next_item_cases(splits.test)
    lstm = evaluate_ranker(ranker_of(result.model), cases, k=1)
    popularity = evaluate_ranker(PopularityRanker(splits.train_counts), cases, k=1)
    assert lstm["hr@1"] > 0.9
    assert popularity["hr@1"] < 0.2
    assert result.history[0].train_loss > result.history[-1].train_loss
    assert 1 <= result.best_epoch <= len(result.history)


def test_padding_and_batching_do_not_change_predictions(trained):
    _, result = trained
    ranker = ranker_of(result.model)
    short, long = np.array([3, 4]), np.array([7, 8, 9, 10])
    alone = ranker.probabilities([short])
    together = ranker.probabilities([long, short])
    np.testing.assert_allclose(alone[0], together[1], rtol=1e-5, atol=1e-5)


def torch_probabilities_after_last_items(model: LSTMRecommender, prefixes: list[np.ndarray]) -> np.ndarray:
    """The torch model's own forward pass (every position), read at each prefix's last item."""
    items, lengths = pad_batch(prefixes, model.config.max_length)
    with torch.no_grad():
        queries = model(items, lengths)
        every_position = model.log_probabilities(queries, items[real_positions(lengths, items.size(1))]).exp()
    return every_position[torch.cumsum(lengths, 0) - 1].numpy()


def test_the_ranker_computes_what_the_trained_torch_model_computes(trained):
    """The ranker runs the model's equations on NumPy; the torch model's own forward is the reference."""
    _, result = trained
    model = result.model.eval()
    prefixes = [np.array([3, 4, 5]), np.array([9]), np.array([1, 2, 3, 4, 5, 6, 7, 8])]
    reference = torch_probabilities_after_last_items(model, prefixes)
    ranker = ranker_of(model)
    np.testing.assert_allclose(ranker.probabilities(prefixes), reference, rtol=1e-4, atol=1e-6)
    ranked, scores = ranker.rank(prefixes, k=5)
    assert (ranked == np.argsort(-reference, axis=1)[:, :5]).all()
    np.testing.assert_allclose(scores, np.take_along_axis(reference, ranked, axis=1), rtol=1e-4, atol=1e-6)


def test_exclude_seen_ranks_everything_but_the_prefix(trained):
    _, result = trained
    ranker = ranker_of(result.model)
    prefix = np.array([5, 6, 7])
    everything, _ = ranker.rank([prefix], k=N_ITEMS)
    unseen, _ = ranker.rank([prefix], k=N_ITEMS, exclude_seen=True)
    assert len(everything[0]) == N_ITEMS and 0 not in everything[0]
    assert unseen[0][:-3].tolist() == [item for item in everything[0] if item not in (5, 6, 7)]
    assert unseen[0][-3:].tolist() == [0, 0, 0]  # fewer rankable items than k: padded with id 0


def test_long_sessions_keep_their_latest_items():
    items, lengths = pad_batch([np.arange(1, 31)], max_length=20)
    assert lengths.tolist() == [20] and items[0, 0].item() == 11
    windows = training_windows([np.arange(1, 46)], max_length=20)
    assert [len(w) for w in windows] == [21, 21, 5]
    assert sum(len(w) - 1 for w in windows) == 44  # every transition trained on exactly once


def test_only_real_positions_reach_the_output_layer_and_padding_is_never_predicted():
    model = LSTMRecommender(LSTMConfig(n_items=10, embedding_dim=4, hidden_dim=8))
    padded, lengths = pad_batch([np.array([1, 2, 3]), np.array([4, 5])], 4)
    queries = model(padded[:, :-1], lengths - 1)
    assert queries.shape == (3, 4)  # 2 + 1 positions, none of padding
    loss = full_softmax_loss(model, queries, torch.tensor([1, 2, 4]), torch.tensor([2, 3, 5]))
    assert torch.isfinite(loss)
    items, _ = ranker_of(model).rank([np.array([1])], k=9)
    assert 0 not in items


def test_sampled_softmax_tends_to_the_full_softmax_and_removes_accidental_hits():
    torch.manual_seed(0)
    # transitions from the latest items below to targets (1 -> 2, 3 -> 11) and to other items (1 -> 5, 2 -> 7)
    sessions = [np.array([1, 2, 7]), np.array([1, 2]), np.array([3, 11]), np.array([3, 11]), np.array([1, 5])]
    model = LSTMRecommender(LSTMConfig(n_items=12, embedding_dim=6, hidden_dim=8), item_pair_counts(sessions, 12))
    with torch.no_grad():
        model.pair_gate.weight.normal_()
    queries, latest, targets = torch.randn(5, 6), torch.tensor([4, 1, 2, 3, 1]), torch.tensor([1, 2, 3, 11, 1])
    counts = np.array([0, 50, 20, 10, 5, 5, 4, 3, 2, 2, 1, 1])
    full = full_softmax_loss(model, queries, latest, targets)
    with torch.no_grad():
        many = NegativeSampler(counts, n_negatives=200_000, alpha=0.75, seed=0, device=torch.device("cpu"))
        sampled = sampled_softmax_loss(model, queries, latest, targets, many)
        assert sampled.item() == pytest.approx(full.item(), rel=0.01)
        few = NegativeSampler(counts, n_negatives=8, alpha=1.0, seed=1, device=torch.device("cpu"))
        assert 0 not in few.sample()  # padding is never drawn
        # every negative is the target: nothing to contrast with, so the loss is zero (item 4 starts no pair)
        only_targets = NegativeSampler(
            np.array([0, 1, 0]), n_negatives=4, alpha=1.0, seed=0, device=torch.device("cpu")
        )
        assert sampled_softmax_loss(model, queries[:1], latest[:1], torch.tensor([1]), only_targets).item() == 0.0


def test_sampled_training_learns_and_the_same_seed_gives_the_same_model(trained):
    splits, _ = trained
    config = LSTMConfig(n_items=N_ITEMS + 1, embedding_dim=16, hidden_dim=32, dropout=0.1, max_length=5)
    train_config = TrainConfig(epochs=3, learning_rate=1e-2, batch_size=32, loss="sampled", n_negatives=8, seed=3)
    first, second = (train_lstm(splits, config, train_config, progress=False) for _ in range(2))
    assert [r.train_loss for r in first.history] == [r.train_loss for r in second.history]
    for name, tensor in first.model.state_dict().items():
        torch.testing.assert_close(tensor, second.model.state_dict()[name], rtol=0, atol=0)
    other = train_lstm(splits, config, replace(train_config, seed=4), progress=False)
    assert other.history[0].train_loss != first.history[0].train_loss
    popularity = evaluate_ranker(PopularityRanker(splits.train_counts), next_item_cases(splits.validation))
    assert first.best_validation_mrr > 2 * popularity["mrr@20"]


def test_the_learning_rate_decays_after_every_epoch(trained):
    splits, _ = trained
    config = LSTMConfig(n_items=N_ITEMS + 1, embedding_dim=8, hidden_dim=8, max_length=5)
    # a decay of 0 leaves no learning rate after the first epoch: the second cannot change the model
    result = train_lstm(splits, config, TrainConfig(epochs=2, patience=5, lr_decay=0.0), progress=False)
    assert result.history[1].validation_mrr == result.history[0].validation_mrr
    assert result.best_epoch == 1


def test_loss_is_chosen_by_catalogue_size_and_bad_choices_are_refused():
    assert TrainConfig(loss="auto", full_softmax_max_items=100).resolved_loss(100) == "full"
    assert TrainConfig(loss="auto", full_softmax_max_items=100).resolved_loss(101) == "sampled"
    assert TrainConfig(loss="full").resolved_loss(10**6) == "full"
    # by default, the full softmax wherever scoring the catalogue is cheap: larger catalogues on a GPU
    assert TrainConfig(device="cpu").resolved_loss(38_000) == "sampled"
    assert TrainConfig(device="cuda").resolved_loss(38_000) == "full"
    assert TrainConfig(device="cuda:1").resolved_loss(150_000) == "sampled"
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainConfig(loss="softmax")


def test_training_windows_are_padded_once_and_batched_by_length():
    windows = TrainingWindows([np.arange(1, 4), np.arange(1, 3), np.arange(1, 12)], max_length=5)
    assert windows.lengths.tolist() == [3, 2, 6, 6]  # the long session cut into 6 + 6 (one shared item)
    assert windows.n_examples == 2 + 1 + 5 + 5
    batches = windows.batches(batch_size=2, rng=np.random.default_rng(0))
    assert sorted(len(batch) for batch in batches) == [2, 2]
    assert sorted(sorted(windows.lengths[batch].tolist()) for batch in batches) == [[2, 3], [6, 6]]
    inputs, lengths, targets = windows.batch(np.array([0, 1]))
    # the second window is [1, 2]: one input (the 2 beyond its length is only a target)
    assert inputs.tolist() == [[1, 2], [1, 2]] and lengths.tolist() == [2, 1] and targets.tolist() == [[2, 3], [2, 0]]
    with pytest.raises(ValueError, match="nothing to learn"):
        TrainingWindows([np.array([1])], max_length=5)


def test_bundle_round_trip_ranks_identically_and_serves_skus(trained, tmp_path):
    splits, result = trained
    bundle = make_bundle(ranker_of(result.model), splits.vocabulary, {"model_version": "v1"})
    loaded = ModelBundle.load(bundle.save(tmp_path / "bundle"))
    assert loaded.version == "v1" and loaded.vocabulary == bundle.vocabulary
    metadata = json.loads((tmp_path / "bundle" / "metadata.json").read_text())
    assert metadata["format_version"] == 4 and metadata["family"] == "lstm"
    recommender = SessionRecommender(loaded)
    original = ranker_of(result.model).rank([np.array([5, 6])], k=3)[0][0]
    first, unknown_only = recommender.recommend([["sku5", "nope", "sku6"], ["nope"]], k=3)
    assert [sku for sku, _ in first.items] == splits.vocabulary.decode(original)
    assert first.items[0][0] == "sku7"
    assert first.unknown_skus == ["nope"] and not first.fallback
    assert unknown_only.fallback and [sku for sku, _ in unknown_only.items] == [s for s, _ in bundle.popular[:3]]


def test_a_recommender_reuses_the_rankings_of_recent_prefixes_and_forgets_the_oldest(trained, tmp_path):
    splits, result = trained
    bundle = make_bundle(ranker_of(result.model), splits.vocabulary, {"model_version": "v1"})
    recommender = SessionRecommender(bundle, cache_size=2)
    rank_calls = []
    rank = recommender.ranker.rank
    recommender.ranker.rank = lambda prefixes, *args: rank_calls.append(len(prefixes)) or rank(prefixes, *args)

    first = recommender.recommend([["sku5", "sku6"]], k=3)[0]
    # the same known items (another unknown SKU): the cached ranking, with this request's unknown SKUs
    again, other = recommender.recommend([["sku5", "nope", "sku6"], ["sku7"]], k=3)
    assert rank_calls == [1, 1]  # only the new prefix was ranked
    assert again.cached and not first.cached and not other.cached
    assert again.items == first.items and again.unknown_skus == ["nope"]
    assert recommender.recommend([["sku5", "sku6"]], k=2)[0].items == first.items[:2]  # fewer: cut from the cache
    assert not recommender.recommend([["sku5", "sku6"]], k=4)[0].cached  # more than were ranked: ranked again
    assert not recommender.recommend([["sku5", "sku6"]], k=3, exclude_seen=True)[0].cached  # another question
    recommender.recommend([["sku1"]], k=3)  # a third prefix: the least recently used goes
    assert not recommender.recommend([["sku7"]], k=3)[0].cached
    assert recommender.recommend([["sku1"]], k=3)[0].cached
    # what a server answers without a ranking pass: only requests with nothing to rank
    answered = recommender.recommend_from_cache([["sku1"], ["nope"]], k=3, exclude_seen=False)
    assert [r.cached for r in answered] == [True, False] and answered[1].fallback
    assert answered[0].items == recommender.recommend([["sku1"]], k=3)[0].items
    assert recommender.recommend_from_cache([["sku1"], ["sku2"]], k=3, exclude_seen=False) is None
    # another ranker (the demo's comparison) neither reads nor fills the served model's cache
    assert not recommender.recommend([["sku1"]], k=3, ranker=ranker_of(result.model))[0].cached
    without_cache = SessionRecommender(bundle)
    assert not any(r.cached for r in without_cache.recommend([["sku1"], ["sku1"]], k=3))
    assert without_cache.recommend_from_cache([["nope"]], k=3, exclude_seen=False) is None  # always to a pass


def write_bundle_of_format(
    model: LSTMRecommender, vocabulary: Vocabulary, directory, format_version: int, config: dict
):
    """A bundle as formats 1 to 3 wrote it: the LSTM's weights.pt and config.json beside the vocabulary."""
    directory.mkdir()
    torch.save(model.state_dict(), directory / "weights.pt")
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "vocab.json").write_text(json.dumps(vocabulary.skus))
    (directory / "popular.json").write_text(json.dumps([["sku2", 0.3], ["sku1", 0.2]]))
    (directory / "metadata.json").write_text(json.dumps({"format_version": format_version}))
    return directory


def test_a_bundle_from_before_the_item_skip_and_pairs_loads_as_it_was_trained(trained, tmp_path):
    splits, _ = trained
    old_config = LSTMConfig(
        n_items=N_ITEMS + 1, embedding_dim=8, hidden_dim=8, item_skip=False, item_pairs=False, attention=False
    )
    model = LSTMRecommender(old_config)
    assert not any(name.startswith(("item_skip", "pair_")) for name in model.state_dict())
    config = asdict(old_config)
    del config["item_skip"], config["item_pairs"], config["attention"], config["normalized_scale"]  # as first written
    directory = write_bundle_of_format(model, splits.vocabulary, tmp_path / "old", 1, config)
    loaded = SessionRecommender(ModelBundle.load(directory))
    assert loaded.family == "lstm" and LSTMConfig(**loaded.bundle.model.config) == old_config
    expected = ranker_of(model).rank([np.array([3, 4])], k=5)[0]
    assert [sku for sku, _ in loaded.recommend([["sku3", "sku4"]], k=5)[0].items] == splits.vocabulary.decode(
        expected[0]
    )
    # the fallback's shares stand for the training counts these bundles lack
    assert loaded.ranker.popular[:2].tolist() == [2, 1]
    # a bundle of format 1 or 2 whose pairs were learned scores has no counts to mix in: refused
    config["item_pairs"] = True
    (directory / "config.json").write_text(json.dumps(config))
    for format_version in (1, 2):
        (directory / "metadata.json").write_text(json.dumps({"format_version": format_version}))
        with pytest.raises(BundleError, match="retrain"):
            ModelBundle.load(directory)


def assert_serves_as_ranked(model: LSTMRecommender, bundle_directory, vocabulary: Vocabulary) -> None:
    """The saved bundle, loaded for serving, recommends what the ranker of `model` ranks."""
    loaded = SessionRecommender(ModelBundle.load(bundle_directory))
    expected = ranker_of(model).rank([np.array([1, 2])], k=4)[0][0]
    assert [sku for sku, _ in loaded.recommend([["sku1", "sku2"]], k=4)[0].items] == vocabulary.decode(expected)


def test_an_untied_model_scores_with_its_own_output_embeddings_and_round_trips(trained, tmp_path):
    splits, _ = trained
    model = LSTMRecommender(LSTMConfig(n_items=N_ITEMS + 1, embedding_dim=8, hidden_dim=8, tied_output=False))
    assert model.output_weight is model.output_embedding.weight
    assert model.output_weight.data_ptr() != model.item_embedding.weight.data_ptr()
    prefixes = [np.array([1, 2]), np.array([4])]
    np.testing.assert_allclose(
        ranker_of(model).probabilities(prefixes),
        torch_probabilities_after_last_items(model.eval(), prefixes),
        rtol=1e-4,
        atol=1e-7,
    )
    directory = make_bundle(ranker_of(model), splits.vocabulary, {}).save(tmp_path / "untied")
    assert_serves_as_ranked(model, directory, splits.vocabulary)


def test_item_transition_vectors_score_in_numpy_as_in_torch_and_round_trip(trained, tmp_path):
    splits, _ = trained
    model = LSTMRecommender(LSTMConfig(n_items=N_ITEMS + 1, embedding_dim=8, hidden_dim=8, item_transitions=True))
    assert not model.item_transition.weight.any()  # starts as the model without them
    with torch.no_grad():
        model.item_transition.weight.normal_()
        model.item_transition.weight[PADDING_ID] = 0
    prefixes = [np.array([1, 2]), np.array([4])]
    with_transitions = ranker_of(model).probabilities(prefixes)
    np.testing.assert_allclose(
        with_transitions, torch_probabilities_after_last_items(model.eval(), prefixes), rtol=1e-4, atol=1e-7
    )
    # the vector of the latest item (2, then 4) moves the scores; the earlier item's does not
    with torch.no_grad():
        model.item_transition.weight[1] = 0
    np.testing.assert_allclose(ranker_of(model).probabilities(prefixes), with_transitions, rtol=1e-5)
    with torch.no_grad():
        model.item_transition.weight[4] = 0
    assert not np.allclose(ranker_of(model).probabilities(prefixes)[1], with_transitions[1])
    directory = make_bundle(ranker_of(model), splits.vocabulary, {}).save(tmp_path / "transitions")
    assert_serves_as_ranked(model, directory, splits.vocabulary)


def test_incomplete_or_foreign_bundles_are_refused(trained, tmp_path):
    splits, result = trained
    with pytest.raises(BundleError, match="missing"):
        ModelBundle.load(tmp_path)
    directory = make_bundle(ranker_of(result.model), splits.vocabulary, {}).save(tmp_path / "b")
    (directory / "metadata.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(BundleError, match="format 99"):
        ModelBundle.load(directory)


def test_registry_points_latest_at_the_newest_version(trained, tmp_path):
    splits, result = trained
    registry = tmp_path / "registry"
    with pytest.raises(BundleError, match="make run"):
        latest_bundle_dir(registry)
    for version in ("v1", "v2"):
        publish(make_bundle(ranker_of(result.model), splits.vocabulary, {"model_version": version}), registry)
    assert latest_bundle_dir(registry) == registry / "v2"
    assert resolve_model_source(None, registry).bundle_dir() == registry / "v2"
    assert resolve_model_source(registry / "v1", registry).bundle_dir() == registry / "v1"
    assert bundle_version(registry / "v1") == "v1"
    with pytest.raises(BundleError, match="already"):
        publish(make_bundle(ranker_of(result.model), splits.vocabulary, {"model_version": "v1"}), registry)
    assert not list(registry.glob(".*partial"))


def test_item_pairs_are_the_sessions_transitions_counted():
    keys, counts = item_pair_counts(
        [np.array([1, 2, 3]), np.array([2, 3]), np.array([4]), np.array([3, 1]), np.array([3, 3, 1])], n_items=5
    )
    assert [divmod(int(key), 5) for key in keys] == [(1, 2), (2, 3), (3, 1), (3, 3)]
    assert counts.tolist() == [1, 2, 2, 1]
    assert len(item_pair_counts([np.array([4])], n_items=5)[0]) == 0


def test_the_transition_frequencies_are_mixed_in_after_their_first_item_only_in_torch_and_numpy(trained, tmp_path):
    splits, _ = trained
    sessions = [np.array([2, 7]), np.array([2, 7]), np.array([2, 9]), np.array([4, 1])]
    pairs = item_pair_counts(sessions, N_ITEMS + 1)
    model = LSTMRecommender(LSTMConfig(n_items=N_ITEMS + 1, embedding_dim=8, hidden_dim=8), pairs).eval()
    prefixes = [np.array([1, 2]), np.array([4]), np.array([2, 3])]
    with torch.no_grad():
        lstm_alone = torch.softmax(model.item_logits(model(*pad_batch(prefixes, 20))), dim=1)
        lstm_alone = lstm_alone[torch.tensor([1, 2, 4])].numpy()  # each prefix's last position
    probabilities = ranker_of(model).probabilities(prefixes)
    np.testing.assert_allclose(probabilities, torch_probabilities_after_last_items(model, prefixes), atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # the gate starts at one half; after item 2, its transitions share their half: 2 / 3 to item 7, 1 / 3 to item 9
    expected = lstm_alone.copy()
    expected[:2] *= 0.5
    expected[0, [7, 9]] += 0.5 * np.array([2, 1]) / 3
    expected[1, 1] += 0.5  # item 4's one transition
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-7)  # item 3 starts none: as it was
    latest, targets = torch.tensor([2, 2, 4, 3]), torch.tensor([7, 8, 1, 7])
    with torch.no_grad():
        queries = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
        full = model.log_probabilities(queries, latest)
        lstm_logits = model.item_logits(queries)
        np.testing.assert_allclose(model.target_logits(queries, targets), lstm_logits[range(4), targets], rtol=1e-5)
        candidates = torch.tensor([7, 1, 7, 9, 3])  # a sample may hold an item twice
        np.testing.assert_allclose(model.candidate_logits(queries, candidates), lstm_logits[:, candidates], rtol=1e-5)
        log_lstm = torch.log_softmax(lstm_logits, dim=1)[range(4), targets]
        mixed = model.mixed_log_probability(queries, latest, targets, log_lstm)
        np.testing.assert_allclose(mixed, full[range(4), targets], rtol=1e-5)
        lstm = log_lstm.exp().numpy()  # 2 -> 7 is 2 of item 2's 3 transitions; 2 -> 8 none; item 3 starts none
        expected_mixed = [0.5 * lstm[0] + 1 / 3, 0.5 * lstm[1], 0.5 * lstm[2] + 0.5, lstm[3]]
        np.testing.assert_allclose(mixed.exp(), expected_mixed, rtol=1e-6)  # float32: not to the last bit
    directory = make_bundle(ranker_of(model), splits.vocabulary, {}).save(tmp_path / "pairs")
    assert_serves_as_ranked(model, directory, splits.vocabulary)
    arrays = ModelBundle.load(directory).model.arrays
    weights = {name: torch.from_numpy(array) for name, array in arrays.items() if name != "train_counts"}
    loaded = LSTMRecommender.from_state_dict(model.config, weights)
    assert torch.equal(loaded.pair_keys, model.pair_keys) and torch.equal(loaded.pair_counts, model.pair_counts)


def test_equal_scores_rank_the_more_popular_item_first_however_the_candidates_were_gathered():
    scores = np.array([[0.2, 0.5, 0.2, 0.1, 0.2], [0.3, 0.3, 0.3, 0.05, 0.05]], dtype=np.float32)
    items = np.array([[9, 4, 3, 1, 5], [7, 2, 8, 1, 3]])  # ids in order of training popularity
    assert np.take_along_axis(items, best_first(scores, items), axis=1).tolist() == [[4, 3, 5, 9, 1], [2, 7, 8, 1, 3]]
    probabilities = np.array([[0.0, 0.1, 0.3, 0.3, 0.3]], dtype=np.float32)
    assert top_k(probabilities, [np.array([1])], 3, False)[0].tolist() == [[2, 3, 4]]


def test_largest_selects_the_columns_of_each_rows_largest_scores_from_a_sample_threshold_or_in_full():
    """Long rows go through a threshold from every 16th score; rows whose sample misleads (the largest scores all on
    sampled columns), rows of ties and short rows are selected in full: the same scores as a full selection."""
    rng = np.random.default_rng(3)
    misleading = np.zeros(40_000, dtype=np.float32)
    misleading[::16] = rng.random(2_500) + 1.0  # the threshold passes only a fifth of the 200 asked
    rows = np.stack([rng.random(40_000, dtype=np.float32), misleading, np.ones(40_000, dtype=np.float32)])
    for scores, count in ((rows, 200), (rows, 20), (rows[:, :1_000], 20), (rows[:, :500], 20)):
        chosen = largest(scores, count)
        assert chosen.shape == (len(scores), count)
        assert all(len(set(row)) == count for row in chosen.tolist())
        expected = np.sort(scores, axis=1)[:, -count:]
        np.testing.assert_array_equal(np.sort(np.take_along_axis(scores, chosen, axis=1), axis=1), expected)


def assert_scores_near(items, scores, exact_items, exact_scores):
    """Each item's score, where both rankings hold it, within 2% of the exact one in the median and 15% at most."""
    errors = [
        abs(score / exact[item] - 1)
        for row, exact_row, score_row, exact_score_row in zip(items, exact_items, scores, exact_scores, strict=True)
        for exact in [dict(zip(exact_row.tolist(), exact_score_row.tolist(), strict=True))]
        for item, score in zip(row.tolist(), score_row.tolist(), strict=True)
        if item in exact
    ]
    assert np.median(errors) < 0.02 and max(errors) < 0.15


@pytest.mark.parametrize("item_pairs", [True, False])
def test_a_serving_pass_at_a_large_catalogue_ranks_from_candidates_as_the_whole_model_ranks(monkeypatch, item_pairs):
    """A few prefixes at a large catalogue are ranked from the items an inverted-file index retrieves (and the latest
    item's pairs), scored exactly, with the softmax's tail estimated from a sample: the same top 20 as the whole
    catalogue's probabilities, scores within a few parts in a thousand. Larger batches take the whole catalogue. A
    blend of such LSTMs and a sparse part ranks from their candidates, as exactly."""
    n_items = 3_000
    rng = np.random.default_rng(1)
    sessions = [rng.integers(1, n_items, size=rng.integers(2, 8)) for _ in range(3_000)]
    counts = np.bincount(np.concatenate(sessions), minlength=n_items)
    torch.manual_seed(0)
    config = LSTMConfig(n_items=n_items, embedding_dim=32, hidden_dim=32, item_pairs=item_pairs)
    model = LSTMRecommender(config, pair_counts=item_pair_counts(sessions, n_items) if item_pairs else None).eval()
    with torch.no_grad():
        model.item_embedding.weight.mul_(10)  # a peaked softmax, as a trained model's
    prefixes = [session[: rng.integers(1, len(session))] for session in sessions[:300]]
    assert ranker_of(model).candidate_pass(prefixes[:2], 20) is None  # below the size where it pays
    monkeypatch.setattr("postmodern.model.lstm.CANDIDATE_INDEX_MIN_ITEMS", 1_000)
    monkeypatch.setattr("postmodern.model.lstm.TAIL_SAMPLE_PER_LIST", 8)  # the tail estimated, not summed
    ranker = LSTMRanker(model, counts)
    assert ranker.candidate_pass(prefixes[:2], 20) is not None
    assert ranker.candidate_pass(prefixes[:2], 101) is None and ranker.candidate_pass(prefixes, 20) is None
    for exclude_seen, sessions_per_pass in itertools.product((False, True), (1, 2, 300)):
        ranked = [
            ranker.rank(prefixes[i : i + sessions_per_pass], 20, exclude_seen) for i in range(0, 300, sessions_per_pass)
        ]
        items, scores = (np.concatenate(part) for part in zip(*ranked, strict=True))
        exact_items, exact_scores = top_k(ranker.probabilities(prefixes), prefixes, 20, exclude_seen)
        overlap = np.mean([len(set(a) & set(b)) for a, b in zip(items.tolist(), exact_items.tolist(), strict=True)])
        assert overlap / 20 >= 0.995  # and in the same order, but for near ties (the scores, position by position)
        # each item's score: within the tail estimate's error, a few percent on this flat softmax (top item 0.15%)
        assert_scores_near(items, scores, exact_items, exact_scores)
        if exclude_seen:
            assert not any(set(row) & set(p.tolist()) for row, p in zip(items.tolist(), prefixes, strict=True))
    torch.manual_seed(1)
    other = LSTMRanker(LSTMRecommender(replace(config, item_pairs=False)).eval(), counts)
    cooccurrence = CooccurrenceRanker.from_sessions(sessions, counts)
    # a blend ranks every part's candidates, each part scoring all of them
    for parts, weights in (([ranker, other], [0.7, 0.3]), ([ranker, cooccurrence], [0.6, 0.4])):
        blend = BlendRanker(parts, weights, counts)
        for exclude_seen, sessions_per_pass in itertools.product((False, True), (1, 300)):
            ranked = [
                blend.rank(prefixes[i : i + sessions_per_pass], 20, exclude_seen)
                for i in range(0, 300, sessions_per_pass)
            ]
            items, scores = (np.concatenate(part) for part in zip(*ranked, strict=True))
            exact_items, exact_scores = top_k(blend.probabilities(prefixes), prefixes, 20, exclude_seen)
            rows = zip(items.tolist(), exact_items.tolist(), strict=True)
            assert np.mean([len(set(a) & set(b)) for a, b in rows]) / 20 >= 0.995
            assert_scores_near(items, scores, exact_items, exact_scores)
            if exclude_seen:
                assert not any(set(row) & set(p.tolist()) for row, p in zip(items.tolist(), prefixes, strict=True))
    # a sparse part offering only its 2 best (for a top 1): where the best could lose to an item no part offered (it
    # ties with the sparse part's 3rd), the row takes all the sparse part scores, and the top 1 stays the exact one
    monkeypatch.setattr("postmodern.model.sparse.CANDIDATES_PER_ROW", 1)
    latest_only = CooccurrenceRanker.from_sessions(sessions, counts, weighting="last")  # ties among a row's best
    blend = BlendRanker([other, latest_only], [0.3, 0.7], counts)
    whole_rows = []
    scored_candidates = blend._scored_candidates
    monkeypatch.setattr(
        blend,
        "_scored_candidates",
        lambda *a, whole=False: whole_rows.append(whole) or scored_candidates(*a, whole=whole),
    )
    items = np.concatenate([blend.rank(prefixes[i : i + 2], 3)[0] for i in range(0, 300, 2)])
    exact_items, _ = top_k(blend.probabilities(prefixes), prefixes, 3, False)
    assert 0 < sum(whole_rows) < 300
    assert (
        np.mean([len(set(a) & set(b)) for a, b in zip(items.tolist(), exact_items.tolist(), strict=True)]) / 3 >= 0.995
    )
