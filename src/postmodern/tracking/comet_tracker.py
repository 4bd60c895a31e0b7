"""Comet tracking, the original project's choice, when COMET_API_KEY is set (optional extra `comet`)."""

from __future__ import annotations

from pathlib import Path


class CometTracker:
    def __init__(self, api_key: str, project: str):
        try:
            import comet_ml
        except ImportError as error:
            raise RuntimeError(
                "COMET_API_KEY is set but comet_ml is not installed: pip install -c constraints.txt '.[comet]'"
            ) from error
        self.comet_ml = comet_ml
        self.api_key = api_key
        self.project = project
        self.experiment = None
        self.run_id: str | None = None

    def start(self, run_name: str, tags: dict[str, str], run_id: str | None = None) -> None:
        if run_id:
            self.experiment = self.comet_ml.ExistingExperiment(api_key=self.api_key, experiment_key=run_id)
        else:
            self.experiment = self.comet_ml.Experiment(
                api_key=self.api_key, project_name=self.project, log_code=False, auto_output_logging=False
            )
            self.experiment.set_name(run_name)
            self.set_tags(tags)
        self.run_id = self.experiment.get_key()

    def log_params(self, params: dict[str, object]) -> None:
        self.experiment.log_parameters(params)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.experiment.add_tags([f"{key}:{value}" for key, value in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.experiment.log_metrics(metrics, step=step)

    def log_artifacts(self, directory: Path, artifact_path: str) -> None:
        for path in sorted(Path(directory).rglob("*")):
            if path.is_file():
                self.experiment.log_asset(str(path), file_name=f"{artifact_path}/{path.relative_to(directory)}")

    def end(self, status: str = "FINISHED") -> None:
        self.experiment.end()
