"""The real thing on small data: CLI load into DuckDB, the Metaflow flow (dbt, PyTorch, MLflow), then the
HTTP server on loopback answering with the model the flow deployed. Every path lives in a temporary
workspace, which is the processes' working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from chromium import render
from serving_support import ServerProcess

from postmodern.model.search import DEFAULT_SEARCH_SPACE

REPO = Path(__file__).resolve().parents[1]
FLOW = REPO / "flows" / "recommender_flow.py"

# Metaflow embeds a card's components as base64 JSON in its HTML page.
READ_RUN = """
import base64, json, re
from metaflow import Flow, namespace
from metaflow.cards import get_cards
namespace(None)
run = Flow("RecommenderFlow").latest_run
cards = {step: [card.get() for card in get_cards(run[step].task, id=card_id)]
         for step, card_id in (("run_transformation", "dbt"), ("select_model", "tuning"), ("test_model", "evaluation"))}
print(json.dumps({
    "run_id": run.id,
    "successful": run.successful,
    "test_results": run.data.test_results,
    "suite_report": run.data.suite_report,
    "gate_passed": run.data.gate_verdict.passed,
    "deployed_to": run.data.deployed_to,
    "dbt_summary": run.data.dbt_summary,
    "cards": {step: base64.b64decode(re.search(r'__MF_DATA__\\["[^"]+"\\] = "([^"]+)"', html[0]).group(1)).decode()
              for step, html in cards.items() if html},
    "test_model_card_html": cards["test_model"][0],
}))
"""


def run(command, workspace, env, timeout):
    result = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def assert_tracked(database: Path, epochs: int, candidates: int) -> None:
    """One MLflow run per candidate, each with its parameters, one validation point per epoch and its task's
    pathspec; the selected one also has the test metrics and the bundle."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("post-modern-stack")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == candidates
    best_validation = {}
    for run in runs:
        assert "/train_model/" in run.data.tags["metaflow_pathspec"]
        assert int(run.data.params["embedding_dim"]) in DEFAULT_SEARCH_SPACE["embedding_dim"]
        history = client.get_metric_history(run.info.run_id, "validation_mrr")
        assert 1 <= len(history) <= epochs
        best_validation[run.info.run_id] = max(point.value for point in history)
    (selected,) = [run for run in runs if run.data.tags.get("selected") == "true"]
    assert best_validation[selected.info.run_id] == max(best_validation.values())
    assert 0 < selected.data.metrics["test_lstm_mrr_at_20"] <= 1
    assert selected.data.metrics["gate_passed"] == 1.0
    assert "test_popularity_subsequent/f1_at_20" in selected.data.metrics  # the whole suite, names spelled for MLflow
    assert "test_lstm_hr_by_popularity/top 1pct" in selected.data.metrics
    assert "test_vsknn_mrr_at_20" in selected.data.metrics and "test_cooccurrence_mrr_at_20" in selected.data.metrics
    suite = {item.path for item in client.list_artifacts(selected.info.run_id, "behavioural_suite")}
    assert suite == {"behavioural_suite/suite_report.json"}
    artifacts = {item.path for item in client.list_artifacts(selected.info.run_id, "model_bundle")}
    assert "model_bundle/weights.pt" in artifacts and "model_bundle/metadata.json" in artifacts


@pytest.mark.e2e
def test_flow_trains_tests_deploys_and_the_server_answers(tmp_path, tiny_data):
    env = {**os.environ, "USERNAME": "e2e", "PYTHONUNBUFFERED": "1", "MAX_SESSIONS": "2500"}
    for name in ("DUCKDB_PATH", "DATA_DIR", "REGISTRY_DIR", "MLFLOW_TRACKING_URI", "WAREHOUSE"):
        env.pop(name, None)  # the defaults, relative to the workspace
    python = sys.executable

    loaded = run([python, "-m", "postmodern.cli", "load", "--path", str(tiny_data), "--quiet"], tmp_path, env, 120)
    assert "loaded" in loaded and "2,500 sessions" in loaded

    # The LSTM is not expected to beat popularity on so little data: this run lets it be up to 50% worse.
    output = run(
        [
            python,
            str(FLOW),
            "run",
            "--epochs",
            "2",
            "--search_size",
            "2",
            "--max-workers",
            "2",
            "--gate_margin",
            "-0.5",
        ],
        tmp_path,
        env,
        900,
    )
    assert "MRR@20: LSTM" in output and "gate passed" in output and "selected {" in output

    details = json.loads(run([python, "-c", READ_RUN], tmp_path, env, 120).strip().splitlines()[-1])
    assert details["successful"] and details["gate_passed"]
    assert details["dbt_summary"].get("error") is None and details["dbt_summary"]["pass"] > 10
    report = details["suite_report"]
    assert report["rankers"] == ["lstm", "popularity", "cooccurrence", "vsknn"] and report["candidate"] == "lstm"
    assert report["dataset"]["cases"] > 100 and report["dataset"]["sessions"] > 20
    for metrics in details["test_results"].values():  # every ranker on the same cases
        assert 0 < metrics["mrr@20"] <= metrics["hr@20"] <= 1
        assert 0 < metrics["ndcg@20"] <= 1 and 0 < metrics["subsequent/recall@20"] <= 1
        assert sum(value for name, value in metrics.items() if name.startswith("hr_by_category/")) > 0
    saved = json.loads((tmp_path / "data" / "reports" / details["run_id"] / "suite_report.json").read_text())
    assert saved["tests"] == report["tests"]
    assert "sessions" in details["cards"]["run_transformation"]  # the mart is on the DAG card
    assert "Hyper-parameter search" in details["cards"]["select_model"]
    assert "Behavioural tests of" in details["cards"]["test_model"] and "**PASSED**" in details["cards"]["test_model"]
    page = render(details["test_model_card_html"], tmp_path / "chromium")
    assert page.script_errors == [] and page.console_errors == []
    assert page.charts == 6 and page.drawn_charts == 6
    registry = tmp_path / "data" / "registry"
    version = (registry / "LATEST").read_text().strip()
    assert Path(details["deployed_to"]).resolve() == (registry / version).resolve()
    assert_tracked(tmp_path / "data" / "mlflow.db", epochs=2, candidates=2)

    # The default gate: a one-epoch model beats neither popularity nor the deployed model by 1%.
    output = run([python, str(FLOW), "run", "--epochs", "1"], tmp_path, env, 900)
    assert "deployment blocked: gate blocked lstm" in output and f"{version} keeps serving" in output
    assert "not deployed (the gate blocked it)" in output and "Traceback" not in output
    blocked = json.loads(run([python, "-c", READ_RUN], tmp_path, env, 120).strip().splitlines()[-1])
    assert blocked["successful"] and not blocked["gate_passed"] and blocked["deployed_to"] is None
    assert blocked["suite_report"]["rankers"] == ["lstm", "popularity", "cooccurrence", "vsknn", "deployed"]
    assert blocked["test_results"]["deployed"]["mrr@20"] == pytest.approx(details["test_results"]["lstm"]["mrr@20"])
    assert "**BLOCKED**" in blocked["cards"]["test_model"]
    assert (registry / "LATEST").read_text().strip() == version  # the first model keeps serving

    bundle = registry / version
    known_sku = json.loads((bundle / "vocab.json").read_text())[0]
    server = ServerProcess(tmp_path, env)
    try:
        response = httpx.post(
            f"{server.base_url}/invocations", content=json.dumps({"sessions": [[known_sku]], "k": 5}), timeout=10
        )
        assert response.status_code == 200
        body = response.json()
        assert body["model_version"] == version
        assert len(body["recommendations"][0]) == 5 and body["fallback"] == [False]
        assert httpx.post(f"{server.base_url}/invocations", content=b"{nope", timeout=10).status_code == 422
    finally:
        server.stop()


@pytest.mark.e2e
def test_the_flow_stops_before_training_when_the_data_fails_its_tests(tmp_path):
    data = tmp_path / "coveo"
    data.mkdir()
    header = "session_id_hash,event_type,product_action,product_sku_hash,server_timestamp_epoch_ms,hashed_url\n"
    rows = [f"s{i},event_product,detail,sku{i % 7},{1550000000000 + i * 1000},u" for i in range(40)]
    (data / "browsing_train.csv").write_text(header + "\n".join(rows) + "\n")
    (data / "sku_to_content.csv").write_text(  # six of the seven SKUs are missing from the catalogue
        "product_sku_hash,description_vector,category_hash,image_vector,price_bucket\nsku0,,c1/c2,,3\n"
    )
    env = {**os.environ, "USERNAME": "e2e", "PYTHONUNBUFFERED": "1"}
    for name in ("DUCKDB_PATH", "DATA_DIR", "REGISTRY_DIR", "MLFLOW_TRACKING_URI", "WAREHOUSE", "MAX_SESSIONS"):
        env.pop(name, None)
    run([sys.executable, "-m", "postmodern.cli", "load", "--path", str(data), "--quiet"], tmp_path, env, 120)
    flow = subprocess.run(
        [sys.executable, str(FLOW), "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    output = flow.stdout + flow.stderr
    assert flow.returncode != 0
    assert "data quality gate: training stopped" in output and "share_missing_below" in output
    assert "sku3" in output  # a sample of the offending rows
    assert "train_model" not in output  # it never started
    assert not (tmp_path / "data" / "registry").exists()
