import math

import numpy as np
import pytest

from postmodern.evaluation.metrics import evaluate_ranker, next_item_cases
from postmodern.model.dataset import SessionSplits, Vocabulary
from postmodern.model.families import FitContext, family
from postmodern.model.families.cooccurrence import CooccurrenceRanker, cooccurrence_matrix
from postmodern.model.families.popularity import PopularityRanker
from postmodern.model.families.vsknn import VSKNNRanker


def counts_of(sessions, n_items):
    return np.bincount(np.concatenate(sessions), minlength=n_items + 1)


def reference_vsknn_scores(train, prefix, n_items, k, sample_size, score_decay):
    """V-SKNN written plainly after session-rec's vsknn.py (weighting 'div', similarity 'cosine', sampling
    'recent', weighting_score 'div' or none), one prefix at a time over every training session."""
    length = len(prefix)
    weight = {item: (position + 1) / length for position, item in enumerate(prefix)}  # latest occurrence wins
    latest = {item: position + 1 for position, item in enumerate(prefix)}
    sharing = [index for index, session in enumerate(train) if set(session) & set(prefix)]
    sample = sharing[-sample_size:]  # sessions are in time order: the most recent ones
    norm = math.sqrt(sum(w * w for w in weight.values()))
    similarities = []
    for index in sample:
        items = set(train[index].tolist())
        shared = items & set(prefix)
        similarities.append((sum(weight[i] for i in shared) / (norm * math.sqrt(len(items))), index))
    similarities.sort(key=lambda pair: (-pair[0], -pair[1]))
    scores = np.zeros(n_items + 1)
    for similarity, index in similarities[:k]:
        items = set(train[index].tolist())
        decay = 1 / (length - max(latest[i] for i in items & set(prefix)) + 1) if score_decay else 1.0
        for item in items:
            scores[item] += similarity * decay
    boundary_tie = len(similarities) > k and math.isclose(similarities[k - 1][0], similarities[k][0])
    return scores, boundary_tie


@pytest.mark.parametrize(("k", "sample_size", "score_decay"), [(5, 1000, True), (3, 8, False), (10, 15, True)])
def test_vsknn_matches_a_plain_implementation(k, sample_size, score_decay):
    rng = np.random.default_rng(k)
    n_items = 25
    train = [rng.integers(1, n_items + 1, size=rng.integers(2, 7)) for _ in range(120)]
    prefixes = [rng.integers(1, n_items + 1, size=rng.integers(1, 6)) for _ in range(60)]
    ranker = VSKNNRanker.from_sessions(
        train, counts_of(train, n_items), k=k, sample_size=sample_size, score_decay=score_decay
    )
    scores = ranker.score_chunk(prefixes).toarray()
    compared = 0
    for row, prefix in enumerate(prefixes):
        expected, boundary_tie = reference_vsknn_scores(train, prefix.tolist(), n_items, k, sample_size, score_decay)
        if boundary_tie:  # equally similar neighbours at the k-th place: either choice is right
            continue
        np.testing.assert_allclose(scores[row], expected, rtol=1e-9, atol=1e-12)
        compared += 1
    assert compared >= len(prefixes) // 2


def test_cooccurrence_counts_pairs_within_the_window_by_distance():
    sessions = [np.array([1, 2, 3]), np.array([1, 2]), np.array([3, 1])]
    directed = cooccurrence_matrix(sessions, 4, window=2, directed=True).toarray()
    # 1 -> 2 twice (distance 1), 1 -> 3 once (distance 2): weights 2 and 0.5, normalised by their sum
    np.testing.assert_allclose(directed[1], [0, 0, 2 / 2.5, 0.5 / 2.5])
    np.testing.assert_allclose(directed[3], [0, 1, 0, 0])
    undirected = cooccurrence_matrix(sessions, 4, window=1, directed=False).toarray()
    np.testing.assert_allclose(undirected[3], [0, 0.5, 0.5, 0])  # 2 before 3, 1 after 3

    ranker = CooccurrenceRanker.from_sessions(
        sessions, counts_of(sessions, 3), window=1, directed=True, weighting="last"
    )
    items, scores = ranker.rank([np.array([1]), np.array([3])], k=3)
    assert items[0, 0] == 2 and scores[0, 0] == 1.0
    assert items[1].tolist() == [1, 2, 3]  # 3 -> 1 seen; then the rest by popularity (2 and 3 twice, 2 first)
    assert scores[1].tolist() == [1.0, 0.0, 0.0]


def test_every_prefix_of_a_session_votes_with_decaying_weight():
    sessions = [np.array([1, 2]), np.array([3, 4]), np.array([3, 4]), np.array([5, 6])]
    ranker = CooccurrenceRanker.from_sessions(
        sessions, counts_of(sessions, 6), window=1, directed=True, weighting="div"
    )
    items, scores = ranker.rank([np.array([1, 3])], k=2)
    assert items[0].tolist() == [4, 2]  # the latest item's successor first, the earlier one's at half weight
    np.testing.assert_allclose(scores[0], [1.0 / 1.5, 0.5 / 1.5])  # as probabilities
    with pytest.raises(ValueError, match="weighting"):
        CooccurrenceRanker.from_sessions(sessions, counts_of(sessions, 6), weighting="linear")


@pytest.mark.parametrize(
    "make",
    [
        lambda train, counts: PopularityRanker(counts),
        lambda train, counts: CooccurrenceRanker.from_sessions(train, counts),
        lambda train, counts: VSKNNRanker.from_sessions(train, counts, k=2),
    ],
)
def test_rankers_always_return_k_items_never_padding(make):
    train = [np.array([1, 2]), np.array([2, 3])]
    ranker = make(train, counts_of(train, 5))  # items 4 and 5 never seen: only reachable by the fill
    items, scores = ranker.rank([np.array([1]), np.array([5, 4]), np.array([], dtype=np.int64)], k=5)
    assert items.shape == scores.shape == (3, 5)
    assert all(sorted(row) == [1, 2, 3, 4, 5] for row in items.tolist())
    assert items[2].tolist() == [2, 1, 3, 4, 5]  # an empty prefix: the most popular items (2 seen twice)
    empty_items, _ = ranker.rank([], k=5)
    assert empty_items.shape == (0, 5)
    # without the prefix's items: the rest, then padding where the catalogue runs out
    unseen, _ = ranker.rank([np.array([1]), np.array([5, 4])], k=5, exclude_seen=True)
    assert sorted(unseen[0].tolist()) == [0, 2, 3, 4, 5] and unseen[0, -1] == 0
    assert sorted(unseen[1].tolist()) == [0, 0, 1, 2, 3] and unseen[1, -2:].tolist() == [0, 0]


def cyclic_splits(seed=0, n_items=30):
    rng = np.random.default_rng(seed)

    def sessions(count):
        return [(rng.integers(n_items) + np.arange(rng.integers(2, 7))) % n_items + 1 for _ in range(count)]

    train = sessions(300)
    vocabulary = Vocabulary([f"sku{i}" for i in range(1, n_items + 1)])
    return SessionSplits(vocabulary, train, sessions(40), sessions(40), counts_of(train, n_items), {})


def test_the_baseline_families_are_tuned_on_validation_and_rank_the_same_cases():
    splits = cyclic_splits()
    context = FitContext.for_splits(splits)
    fits = {
        name: family(name).fit(splits, family(name).search_space, context)
        for name in ("popularity", "cooccurrence", "vsknn")
    }
    cooccurrence, vsknn = fits["cooccurrence"], fits["vsknn"]
    # sessions walk i -> i + 1: only the last item and the reading order matter
    assert cooccurrence.params["directed"] and cooccurrence.params["weighting"] == "last"
    assert (
        len(cooccurrence.trials) == 12
        and max(t["validation_mrr"] for t in cooccurrence.trials) == cooccurrence.validation_mrr
    )
    # a cyclic session never shows an item twice in a row: validation picks not scoring the latest item
    assert set(vsknn.params) == {"k", "sample_size", "score_decay", "skip_latest"} and vsknn.params["skip_latest"]
    cases = next_item_cases(splits.test)
    results = {name: evaluate_ranker(fit.ranker, cases, k=20) for name, fit in fits.items()}
    assert results["cooccurrence"]["mrr@20"] == 1.0
    # V-SKNN ranks the prefix's earlier items high too (every neighbour holds them), the next one soon after
    assert results["vsknn"]["mrr@20"] > 0.3 > results["popularity"]["mrr@20"]
    assert {result["cases"] for result in results.values()} == {len(cases.targets)}


def test_vsknn_without_the_latest_item_scores_everything_else_as_before():
    rng = np.random.default_rng(3)
    train = [rng.integers(1, 21, size=rng.integers(2, 7)) for _ in range(80)]
    prefixes = [rng.integers(1, 21, size=rng.integers(1, 6)) for _ in range(30)]
    every = VSKNNRanker.from_sessions(train, counts_of(train, 20), k=10).score_chunk(prefixes).toarray()
    skipping = VSKNNRanker.from_sessions(train, counts_of(train, 20), k=10, skip_latest=True).score_chunk(prefixes)
    skipping = skipping.toarray()
    latest = [prefix[-1] for prefix in prefixes]
    assert every[np.arange(len(prefixes)), latest].all() and not skipping[np.arange(len(prefixes)), latest].any()
    every[np.arange(len(prefixes)), latest] = 0
    np.testing.assert_allclose(skipping, every)


@pytest.mark.parametrize("weighting", ["last", "div"])
def test_cooccurrence_gives_a_few_prefixes_the_probabilities_of_its_sparse_product(weighting):
    rng = np.random.default_rng(3)
    sessions = [rng.integers(1, 40, size=rng.integers(2, 9)) for _ in range(500)]
    ranker = CooccurrenceRanker.from_sessions(sessions, counts_of(sessions, 40), window=3, weighting=weighting)
    prefixes = [np.array([5, 7, 5]), np.array([39]), np.array([1, 2, 3, 4, 5, 6]), np.array([12, 12])]
    few = ranker.probabilities(prefixes)  # row by row
    many = ranker.probabilities(prefixes * 5)  # one sparse product
    np.testing.assert_allclose(few, many[: len(prefixes)], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(few.sum(axis=1), 1.0, rtol=1e-5)
    # a blend's candidate pass holds the same probabilities, row by row, and a row's 200 most probable as candidates
    ranked = ranker.candidate_pass(prefixes, k=20)
    for row in range(len(prefixes)):
        scored = np.flatnonzero(few[row])
        np.testing.assert_array_equal(ranked.candidates(row, whole=True), scored)
        items = np.arange(1, few.shape[1])
        np.testing.assert_allclose(ranked.probabilities(row, items), few[row, 1:], rtol=1e-6, atol=1e-9)
        assert ranked.total(row) == pytest.approx(1.0) and ranked.bound(row) == 0.0  # fewer than 200: all candidates
    ranked.count = 3  # only the 3 most probable: the others score at most the 4th's probability
    top = np.sort(few[0])[::-1]
    assert set(ranked.candidates(0).tolist()) == set(np.argsort(-few[0])[:3].tolist())
    assert ranked.bound(0) == pytest.approx(top[3])
