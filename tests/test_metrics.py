import numpy as np

from postmodern.evaluation.metrics import accuracy_metrics, evaluate_ranker, next_item_cases, reciprocal_ranks
from postmodern.model.baselines import PopularityRanker


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
