"""The Post-Modern Stack, end to end: dbt turns the raw log into sessions; every model family (the LSTM's
hyper-parameter candidates in parallel, the baselines tuned on their grids) is fitted and judged on the same
validation cases; the champion (a family, or a blend of them) is refit on every session before the test set,
goes through a behavioural suite beside the other families and the deployed model on the same test cases, and is
deployed only when it passes the gate.

    python flows/recommender_flow.py run
    python flows/recommender_flow.py run --search_size 8 --max-workers 4
    python flows/recommender_flow.py run --search_space '{"embedding_dim": [64, 128], "vsknn": {"k": [50, 100]}}'
    python flows/recommender_flow.py run --test_from 2016-01-24T10:41:10 --keep_repeats true   # a published protocol
    python flows/recommender_flow.py card view run_transformation --id dbt
    python flows/recommender_flow.py card view select_model --id tuning
    python flows/recommender_flow.py card view test_model --id evaluation
    python flows/recommender_flow.py card get test_model --id evaluation evaluation.html   # no browser here

Every step is a few lines that call tested functions of the `postmodern` package.
"""

from __future__ import annotations

import os
import sys
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

DEFAULT_FAMILIES = "popularity,cooccurrence,vsknn,lstm"
BASELINES = ("cooccurrence", "vsknn")  # shipped beside the champion for the demo's comparison (popularity: always)


class RecommenderFlow(FlowSpec):
    """Train, choose, test and deploy a session-based next-item recommender from the warehouse's raw log."""

    start_date = Parameter("start_date", default="", help="First session date to read (YYYY-MM-DD; empty: all).")
    end_date = Parameter("end_date", default="", help="Last session date to read (YYYY-MM-DD; empty: all).")
    test_from = Parameter(
        "test_from",
        default="",
        help="Sessions starting at or after this instant (epoch ms or ISO 8601, UTC) are the test set, as published "
        "protocols split; empty: the latest 10% of sessions.",
    )
    keep_repeats = Parameter(
        "keep_repeats",
        default=False,
        type=bool,
        help="Keep consecutive repeats of a SKU (published benchmarks do); by default they collapse into one.",
    )
    families = Parameter(
        "families",
        default=DEFAULT_FAMILIES,
        help="Comma-separated model families to fit and compare (blends of them are tried too, unless --blends false).",
    )
    blends = Parameter("blends", default=True, type=bool, help="Try blends of the families' best fits.")
    refit = Parameter(
        "refit",
        default=True,
        type=bool,
        help="Refit the chosen configurations on training and validation sessions together before the test.",
    )
    epochs = Parameter("epochs", default=8, type=int, help="Most training epochs (early stopping may end sooner).")
    search_size = Parameter(
        "search_size", default=2, type=int, help="LSTM candidates to train, each in its own task (0: all)."
    )
    search = Parameter("search", default="random", help="random: a seeded sample of the space; grid: it in order.")
    search_space = Parameter(
        "search_space",
        type=JSONType,
        default="{}",
        help="Values to try per hyper-parameter, over the defaults: LSTM knobs at the top level, other families' "
        'under their name, e.g. \'{"embedding_dim": [32, 64], "vsknn": {"k": [50]}}\'.',
    )
    seed = Parameter("seed", default=0, type=int, help="Seed of the search sample, the validation sample and training.")
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
        """Time-based train/validation/test split, the SKU vocabulary, and the candidates to fit: one task per
        LSTM point of the search, one per baseline family (its grid)."""
        from postmodern.model.dataset import prepare_splits, split_config
        from postmodern.model.search import family_candidates
        from postmodern.tracking import prepare_tracking

        self.split_config = split_config(self.test_from, self.keep_repeats)
        self.splits = prepare_splits(self.sessions, self.split_config)
        families = [name.strip() for name in self.families.split(",") if name.strip()]
        self.candidates = family_candidates(families, self.search_space, self.search_size, self.search, self.seed)
        prepare_tracking(SETTINGS)
        print(self.splits.stats())
        print(f"{len(self.candidates)} candidate(s): {self.candidates}")
        self.next(self.train_model, foreach="candidates")

    @enable_decorator(batch(gpu=1, memory=24000), flag=SETTINGS.en_batch)
    @step
    def train_model(self):
        """Fit one candidate (an LSTM point with early stopping, or a family's grid) and score it on the validation
        cases every candidate shares; its parameters and metrics go to the tracker."""
        from postmodern.model.families import FitContext, family
        from postmodern.model.train import available_cores
        from postmodern.tracking import tracked_run

        self.candidate = self.input
        # candidates sharing this machine share its cores; on AWS Batch each task has its own
        threads = None if SETTINGS.en_batch else max(1, available_cores() // len(self.candidates))
        name = self.candidate["family"]
        tags = {"metaflow_pathspec": current.pathspec, "metaflow_run_id": current.run_id, "family": name}
        with tracked_run(SETTINGS, f"{name}-{current.run_id}-{self.index}", tags) as tracker:
            space = {
                knob: values[0] if len(values) == 1 else values for knob, values in self.candidate["space"].items()
            }
            tracker.log_params({"family": name, **space, **self.splits.stats()})
            context = FitContext.for_splits(
                self.splits,
                epochs=self.epochs,
                seed=self.seed,
                num_threads=threads,
                on_epoch=lambda record: tracker.log_metrics(record, step=record["epoch"]),
            )
            self.fit = family(name).fit(self.splits, self.candidate["space"], context)
            tracker.log_params({f"chosen_{knob}": value for knob, value in self.fit.params.items()})
            tracker.log_metrics({f"validation_{metric}": value for metric, value in self.fit.validation.items()})
            self.tracking_run_id = tracker.run_id
        print(f"{name}: validation MRR@20 {self.fit.validation_mrr:.4f} with {self.fit.params}")
        self.next(self.select_model)

    @card(type="blank", id="tuning")
    @step
    def select_model(self, inputs):
        """Each family's best fit, the blends of them, and the champion: the best by validation MRR@20. The card
        compares every candidate and family."""
        from postmodern.evaluation.cards import tuning_card_components
        from postmodern.model.champion import select_champion
        from postmodern.model.families import FitContext
        from postmodern.tracking import tracked_run

        fits = [task.fit for task in inputs]
        run_ids = {id(task.fit.ranker): task.tracking_run_id for task in inputs}
        self.merge_artifacts(inputs, exclude=["candidate", "fit", "tracking_run_id"])
        context = FitContext.for_splits(self.splits, seed=self.seed)
        self.selection = select_champion(fits, self.splits, context, blends=self.blends)
        champion = self.selection.champion_fit
        self.champion = self.selection.champion
        self.tracking_run_id = run_ids.get(id(champion.ranker))
        if self.tracking_run_id is None:  # a blend: a run of its own
            with tracked_run(
                SETTINGS, f"{self.champion}-{current.run_id}", {"metaflow_pathspec": current.pathspec}
            ) as tracker:
                tracker.log_params({"family": self.champion, **champion.params})
                tracker.log_metrics({f"validation_{metric}": value for metric, value in champion.validation.items()})
                self.tracking_run_id = tracker.run_id
        with tracked_run(SETTINGS, "", {}, run_id=self.tracking_run_id) as tracker:
            tracker.set_tags({"selected": "true"})
        print(f"champion: {self.champion} {champion.params} (validation MRR@20 {champion.validation_mrr:.4f})")
        current.card.extend(tuning_card_components(fits, self.selection))
        self.next(self.refit_models)

    @step
    def refit_models(self):
        """Fit every finalist's chosen configuration again on training and validation sessions together (with
        --refit; the LSTM trains as many epochs as it did best), so the models tested know the latest sessions."""
        from postmodern.model.champion import refit_finalists
        from postmodern.model.dataset import refit_splits
        from postmodern.model.families import FitContext

        if self.refit:
            self.test_splits = refit_splits(self.sessions, self.split_config)
            context = FitContext(validation=None, epochs=self.epochs, seed=self.seed)
            self.rankers = refit_finalists(self.selection, self.test_splits, context)
        else:
            self.test_splits = self.splits
            self.rankers = {name: fit.ranker for name, fit in self.selection.finalists.items()}
        print(f"{len(self.rankers)} model(s) for the test: {', '.join(self.rankers)}")
        self.next(self.test_model)

    @card(type="blank", id="evaluation")
    @step
    def test_model(self):
        """The behavioural suite: the champion, every other family's best and the deployed model on the same test
        cases; the gate's verdict on whether the champion may replace the deployed model."""
        from postmodern.evaluation.gate import GateConfig, evaluate_for_deployment
        from postmodern.evaluation.session_suite import SuiteConfig
        from postmodern.evaluation.suite_card import suite_card_components
        from postmodern.tracking import log_suite_report, tracked_run

        champion = self.rankers[self.champion]
        rankers = [champion, *(ranker for name, ranker in self.rankers.items() if name != self.champion)]
        gate = GateConfig(metric=f"mrr@{self.k}", margin=self.gate_margin, slice_min_ratio=self.slice_floor)
        evaluation = evaluate_for_deployment(
            rankers, self.test_splits, self.products, SETTINGS.registry_dir, SuiteConfig(k=self.k), gate, self.selection
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
        current.card.extend(suite_card_components(evaluation, self.test_splits.stats()))
        self.next(self.deploy)

    @step
    def deploy(self):
        """Bundle the champion (its family's state, vocabulary, fallback, metadata); deploy it only when it passed
        the gate, else the model deployed before keeps serving."""
        from postmodern.evaluation.gate import deploy_if_passed
        from postmodern.model.bundle import make_bundle
        from postmodern.tracking import log_bundle, tracked_run

        version = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{current.run_id}"
        champion = self.selection.champion_fit
        metadata = {
            "model_version": version,
            "metaflow_pathspec": current.pathspec,
            "tracking_run_id": self.tracking_run_id,
            "params": champion.params,
            "data_window": self.test_splits.boundaries,
            "refit": self.refit,
            "validation_metrics": champion.validation,
            "test_metrics": self.test_results,
            "gate": self.gate_verdict.summary(),
        }
        baselines = {name: r for name, r in self.rankers.items() if name in BASELINES and name != self.champion}
        self.model_bundle = make_bundle(
            self.rankers[self.champion], self.test_splits.vocabulary, metadata, self.products, companions=baselines
        )
        self.deployment = deploy_if_passed(self.model_bundle, self.gate_verdict, SETTINGS, self.serving_before)
        self.deployed_to = self.deployment.target
        with tracked_run(SETTINGS, "", {}, run_id=self.tracking_run_id) as tracker:
            log_bundle(tracker, self.model_bundle)
        print(self.deployment.message)
        self.next(self.end)

    @step
    def end(self):
        """Summarise where the results are."""
        metric = f"mrr@{self.k}"
        champion, popularity = self.test_results[self.champion][metric], self.test_results.get("popularity", {})
        beside = f" vs popularity {popularity[metric]:.4f}" if popularity else ""
        where = f"model at {self.deployed_to}" if self.deployment.deployed else "not deployed (the gate blocked it)"
        print(f"MRR@{self.k}: champion {self.champion} {champion:.4f}{beside}; {where}")


if __name__ == "__main__":
    RecommenderFlow()
