"""The Post-Modern Stack, end to end: dbt turns the raw log into sessions, LSTMs with different
hyper-parameters learn to predict the next product in parallel, the best on validation goes through a
behavioural suite beside the baselines and the deployed model on the same cases, and is deployed only when
it passes the gate.

    python flows/recommender_flow.py run
    python flows/recommender_flow.py run --search_size 8 --max-workers 4
    python flows/recommender_flow.py run --search_space '{"embedding_dim": [64, 128], "loss": ["sampled"]}'
    python flows/recommender_flow.py card view run_transformation --id dbt
    python flows/recommender_flow.py card view select_model --id tuning
    python flows/recommender_flow.py card view test_model --id evaluation
    python flows/recommender_flow.py card get test_model --id evaluation evaluation.html   # no browser here

Every step is a few lines that call tested functions of the `postmodern` package.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from datetime import UTC, datetime

# Metaflow needs a user name other than root, and CI and containers often have none.
if not any(os.environ.get(name, "root") != "root" for name in ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")):
    os.environ["USERNAME"] = "postmodern"

from metaflow import FlowSpec, JSONType, Parameter, batch, card, current, step

from postmodern.compute import enable_decorator
from postmodern.config import ConfigError, load_settings

try:
    SETTINGS = load_settings()
except ConfigError as error:  # a missing variable of a chosen cloud path stops here, named
    sys.exit(f"recommender_flow: {error}")


class RecommenderFlow(FlowSpec):
    """Train, test and deploy a session-based next-item recommender from the warehouse's raw log."""

    start_date = Parameter("start_date", default="", help="First session date to read (YYYY-MM-DD; empty: all).")
    end_date = Parameter("end_date", default="", help="Last session date to read (YYYY-MM-DD; empty: all).")
    epochs = Parameter("epochs", default=8, type=int, help="Most training epochs (early stopping may end sooner).")
    search_size = Parameter(
        "search_size", default=2, type=int, help="Hyper-parameter candidates to train, each in its own task (0: all)."
    )
    search = Parameter("search", default="random", help="random: a seeded sample of the space; grid: it in order.")
    search_space = Parameter(
        "search_space",
        type=JSONType,
        default="{}",
        help="Values to try per hyper-parameter, over the defaults, e.g. '{\"embedding_dim\": [32, 64]}'.",
    )
    seed = Parameter("seed", default=0, type=int, help="Seed of the search sample and of training.")
    k = Parameter("k", default=20, type=int, help="Cut-off of the ranking metrics (HR@k, MRR@k).")
    gate_margin = Parameter(
        "gate_margin",
        default=0.01,
        type=float,
        help="Deploy only if MRR@k beats popularity and the deployed model by this relative margin (0.01: 1%).",
    )
    slice_floor = Parameter(
        "slice_floor",
        default=0.5,
        type=float,
        help="A slice collapses (and blocks deployment) below this share of the best reference's HR@k there.",
    )

    @step
    def start(self):
        """Check the settings and that the warehouse holds a raw log."""
        from postmodern.warehouse import check_raw_log

        self.settings_summary = SETTINGS.public_summary()
        self.raw_events = check_raw_log(SETTINGS)
        print(f"settings: {self.settings_summary}; {self.raw_events:,} raw events in the log")
        self.next(self.run_transformation)

    @card(type="blank", id="dbt")
    @step
    def run_transformation(self):
        """dbt build (models and tests) from Python; the card shows the DAG, the test results and the gate."""
        from postmodern.evaluation.cards import dbt_card_components
        from postmodern.transform import model_row_counts, run_transformation
        from postmodern.transform.dag import dag_from_manifest

        cause = f"Metaflow {current.pathspec} by {current.username}"
        build, self.data_quality = run_transformation(SETTINGS, cause)
        print(self.data_quality.describe())
        dag = dag_from_manifest(build.manifest, build.results)
        self.dbt_summary = build.summary()
        row_counts = model_row_counts(SETTINGS, dag)
        current.card.extend(dbt_card_components(dag, build.seconds, self.dbt_summary, row_counts, self.data_quality))
        self.next(self.get_dataset)

    @step
    def get_dataset(self):
        """Stop here if the data failed its quality gate; else read the session mart for the date window
        and the organisation's api key, and the product mart (categories and prices, for the slices)."""
        from postmodern.model.dataset import read_product_mart, read_session_mart
        from postmodern.transform import stop_unless_passed
        from postmodern.warehouse import connect

        stop_unless_passed(self.data_quality)
        warehouse = connect(SETTINGS, read_only=True)
        self.sessions = read_session_mart(warehouse, SETTINGS.application_api_key, self.start_date, self.end_date)
        self.products = read_product_mart(warehouse, SETTINGS.application_api_key)
        warehouse.close()
        print(f"{self.sessions.num_rows:,} sessions and {self.products.num_rows:,} products read from the marts")
        self.next(self.prepare_dataset)

    @step
    def prepare_dataset(self):
        """Time-based train/validation/test split, the SKU vocabulary, and the candidates to train."""
        from postmodern.model.dataset import prepare_splits
        from postmodern.model.search import search_candidates, search_space
        from postmodern.tracking import prepare_tracking

        self.splits = prepare_splits(self.sessions)
        self.candidates = search_candidates(search_space(self.search_space), self.search_size, self.search, self.seed)
        prepare_tracking(SETTINGS)
        print(self.splits.stats())
        print(f"{len(self.candidates)} candidate(s): {self.candidates}")
        self.next(self.train_model, foreach="candidates")

    @enable_decorator(batch(gpu=1, memory=24000), flag=SETTINGS.en_batch)
    @step
    def train_model(self):
        """Train one candidate with early stopping; its parameters and per-epoch metrics go to the tracker."""
        from postmodern.model.search import candidate_configs
        from postmodern.model.train import TrainConfig, available_cores, train_lstm
        from postmodern.tracking import tracked_run

        # candidates sharing this machine share its cores; on AWS Batch each task has its own
        threads = None if SETTINGS.en_batch else max(1, available_cores() // len(self.candidates))
        base = TrainConfig(epochs=self.epochs, seed=self.seed, num_threads=threads)
        self.candidate = self.input
        model_config, train_config = candidate_configs(self.candidate, self.splits.vocabulary.size_with_padding, base)
        tags = {"metaflow_pathspec": current.pathspec, "metaflow_run_id": current.run_id}
        with tracked_run(SETTINGS, f"lstm-{current.run_id}-{self.index}", tags) as tracker:
            tracker.log_params({**asdict(model_config), **asdict(train_config), **self.splits.stats()})
            result = train_lstm(
                self.splits,
                model_config,
                train_config,
                on_epoch=lambda record: tracker.log_metrics(asdict(record), step=record.epoch),
            )
            self.tracking_run_id = tracker.run_id
        self.model = result.model
        self.training_history = [asdict(record) for record in result.history]
        self.validation_mrr = result.best_validation_mrr
        self.next(self.select_model)

    @card(type="blank", id="tuning")
    @step
    def select_model(self, inputs):
        """Keep the candidate with the best validation MRR@20; the card compares them all."""
        from postmodern.evaluation.cards import tuning_card_components
        from postmodern.model.search import best_candidate
        from postmodern.tracking import tracked_run

        self.tuning_results = [
            {**task.candidate, "validation_mrr": task.validation_mrr, "tracking_run_id": task.tracking_run_id}
            for task in inputs
        ]
        best = inputs[best_candidate([task.validation_mrr for task in inputs])]
        self.candidate, self.model, self.training_history = best.candidate, best.model, best.training_history
        self.tracking_run_id = best.tracking_run_id
        self.merge_artifacts(
            inputs, exclude=["candidate", "model", "training_history", "validation_mrr", "tracking_run_id"]
        )
        with tracked_run(SETTINGS, "", {}, run_id=self.tracking_run_id) as tracker:
            tracker.set_tags({"selected": "true"})
        print(f"selected {self.candidate} (validation MRR@20 {best.validation_mrr:.4f})")
        current.card.extend(tuning_card_components(self.tuning_results, [task.training_history for task in inputs]))
        self.next(self.test_model)

    @card(type="blank", id="evaluation")
    @step
    def test_model(self):
        """The behavioural suite: the model, the baselines (popularity, co-occurrence, V-SKNN) and the deployed
        model on the same test cases; the gate's verdict on whether the model may replace the deployed one."""
        from postmodern.evaluation.gate import GateConfig, evaluate_for_deployment
        from postmodern.evaluation.session_suite import SuiteConfig
        from postmodern.evaluation.suite_card import suite_card_components
        from postmodern.model.baselines import baseline_rankers
        from postmodern.model.lstm import LSTMRanker
        from postmodern.tracking import log_suite_report, tracked_run

        rankers = [LSTMRanker(self.model), *baseline_rankers(self.splits)]  # the model under test first
        gate = GateConfig(metric=f"mrr@{self.k}", margin=self.gate_margin, slice_min_ratio=self.slice_floor)
        evaluation = evaluate_for_deployment(
            rankers, self.splits, self.products, SETTINGS.registry_dir, SuiteConfig(k=self.k), gate
        )
        report, self.gate_verdict = evaluation.report, evaluation.verdict
        self.serving_before = evaluation.serving_before
        self.suite_report = report.to_dict()
        self.test_results = {name: report.metrics(name) for name in report.rankers}
        report.save(SETTINGS.data_dir / "reports" / current.run_id / "suite_report.json")
        with tracked_run(SETTINGS, "", {}, run_id=self.tracking_run_id) as tracker:
            log_suite_report(tracker, report, self.gate_verdict)
        for name, metrics in self.test_results.items():
            print(f"{name:>12}: MRR@{self.k} {metrics[f'mrr@{self.k}']:.4f}  HR@{self.k} {metrics[f'hr@{self.k}']:.4f}")
        print(self.gate_verdict.describe())
        current.card.extend(suite_card_components(evaluation, self.training_history, self.splits.stats()))
        self.next(self.deploy)

    @step
    def deploy(self):
        """Bundle the model (weights, vocabulary, config, fallback, metadata); deploy it only when it passed
        the gate, else the model deployed before keeps serving."""
        from postmodern.evaluation.gate import deploy_if_passed
        from postmodern.model.bundle import make_bundle
        from postmodern.tracking import log_bundle, tracked_run

        version = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{current.run_id}"
        metadata = {
            "model_version": version,
            "metaflow_pathspec": current.pathspec,
            "tracking_run_id": self.tracking_run_id,
            "data_window": self.splits.boundaries,
            "test_metrics": self.test_results,
            "gate": self.gate_verdict.summary(),
        }
        self.model_bundle = make_bundle(self.model, self.splits.vocabulary, self.splits.train_counts, metadata)
        self.deployment = deploy_if_passed(self.model_bundle, self.gate_verdict, SETTINGS, self.serving_before)
        self.deployed_to = self.deployment.target
        with tracked_run(SETTINGS, "", {}, run_id=self.tracking_run_id) as tracker:
            log_bundle(tracker, self.model_bundle)
        print(self.deployment.message)
        self.next(self.end)

    @step
    def end(self):
        """Summarise where the results are."""
        lstm, popularity = (self.test_results[name][f"mrr@{self.k}"] for name in ("lstm", "popularity"))
        where = f"model at {self.deployed_to}" if self.deployment.deployed else "not deployed (the gate blocked it)"
        print(f"MRR@{self.k}: LSTM {lstm:.4f} vs popularity {popularity:.4f}; {where}")


if __name__ == "__main__":
    RecommenderFlow()
