"""Experiment tracking behind one small interface: MLflow (local store, default) or Comet.

Another tracker (Neptune, W&B...) is one more class with these six methods.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from postmodern.config import Settings

if TYPE_CHECKING:
    from postmodern.evaluation.gate import GateVerdict
    from postmodern.evaluation.suite import SuiteReport
    from postmodern.model.bundle import ModelBundle


class Tracker(Protocol):
    run_id: str | None

    def start(self, run_name: str, tags: dict[str, str], run_id: str | None = None) -> None:
        """Start a run, or resume the run `run_id` (a later step logging to the same run)."""

    def log_params(self, params: dict[str, object]) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_artifacts(self, directory: Path, artifact_path: str) -> None: ...

    def end(self, status: str = "FINISHED") -> None: ...


def make_tracker(settings: Settings, experiment: str = "post-modern-stack") -> Tracker:
    if settings.tracking_backend == "comet":
        from postmodern.tracking.comet_tracker import CometTracker

        return CometTracker(settings.comet_api_key.get_secret_value(), settings.comet_project)
    from postmodern.tracking.mlflow_tracker import MLflowTracker

    return MLflowTracker(settings.resolved_mlflow_uri, experiment)


def prepare_tracking(settings: Settings) -> None:
    """Create the tracking store and experiment once, before parallel training tasks would race to."""
    make_tracker(settings)


@contextmanager
def tracked_run(
    settings: Settings, run_name: str, tags: dict[str, str], run_id: str | None = None
) -> Iterator[Tracker]:
    """A started (or resumed) run that ends FAILED if the block raises."""
    tracker = make_tracker(settings)
    tracker.start(run_name, tags, run_id=run_id)
    try:
        yield tracker
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()


def log_bundle(tracker: Tracker, bundle: ModelBundle) -> None:
    """The model bundle as a run artifact, so a tracked run can be served as it is."""
    with tempfile.TemporaryDirectory() as scratch:
        tracker.log_artifacts(bundle.save(Path(scratch) / "bundle"), "model_bundle")


def log_suite_report(tracker: Tracker, report: SuiteReport, verdict: GateVerdict) -> None:
    """Every number of the behavioural suite for every ranker (`test_<ranker>_<metric>`), the gate's
    verdict (`gate_passed`: 1 or 0), and the report as a JSON artifact."""
    for ranker in report.rankers:
        tracker.log_metrics({f"test_{ranker}_{name}": value for name, value in report.metrics(ranker).items()})
    tracker.log_metrics({"gate_passed": float(verdict.passed)})
    with tempfile.TemporaryDirectory() as scratch:
        report.save(Path(scratch) / "suite_report.json")
        tracker.log_artifacts(Path(scratch), "behavioural_suite")
