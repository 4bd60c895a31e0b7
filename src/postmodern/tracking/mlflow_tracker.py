"""MLflow tracking to a local SQLite store by default: no server to run, `mlflow ui` to browse."""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path

# MLflow accepts letters, digits and `_-. /:` in metric names; the suite's labels say "@20", "top 1%", "10+".
SPELLED_OUT = {"@": "_at_", "%": "pct", "+": "plus"}


def mlflow_metric_name(name: str) -> str:
    for character, spelled in SPELLED_OUT.items():
        name = name.replace(character, spelled)
    return re.sub(r"[^\w\-. /:]", "_", name)


class MLflowTracker:
    def __init__(self, tracking_uri: str, experiment: str):
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        if tracking_uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(experiment) is None:
            # Artifacts beside the database, not in the current directory.
            artifacts = Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts"
            # a parallel task may create it first; set_experiment below fails if it really is missing
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                mlflow.create_experiment(experiment, artifact_location=artifacts.resolve().as_uri())
        mlflow.set_experiment(experiment)
        self.run_id: str | None = None

    def start(self, run_name: str, tags: dict[str, str], run_id: str | None = None) -> None:
        run = self.mlflow.start_run(run_id=run_id) if run_id else self.mlflow.start_run(run_name=run_name, tags=tags)
        self.run_id = run.info.run_id

    def log_params(self, params: dict[str, object]) -> None:
        self.mlflow.log_params({name: str(value) for name, value in params.items()})

    def set_tags(self, tags: dict[str, str]) -> None:
        self.mlflow.set_tags(tags)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        finite = {
            mlflow_metric_name(name): float(value)
            for name, value in metrics.items()
            if value is not None and math.isfinite(float(value))
        }
        self.mlflow.log_metrics(finite, step=step)

    def log_artifacts(self, directory: Path, artifact_path: str) -> None:
        self.mlflow.log_artifacts(str(directory), artifact_path=artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)
