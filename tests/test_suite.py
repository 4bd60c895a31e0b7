"""The behavioural suite: its declarative API, the default suite's tests on data whose answers are known,
the deployed model as a ranker, the deployment gate and the tracker."""

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import SUITE_ITEMS, make_settings

from postmodern.evaluation.deployed import DeployedModelRanker, load_deployed_model
from postmodern.evaluation.gate import (
    GateConfig,
    check_gate,
    deploy_if_passed,
)
from postmodern.evaluation.session_suite import (
    POPULARITY_BINS,
    SessionRecSuite,
    SuiteConfig,
    binned,
    drop_one_item,
    item_attributes,
    swap_two_items,
)
from postmodern.evaluation.suite import RecSuite, RecTestResult, Sliced, SuiteReport, rec_test
from postmodern.model.bundle import SessionRecommender, make_bundle
from postmodern.model.dataset import Vocabulary
from postmodern.model.families.popularity import PopularityRanker
from postmodern.model.lstm import LSTMConfig, LSTMRanker, LSTMRecommender
from postmodern.serving.registry import latest_bundle_dir, publish
from postmodern.tracking import log_suite_report, tracked_run
from postmodern.tracking.mlflow_tracker import mlflow_metric_name

N_ITEMS = SUITE_ITEMS


# --- the declarative API -------------------------------------------------------------------------------


class ConstantRanker:
    def __init__(self, name, items):
        self.name, self.items = name, np.asarray(items)

    def rank(self, prefixes, k):
        return np.tile(self.items[:k], (len(prefixes), 1)), np.ones((len(prefixes), min(k, len(self.items))))


class TinySuite(RecSuite):
    def __init__(self, target):
        self.target = target

    def prepare(self, ranker):
        return ranker.rank([np.array([1])], 3)[0][0]

    @rec_test("top_is_target", display="scalar")
    def top_is_target(self, top):
        """Whether the first item is the target."""
        return float(top[0] == self.target)

    @rec_test("position", display="bars", description="where the target is")
    def position(self, top):
        return Sliced({str(i): float(item == self.target) for i, item in enumerate(top)}, {"0": 1, "1": 1, "2": 1})


class LongerSuite(TinySuite):
    @rec_test("top_is_target", display="scalar")
    def top_is_target(self, top):  # overrides the parent's test of the same method name
        """Always one."""
        return 1

    @rec_test("hits", display="curve")
    def hits(self, top):
        return {str(k): float(self.target in top[:k]) for k in (1, 2, 3)}


def test_tests_are_registered_in_order_with_their_display_and_description():
    assert [(t.name, t.display, t.description) for t in TinySuite.tests] == [
        ("top_is_target", "scalar", "Whether the first item is the target."),
        ("position", "bars", "where the target is"),
    ]
    assert [t.name for t in LongerSuite.tests] == ["top_is_target", "position", "hits"]


def test_run_gives_every_test_for_every_ranker_and_flat_names():
    report = LongerSuite(target=2).run([ConstantRanker("a", [2, 1, 3]), ConstantRanker("b", [1, 3, 2])], progress=False)
    assert report.suite == "LongerSuite" and report.candidate == "a" and report.rankers == ["a", "b"]
    assert report.test("position").values == {"a": {"0": 1.0, "1": 0.0, "2": 0.0}, "b": {"0": 0.0, "1": 0.0, "2": 1.0}}
    assert report.test("position").support == {"0": 1, "1": 1, "2": 1}
    assert report.metrics("b") == {
        "top_is_target": 1.0,  # the override
        "position/0": 0.0,
        "position/1": 0.0,
        "position/2": 1.0,
        "hits@1": 0.0,
        "hits@2": 0.0,
        "hits@3": 1.0,
    }
    with pytest.raises(KeyError, match="'c' was not evaluated"):
        report.metrics("c")


def test_a_report_round_trips_through_json_with_nan_as_null(tmp_path):
    report = TinySuite(target=2).run([ConstantRanker("a", [2, 1, 3])], progress=False)
    report.test("top_is_target").values["a"] = float("nan")
    path = report.save(tmp_path / "run" / "suite_report.json")
    assert json.loads(path.read_text())["tests"][0]["values"] == {"a": None}
    loaded = SuiteReport.load(path)
    assert math.isnan(loaded.metrics("a")["top_is_target"])
    assert loaded.test("position") == report.test("position")


def test_suite_definition_and_results_are_checked():
    with pytest.raises(ValueError, match="display 'pie'"):
        rec_test("x", display="pie")
    with pytest.raises(TypeError, match="more than one test named twice"):

        class Twice(RecSuite):
            @rec_test("twice")
            def first(self, shared):
                return 1.0

            @rec_test("twice")
            def second(self, shared):
                return 2.0

    class Wrong(RecSuite):
        @rec_test("bars", display="bars")
        def bars(self, shared):
            return 0.5

    with pytest.raises(TypeError, match="'bars' \\(bars\\) returned float"):
        Wrong().run([ConstantRanker("a", [1])], progress=False)
    with pytest.raises(ValueError, match="distinct names"):
        Wrong().run([ConstantRanker("a", [1]), ConstantRanker("a", [2])], progress=False)
    with pytest.raises(ValueError, match="candidate 'z'"):
        Wrong().run([ConstantRanker("a", [1])], candidate="z", progress=False)


# --- the default suite on data with known answers --------------------------------------------------------


class SuccessorRanker:
    """Knows the data's rule (item i is followed by i + 1, cyclically): the next item always comes first."""

    name = "successor"

    def rank(self, prefixes, k):
        last = np.array([prefix[-1] for prefix in prefixes])
        items = (last[:, None] + np.arange(k)[None, :]) % N_ITEMS + 1
        return items, np.tile(1.0 / (1 + np.arange(k)), (len(prefixes), 1))


@pytest.fixture(scope="module")
def report(suite_data):
    splits, products = suite_data
    suite = SessionRecSuite(
        splits.test, splits.train_counts, item_attributes(products, splits.vocabulary), SuiteConfig(latency_sessions=20)
    )
    return suite.run([SuccessorRanker(), PopularityRanker(splits.train_counts)], progress=False)


def test_item_attributes_come_from_the_product_mart_by_sku():
    vocabulary = Vocabulary(["sku3", "sku1", "sku2", "ghost"])
    products = pa.table(
        {"product_sku": ["sku1", "sku2", "sku3"], "top_category": ["b", None, "a"], "price_bucket": [4.0, 11.0, None]}
    )
    attributes = item_attributes(products, vocabulary)
    assert attributes.category_names == ["a", "b"]
    assert attributes.category.tolist() == [-1, 0, 1, -1, -1]  # padding, sku3, sku1, sku2 (no category), ghost
    assert attributes.price_bucket.tolist() == [0, 0, 4, 0, 0]  # 11 is no bucket


def test_bins_and_perturbations():
    assert binned(np.array([0.005, 0.01, 0.3, 1.0]), (("head", 0.01), ("middle", 0.5), ("tail", 1.0))).tolist() == [
        "head",
        "head",
        "middle",
        "tail",
    ]
    rng = np.random.default_rng(0)
    prefixes = [np.array([1, 2, 3]), np.array([4, 5])]
    for dropped, prefix in zip(drop_one_item(prefixes, rng), prefixes, strict=True):
        assert len(dropped) == len(prefix) - 1 and set(dropped) < set(prefix)
    for swapped, prefix in zip(swap_two_items(prefixes, rng), prefixes, strict=True):
        assert sorted(swapped) == sorted(prefix) and (swapped != prefix).sum() == 2
    assert prefixes[0].tolist() == [1, 2, 3]  # the cases themselves are untouched


def test_a_ranker_that_knows_the_rule_is_perfect_on_accuracy(report, suite_data):
    splits, _ = suite_data
    metrics = report.metrics("successor")
    for k in (1, 5, 10, 20):
        for metric in ("hr", "mrr", "ndcg", "last_hr", "last_mrr", "last_ndcg"):
            assert metrics[f"{metric}@{k}"] == 1.0
    assert metrics["subsequent/recall@20"] == 1.0  # every later item is among the next 20 successors
    future_sizes = [len(session) - position for session in splits.test for position in range(1, len(session))]
    assert metrics["subsequent/precision@20"] == pytest.approx(np.mean(future_sizes) / 20)
    assert metrics["coverage"] == 1.0 and metrics["repeat_share"] == 0.0
    assert math.isnan(metrics["less_wrong_same_category"])  # it never misses


def test_popularity_is_the_same_for_every_session(report, suite_data):
    splits, _ = suite_data
    metrics = report.metrics("popularity")
    assert metrics["coverage"] == pytest.approx(20 / N_ITEMS)
    assert metrics["robustness/drop one item"] == 0.0 and metrics["robustness/swap two items"] == 0.0
    # the 20 most popular of 30 items by rank share: 1/30 is in 1-5%, up to 6/30 in 5-20%, up to 15/30 in 20-50%
    shares = [metrics[f"recommended_popularity/{label}"] for label, _ in POPULARITY_BINS]
    assert shares == pytest.approx([0, 1 / 20, 5 / 20, 9 / 20, 5 / 20])
    assert 0 < metrics["hr@20"] < 1 and metrics["mrr@20"] < report.metrics("successor")["mrr@20"]
    counts = splits.train_counts
    top20 = np.argsort(-counts[1:], kind="stable")[:20] + 1
    assert metrics["popularity_bias"] == pytest.approx(counts[top20].mean() / counts.max())


def test_the_successor_ranker_suffers_when_the_session_is_perturbed(report):
    metrics = report.metrics("successor")
    assert metrics["robustness/drop one item"] < 0 and metrics["robustness/swap two items"] < 0


def test_slices_cover_every_case_once(report):
    cases = report.dataset["cases"]
    for name in ("hr_by_popularity", "hr_by_session_length", "hr_by_category", "hr_by_price_bucket"):
        result = report.test(name)
        assert sum(result.support.values()) == cases, name
        assert set(result.values["successor"]) == set(result.support)
    assert set(report.test("hr_by_category").support) <= {"category0", "category1", "category2", "unknown"}
    assert report.test("hr_by_session_length").support["1"] == report.dataset["sessions"]  # one per session
    assert report.test("hr_by_price_bucket").support.get("unknown", 0) > 0  # two items are not in the catalogue


def test_less_wrong_and_latency_are_measured(report):
    popularity = report.metrics("popularity")
    assert 0 <= popularity["less_wrong_same_category"] <= 1
    distances = [popularity[f"less_wrong_price_distance/{d}"] for d in range(10)]
    assert sum(distances) == pytest.approx(1)
    for ranker in report.rankers:
        metrics = report.metrics(ranker)
        assert 0 <= metrics["latency_ms/median"] <= metrics["latency_ms/p99"]


def test_the_suite_needs_cases():
    attributes = item_attributes(
        pa.table({"product_sku": ["sku1"], "top_category": ["a"], "price_bucket": [1.0]}), Vocabulary(["sku1"])
    )
    with pytest.raises(ValueError, match="no session of two items"):
        SessionRecSuite([np.array([1])], np.array([0, 3]), attributes)


# --- the deployed model --------------------------------------------------------------------------------


def random_model(n_items, seed=0):
    torch.manual_seed(seed)
    return LSTMRecommender(LSTMConfig(n_items + 1, embedding_dim=8, hidden_dim=16, max_length=5))


def test_the_deployed_model_ranks_this_runs_ids_through_skus():
    bundle_skus = ["a", "b", "c", "d", "old"]  # the bundle knows "old", this run does not
    model = random_model(len(bundle_skus))
    bundle = make_bundle(
        LSTMRanker(model, np.array([0, 5, 4, 3, 2, 1])), Vocabulary(bundle_skus), {"model_version": "v1"}
    )
    run_vocabulary = Vocabulary(["d", "c", "new", "b", "a"])  # other ids, and a SKU new to the bundle
    ranker = DeployedModelRanker(SessionRecommender(bundle), run_vocabulary)

    items, scores = ranker.rank([np.array([5, 2]), np.array([3])], k=5)  # [a, c] and [new]
    expected, expected_scores = LSTMRanker(model, np.array([0, 5, 4, 3, 2, 1])).rank([np.array([1, 3])], k=5)
    expected_skus = Vocabulary(bundle_skus).decode(expected[0])
    assert run_vocabulary.decode([i for i in items[0] if i]) == [s for s in expected_skus if s != "old"]
    assert 0 in items[0]  # "old" has no id in this run: padding, never a target
    np.testing.assert_allclose(scores[0], expected_scores[0], rtol=1e-6)
    assert run_vocabulary.decode(items[1][:3]) == ["a", "b", "c"]  # no known SKU: the bundle's popular list


def test_load_deployed_model_from_the_registry(tmp_path):
    registry = tmp_path / "registry"
    vocabulary = Vocabulary(["a", "b"])
    assert load_deployed_model(registry, vocabulary).ranker is None
    assert load_deployed_model(registry, vocabulary).note == f"no model deployed yet in {registry}"
    publish(
        make_bundle(LSTMRanker(random_model(2), np.array([0, 2, 1])), vocabulary, {"model_version": "v1"}), registry
    )
    deployed = load_deployed_model(registry, vocabulary)
    assert deployed.ranker.name == "deployed" and deployed.ranker.version == "v1"
    (latest_bundle_dir(registry) / "model" / "item_embedding.weight.npy").write_bytes(b"not numpy")
    broken = load_deployed_model(registry, vocabulary)
    assert broken.ranker is None and "cannot be loaded" in broken.note


# --- the gate ------------------------------------------------------------------------------------------


def gate_report(mrr: dict[str, float], slices: dict[str, dict[str, float]], support: dict[str, int]) -> SuiteReport:
    """A report with what the gate reads: MRR@20, one slice test and the latency, by ranker."""
    tests = [
        RecTestResult("mrr", "curve", "", {name: {"20": value} for name, value in mrr.items()}),
        RecTestResult("hr_by_popularity", "bars", "", slices, support),
        RecTestResult("latency_ms", "bars", "", {name: {"median": 1.0, "p99": 3.0} for name in mrr}),
    ]
    return SuiteReport("S", "lstm", list(mrr), {"cases": 100, "k": 20}, tests, "now")


ONLY_POPULARITY_SLICES = GateConfig(slice_tests=("hr_by_popularity",))
EVEN_SLICES = {"head": 0.5, "tail": 0.2}


def test_the_gate_passes_a_model_that_beats_every_reference_by_the_margin():
    slices = {"lstm": EVEN_SLICES, "popularity": EVEN_SLICES, "deployed": EVEN_SLICES}
    report = gate_report({"lstm": 0.2, "popularity": 0.1, "deployed": 0.198}, slices, {"head": 60, "tail": 60})
    verdict = check_gate(report, ONLY_POPULARITY_SLICES)
    assert verdict.passed, verdict.describe()
    assert [check.name for check in verdict.checks] == [
        "beats popularity on MRR@20",
        "beats deployed on MRR@20",
        "no hr_by_popularity slice collapses",
    ]
    assert "gate passed" in verdict.summary()


def test_the_gate_blocks_a_model_that_does_not_beat_the_deployed_one_by_the_margin():
    slices = {"lstm": EVEN_SLICES, "popularity": EVEN_SLICES, "deployed": EVEN_SLICES}
    report = gate_report({"lstm": 0.2, "popularity": 0.1, "deployed": 0.199}, slices, {"head": 60, "tail": 60})
    verdict = check_gate(report, ONLY_POPULARITY_SLICES)
    assert not verdict.passed
    assert [check.name for check in verdict.failures] == ["beats deployed on MRR@20"]
    assert "lstm MRR@20 0.2000 does not beat deployed 0.1990 (margin +1%: needs more than 0.2010)" in verdict.summary()
    assert check_gate(report, GateConfig(margin=0.0, slice_tests=("hr_by_popularity",))).passed
    equal = gate_report({"lstm": 0.2, "popularity": 0.2}, {"lstm": {}, "popularity": {}}, {})
    assert not check_gate(equal, GateConfig(margin=0.0, slice_tests=())).passed  # a tie does not beat
    assert check_gate(equal, GateConfig(margin=-0.5, slice_tests=())).passed  # a negative margin tolerates


def test_without_a_deployed_model_only_the_baseline_must_be_beaten():
    slices = {"lstm": EVEN_SLICES, "popularity": EVEN_SLICES}
    verdict = check_gate(gate_report({"lstm": 0.2, "popularity": 0.1}, slices, {}), ONLY_POPULARITY_SLICES)
    assert verdict.passed
    assert "no deployed model evaluated" in verdict.checks[1].detail


def test_a_collapsed_slice_blocks_but_thin_slices_do_not():
    slices = {"lstm": {"head": 0.5, "tail": 0.04}, "popularity": {"head": 0.5, "tail": 0.1}}
    mrr = {"lstm": 0.3, "popularity": 0.1}
    blocked = check_gate(gate_report(mrr, slices, {"head": 60, "tail": 60}), ONLY_POPULARITY_SLICES)
    assert [check.name for check in blocked.failures] == ["no hr_by_popularity slice collapses"]
    assert "tail (0.040 vs popularity 0.100, 60 cases)" in blocked.summary()
    assert check_gate(gate_report(mrr, slices, {"head": 60, "tail": 49}), ONLY_POPULARITY_SLICES).passed
    nan_slice = {"lstm": {"head": float("nan")}, "popularity": {"head": 0.5}}
    assert not check_gate(gate_report(mrr, nan_slice, {"head": 60}), ONLY_POPULARITY_SLICES).passed


def test_an_optional_latency_limit():
    report = gate_report({"lstm": 0.2, "popularity": 0.1}, {"lstm": {}, "popularity": {}}, {})
    assert check_gate(report, GateConfig(slice_tests=(), max_latency_p99_ms=5.0)).passed
    slow = check_gate(report, GateConfig(slice_tests=(), max_latency_p99_ms=2.0))
    assert "p99 3.00 ms per session over 2.00 ms" in slow.summary()


def test_a_blocked_deployment_leaves_the_serving_model_in_place(tmp_path):
    settings = make_settings(tmp_path)
    vocabulary = Vocabulary(["a", "b"])
    first = make_bundle(LSTMRanker(random_model(2), np.array([0, 2, 1])), vocabulary, {"model_version": "v1"})
    publish(first, settings.registry_dir)
    second = make_bundle(LSTMRanker(random_model(2, seed=1), np.array([0, 2, 1])), vocabulary, {"model_version": "v2"})
    report = gate_report({"lstm": 0.1, "popularity": 0.2}, {"lstm": {}, "popularity": {}}, {})
    blocked = check_gate(report, GateConfig(slice_tests=()))

    outcome = deploy_if_passed(second, blocked, settings, serving_now="v1")
    assert not outcome.deployed and outcome.target is None
    assert outcome.message.startswith("deployment blocked: gate blocked lstm")
    assert "v1 keeps serving" in outcome.message
    assert latest_bundle_dir(settings.registry_dir).name == "v1"
    assert "none serves now" in deploy_if_passed(second, blocked, settings, serving_now=None).message

    passed = check_gate(
        gate_report({"lstm": 0.3, "popularity": 0.2}, {"lstm": {}, "popularity": {}}, {}), GateConfig(slice_tests=())
    )
    outcome = deploy_if_passed(second, passed, settings, serving_now="v1")
    assert outcome.deployed and latest_bundle_dir(settings.registry_dir).name == "v2"
    assert outcome.target == str(latest_bundle_dir(settings.registry_dir).resolve())


def test_evaluate_for_deployment_compares_with_the_deployed_model_on_the_same_cases(evaluation_against_deployed):
    evaluation = evaluation_against_deployed
    report = evaluation.report
    assert report.rankers == ["lstm", "popularity", "deployed"] and report.candidate == "lstm"
    assert evaluation.serving_before == "v1" and "deployed model v1" in evaluation.deployed_note
    lstm, deployed = report.metrics("lstm"), report.metrics("deployed")
    for name in ("hr@20", "mrr@20", "ndcg@10", "coverage", "hr_by_popularity/5-20%"):
        assert lstm[name] == pytest.approx(deployed[name])  # the same weights, seen through the registry
    assert not evaluation.verdict.passed  # an untrained model beats nothing, and the deployed copy is a tie
    assert "beats deployed on MRR@20" in [check.name for check in evaluation.verdict.failures]


# --- tracking ------------------------------------------------------------------------------------------


class FakeCometExperiment:
    """Records what the Comet tracker sends, in comet_ml's call signatures."""

    def __init__(self, api_key=None, project_name=None, experiment_key=None, **options):
        self.key, self.metrics, self.assets, self.ended = experiment_key or "new-key", {}, {}, False
        SENT.append(self)

    def get_key(self):
        return self.key

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def log_asset(self, path, file_name):
        self.assets[file_name] = Path(path).read_text()

    def end(self):
        self.ended = True


SENT: list[FakeCometExperiment] = []


def test_the_report_goes_to_comet_when_it_is_the_tracker(report, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "comet_ml", SimpleNamespace(ExistingExperiment=FakeCometExperiment))
    settings = make_settings(tmp_path, comet_api_key="secret")
    verdict = check_gate(report, GateConfig(must_beat=("popularity",), slice_tests=()))
    with tracked_run(settings, "", {}, run_id="training-run") as tracker:
        log_suite_report(tracker, report, verdict)
    experiment = SENT[-1]
    assert experiment.key == "training-run" and experiment.ended  # the training run's experiment, resumed
    assert experiment.metrics["test_successor_mrr@20"] == 1.0
    assert (
        experiment.metrics["test_popularity_hr_by_popularity/bottom 50%"]
        == report.metrics("popularity")["hr_by_popularity/bottom 50%"]
    )
    assert experiment.metrics["gate_passed"] == 1.0  # the successor ranker beats popularity
    saved = json.loads(experiment.assets["behavioural_suite/suite_report.json"])
    assert SuiteReport.from_dict(saved).to_dict() == report.to_dict()


def test_metric_names_are_spelled_for_mlflow():
    assert mlflow_metric_name("robustness/drop one item") == "robustness/drop one item"
    assert mlflow_metric_name("hr_by_session_length/10+") == "hr_by_session_length/10plus"
    assert mlflow_metric_name("hr_by_popularity/top 1%") == "hr_by_popularity/top 1pct"
    assert mlflow_metric_name("a@b#c") == "a_at_b_c"
