import json

import numpy as np
import pytest
import torch
from conftest import SUITE_ITEMS, cyclic_sessions

from postmodern.evaluation.metrics import evaluate_ranker, next_item_cases
from postmodern.model.baselines import PopularityRanker
from postmodern.model.bundle import BundleError, ModelBundle, SessionRecommender, make_bundle
from postmodern.model.dataset import SessionSplits, Vocabulary
from postmodern.model.lstm import LSTMConfig, LSTMRanker, LSTMRecommender, pad_batch, padded_items
from postmodern.model.train import TrainConfig, train_lstm, training_windows
from postmodern.serving.registry import bundle_version, latest_bundle_dir, publish, resolve_model_source

N_ITEMS = SUITE_ITEMS


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    train, validation, test = (cyclic_sessions(n, rng, longest=6) for n in (400, 60, 60))
    counts = np.bincount(np.concatenate(train), minlength=N_ITEMS + 1)
    splits = SessionSplits(Vocabulary([f"sku{i}" for i in range(1, N_ITEMS + 1)]), train, validation, test, counts, {})
    config = LSTMConfig(n_items=N_ITEMS + 1, embedding_dim=16, hidden_dim=32, dropout=0.0, max_length=5)
    result = train_lstm(splits, config, TrainConfig(epochs=8, learning_rate=1e-2, batch_size=32), progress=False)
    return splits, result


def test_lstm_learns_order_that_popularity_cannot_see(trained):
    splits, result = trained
    cases = next_item_cases(splits.test)
    lstm = evaluate_ranker(LSTMRanker(result.model), cases, k=1)
    popularity = evaluate_ranker(PopularityRanker(splits.train_counts), cases, k=1)
    assert lstm["hr@1"] > 0.9
    assert popularity["hr@1"] < 0.2
    assert result.history[0].train_loss > result.history[-1].train_loss
    assert 1 <= result.best_epoch <= len(result.history)


def test_padding_and_batching_do_not_change_predictions(trained):
    _, result = trained
    ranker = LSTMRanker(result.model)
    short, long = np.array([3, 4]), np.array([7, 8, 9, 10])
    alone = ranker.logits(*padded_items([short], 5))
    together = ranker.logits(*padded_items([long, short], 5))
    np.testing.assert_allclose(alone[0], together[1], rtol=1e-5, atol=1e-5)


def test_the_ranker_computes_what_the_trained_torch_model_computes(trained):
    """The ranker runs the model's equations on NumPy; the torch model's own forward is the reference."""
    _, result = trained
    model = result.model.eval()
    prefixes = [np.array([3, 4, 5]), np.array([9]), np.array([1, 2, 3, 4, 5, 6, 7, 8])]
    items, lengths = pad_batch(prefixes, model.config.max_length)  # the model reads the latest 5 items
    with torch.no_grad():
        every_position, _ = model(items, lengths)
    last_positions = torch.cumsum(lengths, 0) - 1
    reference = every_position[last_positions].numpy()
    ranker = LSTMRanker(model)
    np.testing.assert_allclose(ranker.logits(*padded_items(prefixes, 5)), reference, rtol=1e-4, atol=1e-4)
    ranked, scores = ranker.rank(prefixes, k=5)
    assert (ranked == np.argsort(-reference, axis=1)[:, :5]).all()
    expected = torch.softmax(torch.from_numpy(reference), dim=1).numpy()
    np.testing.assert_allclose(scores, np.take_along_axis(expected, ranked, axis=1), rtol=1e-4, atol=1e-6)


def test_exclude_seen_ranks_everything_but_the_prefix(trained):
    _, result = trained
    ranker = LSTMRanker(result.model)
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


def test_loss_is_finite_and_padding_is_never_predicted():
    model = LSTMRecommender(LSTMConfig(n_items=10, embedding_dim=4, hidden_dim=8))
    padded, lengths = pad_batch([np.array([1, 2, 3]), np.array([4, 5])], 4)
    logits, loss = model(padded[:, :-1], lengths - 1, padded[:, 1:])
    assert logits.shape == (3, 10) and torch.isfinite(loss)
    items, _ = LSTMRanker(model).rank([np.array([1])], k=9)
    assert 0 not in items


def test_bundle_round_trip_ranks_identically_and_serves_skus(trained, tmp_path):
    splits, result = trained
    bundle = make_bundle(result.model, splits.vocabulary, splits.train_counts, {"model_version": "v1"})
    loaded = ModelBundle.load(bundle.save(tmp_path / "bundle"))
    assert loaded.version == "v1" and loaded.vocabulary == bundle.vocabulary
    assert json.loads((tmp_path / "bundle" / "metadata.json").read_text())["format_version"] == 1
    recommender = SessionRecommender(loaded)
    original = LSTMRanker(result.model).rank([np.array([5, 6])], k=3)[0][0]
    first, unknown_only = recommender.recommend([["sku5", "nope", "sku6"], ["nope"]], k=3)
    assert [sku for sku, _ in first.items] == splits.vocabulary.decode(original)
    assert first.items[0][0] == "sku7"
    assert first.unknown_skus == ["nope"] and not first.fallback
    assert unknown_only.fallback and [sku for sku, _ in unknown_only.items] == [s for s, _ in bundle.popular[:3]]


def test_incomplete_or_foreign_bundles_are_refused(trained, tmp_path):
    splits, result = trained
    with pytest.raises(BundleError, match="missing"):
        ModelBundle.load(tmp_path)
    directory = make_bundle(result.model, splits.vocabulary, splits.train_counts, {}).save(tmp_path / "b")
    (directory / "metadata.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(BundleError, match="format 99"):
        ModelBundle.load(directory)


def test_registry_points_latest_at_the_newest_version(trained, tmp_path):
    splits, result = trained
    registry = tmp_path / "registry"
    with pytest.raises(BundleError, match="make run"):
        latest_bundle_dir(registry)
    for version in ("v1", "v2"):
        publish(make_bundle(result.model, splits.vocabulary, splits.train_counts, {"model_version": version}), registry)
    assert latest_bundle_dir(registry) == registry / "v2"
    assert resolve_model_source(None, registry).bundle_dir() == registry / "v2"
    assert resolve_model_source(registry / "v1", registry).bundle_dir() == registry / "v1"
    assert bundle_version(registry / "v1") == "v1"
    with pytest.raises(BundleError, match="already"):
        publish(make_bundle(result.model, splits.vocabulary, splits.train_counts, {"model_version": "v1"}), registry)
    assert not list(registry.glob(".*partial"))
