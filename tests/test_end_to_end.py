"""The real thing on small data: CLI load into DuckDB, the Metaflow flow (dbt, PyTorch, MLflow), then the
HTTP server on loopback answering with the model the flow deployed. Every path lives in a temporary
workspace, which is the processes' working directory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from chromium import render
from serving_support import ServerProcess

from postmodern.model.families import family

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
    "champion": run.data.champion,
    "finalists": {name: fit.validation_mrr for name, fit in run.data.selection.finalists.items()},
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

# Where each step's task of the latest run came from: a resumed run's clones name their origin.
READ_ORIGINS = """
import json
from metaflow import Flow, namespace
namespace(None)
run = Flow("RecommenderFlow").latest_run
steps = ("start", "run_transformation", "train_model")
print(json.dumps({"run_id": run.id, **{step: run[step].task.origin_pathspec for step in steps}}))
"""


# The shortest run that still trains, tests and deploys: three families, one candidate each, no blend, no refit.
QUICK_FLOW = ["--epochs", "1", "--search_size", "1", "--families", "popularity,cooccurrence,lstm"]
QUICK_FLOW += ["--blends", "false", "--refit", "false", "--gate_margin", "-1"]


def run_quick_flow(workspace, env) -> subprocess.CompletedProcess:
    command = [sys.executable, str(FLOW), "run", *QUICK_FLOW]
    return subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=600)


def run(command, workspace, env, timeout):
    result = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def assert_tracked(database: Path, epochs: int, candidates: int, champion: str) -> None:
    """One MLflow run per candidate, each with its family, parameters and validation metrics, the LSTM's with one
    validation point per epoch and its task's pathspec; the champion's (a blend's run of its own) is selected and
    has the test metrics and the bundle."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    experiment = client.get_experiment_by_name("post-modern-stack")
    runs = client.search_runs([experiment.experiment_id])
    trained = [run for run in runs if "/train_model/" in run.data.tags["metaflow_pathspec"]]
    assert len(trained) == candidates
    assert len(runs) == candidates + (champion == "blend")
    for run in trained:
        assert run.data.params["family"] == run.data.tags["family"] and "validation_mrr_at_20" in run.data.metrics
        if run.data.params["family"] == "lstm":
            assert int(run.data.params["embedding_dim"]) in family("lstm").search_space["embedding_dim"]
            history = client.get_metric_history(run.info.run_id, "validation_mrr")
            assert 1 <= len(history) <= epochs
    (selected,) = [run for run in runs if run.data.tags.get("selected") == "true"]
    assert selected.data.params["family"] == champion
    assert 0 < selected.data.metrics[f"test_{champion}_mrr_at_20"] <= 1
    assert selected.data.metrics["gate_passed"] == 1.0
    assert "test_popularity_subsequent/f1_at_20" in selected.data.metrics  # the whole suite, names spelled for MLflow
    assert f"test_{champion}_hr_by_popularity/top 1pct" in selected.data.metrics
    assert "test_vsknn_mrr_at_20" in selected.data.metrics and "test_cooccurrence_mrr_at_20" in selected.data.metrics
    suite = {item.path for item in client.list_artifacts(selected.info.run_id, "behavioural_suite")}
    assert suite == {"behavioural_suite/suite_report.json"}
    artifacts = {item.path for item in client.list_artifacts(selected.info.run_id, "model_bundle")}
    assert {"model_bundle/model", "model_bundle/metadata.json"} <= artifacts


@pytest.mark.e2e
def test_flow_trains_tests_deploys_and_the_server_answers(tmp_path, tiny_data):
    env = {**os.environ, "USERNAME": "e2e", "PYTHONUNBUFFERED": "1", "MAX_SESSIONS": "2500"}
    for name in ("DUCKDB_PATH", "DATA_DIR", "REGISTRY_DIR", "MLFLOW_TRACKING_URI", "WAREHOUSE"):
        env.pop(name, None)  # the defaults, relative to the workspace
    python = sys.executable

    loaded = run([python, "-m", "postmodern.cli", "load", "--path", str(tiny_data), "--quiet"], tmp_path, env, 120)
    assert "loaded" in loaded and "2,500 sessions" in loaded

    # Nothing is expected to beat popularity by much on so little data: this run lets the champion be 50% worse.
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
    assert "MRR@20: champion" in output and "gate passed" in output and "champion: " in output

    details = json.loads(run([python, "-c", READ_RUN], tmp_path, env, 120).strip().splitlines()[-1])
    assert details["successful"] and details["gate_passed"]
    champion = details["champion"]
    # the champion has the best validation MRR@20 of every family and blend
    assert set(details["finalists"]) == {"popularity", "cooccurrence", "vsknn", "lstm", "blend"}
    assert details["finalists"][champion] == max(details["finalists"].values())
    assert details["dbt_summary"].get("error") is None and details["dbt_summary"]["pass"] > 10
    report = details["suite_report"]
    assert report["candidate"] == champion and report["rankers"][0] == champion
    assert sorted(report["rankers"]) == sorted(details["finalists"])  # every family's best, refit, on the same cases
    assert report["dataset"]["cases"] > 100 and report["dataset"]["sessions"] > 20
    for metrics in details["test_results"].values():  # every ranker on the same cases
        assert 0 < metrics["mrr@20"] <= metrics["hr@20"] <= 1
        assert 0 < metrics["ndcg@20"] <= 1 and 0 < metrics["subsequent/recall@20"] <= 1
        assert sum(value for name, value in metrics.items() if name.startswith("hr_by_category/")) > 0
    saved = json.loads((tmp_path / "data" / "reports" / details["run_id"] / "suite_report.json").read_text())
    assert saved["tests"] == report["tests"]
    assert "sessions" in details["cards"]["run_transformation"]  # the mart is on the DAG card
    assert (
        "Model selection" in details["cards"]["select_model"]
        and f"champion is **{champion}**" in details["cards"]["select_model"]
    )
    assert "Behavioural tests of" in details["cards"]["test_model"] and "**PASSED**" in details["cards"]["test_model"]
    assert f"Champion: {champion} (" in details["cards"]["test_model"]  # the verdict names the family that won
    page = render(details["test_model_card_html"], tmp_path / "chromium")
    assert page.script_errors == [] and page.console_errors == []
    assert page.charts == 6 and page.drawn_charts == 6
    registry = tmp_path / "data" / "registry"
    version = (registry / "LATEST").read_text().strip()
    assert Path(details["deployed_to"]).resolve() == (registry / version).resolve()
    assert json.loads((registry / version / "metadata.json").read_text())["family"] == champion
    assert_tracked(tmp_path / "data" / "mlflow.db", epochs=2, candidates=5, champion=champion)

    # The default gate: a one-epoch champion beats neither popularity nor the deployed model by 1%.
    output = run([python, str(FLOW), "run", "--epochs", "1"], tmp_path, env, 900)
    assert "deployment blocked: gate blocked" in output and f"{version} keeps serving" in output
    assert "not deployed (the gate blocked it)" in output and "Traceback" not in output
    blocked = json.loads(run([python, "-c", READ_RUN], tmp_path, env, 120).strip().splitlines()[-1])
    assert blocked["successful"] and not blocked["gate_passed"] and blocked["deployed_to"] is None
    assert blocked["suite_report"]["rankers"][-1] == "deployed"
    if blocked["champion"] == champion:  # the same family, fitted alike: the deployed model scores the same
        assert blocked["test_results"]["deployed"]["mrr@20"] == pytest.approx(
            details["test_results"][champion]["mrr@20"]
        )
    assert "**BLOCKED**" in blocked["cards"]["test_model"]
    assert (registry / "LATEST").read_text().strip() == version  # the first model keeps serving

    # Where the LSTM cannot learn (a learning rate of 1e-6, one epoch, no counts to mix in), a baseline wins on
    # validation, and the flow deploys it.
    weak_lstm = json.dumps({"learning_rate": 1e-6, "item_pairs": False, "item_transitions": False})
    output = run(
        [
            python,
            str(FLOW),
            "run",
            "--epochs",
            "1",
            "--search_size",
            "1",
            "--families",
            "cooccurrence,vsknn,lstm",
            "--search_space",
            weak_lstm,
            "--blends",
            "false",
            "--gate_margin",
            "-1",
        ],
        tmp_path,
        env,
        900,
    )
    baseline = json.loads(run([python, "-c", READ_RUN], tmp_path, env, 120).strip().splitlines()[-1])
    assert baseline["champion"] in ("cooccurrence", "vsknn") and baseline["gate_passed"]
    assert baseline["finalists"]["lstm"] < baseline["finalists"][baseline["champion"]]
    baseline_version = (registry / "LATEST").read_text().strip()
    assert baseline_version != version and f"model {baseline_version} deployed" in output
    assert json.loads((registry / baseline_version / "metadata.json").read_text())["family"] == baseline["champion"]

    bundle = registry / baseline_version
    known_sku = json.loads((bundle / "vocab.json").read_text())[0]
    server = ServerProcess(tmp_path, env)
    try:
        response = httpx.post(
            f"{server.base_url}/invocations", content=json.dumps({"sessions": [[known_sku]], "k": 5}), timeout=10
        )
        assert response.status_code == 200
        body = response.json()
        assert body["model_version"] == baseline_version and body["model_family"] == baseline["champion"]
        assert len(body["recommendations"][0]) == 5 and body["fallback"] == [False]
        assert httpx.post(f"{server.base_url}/invocations", content=b"{nope", timeout=10).status_code == 422
        # the deployed bundle carries its products' catalogue from the product mart: the demo shop's
        shop = httpx.get(f"{server.base_url}/demo/catalog", timeout=10).json()
        vocabulary = set(json.loads((bundle / "vocab.json").read_text()))
        assert shop["model_version"] == baseline_version and len(shop["products"]) >= 0.9 * len(vocabulary)
        assert {product["sku"] for product in shop["products"]} <= vocabulary
        assert sum(bool(product["category"]) for product in shop["products"]) >= 0.5 * len(shop["products"])
        compared = httpx.post(f"{server.base_url}/demo/compare", json={"session": [known_sku]}, timeout=10).json()
        other = {"cooccurrence": "vsknn", "vsknn": "cooccurrence"}[baseline["champion"]]
        assert [r["name"] for r in compared["rankings"]][:2] == [f"served: {baseline['champion']}", other]
    finally:
        server.stop()


@pytest.mark.e2e
def test_a_run_stopped_by_the_data_gate_resumes_from_dbt_once_the_data_is_fixed(tmp_path, tiny_data):
    """The catalogue lacks nearly every SKU: the run stops before training, naming the test, rows and what to do.
    The full catalogue loaded, `resume run_transformation` finishes the same run: `start` is cloned, dbt builds
    and tests the fixed data, and the model trains and deploys."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_data, broken)
    catalogue = (broken / "sku_to_content.csv").read_text().splitlines()
    (broken / "sku_to_content.csv").write_text("\n".join(catalogue[:2]) + "\n")  # one product of the catalogue
    env = {**os.environ, "USERNAME": "e2e", "PYTHONUNBUFFERED": "1", "MAX_SESSIONS": "1500"}
    for name in ("DUCKDB_PATH", "DATA_DIR", "REGISTRY_DIR", "MLFLOW_TRACKING_URI", "WAREHOUSE"):
        env.pop(name, None)
    load = [sys.executable, "-m", "postmodern.cli", "load", "--quiet", "--path"]
    run([*load, str(broken)], tmp_path, env, 120)
    flow = run_quick_flow(tmp_path, env)
    output = flow.stdout + flow.stderr
    assert flow.returncode != 0
    assert "data quality gate: training stopped" in output and "share_missing_below" in output
    assert "resume run_transformation" in output  # what to do next
    assert "train_model" not in output  # it never started
    assert not (tmp_path / "data" / "registry").exists()

    run([*load, str(tiny_data)], tmp_path, env, 120)  # the same events again (dbt counts them once), and the catalogue
    resumed = run([sys.executable, str(FLOW), "resume", "run_transformation"], tmp_path, env, 900)
    assert "data quality: every test passed" in resumed and "deployed" in resumed
    origins = json.loads(run([sys.executable, "-c", READ_ORIGINS], tmp_path, env, 120).strip().splitlines()[-1])
    assert origins["start"].split("/")[1] != origins["run_id"]  # cloned from the stopped run
    assert origins["run_transformation"] is None and origins["train_model"] is None  # these ran again, or first
    details = json.loads(run([sys.executable, "-c", READ_RUN], tmp_path, env, 120).strip().splitlines()[-1])
    assert details["successful"] and details["gate_passed"] and details["deployed_to"]
    assert (tmp_path / "data" / "registry" / "LATEST").exists()


# Recognisable fake values for every secret the stack reads (and AWS's, which boto3 would).
SECRETS = {
    "SF_PWD": "sf-pwd-canary-51d2",
    "DBT_API_KEY": "dbt-key-canary-7c09",
    "COMET_API_KEY": "comet-key-canary-e44b",
    "SERVING_API_KEY": "serving-key-canary-93fa",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-canary-0b6e",
}


def readable_texts(workspace: Path):
    """(path, text) of every file of the workspace as a reader of it would see it: gzip members unpacked (Metaflow's
    artifacts and logs), a DuckDB file as the CSV of every table (its strings are compressed on disk)."""
    import gzip

    import duckdb

    for path in sorted(p for p in workspace.rglob("*") if p.is_file()):
        content = path.read_bytes()
        if path.suffix == ".duckdb":
            with duckdb.connect(str(path), read_only=True) as connection:
                tables = connection.sql("select schema_name, table_name from duckdb_tables()").fetchall()
                for schema, table in tables:
                    rows = connection.sql(f'select * from "{schema}"."{table}"').fetchall()
                    yield f"{path}:{schema}.{table}", repr(rows)
            continue
        if content[:2] == b"\x1f\x8b":
            with contextlib.suppress(OSError):  # not gzip after all: scanned as it is
                content = gzip.decompress(content)
        yield str(path), content.decode("latin-1")


@pytest.mark.e2e
def test_secrets_reach_no_artifact_card_log_report_or_tracking_record(tmp_path, tiny_data):
    env = {**os.environ, "USERNAME": "e2e", "PYTHONUNBUFFERED": "1", "MAX_SESSIONS": "1500", **SECRETS}
    env["TRACKER"] = "mlflow"  # the Comet key is set (a shared .env, say) but this workspace tracks locally
    for name in ("DUCKDB_PATH", "DATA_DIR", "REGISTRY_DIR", "MLFLOW_TRACKING_URI", "WAREHOUSE"):
        env.pop(name, None)
    outputs = [run([sys.executable, "-m", "postmodern.cli", "load", "--path", str(tiny_data)], tmp_path, env, 120)]
    arguments = ["--epochs", "1", "--search_size", "1", "--families", "popularity,cooccurrence,lstm"]
    outputs.append(run([sys.executable, str(FLOW), "run", *arguments, "--gate_margin", "-1"], tmp_path, env, 900))
    outputs.append(run([sys.executable, "-c", READ_RUN], tmp_path, env, 120))  # every card and artifact, read
    server = ServerProcess(tmp_path, env)
    try:
        key = {"X-API-Key": SECRETS["SERVING_API_KEY"]}
        body = {"sessions": [["nope"]], "k": 3}
        answers = [
            httpx.post(f"{server.base_url}/invocations", json=body, headers=key, timeout=10),
            httpx.post(f"{server.base_url}/invocations", json=body, headers={"X-API-Key": "wrong"}, timeout=10),
            httpx.post(f"{server.base_url}/reload", headers=key, timeout=30),
            httpx.get(f"{server.base_url}/metrics", timeout=10),
            httpx.get(f"{server.base_url}/openapi.json", timeout=10),
            httpx.get(f"{server.base_url}/health/live", timeout=10),
        ]
        assert [answer.status_code for answer in answers] == [200, 401, 200, 200, 200, 200]
        outputs += [answer.text for answer in answers]
    finally:
        server.stop()
    scanned = list(readable_texts(tmp_path))  # the server's log is in the workspace too
    assert any("/.metaflow/" in path for path, _ in scanned) and any(path.endswith("mlflow.db") for path, _ in scanned)
    assert any(".html" in path for path, _ in scanned)  # the cards
    leaks = [
        (name, where)
        for name, secret in SECRETS.items()
        for where, text in [*scanned, *(("output", output) for output in outputs)]
        if secret in text
    ]
    assert leaks == []
