"""Shared fixtures: small generated data, loaded once into a DuckDB file, and built once by dbt."""

from __future__ import annotations

from pathlib import Path

import pytest

from postmodern.config import Settings, load_settings
from postmodern.data.generator import PROFILES, GeneratorConfig, generate_dataset

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
    from postmodern.warehouse import connect

    settings = make_settings(tmp_path_factory.mktemp("warehouse"))
    warehouse = connect(settings)
    load_source(warehouse, settings, tiny_data, progress=False)
    warehouse.close()
    build = run_dbt_build(settings)
    return settings, build
