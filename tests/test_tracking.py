"""The tracker interface against a real local MLflow store, and Comet against a stand-in `comet_ml` module."""

import sys
import types
from pathlib import Path

import pytest
from conftest import make_settings

from postmodern.tracking import make_tracker, prepare_tracking, tracked_run


def test_mlflow_run_holds_params_curves_tags_and_artifacts_and_resumes(tmp_path):
    from mlflow.tracking import MlflowClient

    settings = make_settings(tmp_path)
    prepare_tracking(settings)
    prepare_tracking(settings)  # a second task finding the experiment is fine
    with tracked_run(settings, "lstm-1-0", {"metaflow_pathspec": "RecommenderFlow/1/train_model/3"}) as tracker:
        tracker.log_params({"embedding_dim": 64, "loss": "sampled"})
        for epoch, mrr in enumerate([0.1, 0.2, float("nan")], start=1):
            tracker.log_metrics({"validation_mrr": mrr, "mrr@20": mrr}, step=epoch)
        run_id = tracker.run_id
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "weights.pt").write_bytes(b"w")
    with tracked_run(settings, "", {}, run_id=run_id) as tracker:  # a later step, the same run
        tracker.set_tags({"selected": "true"})
        tracker.log_artifacts(bundle, "model_bundle")

    client = MlflowClient(tracking_uri=settings.resolved_mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"embedding_dim": "64", "loss": "sampled"}
    assert run.data.tags["metaflow_pathspec"] == "RecommenderFlow/1/train_model/3"
    assert run.data.tags["selected"] == "true"
    assert [m.value for m in client.get_metric_history(run_id, "validation_mrr")] == [0.1, 0.2]  # NaN skipped
    assert client.get_metric_history(run_id, "mrr_at_20")
    assert [a.path for a in client.list_artifacts(run_id, "model_bundle")] == ["model_bundle/weights.pt"]


def test_a_failing_block_ends_its_run_failed(tmp_path):
    from mlflow.tracking import MlflowClient

    settings = make_settings(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), tracked_run(settings, "failing", {}) as tracker:
        run_id = tracker.run_id
        raise RuntimeError("boom")
    assert MlflowClient(tracking_uri=settings.resolved_mlflow_uri).get_run(run_id).info.status == "FAILED"


class FakeExperiment:
    created: list["FakeExperiment"] = []

    def __init__(self, api_key=None, project_name=None, experiment_key=None, **options):
        self.key = experiment_key or f"key{len(FakeExperiment.created)}"
        self.project, self.name, self.tags, self.params, self.metrics, self.assets = project_name, None, [], {}, [], []
        self.ended = False
        FakeExperiment.created.append(self)

    def set_name(self, name):
        self.name = name

    def add_tags(self, tags):
        self.tags += tags

    def get_key(self):
        return self.key

    def log_parameters(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        self.metrics.append((metrics, step))

    def log_asset(self, path, file_name):
        self.assets.append((Path(path).read_bytes(), file_name))

    def end(self):
        self.ended = True


def test_comet_is_chosen_by_its_key_and_speaks_the_same_interface(tmp_path, monkeypatch):
    fake = types.SimpleNamespace(Experiment=FakeExperiment, ExistingExperiment=FakeExperiment)
    monkeypatch.setitem(sys.modules, "comet_ml", fake)
    settings = make_settings(tmp_path, comet_api_key="secret-key")
    with tracked_run(settings, "lstm-1-0", {"metaflow_pathspec": "RecommenderFlow/1/train_model/3"}) as tracker:
        tracker.log_params({"embedding_dim": 64})
        tracker.log_metrics({"validation_mrr": 0.2}, step=1)
        run_id = tracker.run_id
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "config.json").write_text("{}")
    with tracked_run(settings, "", {}, run_id=run_id) as tracker:
        tracker.set_tags({"selected": "true"})
        tracker.log_artifacts(tmp_path / "bundle", "model_bundle")
    first, resumed = FakeExperiment.created[-2:]
    assert first.name == "lstm-1-0" and first.tags == ["metaflow_pathspec:RecommenderFlow/1/train_model/3"]
    assert first.params == {"embedding_dim": 64} and first.metrics == [({"validation_mrr": 0.2}, 1)]
    assert resumed.key == run_id and resumed.tags == ["selected:true"]
    assert resumed.assets == [(b"{}", "model_bundle/config.json")]
    assert first.ended and resumed.ended
    assert type(make_tracker(make_settings(tmp_path))).__name__ == "MLflowTracker"
