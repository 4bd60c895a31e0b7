"""Processes sharing one workspace, as a user's would: loads at once, a load during the flow's `dbt build`, deploys
while a server reads the registry. Loads wait for nobody (the raw log is files beside the DuckDB file); a reader of
the file waits for its writer (saying so) or fails naming it; nothing is lost, duplicated or half-written. Every
process is real, on loopback files, and bounded in time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest
from conftest import make_settings
from serving_support import small_bundle

from postmodern.data.generator import generate_dataset
from postmodern.model.bundle import ModelBundle
from postmodern.serving.registry import LATEST, latest_bundle_dir
from postmodern.warehouse import check_raw_log, connect_log

SCHEMA = "POST_MODERN_DATA_STACK"
HOLD_LOCK = textwrap.dedent("""
    import sys, time, duckdb
    connection = duckdb.connect(sys.argv[1])
    print("holding", flush=True)
    sys.stdin.readline()  # until the test lets go (or, with sys.argv[2], a while)
    time.sleep(float(sys.argv[2]))
""")


# `postmodern load`, imported and waiting for a line on stdin: it then asks for the warehouse at once
LOAD_WHEN_TOLD = textwrap.dedent("""
    import sys
    import postmodern.data.load, postmodern.warehouse.duckdb_warehouse
    from postmodern.cli import main
    print("ready", flush=True)
    sys.stdin.readline()
    sys.exit(main(sys.argv[1:]))
""")


def workspace_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    return {
        **os.environ,
        "DUCKDB_PATH": str(tmp_path / "warehouse.duckdb"),
        "DATA_DIR": str(tmp_path),
        "REGISTRY_DIR": str(tmp_path / "registry"),
        "MAX_SESSIONS": "",
        **variables,
    }


def start(arguments: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    pipe = subprocess.PIPE
    return subprocess.Popen(arguments, env=env, cwd=cwd, stdin=pipe, stdout=pipe, stderr=pipe, text=True)


def load_command(source: Path) -> list[str]:
    return [sys.executable, "-m", "postmodern.cli", "load", "--path", str(source), "--quiet"]


def hold_warehouse(path: Path, cwd: Path, seconds_after_release: float = 0) -> subprocess.Popen:
    """Another process holding the DuckDB file, as a long load would, until `release`; returns once it holds it."""
    holder = start([sys.executable, "-c", HOLD_LOCK, str(path), str(seconds_after_release)], dict(os.environ), cwd)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def tell(process: subprocess.Popen) -> None:
    """The line a waiting helper process reads to go on."""
    process.stdin.write("\n")
    process.stdin.flush()


def release(holder: subprocess.Popen) -> None:
    tell(holder)
    holder.wait(timeout=30)


def first_line_with(process: subprocess.Popen, text: str) -> str:
    """The first line of the process's stderr that holds `text` (it is bounded by its own lock timeout)."""
    while line := process.stderr.readline():
        if text in line:
            return line
    raise AssertionError(f"the process ended without saying {text!r}: {finish(process)}")


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def raw_log_counts(workspace: Path) -> tuple[int, int]:
    """(events in the raw log, loads in the ledger)."""
    settings = make_settings(workspace)
    events = check_raw_log(settings)
    raw_log = connect_log(settings)
    try:
        loads = raw_log.query(f"select count(*) as n from {SCHEMA}.COVEO_DATASET_RAW_LOADS").column("n")[0].as_py()
    finally:
        raw_log.close()
    return events, loads


@pytest.fixture(scope="module")
def two_batches(tmp_path_factory, tiny_config):
    """Two different batches of the same shop, and their event counts."""
    folders = []
    for index in range(2):
        folder = tmp_path_factory.mktemp(f"batch{index}")
        config = replace(tiny_config, first_session=index * tiny_config.n_sessions, seed=tiny_config.seed + index)
        generate_dataset(folder, config, progress=False)
        folders.append(folder)
    events = [len((folder / "browsing_train.csv").read_text().splitlines()) - 1 for folder in folders]
    return folders, events


def test_two_loads_at_once_land_whole_while_another_process_holds_the_duckdb_file(tmp_path, two_batches):
    folders, events = two_batches
    warehouse = tmp_path / "warehouse.duckdb"
    duckdb.connect(str(warehouse)).close()
    holder = hold_warehouse(warehouse, tmp_path)
    try:
        loads = [start(load_command(folder), workspace_env(tmp_path), tmp_path) for folder in folders]
        for load in loads:
            code, _, err = finish(load)
            assert code == 0 and "in use by" not in err, err
        assert raw_log_counts(tmp_path) == (sum(events), 2)
    finally:
        release(holder)
    ledger = connect_log(make_settings(tmp_path))
    stamps = ledger.query(f"select etl_timestamp from {SCHEMA}.COVEO_DATASET_RAW_LOADS").column(0).to_pylist()
    ledger.close()
    assert len(set(stamps)) == 2  # commits are ordered, and so are their times


def test_a_dbt_build_that_cannot_get_the_file_fails_naming_the_holder(tmp_path, two_batches):
    folders, _ = two_batches
    env = workspace_env(tmp_path, WAREHOUSE_LOCK_TIMEOUT="1")
    assert finish(start(load_command(folders[0]), env, tmp_path))[0] == 0
    warehouse = tmp_path / "warehouse.duckdb"
    duckdb.connect(str(warehouse)).close()
    holder = hold_warehouse(warehouse, tmp_path)
    build_script = (
        "from postmodern.config import load_settings; from postmodern.transform.dbt_runner import run_dbt_build; "
        "run_dbt_build(load_settings())"
    )
    try:
        started = time.monotonic()
        code, _, err = finish(start([sys.executable, "-c", build_script], env, tmp_path))
        waited = time.monotonic() - started
    finally:
        release(holder)
    assert code != 0 and waited < 60
    assert f"in use by PID {holder.pid} (python" in err and "after 1 s (WAREHOUSE_LOCK_TIMEOUT)" in err


def test_a_load_during_the_flows_dbt_build_lands_at_once_and_the_next_build_reads_it(tmp_path, two_batches):
    folders, events = two_batches
    env = workspace_env(tmp_path)
    code, _, err = finish(start(load_command(folders[0]), env, tmp_path))
    assert code == 0, err
    build_script = (
        "from postmodern.config import load_settings; from postmodern.transform.dbt_runner import run_dbt_build; "
        "build = run_dbt_build(load_settings()); assert not build.failed_tests, build.failed_tests"
    )
    load = start([sys.executable, "-c", LOAD_WHEN_TOLD, "load", "--path", str(folders[1]), "--quiet"], env, tmp_path)
    assert load.stdout.readline().strip() == "ready"
    build = start([sys.executable, "-c", build_script], env, tmp_path)
    dbt_log = tmp_path / "dbt_target" / "logs" / "dbt.log"
    deadline = time.monotonic() + 120
    while not (dbt_log.exists() and "START sql" in dbt_log.read_text(errors="replace")):  # dbt holds the file
        assert build.poll() is None and time.monotonic() < deadline, finish(build)
        time.sleep(0.1)
    tell(load)  # it appends now, while dbt holds the file
    load_code, _, load_err = finish(load)
    assert load_code == 0 and "in use by" not in load_err, load_err
    build_code, _, build_err = finish(build)
    assert build_code == 0, build_err
    assert raw_log_counts(tmp_path) == (sum(events), 2)
    code, _, err = finish(start([sys.executable, "-c", build_script], env, tmp_path))
    assert code == 0, err
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as connection:
        staged = connection.sql(f"select count(*) from {SCHEMA}.stg_browsing_events").fetchall()[0][0]
    assert staged == sum(events)  # every event of both loads, once (the batches share none)


PUBLISH_MANY = textwrap.dedent("""
    import pickle, sys
    from postmodern.serving.registry import publish
    bundles = pickle.load(open(sys.argv[1], "rb"))
    for bundle in bundles:
        publish(bundle, sys.argv[2])
""")

READ_LATEST = textwrap.dedent("""
    import sys, time
    from postmodern.model.bundle import ModelBundle, SessionRecommender
    from postmodern.serving.registry import latest_bundle_dir
    deadline, reads = time.monotonic() + float(sys.argv[2]), 0
    while time.monotonic() < deadline:
        try:
            directory = latest_bundle_dir(sys.argv[1])
        except Exception as error:
            if "no deployed model" in str(error):
                continue
            raise
        recommender = SessionRecommender(ModelBundle.load(directory))
        assert recommender.recommend([["sku1"]], 3)[0].items
        reads += 1
    print(reads)
""")


def test_deploys_at_once_publish_whole_while_a_reader_loads_latest(tmp_path):
    import pickle

    registry = tmp_path / "registry"
    skus = [f"sku{i}" for i in range(1, 21)]
    for writer in ("a", "b"):
        bundles = [small_bundle(f"{writer}{index}", skus) for index in range(15)]
        (tmp_path / f"{writer}.pkl").write_bytes(pickle.dumps(bundles))
    env = dict(os.environ)
    reader = start([sys.executable, "-c", READ_LATEST, str(registry), "8"], env, tmp_path)
    writers = [
        start([sys.executable, "-c", PUBLISH_MANY, str(tmp_path / f"{writer}.pkl"), str(registry)], env, tmp_path)
        for writer in ("a", "b")
    ]
    for process in writers:
        code, _, err = finish(process)
        assert code == 0, err
    code, out, err = finish(reader)
    assert code == 0, err
    assert int(out) > 0
    versions = sorted(f"{writer}{index}" for writer in ("a", "b") for index in range(15))
    assert sorted(path.name for path in registry.iterdir()) == sorted([LATEST, *versions])  # nothing half-written
    for version in versions:
        assert ModelBundle.load(registry / version).version == version
    assert latest_bundle_dir(registry).name in {"a14", "b14"}
