import numpy as np
import pytest
import pytrec_eval

from postmodern.evaluation.metrics import (
    accuracy_at,
    accuracy_metrics,
    catalogue_coverage,
    evaluate_ranker,
    next_item_cases,
    popularity_bias,
    price_distance_shares,
    reciprocal_ranks,
    repeat_share,
    same_category_share,
    share_by_label,
    subsequent_items,
    subsequent_precision_recall_f1,
    target_ranks,
)
from postmodern.model.families.popularity import PopularityRanker


def test_reciprocal_ranks_by_hand():
    ranked = np.array([[5, 3, 9], [1, 2, 4], [7, 8, 6]])
    targets = np.array([3, 4, 1])
    np.testing.assert_allclose(reciprocal_ranks(ranked, targets), [1 / 2, 1 / 3, 0.0])
    metrics = accuracy_metrics(ranked, targets, k=3)
    assert metrics == {"hr@3": 2 / 3, "mrr@3": (1 / 2 + 1 / 3) / 3}
    assert accuracy_metrics(ranked, targets, k=1) == {"hr@1": 0.0, "mrr@1": 0.0}


def test_every_prefix_of_every_session_is_a_case():
    cases = next_item_cases([np.array([1, 2, 3]), np.array([4, 5])])
    assert [list(p) for p in cases.prefixes] == [[1], [1, 2], [4]]
    assert list(cases.targets) == [2, 3, 5]
    assert list(cases.is_last) == [False, True, True]
    assert list(cases.session_index) == [0, 0, 1]


def test_popularity_baseline_ranks_by_training_counts_and_never_padding():
    ranker = PopularityRanker(np.array([0, 5, 1, 9]))
    items, scores = ranker.rank([np.array([1]), np.array([2, 3])], k=2)
    assert items.tolist() == [[3, 1], [3, 1]]
    np.testing.assert_allclose(scores[0], [9 / 15, 5 / 15])
    items, _ = ranker.rank([np.array([1])], k=10)
    assert 0 not in items


def test_evaluate_ranker_reports_both_protocols():
    cases = next_item_cases([np.array([1, 3, 1]), np.array([2, 3])])
    metrics = evaluate_ranker(PopularityRanker(np.array([0, 5, 1, 9])), cases, k=1)
    # popularity always says 3: right for 1->3 and 2->3 (the latter a last item), wrong for 3->1
    assert metrics["hr@1"] == 2 / 3
    assert metrics["last_hr@1"] == 1 / 2
    assert metrics["cases"] == 3


def test_accuracy_at_k_by_hand():
    ranks = np.array([1, 2, 4, 0])  # the last target was not ranked
    assert accuracy_at(ranks, 1) == {"hr@1": 0.25, "mrr@1": 0.25, "ndcg@1": 0.25}
    at3 = accuracy_at(ranks, 3)
    assert at3["hr@3"] == 0.5
    assert at3["mrr@3"] == pytest.approx((1 + 1 / 2) / 4)
    assert at3["ndcg@3"] == pytest.approx((1 + 1 / np.log2(3)) / 4)
    at5 = accuracy_at(ranks, 5)
    assert at5["ndcg@5"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(5)) / 4)
    assert all(np.isnan(value) for value in accuracy_at(np.array([], dtype=int), 5).values())


def test_subsequent_items_are_the_rest_of_the_session_from_the_target_on():
    sessions = [np.array([1, 2, 3, 2]), np.array([4, 5])]
    cases = next_item_cases(sessions)
    futures = subsequent_items(sessions, cases)
    assert [sorted(future.tolist()) for future in futures] == [[2, 3], [2, 3], [2], [5]]


def test_subsequent_precision_recall_f1_by_hand():
    ranked = np.array([[2, 9], [7, 8]])
    futures = [np.array([2, 3, 4]), np.array([5])]
    metrics = subsequent_precision_recall_f1(ranked, futures, k=2)
    # case 1: one of two recommended is later seen (P 1/2), one of three later items found (R 1/3), F1 0.4
    assert metrics["precision@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert metrics["recall@2"] == pytest.approx((1 / 3 + 0) / 2)
    assert metrics["f1@2"] == pytest.approx((0.4 + 0) / 2)


def test_beyond_accuracy_by_hand():
    ranked = np.array([[1, 2], [1, 3], [0, 0]])  # the last row is padding only (no recommendation)
    assert catalogue_coverage(ranked, n_items=6, k=2) == 3 / 6
    assert catalogue_coverage(ranked, n_items=6, k=1) == 1 / 6
    counts = np.array([0, 10, 5, 1])
    assert popularity_bias(ranked, counts, k=2) == pytest.approx((1 + 0.5 + 1 + 0.1) / 4)
    prefixes = [np.array([2, 5]), np.array([4]), np.array([1])]
    assert repeat_share(ranked, prefixes, k=2) == 1 / 4


def test_share_by_label_keeps_the_order_and_skips_empty_labels():
    hits = np.array([True, False, True, True])
    labels = np.array(["b", "a", "b", "a"], dtype=object)
    assert share_by_label(hits, labels, ["a", "b", "c"]) == {"a": 0.5, "b": 1.0}


def test_less_wrong_by_hand():
    category = np.array([-1, 0, 0, 1, -1])  # item 4 has no category
    price = np.array([0, 1, 3, 10, 0])  # item 4 has no price
    recommended, targets = np.array([1, 1, 3, 4]), np.array([2, 3, 3, 1])
    # known pairs: (1,2) same, (1,3) different, (3,3) same; (4,1) unknown
    assert same_category_share(recommended, targets, category) == pytest.approx(2 / 3)
    shares = price_distance_shares(recommended, targets, price, buckets=10)
    assert shares["2"] == pytest.approx(1 / 3) and shares["9"] == pytest.approx(1 / 3)
    assert shares["0"] == pytest.approx(1 / 3) and sum(shares.values()) == pytest.approx(1)
    assert np.isnan(same_category_share(np.array([4]), np.array([4]), category))


def trec_eval(ranked: np.ndarray, relevant: list[set[int]], measures: set[str]) -> dict[str, float]:
    """Mean of trec_eval's measures over cases; scores fall with the rank so no tie is broken by trec_eval."""
    k = ranked.shape[1]
    qrels = {f"q{i}": {f"d{item}": 1 for item in items} for i, items in enumerate(relevant)}
    run = {f"q{i}": {f"d{item}": float(k - rank) for rank, item in enumerate(row)} for i, row in enumerate(ranked)}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    names = next(iter(per_query.values())).keys()
    return {name: float(np.mean([values[name] for values in per_query.values()])) for name in names}


def random_rankings(rng, n_cases=300, n_items=40, k=20):
    ranked = np.stack([rng.permutation(n_items)[:k] + 1 for _ in range(n_cases)])
    targets = rng.integers(1, n_items + 1, size=n_cases)
    return ranked, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_next_item_metrics_agree_with_trec_eval(seed):
    ranked, targets = random_rankings(np.random.default_rng(seed))
    ranks = target_ranks(ranked, targets)
    for k in (1, 5, 10, 20):
        ours = accuracy_at(ranks, k)
        # trec_eval's reciprocal rank has no cut-off: give it the top k only
        reference = trec_eval(ranked[:, :k], [{t} for t in targets], {"success.1,5,10,20", "recip_rank"})
        cut = trec_eval(ranked, [{t} for t in targets], {f"ndcg_cut.{k}"})
        assert ours[f"hr@{k}"] == pytest.approx(reference[f"success_{k}"])
        assert ours[f"mrr@{k}"] == pytest.approx(reference["recip_rank"])
        assert ours[f"ndcg@{k}"] == pytest.approx(cut[f"ndcg_cut_{k}"])


@pytest.mark.parametrize("seed", [0, 1])
def test_subsequent_item_metrics_agree_with_trec_eval(seed):
    rng = np.random.default_rng(seed)
    ranked, _ = random_rankings(rng)
    futures = [np.unique(rng.integers(1, 41, size=rng.integers(1, 12))) for _ in range(len(ranked))]
    ours = subsequent_precision_recall_f1(ranked, futures, k=20)
    per_case = [
        trec_eval(row[None, :], [set(future.tolist())], {"P.20", "recall.20"})
        for row, future in zip(ranked, futures, strict=True)
    ]
    precision = np.array([case["P_20"] for case in per_case])
    recall = np.array([case["recall_20"] for case in per_case])
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    assert ours["precision@20"] == pytest.approx(precision.mean())
    assert ours["recall@20"] == pytest.approx(recall.mean())
    assert ours["f1@20"] == pytest.approx(f1.mean())
