"""Shared fixtures: small generated data, loaded once into a DuckDB file, and built once by dbt."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from postmodern.config import Settings, load_settings
from postmodern.data.generator import PROFILES, GeneratorConfig, generate_dataset
from postmodern.warehouse import connect_log


@pytest.fixture(autouse=True)
def unfreeze_the_collector():
    """A server freezes what is alive once a model loads (serving/served_model.py); in the suite's one process,
    the test's garbage goes back to the collector after it."""
    yield
    gc.unfreeze()


SNOWFLAKE_CREDENTIALS = {
    "warehouse": "snowflake",
    "sf_user": "u",
    "sf_pwd": "p",
    "sf_account": "a",
    "sf_db": "d",
    "sf_role": "r",
}


def make_settings(tmp: Path, **overrides) -> Settings:
    """Settings for a test workspace: every path under `tmp`, no .env read."""
    return load_settings(
        _env_file=None,
        duckdb_path=tmp / "warehouse.duckdb",
        data_dir=tmp,
        registry_dir=tmp / "registry",
        **overrides,
    )


def log_rows(settings: Settings, role: str = "raw") -> list[dict]:
    """Every row of one of the append-only tables (`LogTables` role)."""
    warehouse = connect_log(settings)
    try:
        name = getattr(settings.log_tables, role)
        # the raw log's documents come back as JSON text, as an export of the log would write them
        columns = "* replace (to_json(raw_data) as raw_data)" if role == "raw" else "*"
        return warehouse.query(f"select {columns} from {warehouse.qualified(name)}").to_pylist()
    finally:
        warehouse.close()


@pytest.fixture(scope="session")
def tiny_config() -> GeneratorConfig:
    return PROFILES["tiny"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_config) -> Path:
    directory = tmp_path_factory.mktemp("coveo")
    generate_dataset(directory, tiny_config, progress=False)
    return directory


@pytest.fixture(scope="session")
def built_warehouse(tmp_path_factory, tiny_data):
    """A warehouse with the tiny data loaded and `dbt build` run on it (shared, read it only)."""
    from postmodern.data.load import load_source
    from postmodern.transform.dbt_runner import run_dbt_build

    settings = make_settings(tmp_path_factory.mktemp("warehouse"))
    raw_log = connect_log(settings)
    load_source(raw_log, settings, tiny_data, progress=False)
    raw_log.close()
    build = run_dbt_build(settings)
    return settings, build


SUITE_ITEMS = 30


def cyclic_sessions(count: int, rng: np.random.Generator, longest: int = 7) -> list[np.ndarray]:
    """Sessions that walk item i -> i + 1 (cyclically over SUITE_ITEMS items), 2 to `longest` items long:
    learnable from order, invisible to popularity."""
    sessions = []
    for _ in range(count):
        start = rng.integers(SUITE_ITEMS)
        sessions.append((start + np.arange(rng.integers(2, longest + 1))) % SUITE_ITEMS + 1)
    return sessions


@pytest.fixture(scope="session")
def suite_data():
    """Splits of cyclic sessions over SKUs sku1..sku30, and their product mart: categories by item number
    modulo 3, price buckets 1..10, and the last two SKUs missing from the catalogue."""
    from postmodern.model.dataset import SessionSplits, Vocabulary

    rng = np.random.default_rng(0)
    train, validation, test = (cyclic_sessions(n, rng) for n in (300, 30, 60))
    counts = np.bincount(np.concatenate(train), minlength=SUITE_ITEMS + 1)
    vocabulary = Vocabulary([f"sku{i}" for i in range(1, SUITE_ITEMS + 1)])
    listed = vocabulary.skus[:-2]
    products = pa.table(
        {
            "product_sku": listed,
            "top_category": [f"category{int(sku[3:]) % 3}" for sku in listed],
            "price_bucket": [float(int(sku[3:]) % 10 + 1) for sku in listed],
        }
    )
    return SessionSplits(vocabulary, train, validation, test, counts, {}), products


@pytest.fixture(scope="session")
def evaluation_against_deployed(tmp_path_factory, suite_data):
    """The default suite and gate for an untrained LSTM against popularity and its own copy, deployed as v1."""
    import torch

    from postmodern.evaluation.gate import evaluate_for_deployment
    from postmodern.evaluation.session_suite import SuiteConfig
    from postmodern.model.bundle import make_bundle
    from postmodern.model.champion import Selection
    from postmodern.model.families import Fitted
    from postmodern.model.families.popularity import PopularityRanker
    from postmodern.model.lstm import LSTMConfig, LSTMRanker, LSTMRecommender
    from postmodern.serving.registry import publish

    splits, products = suite_data
    torch.manual_seed(0)
    model = LSTMRecommender(LSTMConfig(SUITE_ITEMS + 1, embedding_dim=8, hidden_dim=16, max_length=5))
    registry = tmp_path_factory.mktemp("registry")
    publish(make_bundle(LSTMRanker(model, splits.train_counts), splits.vocabulary, {"model_version": "v1"}), registry)
    rankers = [LSTMRanker(model, splits.train_counts), PopularityRanker(splits.train_counts)]
    selection = Selection(
        {
            "lstm": Fitted("lstm", rankers[0], {"hidden_dim": 16}, {"mrr@20": 0.25, "hr@20": 0.5}),
            "popularity": Fitted("popularity", rankers[1], {}, {"mrr@20": 0.05, "hr@20": 0.2}),
        },
        champion="lstm",
        blends_tried=[],
    )
    suite = SuiteConfig(latency_sessions=5)
    return evaluate_for_deployment(rankers, splits, products, registry, suite, selection=selection, progress=False)
